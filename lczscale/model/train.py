"""A single-process training loop that reads top to bottom (data-parallel training builds on it).

Reads labelled regions through the chunk I/O layer, samples class-balanced patches, trains the
attention U-Net with class-weighted cross-entropy (nodata ignored), and writes a safetensors +
JSON checkpoint that records the input source, normalisation and settings.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import lczscale
from lczscale import classes
from lczscale.config import GridConfig, ModelConfig, TrainConfig
from lczscale.errors import ConfigError
from lczscale.grid import Aoi
from lczscale.io.sources import open_source
from lczscale.model.checkpoint import CheckpointMeta, InputSpec, Normalisation, save_checkpoint
from lczscale.model.data import PatchSampler, load_regions, normalisation
from lczscale.model.features import model_input
from lczscale.model.predict import pick_device
from lczscale.model.unet import LczUNet, size_multiple


def train(
    source_url: str,
    labels_path: str,
    out_dir: str,
    cfg: TrainConfig | None = None,
    model_cfg: ModelConfig | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model and write its checkpoint to ``out_dir``; returns the training metrics."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    dev = pick_device(device)
    source = open_source(source_url)
    if source.grid_kinds[0] != "utm" or source.kind == "alphaearth":
        raise ConfigError(
            f"training reads per-pixel-scale embeddings on UTM zones; {source.layout} "
            f"({source.kind}) at {source_url} can be mapped but not yet trained on — train on "
            "TESSERA or generic geoemb: stores for now"
        )
    year = cfg.year if cfg.year is not None else max(source.years)
    model_cfg = model_cfg or ModelConfig(in_dim=source.dimensions)
    if model_cfg.in_dim != source.dimensions:
        model_cfg = model_cfg.model_copy(update={"in_dim": source.dimensions})
    multiple = size_multiple(model_cfg)
    if cfg.patch_size % multiple:
        raise ValueError(f"train patch_size {cfg.patch_size} must be a multiple of {multiple}")
    aoi = Aoi.from_bbox(bbox) if bbox else None
    freqs = model_cfg.location_frequencies if model_cfg.location else None
    regions = load_regions(source, labels_path, year, GridConfig(), freqs, aoi)
    mean, std = normalisation(regions, seed=cfg.seed)
    sampler = PatchSampler(regions, cfg.patch_size, cfg.seed)
    model = LczUNet(model_cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    loss_fn = torch.nn.CrossEntropyLoss(weight=sampler.class_weights().to(dev), ignore_index=-1)
    mean_t = torch.tensor(mean, device=dev)
    std_t = torch.tensor(std, device=dev)
    confusion = np.zeros((17, 17), dtype=np.int64)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    columns = (TextColumn("[bold]train[/bold]"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total} steps"), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("", total=cfg.steps)
        model.train()
        for step in range(1, cfg.steps + 1):
            b = {k: v.to(dev) for k, v in sampler.sample(cfg.batch_size).items()}
            x = model_input(b["codes"], b["scales"], b["valid"], b.get("location"),
                            mean_t, std_t, "per_pixel_scale")
            logits = model(x)
            loss = loss_fn(logits, b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                t = b["target"].flatten()
                keep = t >= 0
                pred = logits.argmax(1).flatten()[keep].cpu().numpy()
                np.add.at(confusion, (t[keep].cpu().numpy(), pred), 1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                iou = _iou(confusion)
                history.append({"step": step, "loss": loss.item(), "miou": iou})
                bar.update(job, description=f"loss {loss.item():.3f}  train mIoU {iou:.3f}")
                confusion[:] = 0
            bar.advance(job)
    metrics = {"final_loss": history[-1]["loss"], "train_miou": history[-1]["miou"],
               "history": history, "seconds": round(time.perf_counter() - t0, 2),
               "regions": len(regions), "year": year}
    meta = CheckpointMeta(
        model=model_cfg,
        classes=classes.LCZ_CODES,
        class_names=classes.LCZ_CLASS_NAMES,
        input=InputSpec(kind=source.kind, dataset=source.dataset, dimensions=source.dimensions,
                        dequantisation="per_pixel_scale"),
        normalisation=Normalisation(mean=mean, std=std),
        train=cfg.model_dump(mode="json") | {"source": source_url, "labels": labels_path,
                                             "bbox": bbox},
        metrics=metrics,
        step=cfg.steps,
        lczscale_version=lczscale.__version__,
    )
    save_checkpoint(out_dir, model.cpu().eval(), meta)
    return metrics


def _iou(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = confusion.sum(1) > 0
    return float((tp[present] / np.maximum(union[present], 1)).mean()) if present.any() else 0.0
