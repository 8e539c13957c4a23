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
