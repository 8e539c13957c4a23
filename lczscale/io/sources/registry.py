"""Open an embedding source from a URL, recognising its layout from its own files.

Every layout is one class implementing
:class:`~lczscale.io.sources.protocol.EmbeddingSource` with two
class methods:

- ``detect(url, storage_options) -> str | None``: a cheap look at marker files (root
  ``zarr.json`` attributes, ``tessera_metadata.json``, ``aef_index.parquet`` …) returning a
  one-line description of what was found, or None when the URL is not of that layout;
- ``open(url, storage_options) -> source``: the source, validated now (a clear SourceError
  for a malformed store, before any work is planned).

``open_source(url)`` tries the layouts in a fixed order and logs what it found; ``kind=`` skips
detection (``--source-kind`` on the command line).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol, cast

from lczscale.errors import SourceError
from lczscale.io.retry import retry_io
from lczscale.io.sources.protocol import EmbeddingSource
from lczscale.io.sources.tessera_zarr import NAN_SETTING, nan_scale_meaning
from lczscale.io.stores import exists, root_attributes

log = logging.getLogger(__name__)

# layout → (module, class), in detection order: the dClimate v1.1 store (Icechunk, then its
# plain Zarr copy, whose NaN scale is "not embedded") before geotessera's own Zarr store (NaN =
# water), the Zarr layouts by their root attributes before the generic convention they
# specialise, then the file-tree layouts.
LAYOUTS: dict[str, tuple[str, str]] = {
    "tessera-icechunk": ("lczscale.io.sources.tessera_icechunk", "TesseraIcechunkSource"),
    "tessera-dclimate-zarr": (
        "lczscale.io.sources.tessera_dclimate_zarr", "TesseraDclimateZarrSource"
    ),
    "tessera-zarr": ("lczscale.io.sources.tessera_zarr", "TesseraZarrSource"),
    "aef-mosaic": ("lczscale.io.sources.aef_mosaic", "AefMosaicSource"),
    "geoemb-zarr": ("lczscale.io.sources.geoemb_zarr", "GeoembZarrSource"),
    "tessera-tiles": ("lczscale.io.sources.tessera_tiles", "TesseraTilesSource"),
    "aef-cogs": ("lczscale.io.sources.aef_cogs", "AefCogSource"),
}


class SourceClass(Protocol):
    """The class side of a source: how ``open_source`` detects a layout and opens it."""
    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None) -> str | None:
        """What the store at ``url`` is, in one line, when it has this layout; else None."""
        ...

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None) -> EmbeddingSource:
        """The source at ``url``, validated now: a bad store fails before any work is planned."""
        ...


def source_class(layout: str) -> SourceClass:
    """The class that reads ``layout``."""
    if layout not in LAYOUTS:
        raise SourceError(
            f"unknown source kind {layout!r}; known kinds: auto, {', '.join(LAYOUTS)}"
        )
    module, name = LAYOUTS[layout]
    return cast(SourceClass, getattr(importlib.import_module(module), name))


def detect_layout(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, str]:
    """(layout, what was found) for ``url``; SourceError naming what was looked for."""
    attrs = root_attributes(url, storage_options)
    quant = attrs.get("geoemb:quantization")
    if isinstance(quant, dict) and quant.get("method") == "per_pixel_scale" and (
            nan_scale_meaning(attrs) is None):
        raise SourceError(
            f"{url} is a per-pixel-scale embedding store that does not say what a NaN scale "
            f"means (geoemb:quantization.scale.nodata: "
            f"{(quant.get('scale') or {}).get('nodata')!r}); {NAN_SETTING}"
        )
    for layout in LAYOUTS:
        found = source_class(layout).detect(url, storage_options)
        if found:
            return layout, found
    raise SourceError(
        f"{url} is not an embedding source lczscale recognises: looked for the dClimate "
        "TESSERA v1.1 store (an Icechunk repository, or its plain Zarr copy), a TESSERA Zarr "
        "store (zarr.json with geoemb: attributes and utmNN groups), the AlphaEarth global "
        "mosaic (zarr.json with an int8 (time, band, y, x) 'embeddings' array in EPSG:4326), a "
        "geoemb: Zarr store, TESSERA NPY tiles (tessera_metadata.json, manifest.parquet or "
        "global_0.1_degree_representation/) and AlphaEarth COGs (aef_index.parquet or "
        "aef_index_stac_geoparquet.parquet); pass --source-kind to say which it is"
    )


def open_source(
    url: str, kind: str = "auto", storage_options: dict[str, Any] | None = None,
    min_s2_obs: int | None = None,
) -> EmbeddingSource:
    """An embedding source for ``url``; ``kind='auto'`` detects the layout from its files.

    ``min_s2_obs`` masks pixels with fewer optical observations as nodata; only layouts that
    carry per-pixel counts (the dClimate v1.1 store and its copy) accept it.
    """
    if not retry_io(lambda: exists(url, storage_options), f"checking {url}"):
        raise SourceError(f"embedding source {url} does not exist; check the path or URL")
    if kind in ("auto", ""):
        kind, found = detect_layout(url, storage_options)
        log.info("%s: %s", url, found)
    source = source_class(kind).open(url, storage_options)
    if min_s2_obs is not None:
        if not hasattr(source, "min_s2_obs"):
            raise SourceError(
                f"min_s2_obs needs per-pixel optical observation counts, which layout {kind} "
                "does not carry (tessera-icechunk and tessera-dclimate-zarr do); unset min_s2_obs"
            )
        source.min_s2_obs = min_s2_obs
    return source
