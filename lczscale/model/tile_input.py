"""One tile's read window on the compute device, arriving in row bands from a reader thread.

Reading a tile (storage → int8 codes) and running the model on it overlap: a reader thread
reads the read window in horizontal bands and ``put``s each; the model thread ``wait``s only
for the rows its next batch of patches needs. Bands are disjoint, so no byte is read twice.

On a CPU the device tensors *are* the host arrays (zero-copy), filled by the reader thread.
On CUDA the reader copies each band into pinned host memory; the model thread then issues an
asynchronous host→device copy of every band that has arrived on a side stream, and makes its
own stream wait on a band's copy only when a batch needs those rows — so int8 codes cross the
link while earlier patches compute. The reader thread never runs torch operators (their
thread count is per-thread state that decides CPU results); location channels are computed in
the model thread as bands land. Either way the tensors hold exactly what one whole-window read
would give, so the cube does not depend on whether (or how) the read was split.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lczscale.grid import Window
from lczscale.io.source import EmbeddingWindow

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
    window: Window
    start: int  # first row, relative to the tile's read window
    stop: int
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # pinned copies (not on a CPU)


class TileInput:
    """The read window of one tile: host masks plus device tensors, filled band by band."""

    def __init__(self, window: Window, device: torch.device,
                 location: LocationFn | None = None, location_channels: int = 0) -> None:
        self.window = window
        self.device = device
        h, w = window.height, window.width
        self.valid = np.zeros((h, w), dtype=bool)  # host masks: the output needs them there
        self.water = np.zeros((h, w), dtype=bool)
        self.cpu = device.type == "cpu"
        self._location_fn = location if location_channels else None
        self._location_channels = location_channels
        self._device_ready = False
        # Allocated when the first band shows the codes' depth and de-quantisation: on a CPU
        # by the reader (views of host arrays), elsewhere by the model thread (device memory).
        self.dequantisation = ""
        self.codes: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.valid_t: torch.Tensor | None = None
        self.location: torch.Tensor | None = None
        self._host: dict[str, np.ndarray] = {}
        self._shape: tuple[int, bool] | None = None  # (dimensions, has scales)
        self._cond = threading.Condition()
        self._arrived = 0  # rows [0, arrived) have been put by the reader
        self._pending: list[_Band] = []  # put, not yet landed by the model thread
        self._landed: list[tuple[int, torch.cuda.Event | None]] = []  # (row stop, copy done)
        self._waited = 0  # rows the model thread has landed and its stream waits for
        self._error: BaseException | None = None
        self._cancelled = False
        self.waited_s = 0.0  # time the model thread spent blocked on the reader
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    # ---- reader side -------------------------------------------------------------------------

    def put(self, data: EmbeddingWindow) -> None:
        """Add the next band (the rows right after those already put). No torch operators."""
        band = data.window
        start, stop = band.row - self.window.row, band.row_stop - self.window.row
        if (start != self._arrived or band.col != self.window.col
                or band.width != self.window.width):
            raise ValueError(f"band {band} does not continue {self.window} at row {self._arrived}")
        shape = (data.codes.shape[0], data.dequantisation == "per_pixel_scale")
        if self._shape is None:
            self._shape, self.dequantisation = shape, data.dequantisation
            if self.cpu:
                self._allocate_host()
        elif (shape, data.dequantisation) != (self._shape, self.dequantisation):
            raise ValueError(f"band {band} holds {shape[0]}-d {data.dequantisation} embeddings, "
                             f"the first band {self._shape[0]}-d {self.dequantisation}")
        rows = slice(start, stop)
        self.valid[rows] = data.valid
        self.water[rows] = data.water
        parts = {"codes": data.codes, "valid": data.valid}
        if shape[1]:
            parts["scales"] = _scales(data)
        item = _Band(band, start, stop)
        if self.cpu:
            for name, value in parts.items():
                if name != "valid":  # valid_t views self.valid
                    self._host[name][..., rows, :] = value
        else:
            pin = self._stream is not None
            item.host = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in parts.items()}
            if pin:
                item.host = {k: v.pin_memory() for k, v in item.host.items()}
        with self._cond:
            self._pending.append(item)
            self._arrived = stop
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        """The model thread gave up on this tile: the reader should stop."""
        return self._cancelled

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    # ---- model side --------------------------------------------------------------------------

    def wait(self, rows: int) -> None:
        """Block until rows ``[0, rows)`` of the read window are usable on the device; raise
        the reader's error if it failed."""
        rows = min(rows, self.window.height)
        if rows <= self._waited:
            return
        t0 = time.perf_counter()
        with self._cond:
            while self._arrived < rows and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            pending, self._pending = self._pending, []
        self.waited_s += time.perf_counter() - t0
        self._land(pending)  # every band that has arrived, not only those needed now
        current = torch.cuda.current_stream(self.device) if self._stream is not None else None
        for stop, event in self._landed:
            if self._waited < stop:
                if current is not None and event is not None:
                    current.wait_event(event)
                self._waited = stop
            if stop >= rows:
                break

    def _land(self, bands: list[_Band]) -> None:
        """Location channels for each band and, off a CPU, its asynchronous upload."""
        if bands and not self._device_ready:
            self._allocate_device()
            self._device_ready = True
        for band in bands:
            rows = slice(band.start, band.stop)
            event = None
            if not self.cpu:
                assert self.codes is not None and self.valid_t is not None
                targets = {"codes": self.codes[:, rows], "valid": self.valid_t[rows]}
                if self.scales is not None:
                    targets["scales"] = self.scales[rows]
                if self._stream is not None:
                    with torch.cuda.stream(self._stream):
                        for name, dst in targets.items():
                            dst.copy_(band.host[name], non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self._stream)
                else:
                    for name, dst in targets.items():
                        dst.copy_(band.host[name])
            if self.location is not None and self._location_fn is not None:
                self.location[:, rows] = self._location_fn(band.window)
            self._landed.append((band.stop, event))

    def _allocate_host(self) -> None:
        """CPU: full-window host arrays, viewed as the tensors the model reads (reader thread:
        ``torch.from_numpy`` is a view, not an operator)."""
        assert self._shape is not None
        d, has_scales = self._shape
        h, w = self.window.height, self.window.width
        self._host = {"codes": np.zeros((d, h, w), dtype=np.int8)}
        if has_scales:
            self._host["scales"] = np.zeros((h, w), dtype=np.float32)
        self.codes = torch.from_numpy(self._host["codes"])
        self.scales = torch.from_numpy(self._host["scales"]) if has_scales else None
        self.valid_t = torch.from_numpy(self.valid)

    def _allocate_device(self) -> None:
        """Full-window device tensors (model thread) and the location channels."""
        assert self._shape is not None
        d, has_scales = self._shape
        h, w = self.window.height, self.window.width
        dev = self.device
        if not self.cpu:
            self.codes = torch.zeros((d, h, w), dtype=torch.int8, device=dev)
            self.scales = (torch.zeros((h, w), dtype=torch.float32, device=dev)
                           if has_scales else None)
            self.valid_t = torch.zeros((h, w), dtype=torch.bool, device=dev)
        if self._location_fn is not None:
            self.location = torch.zeros((self._location_channels, h, w), dtype=torch.float32,
                                        device=dev)
        if self._stream is not None:  # the buffers may reuse memory the model stream still uses
            self._stream.wait_stream(torch.cuda.current_stream(dev))

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
