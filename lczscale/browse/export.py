"""Cut a region out of the cube into the files other tools read: a cloud-optimised GeoTIFF
(COG), a plain tiled GeoTIFF, or CF NetCDF.

GeoTIFFs hold one year of one ``product`` as uint8: ``lcz`` (default) and ``lcz_100m`` with
nodata 0 and the official LCZ colour table embedded, so QGIS/GDAL show the familiar colours with
no style file; ``confidence`` (p × 255, nodata 0); ``probability`` and ``lcz_fraction_100m``
as 17 bands named "LCZ 1" … "LCZ G" (p × 255, and shares in 1/255; no nodata value, since 0 is
a real share: a pixel whose bands are all 0 has no class). The class names are tags. Written
in blocks to a tiled GeoTIFF first, then (COG) copied by GDAL's COG driver, which adds overviews
made with *mode* resampling for class maps (averaging class codes would invent classes) and
*average* for the others, and lays out the IFDs and tiles as the COG spec asks. NetCDF holds
``lcz`` and ``confidence`` with a CF grid mapping (``spatial_ref``: ``crs_wkt`` +
``GeoTransform``) that xarray, GDAL and CDO read.

Without ``crs`` the export stays on its zone's native grid (transform = the zone's affine
offset by the bbox window, values exactly the cube's; the 100 m products on the zone's 100 m
lattice); with ``crs`` it is the stitched, warped view of ``open_cube(..., crs=...)``. With
``grid="global-lcz-map"`` the 100 m products are made from the 10 m map on the global LCZ map's
own pixel lattice (``lczscale.browse.global_grid``), across zones, for a pixel-by-pixel
comparison with that map (``lcz_100m`` there: the majority, without the mode filter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from affine import Affine
from pyproj import CRS

from lczscale import classes
from lczscale.browse.global_grid import (
    GRID_NAME,
    PIXEL_DEG,
    CubeCells,
    cells_of_bbox,
    fraction_cells,
    majority_cells,
)
from lczscale.config import MapConfig
from lczscale.core.grid import Zone
from lczscale.errors import ConfigError, CubeError
from lczscale.io.cube.dataset import open_cube
from lczscale.io.cube.outputs import FACTOR
from lczscale.io.cube.warp import georeferenced, grid_free_attrs
from lczscale.io.out_path import check_writable_out

FORMATS = ("cog", "geotiff", "netcdf")
Format = Literal["cog", "geotiff", "netcdf"]
PRODUCTS = ("lcz", "confidence", "probability", "lcz_fraction_100m", "lcz_100m")
CLASS_PRODUCTS = ("lcz", "lcz_100m")  # class maps: colour table, flag tags, mode overviews
MULTIBAND = ("probability", "lcz_fraction_100m")  # one band per class, 0 a real value
CELL_PRODUCTS = ("lcz_fraction_100m", "lcz_100m")  # 100 m: the zone's cells or the global grid
STRIP_ROWS = 2048
STRIP_BYTES = 1 << 26  # bytes of one strip read (17-band products get fewer rows)


def colour_table() -> dict[int, tuple[int, int, int, int]]:
    """Code → RGBA of the official palette; 0 (nodata) transparent."""
    table = {0: (0, 0, 0, 0)}
    table.update({c: (*rgb, 255) for c, rgb in zip(classes.LCZ_CODES, classes.palette_rgb(),
                                                   strict=True)})
    return table


@dataclass(frozen=True)
class Raster:
    """What a GeoTIFF export writes: its grid, its product and a generator of (row, col,
    (bands, h, w) uint8) blocks, so that no export holds the whole region."""

    crs_wkt: str
    transform: Affine
    shape: tuple[int, int]
    product: str
    year: int
    blocks: Callable[[], Iterator[tuple[int, int, np.ndarray]]]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Bands: one per class for the class-share products, else one."""
        return len(classes.LCZ_CODES) if self.product in MULTIBAND else 1

    @property
    def nodata(self) -> int | None:
        """0 where it means "no class"; None where 0 is a real share."""
        return None if self.product in MULTIBAND else 0


