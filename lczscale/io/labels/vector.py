"""Training-area polygons as a label source: GeoJSON (any CRS) and KML / KMZ (LCZ Generator).

- GeoJSON: a FeatureCollection (or one Feature) in the CRS named by its ``crs`` member (as
  GeoClimate writes ``urn:ogc:def:crs:EPSG::32756``), else EPSG:4326 lon/lat (RFC 7946).
- KML / KMZ: LCZ Generator / WUDAPT training areas, Placemarks with Polygons inside Folders named
  by their class ("1" … "10", "A" … "G", "LCZ 2", "A: Dense trees", or a class name), or with
  the class in ``ExtendedData`` (``Data`` / ``SimpleData``). If both are there they must agree.
  Parsed with ``xml.etree``; entity declarations are refused (no billion-laughs), and a KMZ's
  KML must unpack to under ``MAX_KML_BYTES``.

The class attribute is auto-detected (``lcz``, ``LCZ``, ``lcz_primary``, ``class`` … see
``ATTRIBUTE_NAMES``; ``LCZ_SECONDARY`` is never taken) or named with ``attribute=``. A feature
without it is an error, a null value is "unclassified" (counted in ``describe``), and a value in
no encoding is an error naming the file and the values. Only polygonal geometries are burnt
(with pixel-centre inclusion; overlaps of different classes → 0, see ``protocol``); others
are counted as skipped.
"""

from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from collections import Counter
from typing import Any, Literal, override
from xml.etree import ElementTree

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import shape as to_shape

from lczscale.core.grid import Window, Zone
from lczscale.errors import SourceError
from lczscale.io.labels.encoding import class_value, vector_encoding
from lczscale.io.labels.protocol import I32, U8, LabelSource, burn, burn_units
from lczscale.io.stores import filesystem

# Normalised (lower case, letters only) property names taken as the class, in this order.
ATTRIBUTE_NAMES = (
    "lcz", "lczprimary", "lczclass", "lczcode", "lczfilter", "lcztype", "lczvalue",
    "class", "classe", "classid", "classcode", "code", "label",
)
NOT_CLASS = ("secondary", "uniqueness", "equality", "probability", "distance", "frequency")
MAX_KML_BYTES = 256 << 20

VectorKind = Literal["geojson", "kml", "kmz"]


