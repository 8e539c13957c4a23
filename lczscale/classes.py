"""The 17 Local Climate Zone classes (Stewart & Oke 2012): codes, labels, names and colours.

Codes are 1–17 (0 = nodata); labels are the customary "1"–"10" (built types) and "A"–"G"
(land-cover types). The palette is the one of the global LCZ map (Demuzere et al. 2022), so our
maps look like the ones users already know. Standard library only: this module is imported by
everything, including code that must not pull in numpy or torch.
"""

from __future__ import annotations

LCZ_CODES: list[int] = list(range(1, 18))

LCZ_LABELS: list[str] = [str(i) for i in range(1, 11)] + list("ABCDEFG")

LCZ_CLASS_NAMES: list[str] = [
    "Compact highrise",
    "Compact midrise",
    "Compact lowrise",
    "Open highrise",
    "Open midrise",
    "Open lowrise",
    "Lightweight low-rise",
    "Large lowrise",
    "Sparsely built",
    "Heavy industry",
    "Dense trees",
    "Scattered trees",
    "Bush, scrub",
    "Low plants",
    "Bare rock or paved",
    "Bare soil or sand",
    "Water",
]

LCZ_PALETTE: list[str] = [
    "#910613",
    "#D9081C",
    "#FF0A22",
    "#C54F1E",
    "#FF6628",
    "#FF985E",
    "#FDED3F",
    "#BBBBBB",
    "#FFCBAB",
    "#565656",
    "#006A18",
    "#00A926",
    "#628432",
    "#B5DA7F",
    "#000000",
    "#FCF7B1",
    "#656BFA",
]
"""Hex colours of classes 1–17, in code order."""

LCZ_PALETTE_HEX = LCZ_PALETTE  # alias


def palette_rgb() -> list[tuple[int, int, int]]:
    """The palette as (r, g, b) tuples in 0–255, classes 1–17 in order."""
    return [(int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)) for h in LCZ_PALETTE]
