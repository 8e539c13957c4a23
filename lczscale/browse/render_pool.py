"""Renders for ``lczscale serve`` on a fixed pool of workers, each awaited with a deadline,
and a cache of the tiles they made.

A render reads the cube (GDAL, Zarr) and cannot be stopped from Python, so the number of
renders at once must be bounded apart from the number of connections (``http_server``): a
request waits at most ``Limits.timeout`` for its render (then 503), and the render goes on to
fill the cache without holding the request's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lczscale.browse.http_server import HttpError

logger = logging.getLogger("lczscale.browse.serve")  # the one log of ``lczscale serve``


class TileCache:
    """Recently rendered PNG tiles (a browser asks for the same ones again while panning)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        """The tile under ``key``, or None; a hit becomes the most recent."""
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> bytes:
        """Keep ``data`` under ``key`` (dropping the least recent beyond ``size``); ``data``."""
        with self.lock:
            self.items[key] = data
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return data


class Renderer:
    """Runs renders on ``workers`` threads; each caller waits at most ``timeout`` seconds.

    Python cannot stop a thread inside GDAL or a Zarr read, so a render that outlives its
    request runs to its end (reads are bounded by ``view.MAX_READ_PX``), then frees its
    worker; callers that find every worker busy wait for one within their own deadline. A
    second request for a tile already being rendered waits on that render instead of
    starting another: retries of a slow tile cannot take every worker.
    """

    def __init__(self, workers: int, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lczscale-render")
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[Any]] = {}

    def run(self, key: Hashable | None, make: Callable[[], Any]) -> Any:
        """``make()``'s value (or its exception), or HttpError 503 past the deadline. Calls
        with the same ``key`` (not None) share one running render."""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            fut = self._running.get(key) if key is not None else None
            mine = fut is None
            if fut is None:
                fut = Future()
                if key is not None:
                    self._running[key] = fut
        if mine:
            self._start(key, fut, make, deadline)
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            fut.add_done_callback(_log_late_failure)
            raise HttpError(503, f"rendering took longer than {self.timeout:g} s") from None

    def close(self) -> None:
        """Cancel renders not yet started; running ones end on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start(self, key: Hashable | None, fut: Future[Any], make: Callable[[], Any],
               deadline: float) -> None:
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._finish(key, fut, HttpError(503, "every renderer is busy"))
            return
        try:
            self._pool.submit(self._work, key, fut, make)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._slots.release()
            self._finish(key, fut, HttpError(503, "the server is shutting down"))

    def _work(self, key: Hashable | None, fut: Future[Any], make: Callable[[], Any]) -> None:
        try:
            value = make()
        except BaseException as exc:  # handed to whoever waits on ``fut``
            self._finish(key, fut, exc)
        else:
            self._finish(key, fut, None, value)
        finally:
            self._slots.release()

    def _finish(self, key: Hashable | None, fut: Future[Any], error: BaseException | None,
                value: Any = None) -> None:
        with self._lock:
            if key is not None and self._running.get(key) is fut:
                del self._running[key]
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def _log_late_failure(fut: Future[Any]) -> None:
    """A render whose request timed out failed later: nobody else will report it."""
    exc = fut.exception()
    if exc is not None and not isinstance(exc, HttpError):
        logger.error("a render that outlived its request failed", exc_info=exc)
