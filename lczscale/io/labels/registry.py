"""``open_labels``: any LCZ label file → a ``LabelSource`` (kind detected from its first bytes).

One entry point, so training, evaluation and the CLI never care whether labels come as the
global 100 m COG, an LCZ Generator GeoTIFF, a So2Sat HDF5 pair, GeoClimate GeoJSON or LCZ
Generator KML/KMZ training areas or an lczscale cube (a fine truth) — local, ``s3://`` or
``https://`` alike.

The kind comes from the content, not the name (a GeoJSON saved as ``.json`` or a COG without
extension still opens): HDF5 with a ``label`` or ``tfw`` dataset → So2Sat; TIFF magic or
``<VRTDataset`` → raster; zip → KMZ; ``<kml`` → KML; ``{`` → GeoJSON; anything else (netCDF,
an HDF5 without So2Sat's datasets, …) is offered to GDAL as a raster. A directory or store
that is not a file but holds a ``zarr.json`` is a Zarr store, read as an lczscale cube
(``cube``; any other Zarr store is refused there with the reason). ``kind=`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import h5py

from lczscale.errors import ConfigError, SourceError
from lczscale.io.labels.cube import CubeLabels
from lczscale.io.labels.protocol import LabelSource, ResamplingName, check_options
from lczscale.io.labels.raster import RasterLabels
from lczscale.io.labels.so2sat import So2SatLabels
from lczscale.io.labels.vector import VectorLabels
from lczscale.io.stores import filesystem

Kind = Literal["raster", "so2sat", "geojson", "kml", "kmz", "cube"]
KINDS: tuple[str, ...] = ("raster", "so2sat", "geojson", "kml", "kmz", "cube")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff(head: bytes) -> Kind:
    """The label-file kind from its first bytes (see the module docstring)."""
    if any(head[o : o + 8] == HDF5_MAGIC for o in (0, 512, 1024)):  # userblocks shift it
        return "so2sat"
    if head[:4] in TIFF_MAGIC:
        return "raster"
    if head.startswith(b"PK\x03\x04"):
        return "kmz"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "geojson"
    if text.startswith(b"<"):
        low = text.lower()
        if b"<vrtdataset" in low:
            return "raster"
        if b"<kml" in low or b"opengis.net/kml" in low or b"earth.google.com/kml" in low:
            return "kml"
    return "raster"


def detect_kind(path: str, storage_options: dict[str, Any] | None = None) -> Kind:
    """``sniff`` on the file's first bytes; an HDF5 file is So2Sat only if it looks like one
    (a ``label`` dataset, or ``tfw`` in a geo file), else GDAL gets it (netCDF LCZ maps).
    A path that is no file but a Zarr store (a ``zarr.json`` inside) is a ``cube``."""
    fs, p = filesystem(path, storage_options)
    try:
        with fs.open(p, "rb") as fh:
            head = fh.read(2048)
            kind = sniff(head)
            if kind == "so2sat":
                fh.seek(0)
                with h5py.File(fh, "r") as f:
                    if "label" not in f and "tfw" not in f:
                        kind = "raster"
    except FileNotFoundError as exc:
        if _is_zarr_store(fs, p):  # an object store "directory" (prefix) holding a Zarr store
            return "cube"
        raise SourceError(f"label file {path} does not exist") from exc
    except IsADirectoryError as exc:
        if _is_zarr_store(fs, p):
            return "cube"
        raise SourceError(
            f"label path {path} is a directory, not a label file (nor a Zarr store: no "
            "zarr.json in it)"
        ) from exc
    except OSError as exc:
        raise SourceError(f"cannot read label file {path}: {exc}") from exc
    return kind


def _is_zarr_store(fs: Any, path: str) -> bool:
    try:
        return bool(fs.exists(path.rstrip("/") + "/zarr.json"))
    except OSError:
        return False


def open_labels(
    path_or_url: str | Path,
    *,
    kind: Kind | None = None,
    band: int | None = None,
    attribute: str | None = None,
    geo: str | None = None,
    resampling: ResamplingName = "auto",
    year: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> LabelSource:
    """Open an LCZ label file of any supported kind.

    ``band``: raster band holding the classes (default: the only band, else the one named
    ``lczFilter`` / ``LCZ_Filter``, else ``lcz``). ``attribute``: the polygon property or KML
    ExtendedData name holding the class (default: auto-detected). ``geo``: So2Sat geolocation
    file (default: ``<name>_geo.h5`` beside the image file). ``resampling``: raster warp,
    ``auto`` = nearest unless the source is much finer than the zone grid (then mode).
    ``year``: the year of an lczscale cube to read (default: each zone's latest).
    """
    path = str(path_or_url)
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown label kind {kind!r}; use one of {list(KINDS)}")
    found = kind or detect_kind(path, storage_options)
    opts = {"band": band, "attribute": attribute, "geo": geo,
            "resampling": None if resampling == "auto" else resampling, "year": year}
    if found == "raster":
        check_options(found, opts, {"band", "resampling"})
        return RasterLabels(path, band, storage_options, resampling)
    if found == "cube":
        check_options(found, opts, {"year"})
        return CubeLabels(path, year, storage_options)
    if found == "so2sat":
        check_options(found, opts, {"geo"})
        return So2SatLabels(path, geo, storage_options)
    check_options(found, opts, {"attribute"})
    return VectorLabels(path, found, attribute, storage_options)
