"""When a map run compacts its ledger (``compaction.compact_after_run``), and what it leaves.

The rules compaction keeps (entries unchanged, crashes, later entries winning) are in the sink
conformance suite (``tests/cube_sink_conformance.py``), run on disk and on S3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lczscale.io.cube import compaction, ledger


def _fill(url: str, n: int, year: int = 2024) -> None:
    for i in range(n):
        ledger.record(url, f"utm{i % 3 + 1:02d}/{year}/0_{i * 256}", {"provenance_hash": "h"})


def test_a_run_compacts_only_a_ledger_of_many_objects(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "c.zarr")
    _fill(url, 5)
    monkeypatch.setattr(compaction, "COMPACT_AFTER", 6)
    assert compaction.compact_after_run(url) == 0  # a small cube reads its objects fast
    assert len(list((tmp_path / "c.zarr" / ledger.LEDGER_DIR).rglob("[!.]*.json"))) == 5
    _fill(url, 6, 2025)
    before = ledger.read_all(url)
    assert compaction.compact_after_run(url) == 11
    assert ledger.read_all(url) == before
    root = tmp_path / "c.zarr" / ledger.LEDGER_DIR
    assert not list(root.rglob("[!.]*.json"))  # no per-tile object left…
    snapshots = sorted(p.relative_to(root).as_posix() for p in root.rglob(ledger.SNAPSHOT))
    assert snapshots == [f"utm0{z}/{y}/{ledger.SNAPSHOT}" for z in (1, 2, 3)
                         for y in (2024, 2025)]  # …one snapshot per zone and year
    doc = json.loads((root / snapshots[0]).read_text())
    assert doc["format"] == ledger.SNAPSHOT_FORMAT
    assert [e["key"] for e in doc["entries"]] == ["utm01/2024/0_0", "utm01/2024/0_768"]


def test_a_failed_compaction_is_logged_not_raised(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    url = str(tmp_path / "c.zarr")
    _fill(url, 3)
    before = ledger.read_all(url)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compaction, "COMPACT_AFTER", 1)
    monkeypatch.setattr(ledger, "put_atomically", full_disk)
    assert compaction.compact_after_run(url) == 0
    assert "could not compact the ledger" in caplog.text
    monkeypatch.undo()
    assert ledger.read_all(url) == before
    assert not list((tmp_path / "c.zarr" / ledger.LEDGER_DIR).rglob(".*.tmp"))


def test_a_ledger_without_objects_or_folder_compacts_to_nothing(tmp_path: Path) -> None:
    assert compaction.compact(str(tmp_path / "none.zarr")) == 0
    assert ledger.read_all(str(tmp_path / "none.zarr")) == {}
