"""``benchmarks/planet.py``'s arithmetic on hand-made worker logs: the per-tile overhead (gaps
that span a kill are churn, not overhead), the seconds per 1,000 tiles (the thousand spanning
the client's restart left out), and the growth of resident memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import planet


def tile(pid: int, key: str, started: float, run_s: float = 0.05, standin_s: float = 0.01,
         chunks_s: float = 0.03, ledger_s: float = 0.004, status: str = "done") -> dict:
    return {"key": key, "status": status, "pid": pid, "started": started,
            "ended": started + run_s, "run_s": run_s, "standin_s": standin_s,
            "chunks_s": chunks_s, "ledger_s": ledger_s}


def test_overhead_is_the_gap_plus_the_runner_outside_the_stand_ins() -> None:
    lines = [tile(1, "a", 0.0), tile(1, "b", 0.052), tile(1, "c", 0.104),
             tile(2, "d", 0.0), tile(2, "e", 10.0)]  # pid 2: a kill at 5 s between its tiles
    got = planet.overheads(lines, [{"t": 5.0, "what": "worker"}])
    assert got["overhead_tiles"] == 2  # b and c: firsts have no gap, e's gap spans the kill
    assert got["gap_ms_p50"] == pytest.approx(2.0)
    assert got["overhead_ms_p50"] == pytest.approx(2.0 + 40.0)  # gap + (run - stand-in)
    assert got["control_ms_p50"] == pytest.approx(2.0 + 40.0 - 30.0)  # less the chunk writes
    assert got["chunks_ms_p50"] == pytest.approx(30.0)
    assert got["ledger_ms_p50"] == pytest.approx(4.0)


def test_seconds_per_thousand_leave_out_the_restart() -> None:
    # 10,000 tiles at 10 ms, then one restart of 50 s, then 10,000 at 12 ms
    lines = [tile(1, f"k{i}", i * 0.01, run_s=0.0) for i in range(10_000)]
    start = 100.0 + 50.0
    lines += [tile(1, f"m{i}", start + i * 0.012, run_s=0.0) for i in range(10_000)]
    kills = [{"t": 120.0, "drained_t": 149.0, "what": "client"}]
    spans, growth = planet.per_thousand(lines, kills)
    assert len(spans) == 20
    assert spans[0] == pytest.approx(10.0, abs=0.01)
    assert max(spans) > 50  # the thousand spanning the restart
    assert growth == pytest.approx(12.0 / 10.0 - 1, abs=0.01)  # restart left out


def test_memory_growth_compares_the_last_tenth_with_the_first() -> None:
    # (t, tiles done, client rss, scheduler rss, driver)
    samples = [(float(i), i * 10, 100 + i, 50, 0) for i in range(1, 51)]
    samples += [(float(i), i * 10, 200 + i // 10, 50, 1) for i in range(51, 101)]
    whole = planet.growth(samples, 2, 1000)
    first = sum(100 + i for i in range(1, 11)) / 10
    last = sum(200 + i // 10 for i in range(90, 101)) / 11
    assert whole == pytest.approx(last / first - 1, abs=1e-3)
    assert planet.growth(samples, 3, 1000) == 0.0
    per_driver = planet.growth(samples, 2, 1000, driver=1)
    assert per_driver is not None
    assert 0 < per_driver < 0.05