def export(
    url: str,
    bbox: tuple[float, float, float, float],
    out: str | Path,
    fmt: Format = "cog",
    *,
    product: str = "lcz",
    grid: str | None = None,
    zone: str | None = None,
    year: int | None = None,
    crs: str | None = None,
    resolution: float | None = None,
    resampling: str = "nearest",
    blocksize: int = 512,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Write ``product`` over the lon/lat ``bbox`` of cube ``url`` to ``out`` as ``fmt``;
    returns ``out``.

    ``product``: one of ``PRODUCTS``. ``grid="global-lcz-map"``: the 100 m products on the
    global LCZ map's lattice, covering the bbox snapped outward to it. ``year``: default the
    cube's last year. ``crs``/``resolution``/``resampling``: see ``open_cube`` (needed when
    the bbox spans several zones). ``blocksize``: GeoTIFF tile side.
    """
    import lczscale.browse.accessor  # noqa: F401  (ds.lcz)

    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not one of {FORMATS}")
    if blocksize < 16 or blocksize % 16:
        raise ConfigError(f"blocksize must be a multiple of 16 (GeoTIFF tiles), got {blocksize}")
    check_product(product, grid, fmt, crs=crs, zone=zone,
                  warped=resolution is not None or resampling != "nearest")
    bbox = checked_bbox(bbox)
    path = Path(out)
    if path.exists() and not overwrite:
        raise CubeError(f"{path} exists; remove it or pass overwrite=True (CLI: --overwrite)")
    check_writable_out(path, "export --out", kind="file")
    if grid is not None:
        raster = global_raster(url, bbox, product, year, storage_options)
    else:
        ds = open_cube(url, bbox, zone=zone, year=year, storage_options=storage_options,
                       crs=crs, resolution=resolution, resampling=resampling)
        if ds.sizes.get("time", 0) == 0:
            raise CubeError(f"cube {url} has no year to export; run `lczscale map` first")
        ds = ds.isel(time=[-1])  # one year (year= already selected it when given)
        if fmt == "netcdf":
            path.parent.mkdir(parents=True, exist_ok=True)
            write_netcdf(ds, path, source=url)
            return path
        raster = native_raster(ds, product, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_geotiff(raster, path, cog=(fmt == "cog"), blocksize=blocksize, source=url)
    return path


def check_product(product: str, grid: str | None, fmt: str, *, crs: str | None = None,
                  zone: str | None = None, warped: bool = False) -> None:
    """ConfigError for a product, grid and format that do not go together (before any read)."""
    if product not in PRODUCTS:
        raise ConfigError(f"export product {product!r} is not one of {PRODUCTS}")
    if grid is not None and grid != GRID_NAME:
        raise ConfigError(f"export grid {grid!r} is not {GRID_NAME!r}")
    if fmt == "netcdf" and (product != "lcz" or grid is not None):
        raise ConfigError("NetCDF exports hold lcz and confidence on the cube's grid; write "
                          f"--product {product} / --grid as a GeoTIFF (--format cog or geotiff)")
    if grid is not None:
        if crs is not None or warped:
            raise ConfigError(f"--grid {grid} is its own grid (EPSG:4326, {PIXEL_DEG!r}°): "
                              "drop --crs/--resolution/--resampling")
        if zone is not None:
            raise ConfigError(f"--grid {grid} counts every zone under the bbox (each pixel in "
                              "the zone that owns it): drop --zone")
        if product not in CELL_PRODUCTS:
            raise ConfigError(f"--grid {grid} makes the 100 m products {CELL_PRODUCTS} from the "
                              f"10 m map; {product} stays on the cube's grid (drop --grid)")
    elif crs is not None and product in CELL_PRODUCTS:
        raise ConfigError(f"{product} is exported on the zone's own 100 m grid, or across "
                          f"zones with --grid {GRID_NAME}; never warped: drop --crs")


def _band_names(product: str, year: int) -> list[str]:
    if product in MULTIBAND:
        return [f"LCZ {label}" for label in classes.LCZ_LABELS]
    if product == "confidence":
        return [f"LCZ confidence {year} (probability x 255, 0 = nodata)"]
    what = "Local Climate Zone 100 m" if product == "lcz_100m" else "Local Climate Zone"
    return [f"{what} {year} (1-17, 0 = nodata)"]


def native_raster(ds: xr.Dataset, product: str, source: str) -> Raster:
    """``product`` of the last year of an opened (native or stitched) cube region."""
    lcz = ds.lcz.map()
    box = lcz.odc.geobox
    if box is None or box.crs is None:
        raise CubeError("the region has no CRS/transform to write a GeoTIFF with")
    year = int(ds["time"].values[-1])
    if product == "lcz":
        da = lcz.expand_dims("band")
    elif product in ds:
        da = ds[product].isel(time=-1)
        da = da.transpose("class", ...) if "class" in da.dims else da.expand_dims("band")
    else:
        fix = "map --probabilities" if product == "probability" else "map --fractions"
        have = sorted(map(str, ds.data_vars))
        raise CubeError(f"cube {source} holds no {product} (variables: {have}); make it with "
                        f"`lczscale {fix}`")
    affine = box.affine
    if product in CELL_PRODUCTS:
        affine = _cell_affine(ds, da)
    h, w = da.shape[-2:]

    def blocks() -> Iterator[tuple[int, int, np.ndarray]]:
        rows = max(1, min(STRIP_ROWS, STRIP_BYTES // max(1, da.shape[0] * w)))
        for r0 in range(0, h, rows):
            block = da[:, r0:r0 + rows, :].values
            yield r0, 0, np.asarray(block, dtype=np.uint8)

    return Raster(box.crs.to_wkt(), affine, (h, w), product, year, blocks)


def _cell_affine(ds: xr.Dataset, da: xr.DataArray) -> Affine:
    """The transform of a native 100 m variable: the zone's lattice at 10 × its pixel size."""
    zone = Zone.from_dict(ds.attrs["lczscale:zone"])
    a = zone.affine
    x0, y0 = float(da["x_100m"].values[0]), float(da["y_100m"].values[0])
    col = round((x0 - a.c) / (a.a * FACTOR) - 0.5)
    row = round((y0 - a.f) / (a.e * FACTOR) - 0.5)
    return Affine(a.a * FACTOR, 0.0, a.c + a.a * FACTOR * col, 0.0, a.e * FACTOR,
                  a.f + a.e * FACTOR * row)


