"""lczscale on Kubernetes: write the rendered manifests, or start a DaskCluster from Python.

Both go through the same renderer (``k8s_manifests``), so ``kubectl apply -k`` and
``open_kube_cluster`` create the same pods. Nothing here was run against a live Kubernetes API
in this repository's tests (there is none on the test machines): the manifests are validated
offline against the Kubernetes and operator schemas, and ``open_kube_cluster`` is tested only
for handing the operator the rendered spec.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lczscale.config import MapConfig, load_yaml
from lczscale.config.clusters import KubernetesClusterConfig, load_cluster_config
from lczscale.errors import ConfigError
from lczscale.execute.clusters import k8s_pods as pods
from lczscale.execute.clusters.k8s_manifests import (
    SECRET_HEADER,
    dask_cluster,
    kustomization,
    render,
    tls_secret,
    to_yaml,
)
from lczscale.train.settings import TrainJob

# The files this module writes; a stale one (say, the autoscaler of an earlier adaptive
# config) is removed, so a directory always holds exactly what its kustomization lists.
_DIRS = ("cluster", "map", "train")
_FILES = ("kustomization.yaml", "daskcluster.yaml", "daskautoscaler.yaml", "configmap.yaml",
          "daskjob.yaml", "service.yaml", "job.yaml")


def load_kubernetes_config(path: str | Path) -> KubernetesClusterConfig:
    """A cluster file that must be ``kind: kubernetes`` (a ConfigError says which kind it is)."""
    cfg = load_cluster_config(path)
    if not isinstance(cfg, KubernetesClusterConfig):
        raise ConfigError(
            f"{path} is a `kind: {cfg.kind}` cluster; Kubernetes manifests need `kind: "
            "kubernetes` (see deploy/kubernetes/cluster.yaml)"
        )
    return cfg


def load_train_job(path: str | Path) -> TrainJob:
    """The training job ``lczscale train`` left (``train_job.json``), validated."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training job {p} not found; write one with `lczscale train` (it "
                          "leaves MODEL_DIR/train_job.json) or see deploy/kubernetes/")
    try:
        return TrainJob.model_validate_json(p.read_text())
    except ValidationError as exc:
        raise ConfigError(f"{p}: invalid training job: {exc}") from exc


def write_manifests(cluster: str | Path, map_config: str | Path, out: str | Path,
                    train: str | Path | None = None, ranks: int | None = None) -> list[Path]:
    """Render from the config files and write ``out/{cluster,map,train}/``; returns the paths."""
    cfg = load_kubernetes_config(cluster)
    map_cfg = load_yaml(map_config, MapConfig)
    job = load_train_job(train) if train is not None else None
    manifests = render(cfg, map_cfg, job, ranks)
    root = Path(out)
    for d in _DIRS:
        for f in _FILES:
            stale = root / d / f
            if f"{d}/{f}" not in manifests and stale.is_file():
                stale.unlink()
    written = []
    for rel, manifest in manifests.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(manifest))
        written.append(path)
    return written + write_tls_secret(cfg, root)


def write_tls_secret(cfg: KubernetesClusterConfig, root: Path) -> list[Path]:
    """``root/tls/``: the TLS Secret the pods mount, when TLS is on and no Secret of the
    user's is named. Made once (a temporary self-signed certificate) and kept while it still
    fits the config, so rendering again never changes the certificate of a running cluster;
    removed when TLS is off or ``tls_secret`` names the user's own."""
    mount = pods.tls_mount(cfg)
    directory = root / "tls"
    secret, kustom = directory / "secret.yaml", directory / "kustomization.yaml"
    if mount is None or not mount.rendered:
        for f in (secret, kustom):
            f.unlink(missing_ok=True)
        return []
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _fits(secret, cfg, mount):
        from distributed.security import Security

        _write_private(secret, to_yaml(tls_secret(cfg, mount, Security.temporary()),
                                       header=SECRET_HEADER))
    kustom.write_text(to_yaml(kustomization([secret.name])))
    return [secret, kustom]


def _fits(path: Path, cfg: KubernetesClusterConfig, mount: pods.TlsMount) -> bool:
    """Whether an earlier render's Secret names the same Secret, namespace and keys."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    keys = {p.rsplit("/", 1)[-1] for p in (mount.ca, mount.cert, mount.key)}
    return (isinstance(doc, dict) and doc.get("kind") == "Secret"
            and doc.get("metadata", {}).get("name") == mount.secret
            and doc.get("metadata", {}).get("namespace") == cfg.namespace
            and set(doc.get("stringData") or {}) == keys
            and all("-----BEGIN" in str(v) for v in doc["stringData"].values()))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by this user only (0600 from the start, not chmod after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def _kube_cluster_class() -> Any:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:
        raise ConfigError(
            "a kubernetes cluster needs dask-kubernetes: pip install 'lczscale[kubernetes]'"
        ) from exc
    return KubeCluster


@contextmanager
def open_kube_cluster(cfg: KubernetesClusterConfig, device: str = "auto",
                      allowed_failures: int = 3, threads: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` to a new operator DaskCluster, deleted again on exit.

    Needs the dask-kubernetes operator installed in the cluster and a kubeconfig here; the
    rendered spec is the one ``lczscale deploy kubernetes`` writes to ``cluster/``. Not run in
    this repository's tests (no Kubernetes API there).

    TLS (the default) is refused: KubeCluster itself talks to the scheduler over plain
    ``tcp://`` and has no ``Security``, so it cannot reach a TLS scheduler. With TLS, run the map
    as the rendered DaskJob (the client runs inside the cluster, with the certificates
    mounted); ``security: {tls: false}`` opts out, for a cluster whose network you trust.
    """
    if cfg.security.tls:
        raise ConfigError(
            "a kubernetes cluster from Python cannot use TLS (on by default): dask-kubernetes' "
            "KubeCluster connects to the scheduler over plain tcp://. Render the manifests "
            "(`lczscale deploy kubernetes`) and run the map as the DaskJob, which connects "
            "with tls:// from inside the cluster, or set `security: {tls: false}` in the "
            "cluster YAML if its network is trusted"
        )
    spec = dask_cluster(cfg, pods.gpus_for(cfg, device), threads, allowed_failures)
    kube_cluster = _kube_cluster_class()
    from distributed import Client

    with kube_cluster(custom_cluster_spec=spec, namespace=cfg.namespace,
                      shutdown_on_close=True) as cluster:
        if cfg.adaptive is not None:
            cluster.adapt(minimum=cfg.adaptive.minimum, maximum=cfg.adaptive.maximum)
        else:
            cluster.scale(cfg.workers)
        with Client(cluster) as client:
            yield client
