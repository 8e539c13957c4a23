"""The measured rates a dry run projects a map's hours from: the stored benchmark results.

``benchmarks/run.py`` writes JSON lines (``benchmarks/results/*.jsonl`` in the repository), each
with its settings and a ``context`` (host, CPU, GPUs, git sha). Two kinds of line give a rate
per worker:

- **model**: ``model_forward`` lines, the bare U-Net's forward pass in *patch* pixels per second
  on one device (``device``: ``cpu`` or ``cuda``), per input path, dtype, memory format, batch
  and patch size. The line closest to the map's settings on the map's device type is taken; where
  none was measured on that device type (no GPU figure is stored today), the other device's
  line is returned and ``same_device`` says so.
- **read**: ``read_source`` (``read_throughput.py``) and ``store_read`` (``store_planning.py``)
  lines, ``source.read`` of one layout from one store in *read-window* pixels per second.

Nothing here guesses a figure: a rate is a stored line, named by its file and line number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lczscale.errors import ConfigError

# the repository's results folder; an installed package has none beside it
DEFAULT_RATES = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MODEL_LINES = ("model_forward",)
READ_LINES = ("read_source", "store_read")


@dataclass(frozen=True)
class Rate:
    """One stored figure: ``value`` pixels per second of one worker, and where it came from."""

    what: str  # "model" or "read"
    value: float
    unit: str
    file: str
    line: int
    benchmark: str  # the line's ``name``
    device: str  # what it was measured on, in words
    device_type: str  # "cpu" or "cuda"
    git_sha: str | None
    dirty: bool | None
    settings: dict[str, Any] = field(default_factory=dict)
    matches: dict[str, bool] = field(default_factory=dict)  # map setting → measured alike

    def as_dict(self) -> dict[str, Any]:
        """The rate as JSON: value, unit, file and line, device, git sha, settings."""
        return {"what": self.what, "value": self.value, "unit": self.unit, "file": self.file,
                "line": self.line, "benchmark": self.benchmark, "device": self.device,
                "device_type": self.device_type, "git_sha": self.git_sha, "dirty": self.dirty,
                "settings": self.settings, "matches": self.matches}


@dataclass(frozen=True)
class StoredLine:
    """One parsed result line and its place."""

    file: str
    line: int
    data: dict[str, Any]


def rates_path(given: str | Path | None) -> Path | None:
    """The file or folder to read rates from: ``given`` (which must exist), else the
    repository's ``benchmarks/results`` when it is there, else None (no stored rates)."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"--rates {given} does not exist; give a benchmark results file "
                              "(.jsonl) or a folder of them, e.g. benchmarks/results")
        return path
    return DEFAULT_RATES if DEFAULT_RATES.is_dir() else None


def read_lines(path: Path | None) -> list[StoredLine]:
    """Every JSON line of ``path`` (a ``.jsonl`` file, or a folder: its ``*.jsonl`` files in
    name order); lines of a benchmark that failed (an ``error`` field) are left out."""
    if path is None:
        return []
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out: list[StoredLine] = []
    for f in files:
        for number, text in enumerate(f.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{f} line {number} is not JSON ({exc.msg}); rates are "
                                  "benchmark result lines (benchmarks/run.py --out)") from None
            if isinstance(data, dict) and "error" not in data:
                out.append(StoredLine(str(f), number, data))
    return out


def _context(line: dict[str, Any]) -> dict[str, Any]:
    ctx = line.get("context")
    return ctx if isinstance(ctx, dict) else {}


def device_words(line: dict[str, Any], device_type: str) -> str:
    """Where a line was measured, in words: the GPU's name, or the CPU and its host."""
    ctx = _context(line)
    gpus = ctx.get("gpus") or []
    if device_type == "cuda" and gpus:
        return str(gpus[0])
    cpu = ctx.get("cpu") or "cpu"
    count = ctx.get("cpu_count")
    threads = line.get("threads")
    parts = [f"CPU {cpu}", f"{count} cores" if count else None,
             f"{threads} torch thread(s)" if threads else None,
             f"host {ctx['host']}" if ctx.get("host") else None]
    return ", ".join(p for p in parts if p)


def _device_type(line: dict[str, Any]) -> str:
    return "cuda" if str(line.get("device", "cpu")).startswith("cuda") else "cpu"


def _closeness(measured: Any, wanted: float) -> float:
    """Minus the log distance of two sizes (0 best); unknown sizes rank last."""
    if not isinstance(measured, int | float) or measured <= 0:
        return -math.inf
    return -abs(math.log(measured / wanted))


