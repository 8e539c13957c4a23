"""``lczscale stac``: a STAC Collection and Items that describe an LCZ cube.

One Item per zone and year: its geometry is the data's footprint (not the whole UTM zone), its
``lcz`` asset is the zone's Zarr array with the projection extension (``proj:code``,
``proj:shape``, ``proj:transform``, ``proj:bbox`` of the array's grid, so a reader can index it)
and the classification extension (17 LCZ classes with machine names, titles, descriptions and
the global LCZ map's colours as ``color_hint``). Provenance (model hash, input dataset, code
version) goes in the processing extension's fields and ``lczscale:*`` properties. Time is the
year of the input embeddings: ``start_datetime``/``end_datetime`` span it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

from lczscale import classes
from lczscale.core.grid import Window, Zone
from lczscale.errors import NoDataError
from lczscale.io.cube import ledger
from lczscale.io.cube.pyramid import data_sources, data_window, pyramid_levels
from lczscale.io.cube.store import cube_attrs, cube_zones, open_root, zone_group
from lczscale.io.stores import is_remote, local_path
from lczscale.version import __version__

ZARR = "application/vnd.zarr; version=3"
PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"

# One line per class, after Stewart & Oke (2012), Table 2.
DESCRIPTIONS = [
    "Dense mix of tall buildings (tens of storeys); few or no trees; mostly paved.",
    "Dense mix of midrise buildings (3-9 storeys); few or no trees; mostly paved.",
    "Dense mix of low-rise buildings (1-3 storeys); few or no trees; mostly paved.",
    "Open arrangement of tall buildings; abundant pervious cover (low plants, trees).",
    "Open arrangement of midrise buildings; abundant pervious cover.",
    "Open arrangement of low-rise buildings; abundant pervious cover.",
    "Dense mix of single-storey buildings of lightweight materials; hard-packed ground.",
    "Open arrangement of large low-rise buildings; few or no trees; mostly paved.",
    "Sparse arrangement of small or medium buildings in a natural setting.",
    "Low- and midrise industrial structures; few or no trees; mostly paved or hard-packed.",
    "Heavily wooded landscape of deciduous and/or evergreen trees.",
    "Lightly wooded landscape; trees over low plants.",
    "Open arrangement of bushes, shrubs and short woody trees.",
    "Featureless landscape of grass or herbaceous plants or crops; few or no trees.",
    "Featureless rock or paved cover; few or no trees or plants.",
    "Featureless soil or sand cover; few or no trees or plants.",
    "Large open water bodies (seas, lakes) or small ones (rivers, reservoirs, lagoons).",
]


def class_list() -> list[Classification]:
    """The 17 classes for ``classification:classes`` (name is machine-readable, as the
    extension requires; the human name is the title)."""
    return [
        Classification.create(
            value=code,
            name=_machine(name),
            title=f"LCZ {label}: {name}",
            description=DESCRIPTIONS[code - 1],
            color_hint=colour.lstrip("#").upper(),
        )
        for code, label, name, colour in zip(classes.LCZ_CODES, classes.LCZ_LABELS,
                                             classes.LCZ_CLASS_NAMES, classes.LCZ_PALETTE,
                                             strict=True)
    ]


def _machine(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).replace("__", "_").strip("_")


def write_stac(cube: str, out: str | Path, collection_id: str = "lczscale-lcz",
               href: str | None = None) -> dict[str, Any]:
    """Write ``collection.json`` and one Item per zone and year under ``out``."""
    attrs = cube_attrs(cube)
    base = (href or (cube if is_remote(cube) else str(local_path(cube).resolve()))).rstrip("/")
    root = open_root(cube, "r", None)
    entries = ledger.read_all(cube)
    items = []
    for zone in cube_zones(cube):
        g = zone_group(root, zone.name, cube)
        years = [int(v) for v in g["time"][:]]  # type: ignore[index, union-attr]
        sources = data_sources(cube, zone, years, entries)
        for t, year in enumerate(years):
            window = data_window(s.window for s in sources.values() if s.t == t)
            if window is not None:
                items.append(_item(zone, year, t, window, base, attrs, pyramid_levels(g)))
    if not items:
        raise NoDataError(f"cube {cube} holds no data yet: run `lczscale map` first")
    collection = pystac.Collection(
        id=collection_id,
        title=str(attrs.get("title", "Local Climate Zones (LCZ)")),
        description=(
            "Local Climate Zones (Stewart & Oke 2012) at 10 m mapped by lczscale from "
            "Earth-observation embeddings; one Zarr v3 cube, one group per UTM zone "
            "(codes 1-17, 0 = nodata). Colours are those of the global LCZ map."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([_union([i.bbox for i in items if i.bbox])]),
            pystac.TemporalExtent([[min(_start(i) for i in items),
                                    max(_end(i) for i in items)]]),
        ),
        license="other",
        keywords=["local climate zones", "LCZ", "urban climate", "land cover"],
        summaries=pystac.Summaries({"proj:code": sorted({str(i.properties["proj:code"])
                                                         for i in items})}),
    )
    collection.add_asset("cube", pystac.Asset(base, title="The whole LCZ cube (Zarr v3)",
                                              media_type=ZARR, roles=["data"]))
    item_assets = {"lcz": {"title": "LCZ class (uint8, 0 = nodata)", "type": ZARR,
                           "roles": ["data"], "data_type": "uint8", "nodata": 0,
                           "classification:classes": [c.to_dict() for c in class_list()]}}
    collection.extra_fields["item_assets"] = item_assets
    ClassificationExtension.add_to(collection)
    ProjectionExtension.add_to(collection)
    for item in items:
        collection.add_item(item)
    collection.normalize_hrefs(str(Path(out).resolve()))
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return {"collection": str(Path(out) / "collection.json"), "items": [i.id for i in items]}


def _item(zone: Zone, year: int, t: int, window: Window, base: str,
          attrs: dict[str, Any], levels: int) -> pystac.Item:
    box = zone.window_geobox(window).extent
    step = max(window.height, window.width) * abs(zone.transform[0]) / 16
    footprint = box.to_crs("EPSG:4326", resolution=step)  # edges curve in lon/lat
    b = footprint.boundingbox
    prov = attrs.get("lczscale:provenance") or {}
    source = prov.get("source") or {}
    item = pystac.Item(
        id=f"{zone.name}-{year}",
        geometry=footprint.json,
        bbox=[b.left, b.bottom, b.right, b.top],
        datetime=None,
        start_datetime=dt.datetime(year, 1, 1, tzinfo=dt.UTC),
        end_datetime=dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        properties={
            "title": f"LCZ {zone.name} {year}",
            "gsd": abs(zone.transform[0]) if zone.crs != "EPSG:4326" else None,
            "lczscale:zone": zone.name,
            "lczscale:year": year,
            "lczscale:data_window": [window.row, window.col, window.height, window.width],
            "lczscale:model_hash": prov.get("model_hash"),
            "lczscale:provenance_hash": attrs.get("lczscale:provenance_hash"),
            "lczscale:dataset": source.get("dataset"),
            "lczscale:product": attrs.get("lczscale:product"),
            "processing:software": {
                "lczscale": str(prov.get("lczscale_version") or __version__)},
            "processing:lineage": (
                f"attention U-Net (model {str(prov.get('model_hash'))[:12]}) on "
                f"{source.get('dataset') or 'embeddings'} {year}; halo-overlap blending"
                if prov else "written by lczscale without a recorded model run"),
        },
        stac_extensions=[PROCESSING],
    )
    if item.properties["gsd"] is None:
        del item.properties["gsd"]
    item.properties = {k: v for k, v in item.properties.items() if v is not None}
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    a = zone.affine
    zb = zone.geobox.extent.boundingbox
    grid = {"code": zone.crs, "shape": [zone.shape[0], zone.shape[1]],
            "transform": [a.a, a.b, a.c, a.d, a.e, a.f],
            "bbox": [zb.left, zb.bottom, zb.right, zb.top]}
    proj.apply(**grid)  # type: ignore[arg-type]
    lcz = pystac.Asset(
        f"{base}/{zone.name}/lcz", title="LCZ class (uint8, 0 = nodata)", media_type=ZARR,
        roles=["data"],
        description=(f"Zarr array (time, y, x); year {year} is time index {t}. Open with "
                     f"xarray.open_zarr(cube, group='{zone.name}')."),
        extra_fields={"data_type": "uint8", "nodata": 0, "lczscale:time_index": t},
    )
    item.add_asset("lcz", lcz)
    ProjectionExtension.ext(lcz).apply(**grid)  # type: ignore[arg-type]
    ClassificationExtension.ext(lcz, add_if_missing=True).apply(classes=class_list())
    item.add_asset("zone", pystac.Asset(
        f"{base}/{zone.name}", title=f"Zone group {zone.name} (lcz, confidence, coordinates)",
        media_type=ZARR, roles=["data"]))
    if levels:
        item.properties["lczscale:overview_levels"] = levels
    return item


def _union(boxes: list[list[float]]) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _start(item: pystac.Item) -> dt.datetime:
    return pystac.utils.str_to_datetime(item.properties["start_datetime"])


def _end(item: pystac.Item) -> dt.datetime:
    return pystac.utils.str_to_datetime(item.properties["end_datetime"])