def global_raster(url: str, bbox: tuple[float, float, float, float], product: str,
                  year: int | None, storage_options: dict[str, Any] | None = None) -> Raster:
    """A 100 m ``product`` on the global LCZ map's lattice over ``bbox`` (snapped outward),
    made block by block from the 10 m map of every zone under it. ``lcz_100m`` there is the
    plain majority (the map's ``LCZ`` band's counterpart), not the cube's mode-filtered one:
    a filter on a second grid would smooth what the comparison should see."""
    region = cells_of_bbox(bbox)
    cube = CubeCells(url, year, storage_options)
    make = majority_cells if product == "lcz_100m" else fraction_cells

    def blocks() -> Iterator[tuple[int, int, np.ndarray]]:
        for block in region.blocks():
            values = make(cube.counts(block))
            yield block.row - region.row, block.col - region.col, values.reshape(
                -1, block.height, block.width)

    return Raster(CRS.from_epsg(4326).to_wkt(), region.affine, (region.height, region.width),
                  product, cube.year, blocks, {"LCZ_GRID": GRID_NAME,
                                               "LCZ_GRID_PIXEL_DEG": repr(PIXEL_DEG)})


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


def _tags(raster: Raster, source: str) -> dict[str, str]:
    tags = {"LCZ_SOURCE": source, "LCZ_YEAR": str(raster.year), "LCZ_PRODUCT": raster.product}
    if raster.nodata is not None:
        tags["LCZ_NODATA"] = str(raster.nodata)
    tags.update({f"LCZ_CLASS_{c}": f"{lab} {name}" for c, lab, name in zip(
        classes.LCZ_CODES, classes.LCZ_LABELS, classes.LCZ_CLASS_NAMES, strict=True)})
    return tags | raster.tags


def write_geotiff(
    raster: Raster, path: Path, cog: bool = True, blocksize: int = 512, source: str = ""
) -> None:
    """A raster as a tiled uint8 GeoTIFF (class maps with the LCZ colour table); with ``cog``,
    converted by GDAL's COG driver (mode overviews for class maps, average for the others)."""
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS as RioCRS

    h, w = raster.shape
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif") if cog else path
    profile: dict[str, Any] = {
        "driver": "GTiff", "dtype": "uint8", "count": raster.count, "height": h, "width": w,
        "crs": RioCRS.from_wkt(raster.crs_wkt), "transform": raster.transform,
        "nodata": raster.nodata, "tiled": True, "blockxsize": blocksize,
        "blockysize": blocksize, "compress": "deflate", "interleave": "band",
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0, c0, block in raster.blocks():
                _, bh, bw = block.shape
                dst.write(block, window=((r0, r0 + bh), (c0, c0 + bw)))
            for band, text in enumerate(_band_names(raster.product, raster.year), start=1):
                dst.set_band_description(band, text)
            dst.update_tags(**_tags(raster, source))
            if raster.product in CLASS_PRODUCTS:
                dst.write_colormap(1, colour_table())
                dst.update_tags(1, flag_values=" ".join(map(str, classes.LCZ_CODES)),
                                flag_meanings=" ".join(classes.LCZ_LABELS))
        if cog:
            rasterio.shutil.copy(
                tmp, path, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                OVERVIEW_RESAMPLING="MODE" if raster.product in CLASS_PRODUCTS else "AVERAGE",
                OVERVIEWS="AUTO", BIGTIFF="IF_SAFER",
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
