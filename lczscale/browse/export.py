"""Cut a region out of the cube into the files other tools read: a cloud-optimised GeoTIFF
(COG), a plain tiled GeoTIFF, or CF NetCDF.

GeoTIFFs hold one year's ``lcz`` as uint8 with nodata 0 and the official LCZ colour table
embedded, so QGIS/GDAL show the familiar colours with no style file; the class names are tags.
Written in row strips to a tiled GeoTIFF first, then (COG) copied by GDAL's COG driver, which
adds overviews made with *mode* resampling (averaging class codes would invent classes) and
lays out the IFDs and tiles as the COG spec asks. NetCDF holds ``lcz`` and ``confidence``
with a CF grid mapping (``spatial_ref``: ``crs_wkt`` + ``GeoTransform``) that xarray, GDAL and
CDO read.

Without ``crs`` the export stays on its zone's native grid (transform = the zone's affine
offset by the bbox window, values exactly the cube's); with ``crs`` it is the stitched,
warped view of ``open_cube(..., crs=...)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from pyproj import CRS

from lczscale import classes
from lczscale.config import MapConfig
from lczscale.errors import ConfigError, CubeError
from lczscale.io.cube.dataset import open_cube
from lczscale.io.cube.warp import georeferenced, grid_free_attrs
from lczscale.io.out_path import check_writable_out

FORMATS = ("cog", "geotiff", "netcdf")
Format = Literal["cog", "geotiff", "netcdf"]
STRIP_ROWS = 2048


def colour_table() -> dict[int, tuple[int, int, int, int]]:
    """Code → RGBA of the official palette; 0 (nodata) transparent."""
    table = {0: (0, 0, 0, 0)}
    table.update({c: (*rgb, 255) for c, rgb in zip(classes.LCZ_CODES, classes.palette_rgb(),
                                                   strict=True)})
    return table


def export(
    url: str,
    bbox: tuple[float, float, float, float],
    out: str | Path,
    fmt: Format = "cog",
    *,
    zone: str | None = None,
    year: int | None = None,
    crs: str | None = None,
    resolution: float | None = None,
    resampling: str = "nearest",
    blocksize: int = 512,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Write the lon/lat ``bbox`` of cube ``url`` to ``out`` as ``fmt``; returns ``out``.

    ``year``: default the cube's last year. ``crs``/``resolution``/``resampling``: see
    ``open_cube`` (needed when the bbox spans several zones). ``blocksize``: GeoTIFF tile side.
    """
    import lczscale.browse.accessor  # noqa: F401  (ds.lcz)

    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not one of {FORMATS}")
    if blocksize < 16 or blocksize % 16:
        raise ConfigError(f"blocksize must be a multiple of 16 (GeoTIFF tiles), got {blocksize}")

    bbox = checked_bbox(bbox)
    path = Path(out)
    if path.exists() and not overwrite:
        raise CubeError(f"{path} exists; remove it or pass overwrite=True (CLI: --overwrite)")
    check_writable_out(path, "export --out", kind="file")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = open_cube(url, bbox, zone=zone, year=year, storage_options=storage_options, crs=crs,
                   resolution=resolution, resampling=resampling)
    if ds.sizes.get("time", 0) == 0:
        raise CubeError(f"cube {url} has no year to export; run `lczscale map` first")
    ds = ds.isel(time=[-1])  # one year (year= already selected it when given)
    if fmt == "netcdf":
        write_netcdf(ds, path, source=url)
    else:
        write_geotiff(ds, path, cog=(fmt == "cog"), blocksize=blocksize, source=url)
    return path


