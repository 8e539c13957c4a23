"""The rendered DaskJob's commands, run here as the pods would run them (no Kubernetes).

Schema validation says the manifests are well formed; this says their *contents* work: the
scheduler, worker and ``lczscale map`` command lines and environment, taken from the rendered
DaskJob with TLS on (the default: no ``security`` section, certificates from the Secret that
``lczscale deploy kubernetes`` renders, "mounted" by writing its keys out), are started as
local processes (paths and host names mapped to this
machine, ``$(VAR)`` expanded as the kubelet does), map the synthetic world, and give the same
cube as a serial run (with a ``GPU=1`` worker on the GPU where there is one). It also checks
what the operator relies on: the scheduler's health endpoint (readiness probe) and the HTTP API
it scales through.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cube_compare import assert_same, cube_arrays
from distributed import Client
from servers import free_port

from lczscale.config.clusters import KubernetesClusterConfig
from lczscale.execute.clusters import k8s_manifests as km
from lczscale.execute.clusters.k8s_pods import CONFIG_DIR, TLS_DIR
from lczscale.execute.clusters.kubernetes_cluster import write_tls_secret

pytestmark = pytest.mark.integration


def _mount_rendered_secret(cfg: KubernetesClusterConfig, directory: Path) -> None:
    """What the kubelet does with the Secret deploy renders: each key a file in the mount."""
    [secret_file, _] = write_tls_secret(cfg, directory.parent / "rendered")
    secret = yaml.safe_load(secret_file.read_text())
    assert secret["metadata"]["name"] == "lcz-tls"
    directory.mkdir()
    for name, text in secret["stringData"].items():
        (directory / name).write_text(text)


class Pods:
    """Runs containers of the rendered manifests as local processes."""

    def __init__(self, here: dict[str, str]) -> None:
        self.here = here  # in-cluster string → local string
        self.procs: list[subprocess.Popen[bytes]] = []

    def _local(self, text: str) -> str:
        for there, local in self.here.items():
            text = text.replace(there, local)
        return text

    def env(self, container: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env |= {e["name"]: self._local(e["value"]) for e in container["env"] if "value" in e}
        return env | extra

    def command(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        args = [self._local(a) for a in container["command"]]
        return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]

    def start(self, container: dict[str, Any], log: Path, **extra: str) -> None:
        env = self.env(container, extra)
        self.procs.append(subprocess.Popen(self.command(container, env), env=env,
                                           stdout=log.open("wb"), stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _http(url: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
                return json.loads(body) if body.startswith(("{", "[")) else body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_rendered_daskjob_maps_over_tls_like_a_serial_run(world, serial_cube,
                                                          tmp_path: Path) -> None:
    cfg = KubernetesClusterConfig(
        name="lcz", namespace="maps", workers=1, worker_gpus=int(torch.cuda.is_available()),
        volume_claim="data", volume_mount=str(world.dir))
    assert cfg.security.tls, "TLS is the default"
    _mount_rendered_secret(cfg, tmp_path / "tls")
    out = world.dir / "k8s-tls.zarr"
    map_cfg = world.map_config(out, executor="dask")
    job = km.dask_job(cfg, map_cfg)
    config = tmp_path / "config"
    config.mkdir()
    (config / "map.yaml").write_text(km.map_config_map(cfg, map_cfg)["data"]["map.yaml"])

    port, dashboard = free_port(), free_port()
    pods = Pods({
        TLS_DIR: str(tmp_path / "tls"), f"{CONFIG_DIR}/": f"{config}/",
        f"lcz-map-scheduler.maps.svc.cluster.local:{8786}": f"127.0.0.1:{port}",
        "0.0.0.0": "127.0.0.1", "8786": str(port), ":8787": f":{dashboard}", ":8788": ":0",
    })
    cluster = job["spec"]["cluster"]["spec"]
    scheduler = cluster["scheduler"]["spec"]["containers"][0]
    worker = cluster["worker"]["spec"]["containers"][0]
    client = job["spec"]["job"]["spec"]["containers"][0]
    try:
        pods.start(scheduler, tmp_path / "scheduler.log")
        assert _http(f"http://127.0.0.1:{dashboard}/health") == "ok"  # readiness probe
        # the HTTP API the operator's autoscaler uses (its RPC fallback cannot speak TLS)
        assert "workers" in _http(f"http://127.0.0.1:{dashboard}/api/v1/adaptive_target")
        pods.start(worker, tmp_path / "worker.log", DASK_WORKER_NAME="lcz-map-default-worker-0")
        env = pods.env(client, {})
        done = subprocess.run(pods.command(client, env), env=env, capture_output=True,
                              text=True, timeout=600)
        logs = "\n".join((tmp_path / f).read_text() for f in ("scheduler.log", "worker.log"))
        assert done.returncode == 0, done.stderr[-3000:] + logs[-3000:]
        assert re.search(r"Scheduler at:\s+tls://127\.0\.0\.1", logs), logs[:2000]
        summary = json.loads(done.stdout[done.stdout.rfind("\n{") + 1:])  # the last JSON
        assert summary["computed"] >= 4
        assert not summary.get("failed")
        # TLS only: a plain tcp:// client gets nowhere (refused, or timed out, at that address)
        with pytest.raises(OSError, match=rf"tcp://127\.0\.0\.1:{port}\b"):
            Client(f"tcp://127.0.0.1:{port}", timeout="3s")
    finally:
        pods.stop()
    assert_same(cube_arrays(serial_cube.url, world), cube_arrays(str(out), world))
