"""One tile's read window on the compute device, arriving in row bands from a reader thread,
kept only while the model still needs it.

Reading a tile (storage → int8 codes) and running the model on it overlap: a reader thread
reads the read window in horizontal bands and ``put``s each; the model thread ``wait``s only
for the rows its next batch of patches needs, and ``release``s the rows above its next patch
row once it is past them. The reader stays at most ``ahead`` rows beyond the rows the model
has asked for, so a tile's input costs memory for a few bands, not for the whole window: that
is what lets a tile be large (4096 px by default), and a large tile is what keeps the halo's
share of every read small.

On a CPU each band's tensors are views of the arrays the reader got (zero-copy). On CUDA the
reader copies each band into pinned host memory; the model thread then issues an asynchronous
host→device copy of every band that has arrived on a side stream, and makes its own stream
wait on a band's copy only when a batch needs those rows — so int8 codes cross the link while
earlier patches compute. The reader thread never runs torch operators (their thread count is
per-thread state that decides CPU results); location channels are computed in the model thread
as bands land. Either way a patch gathers exactly the bytes one whole-window read would give,
so the cube does not depend on whether (or how) the read was split.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lczscale.core.grid import Window
from lczscale.io.sources.protocol import EmbeddingWindow

LocationFn = Callable[[Window], torch.Tensor]  # zone window → (L, h, w) float32 on the device


def row_bands(window: Window, rows: int) -> list[Window]:
    """``window`` cut into horizontal bands at zone rows that are multiples of ``rows``, so band
    edges fall on the storage chunk grid (chunk sizes divide 256 in every supported layout)."""
    cuts = [window.row]
    edge = (window.row // rows + 1) * rows
    while edge < window.row_stop:
        cuts.append(edge)
        edge += rows
    cuts.append(window.row_stop)
    return [Window(a, window.col, b - a, window.width)
            for a, b in itertools.pairwise(cuts)]


@dataclass
class _Band:
    """One band: rows [start, stop) of the read window, its host parts, its device tensors."""

    window: Window
    start: int
    stop: int
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # CPU views / pinned copies
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # on the device, once landed
    event: torch.cuda.Event | None = None  # the upload finished (CUDA)


class TileInput:
    """The read window of one tile: host masks for the whole window, device tensors for the
    bands the model still needs."""

    def __init__(self, window: Window, device: torch.device,
                 location: LocationFn | None = None, location_channels: int = 0,
                 ahead: int | None = None) -> None:
        self.window = window
        self.device = device
        h, w = window.height, window.width
        self.valid = np.zeros((h, w), dtype=bool)  # host masks: the output needs them there
        self.water = np.zeros((h, w), dtype=bool)
        self.cpu = device.type == "cpu"
        self._location_fn = location if location_channels else None
        self.ahead = ahead  # rows the reader may run past the model's requests; None = no limit
        self.dequantisation = ""
        self._shape: tuple[int, bool] | None = None  # (dimensions, has scales)
        self._cond = threading.Condition()
        self._arrived = 0  # rows [0, arrived) have been put by the reader
        self._wanted = 0  # rows the model has asked for so far
        self._released = 0  # rows [0, released) are dropped
        self._pending: list[_Band] = []  # put, not yet landed by the model thread
        self._bands: list[_Band] = []  # landed and not released, in row order
        self._waited = 0  # rows the model thread has landed and its stream waits for
        self._error: BaseException | None = None
        self._cancelled = False
        self._reader_done = False
        self.waited_s = 0.0  # time the model thread spent blocked on the reader
        self.peak_rows = 0  # most rows held at once (put or landed, not released)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    # ---- reader side -------------------------------------------------------------------------

    def put(self, data: EmbeddingWindow) -> None:
        """Add the next band (the rows right after those already put), first waiting until the
        model is within ``ahead`` rows of it. No torch operators (views are not operators)."""
        band = data.window
        start, stop = band.row - self.window.row, band.row_stop - self.window.row
        if (start != self._arrived or band.col != self.window.col
                or band.width != self.window.width):
            raise ValueError(f"band {band} does not continue {self.window} at row {self._arrived}")
        if (data.codes.shape[1:] != (band.height, band.width)
                or data.valid.shape != (band.height, band.width)
                or data.water.shape != (band.height, band.width)):
            raise ValueError(f"band {band} came with codes of shape {data.codes.shape} and "
                             f"masks of {data.valid.shape}: not the band's rows and columns")
        shape = (data.codes.shape[0], data.dequantisation == "per_pixel_scale")
        if self._shape is None:
            self._shape, self.dequantisation = shape, data.dequantisation
        elif (shape, data.dequantisation) != (self._shape, self.dequantisation):
            raise ValueError(f"band {band} holds {shape[0]}-d {data.dequantisation} embeddings, "
                             f"the first band {self._shape[0]}-d {self.dequantisation}")
        with self._cond:  # flow control: never more than ``ahead`` rows past the model
            while (self.ahead is not None and not self._cancelled
                   and start >= self._wanted + self.ahead):
                self._cond.wait()
            if self._cancelled:
                return
        rows = slice(start, stop)
        self.valid[rows] = data.valid
        self.water[rows] = data.water
        parts = {"codes": data.codes, "valid": self.valid[rows]}
        if shape[1]:
            parts["scales"] = _scales(data)
        item = _Band(band, start, stop)
        # Views of the source's arrays where they are contiguous and writable (torch tensors
        # may not view read-only memory, e.g. a memory-mapped tile), else copies.
        item.host = {k: torch.from_numpy(np.require(v, requirements=["C", "W"]))
                     for k, v in parts.items()}
        if self._stream is not None:
            item.host = {k: v.pin_memory() for k, v in item.host.items()}
        with self._cond:
            self._pending.append(item)
            self._arrived = stop
            self.peak_rows = max(self.peak_rows, stop - self._released)
            self._cond.notify_all()

    def reader_finished(self) -> None:
        """The reader thread is done (every band put, failed, or cancelled)."""
        with self._cond:
            self._reader_done = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The reader failed: the model side raises ``error`` at its next wait."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        """The model thread gave up on this tile (or finished it): the reader should stop."""
        return self._cancelled

    def cancel(self) -> None:
        """The model side gives up on the tile: the reader stops at its next band."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    # ---- model side --------------------------------------------------------------------------

    def wait(self, rows: int, land: bool = True) -> None:
        """Block until rows ``[0, rows)`` of the read window are usable on the device (with
        ``land=False`` only until their host masks are in); raise the reader's error if it
        failed."""
        rows = min(rows, self.window.height)
        if rows <= self._waited:
            return
        t0 = time.perf_counter()
        with self._cond:
            if rows > self._wanted:
                self._wanted = rows
                self._cond.notify_all()  # the reader may be holding back for us
            while self._arrived < rows and self._error is None:
                if self._reader_done:  # a reader that stops early must say why (``fail``)
                    raise RuntimeError(
                        f"the reader of {self.window} stopped at row {self._arrived} without "
                        f"an error while the model waits for row {rows} (cancelled: "
                        f"{self._cancelled}, wanted: {self._wanted}, ahead: {self.ahead})")
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not land:
                self.waited_s += time.perf_counter() - t0
                return
            pending, self._pending = self._pending, []
        self.waited_s += time.perf_counter() - t0
        self._land(pending)  # every band that has arrived, not only those needed now
        current = torch.cuda.current_stream(self.device) if self._stream is not None else None
        for band in self._bands:
            if self._waited < band.stop:
                if current is not None and band.event is not None:
                    current.wait_event(band.event)
                self._waited = band.stop
            if band.stop >= rows:
                break

    def release(self, rows: int) -> None:
        """The model needs no row above ``rows`` any more: drop the bands that end there."""
        self._bands = [b for b in self._bands if b.stop > rows]
        with self._cond:
            held = self._bands or self._pending
            self._released = max(self._released, held[0].start if held else self._arrived)

    def patches(self, name: str, at: list[Window], n: int) -> torch.Tensor | None:
        """(n, ..., P, P) stack of the read-window-relative windows ``at`` of the part ``name``
        (``codes``, ``scales``, ``valid`` or ``location``), assembled from the bands that hold
        their rows; zeros past ``len(at)``. ``None`` when the tile has no such part."""
        out: torch.Tensor | None = None
        for i, w in enumerate(at):
            covered = 0
            for band in self._bands:
                lo, hi = max(w.row, band.start), min(w.row_stop, band.stop)
                if lo >= hi:
                    continue
                src = band.tensors.get(name)
                if src is None:
                    return None
                if out is None:
                    out = src.new_zeros((n, *src.shape[:-2], w.height, w.width))
                out[i, ..., lo - w.row:hi - w.row, :] = src[
                    ..., lo - band.start:hi - band.start, w.col:w.col_stop]
                covered += hi - lo
            if covered != w.height:  # released too early or never waited for: a bug, not data
                raise ValueError(f"rows {w.row}..{w.row_stop} of the read window {self.window} "
                                 f"are not all held ({covered} are)")
        return out

    def _land(self, bands: list[_Band]) -> None:
        """Each band's device tensors (off a CPU by an asynchronous upload) and location."""
        current = torch.cuda.current_stream(self.device) if self._stream is not None else None
        for band in bands:
            if self.cpu:
                band.tensors = dict(band.host)
            else:
                band.tensors = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device)
                                for k, v in band.host.items()}
                if self._stream is not None and current is not None:
                    # the new buffers may reuse memory the model stream still reads
                    self._stream.wait_stream(current)
                    with torch.cuda.stream(self._stream):
                        for k, dst in band.tensors.items():
                            dst.copy_(band.host[k], non_blocking=True)
                        band.event = torch.cuda.Event()
                        band.event.record(self._stream)
                else:
                    for k, dst in band.tensors.items():
                        dst.copy_(band.host[k])
            if self._location_fn is not None:
                band.tensors["location"] = self._location_fn(band.window)
            self._bands.append(band)

    @classmethod
    def whole(cls, data: EmbeddingWindow, device: torch.device,
              location: LocationFn | None = None, location_channels: int = 0) -> TileInput:
        """A tile whose read is already in hand (one band)."""
        tile = cls(data.window, device, location, location_channels)
        tile.put(data)
        return tile


def _scales(data: EmbeddingWindow) -> np.ndarray:
    if data.scales is None:
        raise ValueError("per_pixel_scale embeddings came without scales")
    return data.scales
