"""Find the embedding files covering an AOI and year through STAC.

Two ways in, one result (a list of :class:`StacAsset`): a STAC API searched with pystac-client
(collection + bbox + the calendar year), or a static stac-geoparquet index — the form
AlphaEarth publishes (``aef_index_stac_geoparquet.parquet``, data asset key ``data``) —
searched with rustac, the reference STAC implementation, which reads the parquet directly.

The assets become an AlphaEarth COG source (``AefCogSource.from_assets``): STAC items of that
collection are not known to carry ``proj:`` metadata, so the COG headers stay authoritative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from lczscale.config.screening import reject_url_secrets
from lczscale.errors import NoDataError, SourceError
from lczscale.io.retry import retry_io

ASSET_KEY = "data"


@dataclass(frozen=True)
class StacAsset:
    """One embedding file found through STAC."""

    item_id: str
    href: str  # absolute URL or path
    year: int
    bbox: tuple[float, float, float, float] | None  # lon/lat
    crs: str | None  # from proj:code / proj:epsg when the item has it


def _year(item: dict[str, Any]) -> int:
    props = item.get("properties") or {}
    stamp = props.get("datetime") or props.get("start_datetime") or ""
    match = re.match(r"(\d{4})", str(stamp))
    if not match:
        raise SourceError(f"STAC item {item.get('id')!r} has no datetime to take the year from")
    return int(match.group(1))


def _crs(props: dict[str, Any]) -> str | None:
    if props.get("proj:code"):
        return str(props["proj:code"])
    if props.get("proj:epsg"):
        return f"EPSG:{int(props['proj:epsg'])}"
    return None


def assets_of(items: list[dict[str, Any]], base: str, asset_key: str = ASSET_KEY
              ) -> list[StacAsset]:
    """The ``asset_key`` asset of each item (hrefs resolved against ``base``)."""
    out = []
    for item in items:
        assets = item.get("assets") or {}
        if asset_key not in assets:
            raise SourceError(
                f"STAC item {item.get('id')!r} has no {asset_key!r} asset (it has "
                f"{sorted(assets)}); AlphaEarth items keep the COG under 'data'"
            )
        href = str(assets[asset_key]["href"])
        if "://" not in href and not href.startswith("/"):
            href = urljoin(base, href)
        # a signed link (SAS, presigned) would travel in every pickled task and the cube
        reject_url_secrets(href, f"the {asset_key!r} asset of STAC item {item.get('id')!r}")
        props = item.get("properties") or {}
        bbox = item.get("bbox")
        out.append(StacAsset(
            item_id=str(item.get("id")), href=href, year=_year(item),
            bbox=tuple(float(v) for v in bbox[:4]) if bbox else None,  # type: ignore[arg-type]
            crs=_crs(props | (assets[asset_key] or {})),
        ))
    return sorted(out, key=lambda a: a.href)


def search_api(
    url: str, collection: str, bbox: tuple[float, float, float, float], year: int
) -> list[StacAsset]:
    """Items of ``collection`` meeting ``bbox`` in ``year``, from a STAC API (pystac-client)."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    def search() -> list[dict[str, Any]]:
        client = Client.open(url)
        found = client.search(collections=[collection], bbox=list(bbox), datetime=str(year))
        return [item.to_dict() for item in found.items()]

    try:
        items = retry_io(search, f"STAC API {url}")
    except APIError as exc:
        raise SourceError(f"STAC API {url} refused the search for collection {collection!r}: "
                          f"{' '.join(str(exc).split())[:300]}") from exc
    if not items:
        raise NoDataError(
            f"STAC API {url} has no items of collection {collection!r} for {year} over "
            f"{tuple(round(v, 4) for v in bbox)}; check the collection id, year and bbox"
        )
    return assets_of(items, url.rstrip("/") + "/")


def search_geoparquet(
    href: str, bbox: tuple[float, float, float, float], year: int
) -> list[StacAsset]:
    """Items of a static stac-geoparquet index meeting ``bbox`` in ``year``.

    rustac reads the file (its ``search`` would fetch DuckDB's spatial extension at run time,
    which offline machines cannot); the bbox and year filter is a plain pass over the items.
    """
    import rustac

    doc = retry_io(lambda: rustac.read_sync(href), f"stac-geoparquet index {href}")
    items = [item for item in doc.get("features", [])
             if _year(item) == year and _meets(item.get("bbox"), bbox)]
    if not items:
        raise NoDataError(
            f"{href} lists no items for {year} over {tuple(round(v, 4) for v in bbox)}"
        )
    return assets_of(items, href)


def _meets(item_bbox: list[float] | None, bbox: tuple[float, float, float, float]) -> bool:
    if not item_bbox:
        return True  # no bbox to rule it out: the COG header decides later
    w, s, e, n = item_bbox[:4]
    return not (e < bbox[0] or w > bbox[2] or n < bbox[1] or s > bbox[3])