def _norm(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


def pick_attribute(keys: set[str]) -> str | None:
    """The class attribute among property names (None when there is no candidate).

    Exact names first (``ATTRIBUTE_NAMES`` order); else the one name containing ``lcz`` that is
    not a secondary class or a score. Several such names → ``SourceError``-worthy ambiguity,
    reported by returning the sentinel ``"?"``.
    """
    by_norm = {_norm(k): k for k in sorted(keys)}
    for want in ATTRIBUTE_NAMES:
        if want in by_norm:
            return by_norm[want]
    loose = [k for n, k in by_norm.items() if "lcz" in n and not any(x in n for x in NOT_CLASS)]
    if len(loose) == 1:
        return loose[0]
    return "?" if loose else None


@functools.cache
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _polygonal(g: shapely.Geometry) -> shapely.Geometry | None:
    if isinstance(g, shapely.Polygon | shapely.MultiPolygon):
        return None if g.is_empty else g
    if isinstance(g, shapely.GeometryCollection):
        parts = [p for p in shapely.get_parts(g) if isinstance(p, shapely.Polygon)]
        return shapely.MultiPolygon(parts) if parts else None
    return None


class VectorLabels(LabelSource):
    """Labels from LCZ polygons (GeoJSON, KML, KMZ), their class attribute found by name."""
    def __init__(
        self,
        path: str,
        kind: VectorKind,
        attribute: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.kind, self.attribute = path, kind, attribute
        fs, p = filesystem(path, storage_options)
        try:
            data = fs.cat_file(p)
        except (FileNotFoundError, OSError) as exc:
            raise SourceError(f"cannot read label file {path}: {exc}") from exc
        if kind == "geojson":
            feats, self.crs, self.class_from = self._geojson(data)
        else:
            feats, self.class_from = self._kml(_kml_bytes(data, path) if kind == "kmz" else data)
            self.crs = "EPSG:4326"
        geoms, codes, conventions = [], [], set()
        bad: Counter[str] = Counter()
        self.skipped = self.unclassified = 0
        for g, value in feats:
            try:
                got = class_value(value)
            except ValueError:
                bad[repr(value)] += 1
                continue
            poly = None if g is None else _polygonal(g)
            if got is None or poly is None:
                self.unclassified += got is None
                self.skipped += got is not None
                continue
            geoms.append(poly)
            codes.append(got[0])
            if got[1]:
                conventions.add(got[1])
        if bad:
            shown = ", ".join(f"{v} ({n} features)" for v, n in sorted(bad.items())[:10])
            raise SourceError(
                f"label file {path}: class values {shown} ({self.class_from}) are in no known "
                "LCZ encoding (1–17, GeoClimate 101–107, A–G / 'LCZ 2' labels, class names)"
            )
        self.encoding = vector_encoding(conventions, f"label file {path}")
        self.geoms = np.array(geoms, dtype=object)
        self.codes = np.array(codes, dtype=np.uint8)
        if len(geoms):
            b = shapely.total_bounds(self.geoms)
            self.bounds = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        else:
            self.bounds = (0.0, 0.0, 0.0, 0.0)
        self._indexes: dict[str, tuple[shapely.STRtree, np.ndarray]] = {}

    # -- GeoJSON --------------------------------------------------------------------------------

    def _geojson(self, data: bytes) -> tuple[list[tuple[Any, Any]], str, str]:
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(f"label file {self.path} is not valid GeoJSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
            raise SourceError(
                f"label file {self.path}: expected a GeoJSON FeatureCollection or Feature with "
                "an LCZ class property, got type "
                f"{doc.get('type') if isinstance(doc, dict) else type(doc).__name__!r}"
            )
        features = doc["features"] if doc["type"] == "FeatureCollection" else [doc]
        crs = _geojson_crs(doc.get("crs"), self.path)
        props = [f.get("properties") or {} for f in features]
        keys = set().union(*(p.keys() for p in props)) if props else set()
        attr = self.attribute or pick_attribute(keys)
        if attr is None or attr == "?":
            raise SourceError(
                f"label file {self.path}: no property holds the LCZ class "
                f"({'several candidates' if attr == '?' else 'none found'} among "
                f"{sorted(keys)}); name it with attribute=NAME"
            )
        out = []
        for i, (f, p) in enumerate(zip(features, props, strict=True)):
            if attr not in p:
                raise SourceError(
                    f"label file {self.path}: feature {i} (id {f.get('id', p.get('id'))!r}) has "
                    f"no {attr!r} property (it has {sorted(p)}); every polygon needs its class"
                )
            geom = f.get("geometry")
            out.append((to_shape(geom) if geom else None, p[attr]))
        return out, crs, f"property {attr!r}"

    # -- KML --------------------------------------------------------------------------------

    def _kml(self, data: bytes) -> tuple[list[tuple[Any, Any]], str]:
        if b"<!ENTITY" in data:
            raise SourceError(f"label file {self.path}: KML with entity declarations is refused")
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            raise SourceError(f"label file {self.path} is not valid KML: {exc}") from exc
        out: list[tuple[Any, Any]] = []
        sources: set[str] = set()
        self._walk(root, None, out, sources)
        return out, " and ".join(sorted(sources)) or "no placemarks"

    def _walk(
        self, el: ElementTree.Element, folder: tuple[str, int] | None,
        out: list[tuple[Any, Any]], sources: set[str],
    ) -> None:
        for c in el:
            tag = _local(c.tag)
            if tag == "Folder":
                name = _text(_child(c, "name"))
                inner = folder
                try:
                    got = class_value(name) if name else None
                    inner = (name, got[0]) if got else folder
                except ValueError:
                    pass  # a folder that is not named by a class ("Training areas")
                self._walk(c, inner, out, sources)
            elif tag == "Placemark":
                out.append(self._placemark(c, folder, sources))
            elif tag in ("Document", "kml"):
                self._walk(c, folder, out, sources)

    def _placemark(
        self, pm: ElementTree.Element, folder: tuple[str, int] | None, sources: set[str]
    ) -> tuple[Any, Any]:
        name = _text(_child(pm, "name")) or "(unnamed)"
        data = _extended_data(pm)
        attr = self.attribute or pick_attribute(set(data))
        if self.attribute and self.attribute not in data:
            raise SourceError(
                f"label file {self.path}: placemark {name!r} has no ExtendedData "
                f"{self.attribute!r} (it has {sorted(data)})"
            )
        value: Any = data.get(attr) if attr and attr != "?" else None
        if value is not None and folder is not None and not self.attribute:
            try:
                got = class_value(value)
            except ValueError:
                got = None  # reported with the other unknown values
            if got is not None and got[0] != folder[1]:
                raise SourceError(
                    f"label file {self.path}: placemark {name!r} is in folder {folder[0]!r} "
                    f"but its {attr!r} says {value!r}; fix one of them"
                )
        if value is not None:
            sources.add(f"ExtendedData {attr!r}")
        elif folder is not None:
            value = folder[0]
            sources.add("folder names")
        else:
            raise SourceError(
                f"label file {self.path}: placemark {name!r} has no LCZ class: put it in a "
                "folder named by its class ('2', 'LCZ 2', 'A') or give it ExtendedData 'LCZ'"
            )
        try:
            polys = [_kml_polygon(p) for p in pm.iter() if _local(p.tag) == "Polygon"]
        except (ValueError, IndexError) as exc:
            raise SourceError(
                f"label file {self.path}: placemark {name!r} has unreadable coordinates ({exc})"
            ) from exc
        polys = [p for p in polys if p is not None]
        geom = None if not polys else polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
        return geom, value

    # -- reading ----------------------------------------------------------------------------

    def _index(self, crs: str) -> tuple[shapely.STRtree, np.ndarray]:
        if crs not in self._indexes:
            geoms = self.geoms
            if crs != self.crs and len(geoms):
                tr = _transformer(self.crs, crs)
                geoms = shapely.transform(
                    geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))
                )
            self._indexes[crs] = (shapely.STRtree(geoms), geoms)
        return self._indexes[crs]

    def _hits(self, zone: Zone, window: Window) -> tuple[np.ndarray, np.ndarray]:
        tree, geoms = self._index(zone.crs)
        hits = np.sort(tree.query(shapely.box(*zone.window_geobox(window).extent.boundingbox)))
        return hits, geoms[hits]

    @override
    def read(self, zone: Zone, window: Window) -> U8:
        hits, geoms = self._hits(zone, window)
        return burn(zip(geoms, self.codes[hits].tolist(), strict=True), zone, window)

    @override
    def units(self, zone: Zone, window: Window) -> I32:
        """The polygon (its 1-based position in the file) of each pixel."""
        hits, geoms = self._hits(zone, window)
        return burn_units(zip(geoms, (hits + 1).tolist(), strict=True), zone, window)

    @override
    def details(self) -> dict[str, Any]:
        counts = np.bincount(self.codes, minlength=18)
        return {
            "class_from": self.class_from, "polygons": int(self.codes.size),
            "unclassified": self.unclassified, "skipped_not_polygonal": self.skipped,
            "classes": {int(c): int(counts[c]) for c in np.flatnonzero(counts)},
        }


def _geojson_crs(member: Any, path: str) -> str:
    if member is None:
        return "EPSG:4326"
    try:
        props = member.get("properties", {})
        name = props.get("name") or (f"EPSG:{props['code']}" if "code" in props else None)
        crs = CRS.from_user_input(name)
    except Exception as exc:
        raise SourceError(f"label file {path}: cannot understand its crs member {member}") from exc
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _kml_bytes(data: bytes, path: str) -> bytes:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise SourceError(f"label file {path} is not a valid KMZ (zip) file: {exc}") from exc
    kmls = [i for i in zf.infolist() if i.filename.lower().endswith(".kml")]
    if not kmls:
        raise SourceError(f"KMZ {path} holds no .kml file ({zf.namelist()[:10]})")
    info = next((i for i in kmls if i.filename.lower() == "doc.kml"), kmls[0])
    if info.file_size > MAX_KML_BYTES:
        raise SourceError(
            f"KMZ {path}: {info.filename} unpacks to {info.file_size} bytes, more than the "
            f"{MAX_KML_BYTES} allowed"
        )
    with zf.open(info) as fh:
        return fh.read(MAX_KML_BYTES + 1)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _text(el: ElementTree.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _extended_data(pm: ElementTree.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    ext = _child(pm, "ExtendedData")
    if ext is None:
        return out
    for el in ext.iter():
        tag = _local(el.tag)
        if tag == "Data" and el.get("name"):
            out[el.get("name", "")] = _text(_child(el, "value"))
        elif tag == "SimpleData" and el.get("name"):
            out[el.get("name", "")] = _text(el)
    return out


def _ring(el: ElementTree.Element | None) -> list[tuple[float, float]]:
    coords = None if el is None else next(
        (c for c in el.iter() if _local(c.tag) == "coordinates"), None
    )
    pts = []
    for tok in _text(coords).split():
        parts = tok.split(",")
        pts.append((float(parts[0]), float(parts[1])))
    return pts


def _kml_polygon(el: ElementTree.Element) -> shapely.Polygon | None:
    outer = _ring(_child(el, "outerBoundaryIs"))
    if len(outer) < 3:
        return None
    inners = [_ring(c) for c in el if _local(c.tag) == "innerBoundaryIs"]
    return shapely.Polygon(outer, [r for r in inners if len(r) >= 3])
