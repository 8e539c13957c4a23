"""The README's main job, in its quick form: every stage runs and writes its products."""

from __future__ import annotations

import json

import pytest

from lczscale.cli import main

pytestmark = pytest.mark.integration


def test_demo_quick_writes_report_pictures_and_cube(tmp_path, capsys) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--quick"]) == 0
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    assert report["map"]["computed"] >= 2
    assert report["map"]["valid_pixels"] > 0
    assert 0 < report["eval"]["oa"] <= 1
    assert "baseline_miou" in report["eval"]
    for name in report["pictures"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "mIoU" in (out / "report.md").read_text()
    assert "baseline" in capsys.readouterr().out
