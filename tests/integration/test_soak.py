"""Soak: ≥ 2,000 small tiles through the Dask executor with flat worker memory.

Runs ``benchmarks/soak.py`` (the same script that reports the figures) in a subprocess and
checks its JSON line: every tile made, none failed, worker RSS growth from the first to the last
quarter of the soak below 10 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "soak.py"


def test_two_thousand_tiles_with_flat_worker_memory(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiles", "2000", "--workers", "2", "--tile-size", "64",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in record.items() if k != "context"}))
    assert record["tiles"] >= 2000
    assert record["failed"] == 0
    assert record["samples"] >= 8
    assert record["rss_growth"] < 0.10, record
