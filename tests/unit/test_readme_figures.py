"""Every accuracy figure the README quotes for the studies' experiments is in a stored result
(``docs/results/*.json``, written by ``docs/results/reproduce.py`` with its commands and git
sha): a figure typed by hand, or left behind when the result changed, fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "docs" / "results" / "experiment-transfer.json"


def numbers(obj: object) -> set[str]:
    """Every number in ``obj``, as the README writes it (three decimals)."""
    if isinstance(obj, dict):
        return set().union(*(numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(numbers(v) for v in obj)) if obj else set()
    if isinstance(obj, float):
        return {f"{obj:.3f}"}
    return set()


def experiment_paragraph() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("On the synthetic world")
    return text[start:text.index("\n\n", start)]


def test_the_transfer_figures_come_from_the_stored_result() -> None:
    stored = json.loads(STORED.read_text())
    assert stored["git_sha"]
    assert stored["commands"][1].startswith("lczscale experiment transfer")
    quoted = re.findall(r"\b0\.\d{3}\b", experiment_paragraph())
    assert len(quoted) >= 3  # the U-Net, the upsampled labels, the logistic regression
    land = stored["report"]["cities"][0]["land_pixels"]
    assert set(quoted) <= numbers(land), set(quoted) - numbers(land)


def test_the_stored_result_names_its_sha_and_the_readme_names_the_command() -> None:
    paragraph = experiment_paragraph()
    assert "docs/results/reproduce.py" in paragraph
    assert "experiment-transfer.json" in paragraph


def stored_floats(obj: object) -> list[float]:
    """Every float in a stored result."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in stored_floats(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in stored_floats(x)]
    return [obj] if isinstance(obj, float) else []


def section(start: str, end: str = "\n\n") -> str:
    text = (ROOT / "README.md").read_text()
    first = text.index(start)
    return text[first:text.index(end, first + len(start))]


def assert_quoted_from(text: str, stored: object) -> None:
    """Each decimal number in ``text`` is a stored float written to as many decimals."""
    values = stored_floats(stored)
    quoted = re.findall(r"(?<![\w.])\d+\.(\d{2,4})\b", text)
    figures = re.findall(r"(?<![\w.])(\d+\.\d{2,4})\b", text)
    assert figures, "no figure found where the README quotes them"
    for figure, decimals in zip(figures, quoted, strict=True):
        assert any(f"{v:.{len(decimals)}f}" == figure for v in values), figure


def test_the_evaluation_table_comes_from_the_stored_result() -> None:
    stored = json.loads((ROOT / "docs" / "results" / "eval-london.json").read_text())
    assert stored["commands"][-1].startswith("lczscale eval")
    table = section("<!-- eval-london.json -->", "<!-- /eval-london.json -->")
    assert_quoted_from(table, stored["result"])
    for key in ("oa", "oa_u", "oa_bu", "oa_w"):
        assert f"{stored['result'][key]:.3f}" in table, key


def test_the_change_table_comes_from_the_stored_result() -> None:
    stored = json.loads((ROOT / "docs" / "results" / "change-synthetic.json").read_text())
    assert stored["commands"][-1].startswith("lczscale change")
    table = section("<!-- change-synthetic.json -->", "<!-- /change-synthetic.json -->")
    assert_quoted_from(table, stored["matrix_km2"])
    assert f"{stored['matrix_km2']['D']['6']:.4f}" in table, "D → 6, the change made"
