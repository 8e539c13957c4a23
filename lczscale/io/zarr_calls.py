"""zarr's synchronous reads and writes with a deadline, and a fresh I/O loop after a stall.

zarr's ``arr[sel]`` / ``arr[sel] = v`` run a coroutine on zarr's one I/O loop thread and wait
with no deadline, so a loop that stops waking up (lost wake-ups of its self-pipe: every later
call on it hangs too) would hang a worker for ever. Here a call that makes no progress within
the deadline raises ``TimeoutError`` (retried by the tile's reads and writes) and its loop is
abandoned to its daemon thread, so that zarr makes a new one for the retry. The warning logged
then records the loop's wake-up sockets and pending tasks.

(The hangs first blamed on zarr's loop were a whole-process deadlock in Dask's sampling
profiler, fixed in ``lczscale.execute.clusters.worker_profiler``; this guard stays for the loop
itself.)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import zarr
import zarr.core.sync as zsync

log = logging.getLogger(__name__)

# A zarr array of either format: zarr.Array is generic in its metadata class (v2 or v3), which
# no reader here depends on. Lazily evaluated, so it costs nothing at import.
type ZarrArray = zarr.Array[Any]

TIMEOUT_S = 180.0  # one call (a tile's band, a tile's chunk); a TimeoutError is retried
stalls = 0  # how many loops this process has abandoned (for tests and logs)


FUSED_PIPELINE = "zarr.core.codec_pipeline.FusedCodecPipeline"
_pipeline_lock = threading.Lock()


@contextmanager
def fused_reads() -> Iterator[None]:
    """Arrays opened inside decode with zarr's fused codec pipeline, where this zarr has it.

    The default pipeline schedules one coroutine per inner chunk; a 128 px read of a TESSERA
    shard is 16 of them, and that bookkeeping, not the decoding, was most of the read's time.
    The fused one decodes a call's chunks synchronously in one worker thread (1.2–1.25×
    faster reads: ``benchmarks/results/cpu-2core-shared-vm-patch-read.jsonl``), and falls back to
    the async path for stores without synchronous I/O (S3, Icechunk). Only embedding sources
    open their arrays here: the cube's writes keep zarr's default pipeline. zarr picks the
    pipeline when an array object is made, from its global config, so the switch is held
    under a lock and undone at once.
    """
    import zarr.core.codec_pipeline as pipelines

    if not hasattr(pipelines, FUSED_PIPELINE.rsplit(".", 1)[1]):  # zarr < 3.4: the default
        yield
        return
    with _pipeline_lock, zarr.config.set({"codec_pipeline.path": FUSED_PIPELINE}):
        yield


def getitem(arr: ZarrArray, sel: tuple[Any, ...], timeout: float = TIMEOUT_S) -> Any:
    """``arr[sel]`` within ``timeout`` seconds."""
    return run(arr.async_array.getitem(sel), timeout)


def setitem(arr: ZarrArray, sel: tuple[Any, ...], value: Any,
            timeout: float = TIMEOUT_S) -> None:
    """``arr[sel] = value`` within ``timeout`` seconds."""
    run(arr.async_array.setitem(sel, value), timeout)


def run[T](coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on zarr's I/O loop; on a timeout, retire that loop and raise."""
    loop = zsync._get_loop()
    try:
        return zsync.sync(coro, loop=loop, timeout=timeout)
    except TimeoutError:
        _retire(loop, timeout)
        raise


def _retire(loop: Any, timeout: float) -> None:
    """Make zarr start a new loop (and executor) on its next call, unless another thread
    already did. The old loop is not stopped: a slow but live call on it may still finish."""
    global stalls
    with zsync._get_lock():
        if zsync.loop[0] is not loop:
            return
        log.warning(
            "zarr call made no progress in %.0f s (thread %s, pid %d); its I/O loop is "
            "retired and the call retried on a new one. Loop state: %s",
            timeout, threading.current_thread().name, os.getpid(), _describe(loop),
        )
        zsync.loop[0] = None
        zsync.iothread[0] = None
        zsync._executor = None
        stalls += 1


def _describe(loop: Any) -> str:
    """The loop's wake-up socket pair and pending tasks, best effort (for the log)."""
    parts = []
    for name in ("_ssock", "_csock"):
        sock = getattr(loop, name, None)
        fd = sock.fileno() if sock is not None else -1
        try:
            target = os.readlink(f"/proc/self/fd/{fd}") if fd >= 0 else "closed"
        except OSError as exc:
            target = f"unreadable ({exc.strerror})"
        parts.append(f"{name}=fd {fd} -> {target}")
    try:
        import asyncio

        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        parts.append(f"{len(tasks)} pending task(s): "
                     + "; ".join(repr(t.get_coro())[:160] for t in tasks[:4]))
    except RuntimeError as exc:  # the task set changed while it was read
        parts.append(f"tasks unreadable ({exc})")
    return ", ".join(parts)
