"""The global TESSERA v1.1 store as dClimate published it: an Icechunk repository.

``s3://tessera-embeddings/v1.1/dclimate.icechunk`` (us-west-2, anonymous reads). Layout (from
dClimate/tessera-embeddings, docs/global-store.md and context_docs/storage/…):

- zone groups ``01N`` … ``60N`` (EPSG:326NN) and ``01S`` … ``60S`` (EPSG:327NN, positive
  northings), each a fixed extent snapped outward to whole 2048 px shards; coordinates
  ``northing`` (descending) / ``easting`` are pixel centres;
- ``embeddings`` int8 (time, northing, easting, band), 256² chunks in 2048² shards; ``scales``
  float32 (time, northing, easting), PCodec, **NaN = not embedded** (no water marker);
  ``s2_obs_count`` and five more per-pixel arrays; nine preallocated years, of which the group's
  ``years_complete`` says which hold data (:mod:`lczscale.io.sources.dclimate_release`).

How each zone group sits in an lczscale zone ``utmNN`` (the rows of its own hemisphere), and
how its georeferencing is checked: :mod:`lczscale.io.sources.hemisphere_groups`.

The session is pinned to the snapshot the driver opened, so every worker reads the same bytes
and the provenance names them. Planning asks the Parquet registry beside the store
(``dclimate.registry``) when there is one, else Icechunk's chunk index on ``scales`` (shard
coordinates, manifests only): never a listing of millions of objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from functools import cached_property
from typing import Any

import icechunk
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import NoDataError, SourceError, exception_chain
from lczscale.io import input_digest
from lczscale.io.shards import index_layout, index_mask
from lczscale.io.sources import dclimate_release as dc
from lczscale.io.sources.corrupt_pixels import FIX, corrupt_message, corruption
from lczscale.io.sources.dclimate_registry import embedded_shards, latest_rows, registry_url
from lczscale.io.sources.hemisphere_groups import GROUP, GroupPart, group_part
from lczscale.io.sources.protocol import EmbeddingWindow, identity
from lczscale.io.sources.tessera_dclimate_zarr import is_dclimate_tessera
from lczscale.io.sources.tessera_zarr import read_array
from lczscale.io.stores import filesystem, is_remote, local_path
from lczscale.io.zarr_calls import ZarrArray

log = logging.getLogger(__name__)

REFINE_LIMIT = 20_000  # shards (under the AOI) up to which planning reads their inner index


def icechunk_storage(url: str, storage_options: dict[str, Any] | None) -> icechunk.Storage:
    """Icechunk storage for a local path, ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

    Credentials come from the environment (``from_env``), never from the options;
    ``anon: true`` reads anonymously (the public store). An S3 endpoint comes from
    ``endpoint_url`` (or ``client_kwargs.endpoint_url``) or ``AWS_ENDPOINT_URL[_S3]``.
    """
    opts = dict(storage_options or {})
    client = opts.get("client_kwargs") or {}
    if not is_remote(url):
        return icechunk.local_filesystem_storage(str(local_path(url).absolute()))
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    anonymous = bool(opts.get("anon"))
    if scheme in ("s3", "s3a"):
        endpoint = (opts.get("endpoint_url") or client.get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        region = (opts.get("region") or client.get("region_name") or os.environ.get("AWS_REGION")
                  or os.environ.get("AWS_DEFAULT_REGION")
                  or ("us-west-2" if bucket == "tessera-embeddings" else "us-east-1"))
        return icechunk.s3_storage(
            bucket=bucket, prefix=prefix.rstrip("/"), region=region, endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            force_path_style=bool(endpoint), anonymous=anonymous or None,
            from_env=None if anonymous else True,
        )
    if scheme in ("gs", "gcs"):
        return icechunk.gcs_storage(bucket=bucket, prefix=prefix.rstrip("/"),
                                    anonymous=anonymous or None,
                                    from_env=None if anonymous else True)
    raise SourceError(
        f"cannot open an Icechunk repository at {url}: lczscale reads local paths, s3:// and "
        "gs:// (e.g. s3://tessera-embeddings/v1.1/dclimate.icechunk with source_options "
        "{anon: true})"
    )


def _run(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, also where a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _mark(blocks: set[tuple[int, int]], w: Window | None, within: Window | None,
          origin: tuple[int, int], cell: tuple[int, int]) -> None:
    """Add the lattice cells (``cell`` px, phase ``origin``) a window meets inside ``within``."""
    if w is not None and within is not None:
        w = w.intersection(within)
    if w is None:
        return
    blocks.update(
        (r, c)
        for r in range((w.row - origin[0]) // cell[0], (w.row_stop - 1 - origin[0]) // cell[0] + 1)
        for c in range((w.col - origin[1]) // cell[1], (w.col_stop - 1 - origin[1]) // cell[1] + 1)
    )


def _meets(part: GroupPart, shard: tuple[int, int], within: Window | None) -> bool:
    """Whether a group's shard meets the window (and the rows the group owns)."""
    w = Window(part.offset[0] + shard[0] * part.block[0], part.offset[1] + shard[1] *
               part.block[1], *part.block).intersection(part.owned)
    return w is not None and (within is None or w.intersection(within) is not None)


