"""What the 2026 dClimate TESSERA v1.1 build means, whichever layout carries it.

The global v1.1 store (an Icechunk repository, groups ``01N`` … ``60S``) and its plain Zarr copy
on Source Cooperative (groups ``utm01`` … ``utm60``) hold the same dataset, so they share:

- **identity**: ``geoemb:model`` (…/model/1.1) and ``checkpoint_id`` on the root group; a model
  trained on either reads the other, never geotessera's own v1.0 store;
- **no water marker**: a NaN scale is a pixel that was not embedded (fewer than
  ``optical_min_obs`` = 15 clear optical observations), so it is nodata, never water;
- **years_complete** per zone group: the time axis is nine preallocated slots (2017–2025) and an
  unfilled one reads back as fill, so a year is read only where the group lists it;
- **per-pixel observation counts** (``s2_obs_count``): ``min_s2_obs`` masks thin pixels.

Source: dClimate/tessera-embeddings, docs/global-store.md and
context_docs/storage/reading-the-published-store.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lczscale.errors import NoDataError, SourceError

FILL_YEARS = tuple(range(2017, 2026))  # the store's preallocated time slots
SCALE_NODATA_MEANING = "nodata"  # NaN scale = not embedded; the store has no water marker


def dataset_of(attrs: dict[str, Any], url: str) -> str:
    """``tessera/<model version>/dclimate/<checkpoint>`` from the root attributes; the same for
    the Icechunk store and its plain copy (one feature space), never for geotessera's v1.0."""
    model = str(attrs.get("geoemb:model", ""))
    checkpoint = attrs.get("checkpoint_id")
    if not model or checkpoint is None:
        raise SourceError(
            f"{url}: root attributes lack 'geoemb:model' or 'checkpoint_id', which identify "
            "the dClimate TESSERA build (and so which models may read it); point --source at "
            "the store's root, not at one zone group"
        )
    version = model.rstrip("/").rsplit("/", 1)[-1]
    return f"tessera/{version}/dclimate/{checkpoint}"


def years_complete(attrs: dict[str, Any], where: str) -> list[int]:
    """The years a zone group holds (its ``years_complete``); a SourceError when it is absent,
    because without it a filled year cannot be told from a preallocated slot of fill."""
    years = attrs.get("years_complete")
    if not isinstance(years, list | tuple) or not all(
        isinstance(y, int | np.integer) for y in years
    ):
        raise SourceError(
            f"{where} has no valid 'years_complete' attribute (found {years!r}): in the dClimate "
            "TESSERA store it says which of the preallocated years hold data, and an unfilled "
            "year reads back as fill; repair the store's metadata or use another copy"
        )
    return sorted(int(y) for y in years)


def check_year(group: str, year: int, complete: list[int], url: str) -> None:
    """Refuse (before anything is written) a year the group does not list as complete."""
    if year not in complete:
        raise NoDataError(
            f"{url}: zone {group} has no complete year {year} (years_complete: "
            f"{complete or 'none'}); an unfilled year would read back as fill — choose --year "
            "from those years, or leave that zone out of the AOI"
        )


def thin_pixels(s2_obs: np.ndarray, min_s2_obs: int | None) -> np.ndarray | None:
    """Pixels with fewer optical observations than ``min_s2_obs`` (None: no threshold)."""
    if min_s2_obs is None:
        return None
    return np.asarray(s2_obs) < min_s2_obs