def _same_model(measured: Any, model: dict[str, Any]) -> bool:
    """Whether the measured model is the map's (the fields the line records agree)."""
    return isinstance(measured, dict) and all(model.get(k) == v for k, v in measured.items())


def _rate(what: str, stored: StoredLine, value: float, unit: str, device_type: str,
          settings: dict[str, Any], matches: dict[str, bool]) -> Rate:
    ctx = _context(stored.data)
    return Rate(what, value, unit, stored.file, stored.line, str(stored.data.get("name")),
                device_words(stored.data, device_type), device_type, ctx.get("git_sha"),
                ctx.get("dirty"), settings, matches)


def model_rate(lines: list[StoredLine], device_type: str, dtype: str, channels_last: bool,
               patch: int, batch: int | str, model: dict[str, Any] | None) -> Rate | None:
    """The stored forward-pass rate closest to the map's: its device type first (the other's
    only when none was measured on it), then the map's input path (int8 codes), dtype, memory
    format and model, then the nearest patch and batch size (``auto``: the largest), full runs
    before ``--quick`` ones, the later line last."""
    found = [s for s in lines if s.data.get("name") in MODEL_LINES
             and isinstance(s.data.get("px_per_s"), int | float)]
    if not found:
        return None
    wanted_batch = 1024.0 if batch == "auto" else float(batch)

    def key(item: tuple[int, StoredLine]) -> tuple[Any, ...]:
        order, s = item
        d = s.data
        return (_device_type(d) == device_type, d.get("input") == "int8",
                d.get("dtype") == dtype, bool(d.get("channels_last")) == channels_last,
                model is None or _same_model(d.get("model"), model),
                _closeness(d.get("patch_size"), patch), _closeness(d.get("batch_size"),
                                                                    wanted_batch),
                not d.get("quick", False), order)

    _, best = max(enumerate(found), key=key)
    d = best.data
    kind = _device_type(d)
    settings = {k: d.get(k) for k in ("device", "input", "dtype", "channels_last", "batch_size",
                                      "patch_size", "threads", "flops_per_px", "quick")}
    settings["model"] = d.get("model")
    matches = {"device_type": kind == device_type, "input": d.get("input") == "int8",
               "dtype": d.get("dtype") == dtype,
               "channels_last": bool(d.get("channels_last")) == channels_last,
               "patch_size": d.get("patch_size") == patch,
               "batch_size": batch == "auto" or d.get("batch_size") == batch,
               "model": model is not None and _same_model(d.get("model"), model)}
    return _rate("model", best, float(d["px_per_s"]), "patch px/s per worker (model-only "
                 "forward)", kind, settings, matches)


def store_kind(url: str) -> str:
    """``local`` for a path or ``file://`` URL, else the URL's scheme (``s3``, ``gs``, …)."""
    if url.startswith("file://") or "://" not in url:
        return "local"
    return url.split("://", 1)[0]


def _store_matches(measured: Any, kind: str) -> bool:
    text = str(measured or "")
    return text.startswith("local") if kind == "local" else text.startswith(kind)


def read_rate(lines: list[StoredLine], layout: str, store: str) -> Rate | None:
    """The stored ``source.read`` rate of ``layout`` from a store of kind ``store`` (``local``,
    ``s3``, …; another store of the layout only when that one was not measured: ``matches``
    says so), full runs and the larger windows first, the later line last."""
    found = [s for s in lines if s.data.get("name") in READ_LINES
             and s.data.get("layout") == layout
             and isinstance(s.data.get("mpx_per_s"), int | float)]
    if not found:
        return None

    def window_px(d: dict[str, Any]) -> int:
        w = d.get("window")
        if isinstance(w, list) and len(w) == 2:
            return int(w[0]) * int(w[1])
        return int(w) ** 2 if isinstance(w, int) else 0

    def key(item: tuple[int, StoredLine]) -> tuple[Any, ...]:
        order, s = item
        return (_store_matches(s.data.get("store"), store), not s.data.get("quick", False),
                window_px(s.data), order)

    _, best = max(enumerate(found), key=key)
    d = best.data
    settings = {k: d.get(k) for k in ("layout", "store", "window", "halo", "mb_per_s", "bytes",
                                      "quick")}
    matches = {"store": _store_matches(d.get("store"), store)}
    return _rate("read", best, float(d["mpx_per_s"]) * 1e6, "read-window px/s per worker "
                 "(source.read)", "cpu", settings, matches)
