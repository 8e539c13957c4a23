"""The conformance suite every cube sink passes (one base class, one subclass per store kind).

A subclass defines a ``case`` fixture returning a :class:`SinkCase`: a sink over a freshly
created cube, one of its zones and its year. The tests then drive the sink as a tile pass does
and check the rules a cube's honesty rests on: pending before any chunk, done only after the
outputs, a crash in between leaves the tile not done, a failure never undoes a finished tile of
the same provenance, the bytes written are the bytes read, and no key leaves the cube.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError
from lczscale.io.cube import ledger
from lczscale.io.cube.sink import CubeSink
from lczscale.io.cube.store import read_window

TILE = 256


@dataclass
class SinkCase:
    sink: CubeSink
    zone: Zone
    year: int


def _key(case: SinkCase, row: int = 0, col: int = 0) -> str:
    return f"{case.zone.name}/{case.year}/{row}_{col}"


def _tile(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lcz = rng.integers(0, 18, size=(TILE, TILE)).astype(np.uint8)
    return lcz, np.where(lcz > 0, rng.integers(1, 256, size=lcz.shape), 0).astype(np.uint8)


def _entry(phash: str = "p1") -> dict[str, object]:
    return {"zone": "z", "year": 2024, "core": [0, 0, TILE, TILE], "provenance_hash": phash}


class CubeSinkConformance:
    """Subclasses provide the ``case`` fixture."""

    def test_a_started_tile_is_pending_not_done(self, case: SinkCase) -> None:
        case.sink.start(_key(case), _entry())
        entry = case.sink.entry(_key(case))
        assert entry is not None and ledger.state(entry) == ledger.PENDING
        assert entry["provenance_hash"] == "p1"

    def test_written_and_finished_tile_reads_back_exactly(self, case: SinkCase) -> None:
        lcz, conf = _tile(1)
        core = Window(0, 0, TILE, TILE)
        case.sink.start(_key(case), _entry())
        case.sink.write(case.zone, case.year, core, lcz, conf)
        case.sink.finish(_key(case), _entry() | {"valid_pixels": int((lcz > 0).sum())})
        entry = case.sink.entry(_key(case))
        assert entry is not None and ledger.state(entry) == ledger.DONE
        assert entry["valid_pixels"] == int((lcz > 0).sum())
        np.testing.assert_array_equal(read_window(case.sink.url, case.zone, case.year, core), lcz)

    def test_a_crash_between_write_and_finish_leaves_the_tile_not_done(
            self, case: SinkCase) -> None:
        lcz, conf = _tile(2)
        case.sink.finish(_key(case, 0, TILE), _entry())  # an earlier run's done tile
        case.sink.start(_key(case, 0, TILE), _entry("p2"))  # this run overwrites it…
        case.sink.write(case.zone, case.year, Window(0, TILE, TILE, TILE), lcz, conf)
        entry = case.sink.entry(_key(case, 0, TILE))  # …and dies before finish
        assert entry is not None and ledger.state(entry) == ledger.PENDING

    def test_a_failure_never_undoes_a_finished_tile_of_the_same_provenance(
            self, case: SinkCase) -> None:
        case.sink.finish(_key(case), _entry())
        assert case.sink.fail(_key(case), _entry() | {"error": "late duplicate"}) is False
        entry = case.sink.entry(_key(case))
        assert entry is not None and ledger.state(entry) == ledger.DONE

    def test_a_failure_replaces_another_provenance_and_a_rerun_replaces_it(
            self, case: SinkCase) -> None:
        case.sink.finish(_key(case), _entry("old"))
        assert case.sink.fail(_key(case), _entry("new") | {"error": "boom"}) is True
        entry = case.sink.entry(_key(case))
        assert entry is not None and ledger.state(entry) == ledger.FAILED
        assert entry["error"] == "boom"
        case.sink.finish(_key(case), _entry("new"))
        entry = case.sink.entry(_key(case))
        assert entry is not None and ledger.state(entry) == ledger.DONE

    def test_entries_lists_every_tile_with_its_state(self, case: SinkCase) -> None:
        case.sink.finish(_key(case, 0, 0), _entry())
        case.sink.start(_key(case, 0, TILE), _entry())
        case.sink.fail(_key(case, TILE, 0), _entry() | {"error": "x"})
        states = {k: ledger.state(e) for k, e in case.sink.entries().items()}
        assert states == {_key(case, 0, 0): "done", _key(case, 0, TILE): "pending",
                          _key(case, TILE, 0): "failed"}
        assert case.sink.entry(_key(case, TILE, TILE)) is None

    def test_no_key_leaves_the_cube(self, case: SinkCase) -> None:
        for bad in ("../escape", f"{case.zone.name}/../../x", "a/./b"):
            with pytest.raises(CubeError, match="may not leave the cube root"):
                case.sink.start(bad, _entry())
