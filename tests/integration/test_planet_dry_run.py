"""``benchmarks/planet.py`` on a few hundred tiles: the real control plane (``run_map``, a
scheduler and worker processes, the ledger, the cube) with a worker killed every few seconds and
the client killed at half and started again. Every tile must end with exactly one done entry and
its chunk, and the resume must plan exactly the tiles not done. Timing is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
PLANET = Path(__file__).resolve().parents[2] / "benchmarks" / "planet.py"
FIELDS = {"tiles", "lost", "duplicated", "overhead_ms_p50", "overhead_ms_p99",
          "client_rss_growth", "resume_plan_s"}


def test_churned_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "planet.jsonl"
    done = subprocess.run(
        [sys.executable, str(PLANET), "--tiles", "240", "--kill-every", "4",
         "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(out.read_text().splitlines()[-1])
    assert line["name"] == "planet_dry_run"
    assert set(line) >= FIELDS
    assert line["tiles"] == 240
    assert line["zones"] == 1
    assert line["client_kills"] == 1  # the resume ran
    assert line["lost"] == 0
    assert line["no_chunk"] == 0
    assert line["no_done_entry"] == 0
    assert line["duplicated"] == 0
    assert line["resume_unplanned"] == 0
    # the resume planned exactly the tiles not done when it read the ledger
    assert line["resume_done_before"] + line["resume_tasks"] == 240
    assert 0 < line["resume_done_before"] < 240
    assert line["sample_checked"] > 0
    assert line["sample_wrong"] == 0
    assert line["overhead_tiles"] > 0
    assert line["overhead_ms_p50"] >= line["control_ms_p50"]