def checked_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``bbox`` if ``lczscale map`` would accept it, else the ConfigError map gives: the very
    rule of ``MapConfig.bbox`` (degrees in range, minlat < maxlat, MINLON > MAXLON only for a
    box across the antimeridian narrower than 180°) — never a silently swapped box."""
    try:
        box = tuple(float(v) for v in bbox)
        if len(box) != 4:
            raise ValueError(f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT (four numbers), got {bbox}")
        return MapConfig._bbox(box) or box  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


def _tags(ds: xr.Dataset, source: str) -> dict[str, str]:
    year = int(ds["time"].values[-1])
    tags = {"LCZ_SOURCE": source, "LCZ_YEAR": str(year), "LCZ_NODATA": "0"}
    tags.update({f"LCZ_CLASS_{c}": f"{lab} {name}" for c, lab, name in zip(
        classes.LCZ_CODES, classes.LCZ_LABELS, classes.LCZ_CLASS_NAMES, strict=True)})
    return tags


def write_geotiff(
    ds: xr.Dataset, path: Path, cog: bool = True, blocksize: int = 512, source: str = ""
) -> None:
    """``ds``'s last year of ``lcz`` as a tiled uint8 GeoTIFF with the LCZ colour table; with
    ``cog``, converted by GDAL's COG driver (mode overviews)."""
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS as RioCRS

    da = ds.lcz.map()
    box = da.odc.geobox
    if box is None or box.crs is None:
        raise CubeError("the region has no CRS/transform to write a GeoTIFF with")
    h, w = da.shape
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif") if cog else path
    profile: dict[str, Any] = {
        "driver": "GTiff", "dtype": "uint8", "count": 1, "height": h, "width": w,
        "crs": RioCRS.from_wkt(box.crs.to_wkt()), "transform": box.affine, "nodata": 0,
        "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
        "compress": "deflate", "interleave": "band",
    }
    year = int(ds["time"].values[-1])
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, h, STRIP_ROWS):
                r1 = min(h, r0 + STRIP_ROWS)
                block = np.asarray(da.isel(y=slice(r0, r1)).values, dtype=np.uint8)
                dst.write(block, 1, window=((r0, r1), (0, w)))
            dst.write_colormap(1, colour_table())
            dst.set_band_description(1, f"Local Climate Zone {year} (1-17, 0 = nodata)")
            dst.update_tags(**_tags(ds, source))
            dst.update_tags(1, flag_values=" ".join(map(str, classes.LCZ_CODES)),
                            flag_meanings=" ".join(classes.LCZ_LABELS))
        if cog:
            rasterio.shutil.copy(
                tmp, path, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                OVERVIEW_RESAMPLING="MODE", OVERVIEWS="AUTO", BIGTIFF="IF_SAFER",
            )
    finally:
        if cog and tmp.exists():
            tmp.unlink()


def _netcdf_attr(value: Any) -> Any:
    """NetCDF attributes are numbers, strings or 1-D arrays of them: anything else as JSON."""
    if isinstance(value, str | int | float | np.number):
        return value
    if isinstance(value, list | tuple) and value and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return np.asarray(value)
    return json.dumps(value, default=str)


def write_netcdf(ds: xr.Dataset, path: Path, source: str = "") -> None:
    """``lcz`` and ``confidence`` (time, y, x) as NetCDF4 (h5netcdf engine) with a CF grid
    mapping; uint8 with _FillValue 0, zlib-compressed."""
    ds = georeferenced(ds)
    keep = [n for n in ("lcz", "confidence") if n in ds.data_vars]
    out = ds[keep].copy()  # new Variables (attrs edited below), data still lazy: streamed
    box = out.odc.geobox
    out.attrs = {k: _netcdf_attr(v) for k, v in grid_free_attrs(out.attrs).items()}
    out.attrs.update({"Conventions": "CF-1.8", "title": "Local Climate Zones (LCZ)",
                      "lczscale:exported_from": source})
    if "spatial_ref" in out.coords and box is not None:
        sr = dict(out["spatial_ref"].attrs)
        if box.crs is not None:
            crs = CRS.from_wkt(box.crs.to_wkt())
            sr.update(crs.to_cf())
            sr["crs_wkt"] = sr["spatial_ref"] = crs.to_wkt()
        a = box.affine
        sr["GeoTransform"] = " ".join(repr(v) for v in (a.c, a.a, a.b, a.f, a.d, a.e))
        out["spatial_ref"].attrs = {k: _netcdf_attr(v) for k, v in sr.items()}
    encoding: dict[str, dict[str, Any]] = {}
    for name in keep:
        var = out[name]
        attrs = {k: _netcdf_attr(v) for k, v in var.attrs.items()
                 if k not in ("_CRS", "grid_mapping", "nodata", "_FillValue")}
        if name == "lcz":
            attrs["flag_values"] = np.asarray(classes.LCZ_CODES, dtype=np.uint8)
        var.attrs = attrs
        var.encoding = {}
        encoding[name] = {"zlib": True, "complevel": 4, "_FillValue": np.uint8(0),
                          "dtype": "uint8", "grid_mapping": "spatial_ref"}
    for coord in out.coords.values():
        coord.encoding = {}
        coord.attrs = {k: _netcdf_attr(v) for k, v in coord.attrs.items()}
    out.to_netcdf(path, engine="h5netcdf", encoding=encoding)
