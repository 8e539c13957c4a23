"""Real servers on loopback for tests: an S3 endpoint (moto's server) and a STAC API
(``rustac serve``), each a separate process started and stopped by a fixture."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lczscale.execute.train_dask import environment as environment  # re-exported for tests

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
