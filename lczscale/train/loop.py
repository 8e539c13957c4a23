"""The training loop, one rank of a data-parallel run (or the only process); reads top to bottom.

1. read the labelled regions of the training cities through the chunk I/O layer;
2. per-dimension normalisation from training-split pixels, class weights from their counts;
3. each step: the rank's share of the global batch (``sampler``), the location-aware attention
   U-Net, a loss normalised over the global batch (``losses``), batch norm over the global batch
   (``global_norm``), DDP averaging the gradients;
4. every ``checkpoint_every`` steps rank 0 writes resumable state (``train_state``); a run that
   finds state of the same job resumes from it and ends with the same weights;
5. at the end, mIoU on the validation blocks, and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from lczscale import classes
from lczscale.config import ModelConfig
from lczscale.core.grid import Aoi
from lczscale.errors import ConfigError
from lczscale.infer.features import model_input
from lczscale.io.sources.protocol import EmbeddingWindow
from lczscale.io.sources.registry import open_source
from lczscale.model.checkpoint import CheckpointMeta, InputSpec, Normalisation, save_checkpoint
from lczscale.model.unet import LczUNet, size_multiple
from lczscale.train import data_parallel as dist_
from lczscale.train.global_batchnorm import use_global_batchnorm
from lczscale.train.losses import segmentation_loss
from lczscale.train.regions import (
    Region,
    dequantisation,
    index_regions,
    load_regions,
    normalisation,
)
from lczscale.train.sampler import PatchSampler, rank_indices, streamed_normalisation
from lczscale.train.settings import TrainJob
from lczscale.train.splits import VAL
from lczscale.train.state import clear_state, latest_state, load_state, save_state
from lczscale.train.stream import (
    BlockCache,
    patch_location,
    return_free_memory,
    write_sample_index,
)
from lczscale.version import __version__

log = logging.getLogger(__name__)
N = 17


def train_job(job: TrainJob, ranks: dist_.Ranks | None = None, progress: bool = True,
              restart: bool = False) -> dict[str, Any]:
    """Train (or resume training) ``job``; rank 0 writes the checkpoint to ``job.out``."""
    ranks = ranks or dist_.Ranks()
    cfg = job.train
    torch.set_num_threads(cfg.threads)
    dev = dist_.device_for(ranks, cfg.device)
    dist_.start(ranks, dev, cfg.backend)
    source = open_source(job.source)
    year = cfg.year if cfg.year is not None else max(source.years)
    if year not in source.years:
        raise ConfigError(f"{job.source} has no year {year}; it has {list(source.years)}")
    model_cfg = (job.model or ModelConfig()).model_copy(update={"in_dim": source.dimensions})
    if cfg.patch_size % size_multiple(model_cfg):
        raise ConfigError(f"train.patch_size {cfg.patch_size} must be a multiple of "
                          f"{size_multiple(model_cfg)} for widths {model_cfg.widths}")
    method = dequantisation(source)
    cities = tuple(ls for ls in job.labels if ls.name not in cfg.split.holdout_cities)
    freqs = model_cfg.location_frequencies if model_cfg.location else None
    aoi = Aoi.from_bbox(job.bbox) if job.bbox else None
    cache = None
    if cfg.data == "stream":
        regions = index_regions(source, cities, year, cfg.split, cfg.loss.boundary_ignore, aoi)
        cache = BlockCache(source, year, block=cfg.read_block, max_bytes=cfg.cache_mb << 20)
    else:
        regions = load_regions(source, cities, year, cfg.split, freqs, cfg.loss.boundary_ignore,
                               aoi)
    sampler = PatchSampler(regions, cfg.patch_size, cfg.seed,
                           coarse=cfg.loss.consistency_weight > 0, cache=cache,
                           frequencies=freqs, threads=cfg.read_threads)
    if cache is None:
        mean, std = normalisation(regions, seed=cfg.seed)
    else:
        mean, std = streamed_normalisation(
            sampler, cfg.seed, ranks.rank, ranks.world,
            lambda a: dist_.sum_array(ranks, a, dev))

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    net = LczUNet(model_cfg)
    use_global_batchnorm(net, ranks.global_sum)
    net.to(dev)
    model: torch.nn.Module = net
    if ranks.world > 1:
        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda"
                                        else None, forward_sync_buffers=False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    weights = sampler.class_weights().to(dev)
    mean_t = torch.tensor(mean, device=dev)
    std_t = torch.tensor(std, device=dev)
    meta = CheckpointMeta(
        model=model_cfg, classes=classes.LCZ_CODES, class_names=classes.LCZ_CLASS_NAMES,
        input=InputSpec(kind=source.kind, dataset=source.dataset, dimensions=source.dimensions,
                        dequantisation=method),
        normalisation=Normalisation(mean=mean, std=std),
        train=job.model_dump(mode="json") | {"year": year, "world_size": ranks.world,
                                             "cities": [c.name for c in cities]},
        lczscale_version=__version__,
    )

    fingerprint = job.fingerprint()
    if restart and ranks.main:
        clear_state(job.out)
    dist_.barrier(ranks)
    start, history = 0, list[dict[str, float]]()
    state = latest_state(job.out)
    if state is not None:
        start, history = load_state(state, net, opt, sched, fingerprint)
        if ranks.main:
            log.warning("resuming %s from step %d", job.out, start)

    global_batch = cfg.batch_size * ranks.world

    def batch_of(step: int) -> dict[str, torch.Tensor]:
        b = sampler.batch(rank_indices(step, cfg.batch_size, ranks.rank, ranks.world))
        if dev.type == "cuda":
            b = {k: v.pin_memory() for k, v in b.items()}
        return b

    confusion = np.zeros((N, N), dtype=np.int64)
    wait = compute = 0.0
    t0 = time.perf_counter()
    columns = (TextColumn("[bold]train[/bold]"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total} steps"), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, disable=not (progress and ranks.main),
                  console=Console(stderr=True)) as bar:  # stdout is for results
        job_bar = bar.add_task("", total=cfg.steps, completed=start)
        model.train()
        for step, batch in _prefetched(batch_of, range(start + 1, cfg.steps + 1), cfg.prefetch):
            t_got = time.perf_counter()
            wait += batch.waited
            b = {k: v.to(dev, non_blocking=True) for k, v in batch.data.items()}
            x = model_input(b["codes"], b.get("scales"), b["valid"], b.get("location"),
                            mean_t, std_t, method)
            logits = model(x)
            own, terms = segmentation_loss(logits, b["target"], b.get("coarse"), weights,
                                           cfg.loss, ranks.global_sum, ranks.world)
            opt.zero_grad(set_to_none=True)
            own.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                t = b["target"].flatten()
                keep = t >= 0
                idx = t[keep] * N + logits.argmax(1).flatten()[keep]
                confusion += torch.bincount(idx, minlength=N * N).view(N, N).cpu().numpy()
            compute += time.perf_counter() - t_got
            if step % cfg.log_every == 0 or step == cfg.steps:
                cm = dist_.sum_array(ranks, confusion, dev)
                row: dict[str, float] = {
                    "step": step, "epoch": (step * global_batch) // cfg.epoch_samples,
                    "lr": float(sched.get_last_lr()[0]), "train_miou": _miou(cm)}
                row |= {k: float(v) for k, v in terms.items()}
                history.append(row)
                bar.update(job_bar, description=f"epoch {row['epoch']}  loss {row['loss']:.3f}"
                           f"  train mIoU {row['train_miou']:.3f}")
                confusion[:] = 0
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                if ranks.main:
                    save_state(job.out, step, net, meta.model_copy(update={"step": step}), opt,
                               sched, fingerprint, history)
                dist_.barrier(ranks)
            bar.advance(job_bar)

    seconds = time.perf_counter() - t0
    reads = None
    if cache is not None:  # every rank's own reads, gathered (a collective: all ranks call it)
        reads = _per_rank(ranks, dev, (cache.stats.reads, cache.stats.loaded, cache.stats.hits))
        cache.clear()  # validation reads whole regions itself: the blocks are of no more use
    val = validate(net, regions, mean_t, std_t, method, ranks, dev,
                   lambda r: r.data if r.data is not None else source.read(r.zone, r.window,
                                                                            year), freqs)
    done = cfg.steps - start
    metrics: dict[str, Any] = {
        "final_loss": history[-1]["loss"] if history else None,
        "train_miou": history[-1]["train_miou"] if history else None,
        "val_miou": val["miou"], "val_oa": val["oa"], "val_pixels": val["pixels"],
        "history": history, "seconds": round(seconds, 2), "resumed_from": start,
        "samples_per_s": round(done * global_batch / seconds, 2) if done else None,
        "data_wait_fraction": round(wait / max(wait + compute, 1e-9), 4),
        "regions": len(regions), "year": year, "world_size": ranks.world,
        "index_pixels": sum(r.labels.size for r in regions),
        "index_bytes": sum(r.index_bytes for r in regions),
        "data": cfg.data,
    }
    if cache is not None and reads is not None:  # this rank's reads, then each rank's
        metrics["block_reads"], metrics["cache_hits"] = cache.stats.reads, cache.stats.hits
        metrics["reads_per_rank"] = [dict(zip(("calls", "blocks", "hits"), r, strict=True))
                                     for r in reads]
    if ranks.main:
        save_checkpoint(job.out, net.cpu().eval(), meta.model_copy(
            update={"step": cfg.steps, "metrics": metrics}))
        write_sample_index(regions, job.out)
        _write_log(Path(job.out) / "train_log.csv", history)
    dist_.barrier(ranks)
    return metrics


class _Batch:
    def __init__(self, data: dict[str, torch.Tensor], waited: float) -> None:
        self.data = data
        self.waited = waited


def _prefetched(make: Callable[[int], dict[str, torch.Tensor]], steps: range,
                depth: int) -> Iterator[tuple[int, _Batch]]:
    """Batches assembled ``depth`` steps ahead in a thread (numpy slicing releases the GIL),
    with the time the loop waited for each."""
    if depth == 0:
        for s in steps:
            t = time.perf_counter()
            data = make(s)
            yield s, _Batch(data, time.perf_counter() - t)
        return
    q: queue.Queue[tuple[int, dict[str, torch.Tensor] | BaseException]] = queue.Queue(depth)
    stop = threading.Event()

    def work() -> None:
        for s in steps:
            if stop.is_set():
                return
            try:
                q.put((s, make(s)))
            except BaseException as exc:  # handed to the loop, which re-raises it
                q.put((s, exc))
                return

    thread = threading.Thread(target=work, daemon=True, name="lczscale-batches")
    thread.start()
    try:
        for _ in steps:
            t = time.perf_counter()
            s, item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield s, _Batch(item, time.perf_counter() - t)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


@torch.no_grad()
def validate(net: LczUNet, regions: list[Region], mean: torch.Tensor, std: torch.Tensor,
             method: str, ranks: dist_.Ranks, dev: torch.device,
             read: Callable[[Region], EmbeddingWindow] | None = None,
             frequencies: int | None = None) -> dict[str, Any]:
    """The mIoU and OA over the validation blocks (each rank predicts a share of the regions;
    a streamed region is read by ``read`` when its turn comes, then let go)."""
    net.eval()
    m = size_multiple(net.cfg)
    cm = np.zeros((N, N), dtype=np.int64)
    for region in regions[ranks.rank :: ranks.world]:
        labels = region.labels.unpack()
        keep = (region.split.unpack() == VAL) & (labels > 0)
        if not keep.any():
            continue
        if region.data is None:
            assert read is not None
            d = read(region)
            keep &= d.valid
            if frequencies:
                region = replace(region, location=torch.from_numpy(
                    patch_location(region.zone, region.window, frequencies)))
        else:
            d = region.data
        h, w = labels.shape
        ph, pw = -h % m, -w % m
        codes = torch.from_numpy(_pad(d.codes, ph, pw))[None].to(dev)
        scales = None if d.scales is None else torch.from_numpy(_pad(d.scales, ph, pw))[None].to(
            dev)
        valid = torch.from_numpy(_pad(d.valid, ph, pw))[None].to(dev)
        loc = None
        if region.location is not None:
            loc = torch.nn.functional.pad(region.location, (0, pw, 0, ph))[None].to(dev)
        x = model_input(codes, scales, valid, loc, mean, std, method)
        pred = net(x)[0, :, :h, :w].argmax(0).cpu().numpy()
        cm += np.bincount((labels[keep].astype(np.int64) - 1) * N + pred[keep],
                          minlength=N * N).reshape(N, N)
        if region.data is None:  # a read region: its arrays are gone, and so are their pages
            del d, codes, scales, valid, loc, x
            return_free_memory()
    cm = dist_.sum_array(ranks, cm, dev)
    total = int(cm.sum())
    return {"miou": _miou(cm) if total else None,
            "oa": round(float(np.trace(cm) / total), 4) if total else None, "pixels": total}


def _per_rank(ranks: dist_.Ranks, dev: torch.device, counts: tuple[int, ...]
              ) -> list[list[int]]:
    """Each rank's ``counts`` (a row per rank), known to every rank."""
    table = np.zeros((ranks.world, len(counts)), dtype=np.int64)
    table[ranks.rank] = counts
    return [[int(v) for v in row] for row in dist_.sum_array(ranks, table, dev)]


def _pad(a: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)])


def _miou(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = confusion.sum(1) > 0
    return round(float((tp[present] / np.maximum(union[present], 1)).mean()), 4) if \
        present.any() else 0.0


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    fields = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