def _band_first(emb: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = emb`` moved from (y, x, band) to (band, y, x), a strip of rows at a time: the
    whole-array strided copy is several times slower (cache misses on every element)."""
    h, w, b = emb.shape
    step = max(1, 8192 // max(1, w))  # about 1 MiB of codes per strip: stays in cache
    for r in range(0, h, step):
        part = emb[r : r + step]
        flat = np.ascontiguousarray(part.reshape(-1, b).T)
        out[:, r : r + step] = flat.reshape(b, part.shape[0], w)


class TesseraIcechunkSource:
    """Reads windows of the dClimate Icechunk store; picklable (address, snapshot, options)."""

    kind = "tessera"
    layout = "tessera-icechunk"
    grid_kinds: tuple[str, ...] = ("utm",)

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 min_s2_obs: int | None = None, snapshot: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self.min_s2_obs = min_s2_obs
        self.snapshot = snapshot

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options,
                "min_s2_obs": self.min_s2_obs, "snapshot": self.snapshot}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """An Icechunk repository (its ``repo`` object) whose root is a dClimate TESSERA build."""
        fs, path = filesystem(url, storage_options)
        try:
            if not fs.exists(f"{path.rstrip('/')}/repo"):
                return None
            attrs = dict(cls(url, storage_options).root.attrs)
        except (OSError, SourceError, icechunk.IcechunkError):
            return None
        if not is_dclimate_tessera(attrs):
            return None
        return (f"dClimate TESSERA Icechunk repository ({attrs.get('geoemb:model')}, checkpoint "
                f"{attrs.get('checkpoint_id')}, NNN/NNS zone groups, NaN scale = not embedded)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None
             ) -> TesseraIcechunkSource:
        """The repository at ``url``, pinned to the snapshot ``main`` points at now (every
        worker then reads those bytes); refused unless its root is a dClimate TESSERA build."""
        source = cls(url, storage_options)
        source.snapshot = source._pin()
        attrs = dict(source.root.attrs)
        if not is_dclimate_tessera(attrs):
            raise SourceError(
                f"{url} is an Icechunk repository but its root is not a dClimate TESSERA build "
                "(per-pixel scales with NaN = not embedded, geoemb:model …/model/1.1, "
                "optical_min_obs); point --source at the TESSERA v1.1 store"
            )
        if not source._groups:
            raise SourceError(f"{url} has no zone groups 01N … 60S")
        return source

    # ---- opening -------------------------------------------------------------------------

    @cached_property
    def _repo(self) -> icechunk.Repository:
        try:  # no config object: the store carries its own reader settings
            return icechunk.Repository.open(icechunk_storage(self.url, self.storage_options))
        except icechunk.IcechunkError as exc:
            raise SourceError(
                f"cannot open {self.url} as an Icechunk repository "
                f"({str(exc).splitlines()[0]}); check the path, or for S3 the endpoint, region "
                "and credentials in the environment (source_options {anon: true} for the "
                "public store)"
            ) from exc

    def _pin(self) -> str:
        return str(self._repo.lookup_branch("main"))

    @cached_property
    def _session(self) -> icechunk.Session:
        return self._repo.readonly_session(snapshot_id=self.snapshot or self._pin())

    @cached_property
    def root(self) -> zarr.Group:
        """The root group of the pinned snapshot."""
        return zarr.open_group(self._session.store, mode="r", zarr_format=3)

    @cached_property
    def _groups(self) -> dict[str, zarr.Group]:
        return {name: g for name, g in self.root.groups()
                if GROUP.match(name) and isinstance(g, zarr.Group)}

    # ---- identity ------------------------------------------------------------------------

    @property
    def dimensions(self) -> int:
        """Bands per pixel, from the root's ``geoemb:dimensions``."""
        return int(self.root.attrs["geoemb:dimensions"])  # type: ignore[arg-type]

    @property
    def dataset(self) -> str:
        """``tessera/<version>/…`` from the build's own attributes."""
        return dc.dataset_of(dict(self.root.attrs), self.url)

    @property
    def years(self) -> list[int]:
        """The years complete in at least one zone group (``years_complete``)."""
        return sorted({y for name, g in self._groups.items()
                       for y in dc.years_complete(dict(g.attrs), f"{self.url}/{name}")})

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """``utmNN`` for every zone with an ``NNN`` or ``NNS`` group."""
        if grid_kind not in (None, "utm"):
            return []
        return sorted({f"utm{GROUP.match(n).group(1)}" for n in self._groups})  # type: ignore[union-attr]

    def describe(self) -> dict[str, Any]:
        """Provenance: the pinned snapshot, the build's checkpoint, its quality rule and ours."""
        attrs = self.root.attrs
        return {**identity(self), "snapshot": self.snapshot,
                "checkpoint_id": attrs.get("checkpoint_id"),
                "optical_min_obs": attrs.get("optical_min_obs"),
                "scale_nan": dc.SCALE_NODATA_MEANING, "min_s2_obs": self.min_s2_obs,
                "build_version": attrs.get("geoemb:build_version")}

    # ---- the groups of a zone --------------------------------------------------------------

    def _parts(self, zone: Zone) -> list[GroupPart]:
        cache: dict[str, list[GroupPart]] = self.__dict__.setdefault("_part_cache", {})
        if zone.name not in cache:
            number = zone.name[3:]
            try:
                cache[zone.name] = [
                    group_part(zone, f"{number}{h}", self._groups[f"{number}{h}"], self.url,
                               self.dimensions)
                    for h in "NS" if f"{number}{h}" in self._groups]
            except icechunk.IcechunkError as exc:
                raise SourceError(
                    f"{self.url}: the zone groups of {zone.name} cannot be read "
                    f"({' '.join(str(exc).split())[:240]}); the store is damaged or unreachable"
                ) from exc
        return cache[zone.name]

    def _time(self, part: GroupPart, year: int) -> int:
        dc.check_year(part.group, year, list(part.complete), self.url)
        tindex = dict(part.tindex)
        if year not in tindex:
            raise NoDataError(f"{self.url}/{part.group} has no time slot for {year} "
                              f"(slots: {sorted(tindex)})")
        return tindex[year]

    # ---- planning ----------------------------------------------------------------------

    def availability(self, zone: Zone, year: int, within: Window | None = None) -> Availability:
        """Where the parts the window touches hold embeddings: shards from the registry, else
        Icechunk's chunk index on ``scales``; where they are at most ``REFINE_LIMIT`` shards, also
        the inner 256 px chunks, from the shard indexes (one small ranged read each,
        concurrent). Re-gridded onto the zone's lattice at the first part's phase; a southern
        part, 576 px out of phase, marks every cell it overlaps."""
        if zone.name not in self.zone_names():
            return Availability((1, 1), (0, 0), frozenset())
        parts = [p for p in self._parts(zone)
                 if p.owned.height and (within is None or within.intersection(p.owned))]
        if not parts:
            return Availability((1, 1), (0, 0), frozenset())
        found = {p.group: {s for s in self._shards(p, year, self._time(p, year))
                           if _meets(p, s, within)} for p in parts}
        refine = sum(map(len, found.values())) <= REFINE_LIMIT
        cell = parts[0].inner if refine else parts[0].block
        origin = (parts[0].offset[0] % cell[0], parts[0].offset[1] % cell[1])
        blocks: set[tuple[int, int]] = set()
        for part in parts:
            masks = (_run(self._masks(part, self._time(part, year), found[part.group]))
                     if refine else {})
            for sy, sx in found[part.group]:
                top = part.offset[0] + sy * part.block[0]
                left = part.offset[1] + sx * part.block[1]
                mask = masks.get((sy, sx))
                inner = part.inner
                windows = ([Window(top, left, *part.block)] if mask is None else
                           [Window(top + i * inner[0], left + j * inner[1], *inner)
                            for i, j in zip(*np.nonzero(mask), strict=True)])
                for w in windows:
                    _mark(blocks, w.intersection(part.owned), within, origin, cell)
        return Availability(cell, origin, frozenset(blocks))

    async def _masks(self, part: GroupPart, t: int, shards: set[tuple[int, int]]
                     ) -> dict[tuple[int, int], np.ndarray | None]:
        """Inner-chunk masks of ``scales`` shards, from their indexes (None: whole shard)."""
        arr = self._groups[part.group]["scales"]
        assert isinstance(arr, zarr.Array)
        layout = index_layout(arr)
        if layout is None:
            return {}
        size, at_start = layout
        store, proto = self._session.store, default_buffer_prototype()
        gate = asyncio.Semaphore(64)

        async def one(shard: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray | None]:
            key = f"{part.group}/scales/{arr.metadata.encode_chunk_key((t, *shard))}"
            rng = RangeByteRequest(0, size) if at_start else SuffixByteRequest(size)
            async with gate:
                buf = await store.get(key, proto, byte_range=rng)
            return shard, None if buf is None else index_mask(buf.to_bytes(), arr)

        return dict(await asyncio.gather(*(one(sh) for sh in sorted(shards))))

    def _shards(self, part: GroupPart, year: int, t: int) -> set[tuple[int, int]]:
        registry = registry_url(self.url)
        found = embedded_shards(registry, self.storage_options, part.group, year)
        if found is not None:
            return found
        paths = f"/{part.group}/scales"

        async def coords() -> list[tuple[int, ...]]:
            return [c async for c in self._session.chunk_coordinates(paths)]

        return {(int(c[1]), int(c[2])) for c in _run(coords()) if int(c[0]) == t}

    def input_digest(self, zone: Zone, window: Window, year: int) -> str:
        """What a read of ``window`` depends on: per shard it touches, the registry row's run
        (``run_id``, ``assembled_at``: a refill changes it); without a registry, the pinned
        snapshot (coarser: any new commit restales)."""
        items: list[tuple[Any, ...]] = []
        for part in self._parts(zone):
            inner = window.intersection(part.owned)
            if inner is None:
                continue
            rows = self._registry_rows(part.group, year)
            if rows is None:
                items.append((part.group, "snapshot", self.snapshot))
                continue
            r0, c0 = inner.row - part.offset[0], inner.col - part.offset[1]
            for sy in range(r0 // part.block[0], (r0 + inner.height - 1) // part.block[0] + 1):
                for sx in range(c0 // part.block[1], (c0 + inner.width - 1) // part.block[1] + 1):
                    row = rows.get(f"chunk_{sy}_{sx}")
                    items.append((part.group, sy, sx, *(row or ("absent", ""))))
        return input_digest.digest(items)

    def input_digests(self, zone: Zone, windows: list[Window], year: int
                      ) -> dict[Window, str]:
        """``input_digest`` of each window (the registry is read once per group and year)."""
        return {w: self.input_digest(zone, w, year) for w in windows}

    def _registry_rows(self, group: str, year: int) -> dict[str, tuple[str, str]] | None:
        cache: dict[tuple[str, int], Any] = self.__dict__.setdefault("_row_cache", {})
        if (group, year) not in cache:
            rows = latest_rows(registry_url(self.url), self.storage_options, group, year)
            cache[(group, year)] = None if rows is None else {
                r["tile"]: (str(r["run_id"]), str(r["assembled_at"])) for r in rows}
        return cache[(group, year)]  # type: ignore[no-any-return]

    # ---- reading -----------------------------------------------------------------------

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes, scales and validity of ``window``; each row from its own hemisphere's group.
        A NaN scale (not embedded) and, with ``min_s2_obs``, a thin pixel are nodata."""
        bands = self.dimensions
        codes = np.zeros((bands, window.height, window.width), dtype=np.int8)
        sc = np.full((window.height, window.width), np.nan, dtype=np.float32)
        thin = np.zeros((window.height, window.width), dtype=bool)
        for part in self._parts(zone):
            inner = window.intersection(part.owned)
            if inner is None:
                continue
            t = self._time(part, year)
            g = self._groups[part.group]
            src = (slice(inner.row - part.offset[0], inner.row_stop - part.offset[0]),
                   slice(inner.col - part.offset[1], inner.col_stop - part.offset[1]))
            dst = inner.relative_to(window)
            emb = self._fetch(g["embeddings"], (t, *src, slice(None)), year, inner)  # type: ignore[arg-type]
            _band_first(np.asarray(emb), codes[(slice(None), *dst)])
            sc[dst] = self._fetch(g["scales"], (t, *src), year, inner)  # type: ignore[arg-type]
            if self.min_s2_obs is not None:
                obs = self._fetch(g["s2_obs_count"], (t, *src), year, inner)  # type: ignore[arg-type]
                thin[dst] = dc.thin_pixels(obs, self.min_s2_obs)
        problems = corruption(codes, sc)
        if problems:
            raise SourceError(corrupt_message(self.url, zone, year, window, problems))
        valid = np.isfinite(sc) & ~thin
        codes[:, thin] = 0
        sc[~valid] = 0.0
        water = np.zeros_like(valid)  # the store has no water marker
        return EmbeddingWindow(window, codes, sc, valid, water, "per_pixel_scale")

    def _fetch(self, arr: ZarrArray, sel: tuple[Any, ...], year: int, inner: Window) -> Any:
        """``arr[sel]``; damaged stored bytes become one SourceError, I/O errors an OSError
        (which the tile's reads retry)."""
        try:
            return read_array(arr, sel)
        except (icechunk.IcechunkError, ValueError, RuntimeError) as exc:
            if any(isinstance(e, OSError) for e in exception_chain(exc)):
                raise
            text = " ".join(str(exc).split())
            damaged = isinstance(exc, ValueError | RuntimeError) or any(
                k in text for k in ("range was invalid", "object was only", "checksum",
                                    "decompress", "decode"))
            if not damaged:
                raise OSError(f"reading {arr.path} from {self.url}: {text[:300]}") from exc
            raise SourceError(
                f"{self.url}/{arr.path} year {year}: the stored data for zone rows "
                f"{inner.row}..{inner.row_stop - 1}, cols {inner.col}..{inner.col_stop - 1} "
                f"cannot be read ({type(exc).__name__}: {text[:240]}): a chunk object is "
                f"damaged (truncated or overwritten); {FIX}"
            ) from exc
