"""TESSERA embeddings in the ``geoemb:`` Zarr v3 convention (one group per UTM zone).

Layout (see shared/reference/data-formats.md §1.8): ``utmNN/embeddings`` int8 (time, band, y, x),
``utmNN/scales`` float32 (time, y, x) with NaN = water and +inf = land without data, ``time``
(years), ``x``/``y`` pixel centres; zone CRS is EPSG:326NN in both hemispheres (southern
northings negative). The store's zone grids must sit on the cube's 10 m lattice: embeddings are
never resampled.

Corrupt input fails the read, loudly: ``read`` checks every pixel of the window it returns
against the rules of :mod:`lczscale.io.sources.corrupt_pixels` (NaN = water here, +inf = land
without data, also what an unwritten scales chunk reads as), and it raises
:class:`~lczscale.errors.SourceError`, naming the store, zone, year, the first bad pixel in zone
coordinates and how many there are, when a pixel breaks one of them — or when a stored chunk or
shard cannot be decoded (truncated or overwritten bytes: zarr 3.1 raises ValueError for a bad
shard-index checksum or chunk size, RuntimeError from the blosc decompressor); that message
names the array (``utmNN/embeddings``), the year, the window and the damaged shard keys.

I/O errors (OSError, and decode errors caused by one) propagate unchanged, so callers can
retry them. A SourceError is deterministic for that tile: the tile runner can record the tile
as failed and go on with the others.

Planning (``availability``) lists the stored blocks of *both* arrays, so a tile whose
embeddings shard was deleted (or left zero-byte or unreadable), but whose scales remain, is
still planned — and its read fails (rule 3: positive scales over all-zero codes, or an
undecodable shard) instead of the tile silently vanishing from the map. Where the
embeddings shard is intact, planning uses its inner chunks only, exactly as before.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
import zarr
from affine import Affine

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import NoDataError, SourceError, exception_chain
from lczscale.io import input_digest, zarr_calls
from lczscale.io.shards import inner_chunk_mask, stored_chunks
from lczscale.io.sources.corrupt_pixels import FIX, corrupt_message, corruption
from lczscale.io.sources.protocol import EmbeddingWindow, identity
from lczscale.io.stores import open_store, root_attributes, store_filesystem
from lczscale.io.zarr_calls import ZarrArray

READ_TIMEOUT_S = zarr_calls.TIMEOUT_S  # one array read (a tile's band); a TimeoutError is retried


def read_array(arr: ZarrArray, sel: tuple[Any, ...]) -> Any:
    """``arr[sel]`` with a deadline and a fresh zarr I/O loop after a stall (see zarr_calls)."""
    return zarr_calls.getitem(arr, sel, READ_TIMEOUT_S)


NAN_SETTING = (
    "declare the layout with --source-kind (config: source_kind): tessera-zarr for geotessera's "
    "own store, where a NaN scale is water, or tessera-dclimate-zarr for the dClimate build, "
    "where a NaN scale is a pixel without an embedding"
)


def nan_scale_meaning(attrs: dict[str, Any]) -> str | None:
    """What a NaN scale means in a per-pixel-scale TESSERA store, from its root attributes:
    'water' (geotessera's own store: NaN from the landmask, +inf = no data yet), 'nodata' (the
    2026 dClimate v1.1 build and its plain copy: NaN = not embedded, no water marker), or None
    when the store does not say — never assumed, because reading cloud gaps as water would
    write them as LCZ G at full confidence.

    The dClimate build declares ``geoemb:quantization.scale.nodata: "NaN"``, carries its
    quality rule ``optical_min_obs`` and, in the plain copy, ``geotessera:mask_source:
    "source_nodata"``; geotessera's own store declares nodata ``"+inf"``.
    """
    quant = attrs.get("geoemb:quantization")
    scale = quant.get("scale") if isinstance(quant, dict) else None
    nodata = str(scale.get("nodata", "")).lower() if isinstance(scale, dict) else ""
    if (nodata == "nan" or attrs.get("geotessera:mask_source") == "source_nodata"
            or "optical_min_obs" in attrs):
        return "nodata"
    if nodata in ("+inf", "inf"):
        return "water"
    return None


class TesseraZarrSource:
    """Reads windows of a TESSERA Zarr store; picklable (holds only the URL and options)."""

    kind = "tessera"
    layout = "tessera-zarr"
    grid_kinds: tuple[str, ...] = ("utm",)
    nan_is_water = True  # geotessera's own convention; the dClimate layouts say otherwise

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What a root ``zarr.json`` in the TESSERA convention says, or None."""
        attrs = root_attributes(url, storage_options)
        quant = attrs.get("geoemb:quantization")
        if not isinstance(quant, dict) or quant.get("method") != "per_pixel_scale":
            return None
        if attrs.get("geoemb:spatial_layout", "utm_zones") != "utm_zones":
            return None
        if nan_scale_meaning(attrs) != "water":  # not geotessera's own store
            return None
        version = attrs.get("tessera:dataset_version") or attrs.get("geoemb:model")
        return (f"TESSERA Zarr store (geoemb: convention, {attrs.get('geoemb:dimensions')}-d, "
                f"per-pixel scales, UTM zone groups, dataset {version})")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> TesseraZarrSource:
        """The store at ``url``, validated now: the convention and every zone group."""
        source = cls(url, storage_options)
        _ = source.root  # validates the convention now, with a clear error
        _ = source._zone_info  # and every zone group, including mixed datasets
        return source

    # Pickle only the address: the opened zarr handles are rebuilt lazily on the worker.
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @cached_property
    def root(self) -> zarr.Group:
        """The root group, its ``geoemb:`` convention checked (a SourceError saying why not)."""
        try:
            store = open_store(self.url, storage_options=self.storage_options)
            root = zarr.open_group(store, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            raise SourceError(
                f"cannot open {self.url} as a Zarr v3 store ({type(exc).__name__}: {exc}); "
                "point --source at a TESSERA Zarr store (e.g. one made by `lczscale synth`)"
            ) from exc
        self._validate(root)
        return root

    def _validate(self, root: zarr.Group) -> None:
        attrs = dict(root.attrs)
        fix = (
            "point --source at a store in the geoemb: convention as published by TESSERA "
            "(or written by `lczscale synth`)"
        )
        quant = attrs.get("geoemb:quantization")
        if "geoemb:dimensions" not in attrs or not isinstance(quant, dict):
            raise SourceError(
                f"{self.url} is not a TESSERA-convention store: root attributes lack "
                f"'geoemb:dimensions'/'geoemb:quantization' (found {sorted(attrs)[:8]}); {fix}"
            )
        if quant.get("method") != "per_pixel_scale":
            raise SourceError(
                f"{self.url}: geoemb:quantization.method is {quant.get('method')!r}, expected "
                f"'per_pixel_scale' for TESSERA; {fix}"
            )
        if attrs.get("geoemb:spatial_layout", "utm_zones") != "utm_zones":
            raise SourceError(
                f"{self.url}: geoemb:spatial_layout is {attrs.get('geoemb:spatial_layout')!r}, "
                f"expected 'utm_zones'; {fix}"
            )
        if not self.zone_names_of(root):
            raise SourceError(f"{self.url} has no utmNN zone groups; {fix}")
        if self.nan_is_water and nan_scale_meaning(attrs) == "nodata":
            raise SourceError(
                f"{self.url} is a dClimate TESSERA v1.1 store, where a NaN scale marks a pixel "
                "without an embedding, not water: read as layout tessera-zarr its cloud gaps "
                "would be mapped as water; use --source-kind tessera-dclimate-zarr (or auto)"
            )

    @staticmethod
    def zone_names_of(root: zarr.Group) -> list[str]:
        """The ``utmNN`` zone groups of ``root``, sorted."""
        return sorted(
            name
            for name, node in root.groups()
            if name.startswith("utm") and name[3:].isdigit() and isinstance(node, zarr.Group)
        )

    @property
    def dimensions(self) -> int:
        """Bands per pixel, from the root's ``geoemb:dimensions``."""
        return int(self.root.attrs["geoemb:dimensions"])  # type: ignore[arg-type]

    @property
    def dataset(self) -> str:
        """``tessera/<version>[/<variant>]`` from the root's attributes."""
        a = self.root.attrs
        version = a.get("tessera:dataset_version") or a.get("geoemb:model", "unknown")
        variant = a.get("tessera:dataset_variant", "")
        return f"tessera/{version}" + (f"/{variant}" if variant else "")

    def zone_names(self, grid_kind: str | None = None) -> list[str]:
        """The ``utmNN`` zone groups (the store has no other lattice)."""
        if grid_kind not in (None, "utm"):
            return []
        return self.zone_names_of(self.root)

    @cached_property
    def _groups(self) -> dict[str, zarr.Group]:
        return {n: self.root[n] for n in self.zone_names()}  # type: ignore[misc]

    def _group(self, zone: str) -> zarr.Group:
        try:
            return self._groups[zone]
        except KeyError:
            raise NoDataError(
                f"{self.url} has no group {zone!r} (zones present: {', '.join(self.zone_names())})"
            ) from None

    @cached_property
    def _zone_info(self) -> dict[str, tuple[Affine, dict[int, int], ZarrArray, ZarrArray]]:
        """Per zone: transform, year→time index, embeddings and scales arrays."""
        info = {}
        for name, g in self._groups.items():
            try:
                with zarr_calls.fused_reads():  # small reads ~1.2× faster (zarr_calls)
                    emb, scales = g["embeddings"], g["scales"]
                years = [int(v) for v in g["time"][:]]  # type: ignore[union-attr, index]
            except KeyError as exc:
                raise SourceError(
                    f"{self.url}/{name} lacks array {exc}: a TESSERA zone group holds "
                    "'embeddings', 'scales' and 'time'"
                ) from None
            assert isinstance(emb, zarr.Array) and isinstance(scales, zarr.Array)
            if emb.dtype != np.int8 or emb.ndim != 4:
                raise SourceError(
                    f"{self.url}/{name}/embeddings is {emb.dtype} with {emb.ndim} dims; TESSERA "
                    "stores int8 (time, band, y, x)"
                )
            if emb.shape[1] != self.dimensions:
                raise SourceError(
                    f"{self.url}/{name}/embeddings has {emb.shape[1]} bands but the store "
                    f"declares geoemb:dimensions={self.dimensions}; the store is inconsistent"
                )
            root_attrs = self.root.attrs
            for key in ("tessera:dataset_version", "tessera:dataset_variant", "geoemb:model"):
                if key in g.attrs and key in root_attrs and g.attrs[key] != root_attrs[key]:
                    raise SourceError(
                        f"{self.url}/{name} holds {key}={g.attrs[key]!r} but the store is "
                        f"{root_attrs[key]!r}: one store must hold one TESSERA dataset "
                        "(version and variant are different feature spaces); rebuild the "
                        "store from one dataset"
                    )
            t = g.attrs.get("spatial:transform")
            if t is None:
                raise SourceError(f"{self.url}/{name} lacks the 'spatial:transform' attribute")
            coeffs = [float(v) for v in t][:6]  # type: ignore[union-attr, arg-type]
            info[name] = (Affine(*coeffs), {y: i for i, y in enumerate(years)}, emb, scales)
        return info

    @property
    def years(self) -> list[int]:
        """The years of any zone group's time axis."""
        return sorted({y for _, ty, _, _ in self._zone_info.values() for y in ty})

    def _locate(self, zone: Zone, year: int) -> tuple[tuple[int, int], int, ZarrArray, ZarrArray]:
        self._group(zone.name)  # a clear error for a zone the store does not have
        transform, tindex, emb, scales = self._zone_info[zone.name]
        if year not in tindex:
            raise NoDataError(
                f"{self.url}/{zone.name} has no year {year} (years: {sorted(tindex)}); pass "
                "--year with one of them"
            )
        return zone.pixel_offset(transform), tindex[year], emb, scales

    def availability(
        self, zone: Zone, year: int, within: Window | None = None
    ) -> Availability:
        """Blocks (shards) where ``embeddings`` or ``scales`` store chunks, and which inner
        chunks hold data for blocks meeting ``within``.

        Scales count so that a block whose embeddings were lost (deleted or zero-byte shard)
        while its scales remain is still planned: its read then fails loudly instead of the
        tile vanishing from the map. Inside a block whose embeddings shard is stored, only the
        embeddings' inner chunks count, exactly as for an intact store: OR-ing in the scales
        chunks would plan tiles with nothing to map, because scales store all-water chunks
        (NaN differs from the +inf fill) and may have coarser inner chunks (synth: 256 px).
        Never-written areas are stored in neither array. A block whose stored shard index
        cannot be read counts whole.
        """
        if zone.name not in self._groups:
            return Availability((1, 1), (0, 0), frozenset())
        offset, t, emb, scales = self._locate(zone, year)
        fs, _ = store_filesystem(emb.store_path.store)
        eb, sb = _block(emb), _block(scales)
        e_stored = stored_chunks(emb, (t, 0), _blocks_under(within, offset, eb, emb.shape))
        s_stored = stored_chunks(scales, (t,), _blocks_under(within, offset, sb, scales.shape))

        def meets(index: tuple[int, int], block: tuple[int, int]) -> bool:
            if within is None:
                return True
            w = Window(offset[0] + index[0] * block[0], offset[1] + index[1] * block[1], *block)
            return within.intersection(w) is not None

        def masks(arr: ZarrArray, stored: dict[tuple[int, int], str],
                  block: tuple[int, int]) -> dict[tuple[int, int], np.ndarray]:
            """Usable inner-chunk masks of the stored blocks that meet ``within``."""
            if arr.shards is None:
                return {}
            found = {k: inner_chunk_mask(fs, p, arr) for k, p in stored.items()
                     if meets(k, block)}
            return {k: m for k, m in found.items() if m is not None}

        blocks = set(e_stored)
        e_in, s_in = _inner(emb), _inner(scales)
        if eb == sb:  # TESSERA and synth: one block grid
            blocks.update(s_stored)
            lost = {k: p for k, p in s_stored.items() if k not in e_stored}
            s_masks = masks(scales, lost, sb)
            cell = (math.gcd(e_in[0], s_in[0]), math.gcd(e_in[1], s_in[1])) if s_masks else e_in
        else:  # scales blocks mark the embeddings blocks they overlap, whole
            for r, c in s_stored:
                r0, c0 = r * sb[0], c * sb[1]
                blocks.update(
                    (i, j)
                    for i in range(r0 // eb[0], (r0 + sb[0] - 1) // eb[0] + 1)
                    for j in range(c0 // eb[1], (c0 + sb[1] - 1) // eb[1] + 1)
                )
            s_masks, cell = {}, e_in
        cells = {k: _refine(m, e_in, cell) for k, m in masks(emb, e_stored, eb).items()}
        cells.update({k: _refine(m, s_in, cell) for k, m in s_masks.items()})
        # A full block needs no mask (no mask = whole block): for all land, keeping the
        # all-True masks tripled the planning memory (2.0 → 0.7 GB, benchmarks/planning.py).
        cells = {k: m for k, m in cells.items() if not m.all()}
        return Availability(eb, offset, frozenset(blocks), cell if cells else None, cells)

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """Codes, scales and masks of ``window`` (zone pixels); padding outside the store is
        invalid. Raises SourceError on corrupt input (see the module docstring)."""
        (r_off, c_off), t, emb, scales = self._locate(zone, year)
        bands = emb.shape[1]
        codes = np.zeros((bands, window.height, window.width), dtype=np.int8)
        sc = np.full((window.height, window.width), np.nan, dtype=np.float32)
        extent = Window(r_off, c_off, emb.shape[2], emb.shape[3])
        inner = window.intersection(extent)
        water = np.zeros((window.height, window.width), dtype=bool)
        if inner is not None:
            src = (slice(inner.row - r_off, inner.row_stop - r_off),
                   slice(inner.col - c_off, inner.col_stop - c_off))
            dst = inner.relative_to(window)
            codes[(slice(None), *dst)] = self._fetch(emb, (t, slice(None), *src), year, inner)
            sc[dst] = self._fetch(scales, (t, *src), year, inner)
            # Padding is NaN with codes 0, which no rule flags: check the whole window at once.
            problems = corruption(codes, sc)
            if problems:
                raise SourceError(corrupt_message(self.url, zone, year, window, problems))
            if self.nan_is_water:
                water[dst] = np.isnan(sc[dst])
        valid = np.isfinite(sc)
        sc[~valid] = 0.0  # codes there are already 0: the checks above guarantee it
        return EmbeddingWindow(window, codes, sc, valid, water, "per_pixel_scale")

    def _fetch(self, arr: ZarrArray, sel: tuple[Any, ...], year: int, inner: Window) -> Any:
        """``arr[sel]``, with undecodable stored bytes turned into one SourceError.

        Only a failure that recurs when the shards are re-read one by one is blamed on the
        data (and those shards are named); anything else propagates unchanged.
        """
        try:
            return read_array(arr, sel)
        except (ValueError, RuntimeError) as exc:
            if any(isinstance(e, OSError) for e in exception_chain(exc)):
                raise  # an I/O failure underneath: transient perhaps, the caller may retry
            bad = self._bad_blocks(arr, sel)
            if not bad:  # no single shard fails again: not damaged bytes, leave it unchanged
                raise
            shards = ", ".join(bad)
            raise SourceError(
                f"{self.url}/{arr.path} year {year}: the stored data for zone rows "
                f"{inner.row}..{inner.row_stop - 1}, cols {inner.col}..{inner.col_stop - 1} "
                f"cannot be decoded ({type(exc).__name__}: {' '.join(str(exc).split())}): a "
                f"chunk or shard is damaged (truncated or overwritten), damaged shards: "
                f"{shards}; {FIX}"
            ) from exc

    @staticmethod
    def _bad_blocks(arr: ZarrArray, sel: tuple[Any, ...], limit: int = 4) -> list[str]:
        """Keys of the blocks (shards) under ``sel`` that fail to decode, found by reading them
        one at a time (error path only)."""
        block = arr.shards or arr.chunks
        ys, xs = sel[-2], sel[-1]
        lead = [s for s in sel[:-2] if isinstance(s, int)]  # time index
        bad: list[str] = []
        for r in range(ys.start // block[-2], (ys.stop - 1) // block[-2] + 1):
            for c in range(xs.start // block[-1], (xs.stop - 1) // block[-1] + 1):
                y0, x0 = max(ys.start, r * block[-2]), max(xs.start, c * block[-1])
                y1 = min(ys.stop, (r + 1) * block[-2])
                x1 = min(xs.stop, (c + 1) * block[-1])
                try:
                    read_array(arr, (*sel[:-2], slice(y0, y1), slice(x0, x1)))
                except (ValueError, RuntimeError):
                    coords = (*lead, *([0] * (arr.ndim - 2 - len(lead))), r, c)
                    bad.append(f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}")
                    if len(bad) == limit:
                        return [*bad, "…"]
        return bad

    def describe(self) -> dict[str, Any]:
        """Provenance: the identity fields and the store's ``geoemb:build_version``."""
        return {
            **identity(self),
            "build_version": self.root.attrs.get("geoemb:build_version"),
        }

    def _digest_arrays(self, zone: Zone) -> list[ZarrArray]:
        """The arrays a tile reads (embeddings and scales; subclasses add what they read)."""
        _, _, emb, scales = self._zone_info[zone.name]
        return [emb, scales]

    def input_digest(self, zone: Zone, window: Window, year: int,
                     listings: dict[str, input_digest.Listing | None] | None = None) -> str:
        """Digest of the stored objects (shards) a read of ``window`` touches: their keys,
        sizes and ETags or mtimes (see :mod:`lczscale.io.input_digest`)."""
        offset, t, _, _ = self._locate(zone, year)
        items = []
        for arr in self._digest_arrays(zone):
            fs, root = store_filesystem(arr.store_path.store)
            known = (listings or {}).get(arr.path)
            for path in input_digest.objects_under(arr, (t,), window, offset):
                items.append((path[len(root):], *input_digest.stat(fs, path, known)))
        return input_digest.digest(items)

    def input_digests(self, zone: Zone, windows: list[Window], year: int
                      ) -> dict[Window, str] | None:
        """``input_digest`` of many windows from one listing per array (None where the store
        cannot list: plain HTTP)."""
        listings = {arr.path: input_digest.listing(arr) for arr in self._digest_arrays(zone)}
        if any(v is None for v in listings.values()):
            return None
        return {w: self.input_digest(zone, w, year, listings) for w in windows}


def _blocks_under(
    within: Window | None, offset: tuple[int, int], block: tuple[int, int],
    shape: tuple[int, ...],
) -> list[tuple[int, int]] | None:
    """Grid indices of the array's blocks that meet ``within`` (None: all of them)."""
    if within is None:
        return None
    rows = range(max(0, (within.row - offset[0]) // block[0]),
                 min(-(-shape[-2] // block[0]), (within.row_stop - 1 - offset[0]) // block[0] + 1))
    cols = range(max(0, (within.col - offset[1]) // block[1]),
                 min(-(-shape[-1] // block[1]), (within.col_stop - 1 - offset[1]) // block[1] + 1))
    return [(r, c) for r in rows for c in cols]


def _block(arr: ZarrArray) -> tuple[int, int]:
    """Spatial (y, x) shape of the array's stored objects: shards, else chunks."""
    b = arr.shards or arr.chunks
    return (b[-2], b[-1])


def _inner(arr: ZarrArray) -> tuple[int, int]:
    """Spatial (y, x) shape of the array's (inner) chunks."""
    return (arr.chunks[-2], arr.chunks[-1])


def _refine(mask: np.ndarray, inner: tuple[int, int], cell: tuple[int, int]) -> np.ndarray:
    """An inner-chunk mask repeated onto a finer ``cell`` grid (cell divides inner)."""
    if inner == cell:
        return mask
    return np.repeat(np.repeat(mask, inner[0] // cell[0], 0), inner[1] // cell[1], 1)
