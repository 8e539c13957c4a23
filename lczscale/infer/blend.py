"""Weighted class sums over a tile's core, kept only for the rows patches still reach.

Patches arrive in row-major lattice order, so once a batch whose last patch starts at core row
``r`` has been added, no later patch touches a row above ``r``: those rows are final. They are
turned into class codes, confidences and (when asked) per-class probabilities right away and
their float sums are dropped. The float buffer therefore spans a patch height plus what one
batch covers, not the whole core — the per-class float32 sums of a 4096 px core alone would be
over a gigabyte.

Each pixel's sum gets the same patches in the same order, and the per-pixel arithmetic is that
of one whole-core pass, so the bytes do not depend on where the rows were cut.

On a GPU the final rows' bytes come back to the host without stopping it: they are copied
into pinned memory asynchronously, and a batch's copy is only waited for when the next batch
is finalised (by then the GPU is running that next batch). A ``.cpu()`` per batch would make
the host wait for every batch to finish before it could queue the next, leaving the GPU idle
while the host gathers patches and launches kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

WATER_CLASS = 17
N_PROBABILITY_CLASSES = 17  # the cube's class axis: LCZ codes 1..17


@dataclass
class _FinalRows:
    """Core rows made final on the device, on their way to the host arrays."""

    rows: slice
    codes: torch.Tensor  # (rows, width) uint8 on the host (pinned on CUDA)
    score: torch.Tensor
    probability: torch.Tensor | None  # (classes, rows, width) uint8
    copied: torch.cuda.Event | None  # the device→host copies are done (CUDA)


class RowAccumulator:
    """Sums of weighted softmax maps and of the weights for core rows [base, base + held)."""

    def __init__(self, height: int, width: int, classes: int, device: torch.device,
                 probabilities: bool) -> None:
        self.height, self.width, self.classes, self.device = height, width, classes, device
        self.base = 0  # first row not yet final
        self.acc = torch.zeros((classes, 0, width), dtype=torch.float32, device=device)
        self.wsum = torch.zeros((0, width), dtype=torch.float32, device=device)
        self.codes = np.zeros((height, width), dtype=np.uint8)  # class index + 1, 0 = untouched
        self.score = np.zeros((height, width), dtype=np.uint8)
        # On the cube's class axis already, so the output is masked in place, not copied.
        self.probability = (np.zeros((N_PROBABILITY_CLASSES, height, width), dtype=np.uint8)
                            if probabilities else None)
        self.added = 0  # patches added
        self.peak_rows = 0  # most rows held at once
        self._coming: list[_FinalRows] = []  # final on the device, not yet in the host arrays

    def add(self, probs: torch.Tensor, weight: torch.Tensor,
            at: list[tuple[tuple[slice, slice], tuple[slice, slice]]]) -> None:
        """Add ``probs[i][patch slices] * weight[patch slices]`` into the core slices of
        ``at[i]``; rows past the buffer are allocated, rows above ``base`` are refused."""
        stop = max(cs[0].stop for _, cs in at)
        self._extend(stop)
        for i, (ps, cs) in enumerate(at):
            if cs[0].start < self.base:
                raise ValueError(f"core row {cs[0].start} is already final (rows < {self.base})")
            rows = slice(cs[0].start - self.base, cs[0].stop - self.base)
            w = weight[ps]
            self.acc[:, rows, cs[1]] += probs[(i, slice(None), *ps)] * w
            self.wsum[rows, cs[1]] += w
        self.added += len(at)

    def finalise(self, stop: int) -> None:
        """Rows [base, stop) are final: codes, confidences and probabilities, then drop them.
        Their bytes reach the host arrays by the next ``finalise`` (or ``outputs``)."""
        stop = min(stop, self.height)
        earlier, self._coming = self._coming, []
        if stop > self.base:
            self._extend(stop)
            n = stop - self.base
            if self.added:
                self._coming.append(self._final_rows(slice(self.base, stop), n))
            self.acc, self.wsum = self.acc[:, n:], self.wsum[n:]
            self.base = stop
        for final in earlier:  # queued a batch ago: on a GPU, long done by now
            self._land(final)

    def _final_rows(self, rows: slice, n: int) -> _FinalRows:
        """The first ``n`` held rows as bytes, copied (asynchronously on CUDA) to the host."""
        prob = self.acc[:, :n] / self.wsum[:n].clamp_min(1e-12)
        best, idx = prob.max(dim=0)
        # The same rounding of the same values as the score: the chosen class's probability
        # equals the confidence byte for byte.
        parts = [(idx + 1).to(torch.uint8), torch.round(best * 255).clamp(0, 255).to(torch.uint8)]
        if self.probability is not None:
            parts.append(torch.round(prob * 255).clamp(0, 255).to(torch.uint8))
        copied = None
        if self.device.type == "cuda":  # into pinned memory, without waiting for the copy
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in parts]
            for h, t in zip(host, parts, strict=True):
                h.copy_(t, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(self.device))
            parts = host
        return _FinalRows(rows, parts[0], parts[1], parts[2] if len(parts) > 2 else None, copied)

    def _land(self, final: _FinalRows) -> None:
        if final.copied is not None:
            final.copied.synchronize()
        self.codes[final.rows] = final.codes.numpy()
        self.score[final.rows] = final.score.numpy()
        if self.probability is not None and final.probability is not None:
            self.probability[: self.classes, final.rows] = final.probability.numpy()

    def _extend(self, stop: int) -> None:
        have = self.base + self.wsum.shape[0]
        if stop > have:
            more = stop - have
            self.acc = torch.cat([self.acc, self.acc.new_zeros((self.classes, more, self.width))],
                                 dim=1)
            self.wsum = torch.cat([self.wsum, self.wsum.new_zeros((more, self.width))])
        self.peak_rows = max(self.peak_rows, self.wsum.shape[0])

    def outputs(self, valid: np.ndarray, water: np.ndarray,
                probabilities: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(lcz, confidence, probability) of the whole core once every row is final: classes
        where ``valid``, water (class 17, full confidence) where ``water``, else 0."""
        self.finalise(self.height)
        for final in self._coming:
            self._land(final)
        self._coming = []
        lcz = np.zeros((self.height, self.width), dtype=np.uint8)
        conf = np.zeros_like(lcz)
        lcz[water] = WATER_CLASS
        conf[water] = 255
        lcz[valid] = self.codes[valid]
        conf[valid] = self.score[valid]
        per_class = self.probability if probabilities else None
        if per_class is not None:
            per_class[:, ~valid] = 0
            # water is class 17 at full probability, unless the model itself scored the pixel
            over = water & ~valid if self.classes >= WATER_CLASS else water
            per_class[WATER_CLASS - 1][over] = 255
        return lcz, conf, per_class
