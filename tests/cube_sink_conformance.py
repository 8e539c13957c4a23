"""The conformance suite every cube sink passes (one base class, one subclass per store kind).

A subclass defines a ``case`` fixture returning a :class:`SinkCase`: a sink over a freshly
created cube, one of its zones and its year. The tests then drive the sink as a tile pass does
and check the rules a cube's honesty rests on: pending before any chunk, done only after the
outputs, a crash in between leaves the tile not done, a failure never undoes a finished tile of
the same provenance, the bytes written are the bytes read, and no key leaves the cube.

Compaction (``CubeSink.compact``: per-tile entries folded into one snapshot per zone and year)
changes nothing ``entry`` and ``entries`` read — also when it is cut short after the snapshot is
written, or while writing it — and a tile recorded after it, or rewritten while it runs, wins
over the snapshot; an unreadable entry over a snapshot is not done, and stays not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lczscale.core.grid import Window, Zone
from lczscale.errors import CubeError
from lczscale.io.cube import compaction, ledger
from lczscale.io.cube.sink import CubeSink
from lczscale.io.cube.store import read_window
from lczscale.io.stores import filesystem

TILE = 256


@dataclass
class SinkCase:
    sink: CubeSink
    zone: Zone
    year: int


def _key(case: SinkCase, row: int = 0, col: int = 0, year: int | None = None) -> str:
    return f"{case.zone.name}/{year or case.year}/{row}_{col}"


def _tile(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lcz = rng.integers(0, 18, size=(TILE, TILE)).astype(np.uint8)
    return lcz, np.where(lcz > 0, rng.integers(1, 256, size=lcz.shape), 0).astype(np.uint8)


def _entry(phash: str = "p1") -> dict[str, object]:
    return {"zone": "z", "year": 2024, "core": [0, 0, TILE, TILE], "provenance_hash": phash}


class Killed(BaseException):
    """A process killed at this point (not an error anything catches)."""


def _ledger_of_two_folders(case: SinkCase) -> dict[str, dict[str, object]]:
    """Done, pending and failed entries in two folders (two years); what ``entries`` reads."""
    for i in range(4):
        case.sink.finish(_key(case, 0, i * TILE), _entry() | {"valid_pixels": i})
        case.sink.finish(_key(case, 0, i * TILE, year=case.year - 1), _entry("old"))
    case.sink.start(_key(case, TILE, 0), _entry("p2"))
    case.sink.fail(_key(case, TILE, TILE), _entry() | {"error": "boom"})
    entries = case.sink.entries()
    assert len(entries) == 10
    return entries


def _reads(case: SinkCase) -> dict[str, dict[str, object]]:
    """Every entry as ``entries`` reads it, checked against ``entry`` key by key."""
    entries = case.sink.entries()
    for key, entry in entries.items():
        assert case.sink.entry(key) == entry, key
    return entries


def _corrupt(case: SinkCase, key: str) -> None:
    fs, path = filesystem(ledger.entry_url(case.sink.url, key))
    fs.pipe_file(path, b'{"key": "cut sh')


class CompactionConformance:
    """Compaction through the sink; subclasses provide the ``case`` fixture."""

    def test_compaction_changes_no_entry(self, case: SinkCase) -> None:
        before = _ledger_of_two_folders(case)
        assert case.sink.compact() == 10
        assert _reads(case) == before
        assert case.sink.entry(_key(case, TILE * 5, 0)) is None
        assert case.sink.compact() == 0  # nothing left to fold
        assert _reads(case) == before

    def test_a_crash_after_the_snapshot_before_the_deletions_reads_the_same(
            self, case: SinkCase, monkeypatch: pytest.MonkeyPatch) -> None:
        before = _ledger_of_two_folders(case)
        real = compaction._delete

        def killed_after_one(listing: ledger.Listing, folder: str, paths: list[str]) -> None:
            real(listing, folder, paths[:1])  # one object deleted, then the process dies
            raise Killed

        monkeypatch.setattr(compaction, "_delete", killed_after_one)
        with pytest.raises(Killed):
            case.sink.compact()
        assert _reads(case) == before  # a snapshot and most of its objects: the same entries
        # a tile recorded now wins over the snapshot that already holds its older entry
        case.sink.finish(_key(case, TILE, 0), _entry("p2"))
        before[_key(case, TILE, 0)] = case.sink.entry(_key(case, TILE, 0)) or {}
        assert ledger.state(before[_key(case, TILE, 0)]) == ledger.DONE
        monkeypatch.setattr(compaction, "_delete", real)
        assert case.sink.compact() > 0  # the next compaction finishes the job
        assert _reads(case) == before
        assert case.sink.compact() == 0

    def test_a_crash_while_writing_the_snapshot_changes_nothing(
            self, case: SinkCase, monkeypatch: pytest.MonkeyPatch) -> None:
        before = _ledger_of_two_folders(case)
        assert case.sink.compact() == 10
        case.sink.finish(_key(case, 0, 0), _entry("p3"))
        before[_key(case, 0, 0)] = case.sink.entry(_key(case, 0, 0)) or {}

        def killed(*args: object, **kwargs: object) -> None:
            raise Killed

        monkeypatch.setattr(ledger, "put_atomically", killed)
        with pytest.raises(Killed):
            case.sink.compact()
        monkeypatch.undo()
        assert _reads(case) == before
        assert case.sink.compact() == 1
        assert _reads(case) == before

    def test_a_tile_recorded_after_compaction_wins_over_the_snapshot(
            self, case: SinkCase) -> None:
        key = _key(case)
        case.sink.finish(key, _entry())
        assert case.sink.compact() == 1
        # a late duplicate's failure still sees the done entry, now in the snapshot
        assert case.sink.fail(key, _entry() | {"error": "late duplicate"}) is False
        case.sink.start(key, _entry("p2"))  # a new run starts the tile: pending wins
        for got in (case.sink.entry(key), case.sink.entries()[key]):
            assert got is not None
            assert ledger.state(got) == ledger.PENDING
            assert got["provenance_hash"] == "p2"
        assert case.sink.compact() == 1  # still pending once folded: never the old done
        assert ledger.state(case.sink.entry(key) or {}) == ledger.PENDING
        assert case.sink.fail(key, _entry("p2") | {"error": "boom"}) is True
        assert ledger.state(case.sink.entries()[key]) == ledger.FAILED

    def test_an_entry_rewritten_while_compacting_is_kept_and_wins(
            self, case: SinkCase, monkeypatch: pytest.MonkeyPatch) -> None:
        before = _ledger_of_two_folders(case)
        key = _key(case, 0, TILE)
        real = ledger.put_atomically

        def then_a_writer(target: str, data: bytes, *args: object) -> None:
            real(target, data, *args)  # the snapshot, holding the entry as it was read…
            if target.endswith(f"/{case.year}/{ledger.SNAPSHOT}"):
                case.sink.start(key, _entry("p9"))  # …and a writer that ignored the lock

        monkeypatch.setattr(ledger, "put_atomically", then_a_writer)
        assert case.sink.compact() == 9  # the rewritten object is not deleted
        monkeypatch.undo()
        before[key] = case.sink.entry(key) or {}
        assert before[key]["provenance_hash"] == "p9"
        assert _reads(case) == before

    def test_an_unreadable_entry_over_a_snapshot_is_not_done_and_stays_so(
            self, case: SinkCase) -> None:
        key = _key(case)
        case.sink.finish(key, _entry())
        case.sink.finish(_key(case, 0, TILE), _entry())
        assert case.sink.compact() == 2
        _corrupt(case, key)  # e.g. a disk fault over the tile's new entry
        assert case.sink.entry(key) is None
        assert key not in case.sink.entries()
        assert case.sink.compact() == 0  # the unreadable object is not folded…
        fs, path = filesystem(ledger.entry_url(case.sink.url, key))
        fs.rm_file(path)  # …and the snapshot no longer holds the old done entry either
        assert case.sink.entry(key) is None
        assert key not in case.sink.entries()
        assert _key(case, 0, TILE) in case.sink.entries()
        case.sink.finish(key, _entry())
        assert ledger.state(case.sink.entry(key) or {}) == ledger.DONE

    def test_a_snapshot_gives_entries_of_its_own_folder_only(self, case: SinkCase) -> None:
        case.sink.finish(_key(case), _entry())
        assert case.sink.compact() == 1
        folder = f"{case.zone.name}/{case.year}"
        stranger = {"key": f"{case.zone.name}/{case.year - 1}/0_0", "state": "done"}
        escape = {"key": "../../elsewhere/0_0", "state": "done"}
        own = case.sink.entry(_key(case)) or {}
        fs, path = filesystem(ledger.snapshot_url(case.sink.url, folder))
        fs.pipe_file(path, ledger.snapshot_bytes(folder, {"a": own, "b": stranger, "c": escape}))
        assert case.sink.entries() == {_key(case): own}
        with pytest.raises(CubeError, match="may not leave the cube root"):
            ledger.snapshot_url(case.sink.url, "../x")


class CubeSinkConformance(CompactionConformance):
    """Subclasses provide the ``case`` fixture (the compaction tests come with it)."""

    def test_a_started_tile_is_pending_not_done(self, case: SinkCase) -> None:
        case.sink.start(_key(case), _entry())
        entry = case.sink.entry(_key(case))
        assert entry is not None
        assert ledger.state(entry) == ledger.PENDING
        assert entry["provenance_hash"] == "p1"

    def test_written_and_finished_tile_reads_back_exactly(self, case: SinkCase) -> None:
        lcz, conf = _tile(1)
        core = Window(0, 0, TILE, TILE)
        case.sink.start(_key(case), _entry())
        case.sink.write(case.zone, case.year, core, lcz, conf)
        case.sink.finish(_key(case), _entry() | {"valid_pixels": int((lcz > 0).sum())})
        entry = case.sink.entry(_key(case))
        assert entry is not None
        assert ledger.state(entry) == ledger.DONE
        assert entry["valid_pixels"] == int((lcz > 0).sum())
        np.testing.assert_array_equal(read_window(case.sink.url, case.zone, case.year, core), lcz)

    def test_a_crash_between_write_and_finish_leaves_the_tile_not_done(
            self, case: SinkCase) -> None:
        lcz, conf = _tile(2)
        case.sink.finish(_key(case, 0, TILE), _entry())  # an earlier run's done tile
        case.sink.start(_key(case, 0, TILE), _entry("p2"))  # this run overwrites it…
        case.sink.write(case.zone, case.year, Window(0, TILE, TILE, TILE), lcz, conf)
        entry = case.sink.entry(_key(case, 0, TILE))  # …and dies before finish
        assert entry is not None
        assert ledger.state(entry) == ledger.PENDING

    def test_a_failure_never_undoes_a_finished_tile_of_the_same_provenance(
            self, case: SinkCase) -> None:
        case.sink.finish(_key(case), _entry())
        assert case.sink.fail(_key(case), _entry() | {"error": "late duplicate"}) is False
        entry = case.sink.entry(_key(case))
        assert entry is not None
        assert ledger.state(entry) == ledger.DONE

    def test_a_failure_replaces_another_provenance_and_a_rerun_replaces_it(
            self, case: SinkCase) -> None:
        case.sink.finish(_key(case), _entry("old"))
        assert case.sink.fail(_key(case), _entry("new") | {"error": "boom"}) is True
        entry = case.sink.entry(_key(case))
        assert entry is not None
        assert ledger.state(entry) == ledger.FAILED
        assert entry["error"] == "boom"
        case.sink.finish(_key(case), _entry("new"))
        entry = case.sink.entry(_key(case))
        assert entry is not None
        assert ledger.state(entry) == ledger.DONE

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
