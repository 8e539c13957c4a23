"""A standard-library HTTP server whose cost per client is bounded, for ``lczscale serve``.

It knows nothing of maps: it turns each GET's request target into a ``Reply`` with a
``respond`` function (``map_app.MapApp.respond``), and bounds what any client can make it
spend (see ``Limits``):

- connections are handled by a fixed pool of threads with a bounded waiting line; beyond it
  a connection gets a 503 at once instead of a new thread;
- each socket read or write times out, so an idle client cannot hold a thread;
- a failure the server did not expect is a 500 whose body says only "internal error" and a
  request id; the exception goes to the ``lczscale.browse.serve`` log under the same id.

Kept apart from the routes so that these guarantees can be read (and reviewed) in one place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from lczscale.errors import ConfigError, LczscaleError

logger = logging.getLogger("lczscale.browse.serve")  # the one log of ``lczscale serve``

JSON = "application/json"
REFUSE_WAIT = 0.1  # s a refused connection may take to send its request (see _refuse)


@dataclass(frozen=True)
class Limits:
    """What the server may spend on its clients: one slow render or a flood of connections
    must cost a bounded number of threads and a bounded wait, never the whole server.

    ``timeout``: seconds a request waits for its render (then 503), and the socket timeout of
    each read or write (an idle client cannot hold a thread longer). ``threads``: connections
    handled at once. ``workers``: renders at once (a render that outlives its request still
    holds its worker until it ends, so at most this many can pile up). ``backlog``:
    connections waiting for a thread; beyond it a connection gets a 503 at once.
    """

    timeout: float = 30.0
    threads: int = 16
    workers: int = max(2, min(8, os.cpu_count() or 2))
    backlog: int = 64

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"serve timeout must be a positive number of seconds, got "
                              f"{self.timeout}")
        if self.threads < 1 or self.workers < 1 or self.backlog < 0:
            raise ConfigError(f"serve needs threads >= 1, workers >= 1 and backlog >= 0, got "
                              f"{self.threads}, {self.workers}, {self.backlog}")


class HttpError(Exception):
    """A request answered with ``status`` and a short message of ours (never a traceback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reply:
    """A response: status, body and content type; ``cacheable`` lets a browser keep it."""

    status: int
    body: bytes
    ctype: str
    cacheable: bool = False


def json_reply(obj: Any, status: int = 200) -> Reply:
    """``obj`` as a JSON response."""
    return Reply(status, json.dumps(obj).encode(), JSON)


def error_reply(status: int, message: str, request_id: str | None = None) -> Reply:
    """The JSON body of an error: ``{"error": message}``, with the request id of a 5xx."""
    body: dict[str, str] = {"error": message}
    if request_id is not None:
        body["request_id"] = request_id
    return json_reply(body, status)


class BoundedHTTPServer(HTTPServer):
    """An HTTP server whose connections are handled by a fixed pool of ``limits.threads``
    threads. ``ThreadingHTTPServer`` starts a thread per connection, so a flood of slow
    requests grows threads (and their stacks) without bound; here at most
    ``limits.backlog`` connections wait for a thread, and one beyond gets a 503 at once.
    A connection that waited longer than ``limits.timeout`` gets a 503 too (its client has
    likely given up)."""

    request_queue_size = 128  # the listening socket's backlog, in the kernel

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 limits: Limits, on_close: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._capacity = threading.BoundedSemaphore(limits.threads + limits.backlog)
        self._pending: queue.SimpleQueue[tuple[Any, Any, float] | None] = queue.SimpleQueue()
        self._on_close = on_close
        super().__init__(address, handler)
        self._threads = [threading.Thread(target=self._work, name=f"lczscale-http-{i}",
                                          daemon=True) for i in range(limits.threads)]
        for thread in self._threads:
            thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the connection for the pool, or refuse it at once when the line is full."""
        if not self._capacity.acquire(blocking=False):
            logger.warning("busy: refused a connection from %s", client_address[0])
            _refuse(request)
            self.shutdown_request(request)
            return
        self._pending.put((request, client_address, time.monotonic()))

    def _work(self) -> None:
        while (item := self._pending.get()) is not None:
            request, client_address, since = item
            try:
                if time.monotonic() - since > self.limits.timeout:
                    _refuse(request)
                else:
                    self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                self._capacity.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection broke outside a request's handling (the client went away): not
        worth socketserver's traceback on stderr."""
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        """Close the socket, let the pool's threads end, then run ``on_close``."""
        super().server_close()
        for _ in self._threads:
            self._pending.put(None)
        if self._on_close is not None:
            self._on_close()


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without a handler thread. The request is read first (at most
    ``REFUSE_WAIT`` s for it to arrive): closing a socket with unread data resets the
    connection, and the client could lose the answer."""
    body = json.dumps({"error": "server busy, retry later"}).encode()
    head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        sock.settimeout(REFUSE_WAIT)
        sock.recv(65536)
        sock.sendall(head.encode() + body)
    except OSError:
        pass


def make_handler(respond: Callable[[str], Reply],
                 socket_timeout: float) -> type[BaseHTTPRequestHandler]:
    """A request handler answering each GET with ``respond(target)``: its ``HttpError`` is
    that status, a ``LczscaleError`` (the cube cannot give this view) a 400, anything else a
    generic 500 with the detail in the log."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "lczscale"
        timeout = socket_timeout  # of each socket read or write: an idle client lets go

        def log_message(self, format: str, *args: Any) -> None:  # errors go to ``logger``
            logger.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            request_id = secrets.token_hex(6)
            try:
                reply = respond(self.path)
            except HttpError as exc:
                if exc.status >= 500:
                    logger.warning("request %s: GET %.200r: %s", request_id, self.path,
                                   exc.message)
                reply = error_reply(exc.status, exc.message,
                                    request_id if exc.status >= 500 else None)
            except LczscaleError as exc:  # the cube cannot give this view (messages say why)
                reply = error_reply(400, str(exc))
            except Exception:  # a bug: the detail stays in the log, the client gets the id
                logger.exception("request %s: GET %.200r failed", request_id, self.path)
                reply = error_reply(500, "internal error", request_id)
            try:
                self._send(reply, request_id)
            except OSError:  # the client went away or stalled past the socket timeout
                logger.debug("request %s: could not send the reply", request_id,
                             exc_info=True)

        def _send(self, reply: Reply, request_id: str) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "max-age=300" if reply.cacheable else "no-store")
            self.send_header("X-Request-Id", request_id)
            if reply.status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(reply.body)

    return Handler
