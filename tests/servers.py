"""Real servers on loopback for tests: an S3 endpoint (moto's server) and a STAC API
(``rustac serve``), each a separate process started and stopped by a fixture; and a small
in-process static file server with byte ranges that watches its clients (User-Agent, reads in
flight at once)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lczscale.train.on_dask import environment as environment  # re-exported for tests

# Credentials for the loopback endpoint only; tests check they never reach a pickle or a cube.
S3_KEY_ID = "lczscale-test-key-id"
S3_SECRET = "lczscale-test-s3-secret-5b1e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


@contextlib.contextmanager
def process(cmd: list[str], port: int, what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # what a client needs in its environment (endpoint + credentials)

    def http_url(self, bucket: str, key: str) -> str:
        """The plain-HTTP URL of an object (path style), readable anonymously in a public
        bucket: the same server doubles as an HTTPS-like static file host with Range reads."""
        return f"{self.endpoint}/{bucket}/{key}"

    def create_bucket(self, name: str, public_read: bool = False) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
        client.create_bucket(Bucket=name)
        if public_read:
            policy = {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{name}/*"}]}
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))

    def upload(self, local: Path, bucket: str, key: str) -> str:
        """Copy a file or directory tree to s3://bucket/key; returns that URL."""
        import s3fs

        fs = s3fs.S3FileSystem(key=S3_KEY_ID, secret=S3_SECRET,
                               client_kwargs={"endpoint_url": self.endpoint})
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    fs.put_file(str(path), f"{bucket}/{key}/{path.relative_to(local)}")
        else:
            fs.put_file(str(local), f"{bucket}/{key}")
        return f"s3://{bucket}/{key}"


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port; the environment points AWS clients at it
    (s3fs/botocore read AWS_ENDPOINT_URL), as a user's environment would for their store."""
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import s3fs

    # fsspec caches S3 clients by their arguments, not the environment: a client made for an
    # earlier server (same arguments, another endpoint) must not be reused.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with process(cmd, port, "moto S3 server", log_dir / "moto.log"):
            yield S3Server(env["AWS_ENDPOINT_URL"], env)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def stac_api(hrefs: list[Path], log_dir: Path) -> Iterator[str]:
    """``rustac serve`` loading collections/items from ``hrefs``; yields the API's root URL."""
    exe = shutil.which("rustac") or str(Path(sys.executable).parent / "rustac")
    port = free_port()
    addr = f"127.0.0.1:{port}"
    cmd = [exe, "serve", "--addr", addr, *[str(h) for h in hrefs]]
    with process(cmd, port, "rustac serve", log_dir / "rustac.log"):
        yield f"http://{addr}"


def need_module(name: str, install: str) -> None:
    """Skip without ``name`` — except under CI (env CI set), where a missing server is a
    failure: CI must run these tests, not quietly skip them."""
    import importlib.util
    import os

    import pytest

    if importlib.util.find_spec(name) is None:
        reason = f"{name} is not installed: {install}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} — CI (.ci/run) must install it")
        pytest.skip(reason)


class _RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the files under the server's root, with single byte ranges — what GDAL's
    /vsicurl/ and /vsis3/ (path style: ``/bucket/key``) and fsspec's HTTP client ask for."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        srv = self.server
        if srv.stopped:  # a kept-alive connection outliving the server: hang up on it
            self.close_connection = True
            return
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (srv.root / rel).resolve()
        srv.seen(self.command, rel, self.headers.get("User-Agent", ""))
        if srv.root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        start, stop, status = 0, len(data), 200
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and "," not in ranged:
            a, _, b = ranged[6:].partition("-")
            start = int(a) if a else max(0, len(data) - int(b))
            stop = min(len(data), int(b) + 1) if a and b else len(data)
            status = 206
        if body and rel.endswith(".tiff"):
            srv.rendezvous(rel)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            self.end_headers()
            if body:
                self.wfile.write(data[start:stop])
        finally:
            if body and rel.endswith(".tiff"):
                srv.done(rel)


class RangeServer(ThreadingHTTPServer):
    """A static file server on loopback (one thread per connection) that records every
    request's User-Agent and the most distinct ``.tiff`` files being served at one moment.

    With ``hold`` set, a GET of a ``.tiff`` waits (up to ``hold`` seconds) until a GET of
    another ``.tiff`` is in flight too: two readers that really run at the same time meet
    there at once, while readers serialised behind a lock never do (``overlapped`` stays
    False; after one wait in vain the server stops holding). A correctness check of
    concurrency that does not depend on timings."""

    daemon_threads = True
    request_queue_size = 128  # GDAL opens many connections at once for one window's blocks

    def __init__(self, root: Path, hold: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root.resolve()
        self.hold = hold
        self.requests: list[tuple[str, str, str]] = []  # (method, path, User-Agent)
        self.overlapped = False
        self.stopped = False
        self._in_flight: dict[str, int] = {}
        self._cond = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def seen(self, method: str, path: str, agent: str) -> None:
        with self._cond:
            self.requests.append((method, path, agent))

    def rendezvous(self, path: str) -> None:
        with self._cond:
            self._in_flight[path] = self._in_flight.get(path, 0) + 1
            if len(self._in_flight) >= 2:
                self.overlapped = True
                self._cond.notify_all()
            elif self.hold and not self.overlapped and not self._cond.wait_for(
                lambda: self.overlapped, timeout=self.hold
            ):
                self.hold = 0.0  # no second reader came: stop holding (a failing test ends)

    def done(self, path: str) -> None:
        with self._cond:
            self._in_flight[path] -= 1
            if not self._in_flight[path]:
                del self._in_flight[path]


@contextlib.contextmanager
def range_server(root: Path, hold: float = 0.0) -> Iterator[RangeServer]:
    """:class:`RangeServer` over ``root``, serving from a background thread."""
    server = RangeServer(root, hold)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopped = True
        server.shutdown()
        server.server_close()
        thread.join(10)
