"""``benchmarks/run.py --quick`` as the acceptance checks call it: JSON lines with a context,
the end-to-end line's ``px_per_s``, ``model_px_per_s`` and ``ratio`` (their quotient), and
amplification lines ≥ 1. Schema and arithmetic only: timing is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
CONTEXT = {"host", "cpu", "cpu_count", "gpus", "torch", "python", "git_sha"}


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("bench") / "quick.jsonl"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "amplification", "--only",
         "end_to_end", "--only", "tile_memory", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    saved = [json.loads(x) for x in out.read_text().splitlines()]
    assert printed == saved
    return printed


def test_every_line_has_a_name_and_the_context(lines: list[dict]) -> None:
    assert lines
    assert all(x["context"].keys() >= CONTEXT and x["name"] for x in lines)
    assert {x["benchmark"] for x in lines if x["name"] != "run"} == {
        "amplification", "end_to_end", "tile_memory"}
    assert lines[-1]["name"] == "run"
    assert lines[-1]["failed"] == []


def test_end_to_end_line(lines: list[dict]) -> None:
    (e2e,) = [x for x in lines if x["name"] == "end_to_end"]
    for key in ("workers", "threads_per_worker", "tile_size", "halo_mean_px", "patch_size",
                "batch_size", "dtype", "source", "km2_per_hour"):
        assert key in e2e, key
    assert e2e["px_per_s"] > 0
    assert e2e["model_px_per_s"] > 0
    assert e2e["failed"] == 0
    assert e2e["ratio"] == pytest.approx(e2e["px_per_s"] / e2e["model_px_per_s"], rel=1e-3)
    assert e2e["km2_per_hour"] == pytest.approx(e2e["px_per_s"] * 0.36, rel=1e-3)
    assert e2e["read_amplification"] >= 1
    assert e2e["tiles"] >= 2
    (plain,) = [x for x in lines if x["name"] == "end_to_end_no_read_ahead"]
    assert plain["read_ahead"] is False
    assert e2e["read_ahead"] is True
    assert plain["valid_pixels"] == e2e["valid_pixels"]


def test_amplification_lines(lines: list[dict]) -> None:
    halo = [x for x in lines if x["name"] == "halo_amplification"]
    assert len(halo) == 15
    assert sum(x["default"] for x in halo) == 1
    assert all(x["read_amplification"] >= 1 and x["patch_amplification"] >= 1 for x in halo)
    measured = [x for x in lines if x["name"] == "halo_amplification_measured"]
    assert measured
    assert all(x["measured_read_amplification"] >= 1 for x in measured)


def test_tile_memory_lines(lines: list[dict]) -> None:
    """A streamed tile holds a few bands of input and a few patch rows of sums; a whole read
    holds every row. (Resident memory is reported, not asserted: it is the machine's.)"""
    got = {x["streamed"]: x for x in lines if x["name"] == "tile_memory"}
    streamed, whole = got[True], got[False]
    assert streamed["tile_size"] == whole["tile_size"] == 2048
    assert whole["input_rows"] == whole["read_rows"] > streamed["input_rows"] > 0
    assert streamed["input_rows"] <= 2 * 256 + 64 + 2 * 256  # ahead, a patch, two bands
    assert 0 < streamed["sum_rows"] < 2048
    assert streamed["estimate_mib"] < whole["estimate_mib"]
    assert all(x["peak_mib"] > 0 and x["px_per_s"] > 0 for x in (streamed, whole))
