"""lczscale on Kubernetes: write the rendered manifests, or start a DaskCluster from Python.

Both go through the same renderer (``k8s_manifests``), so ``kubectl apply -k`` and
``open_kube_cluster`` create the same pods. Nothing here was run against a live Kubernetes API
in this repository's tests (there is none on the test machines): the manifests are validated
offline against the Kubernetes and operator schemas, and ``open_kube_cluster`` is tested only
for handing the operator the rendered spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lczscale.config import MapConfig, load_yaml
from lczscale.errors import ConfigError
from lczscale.execute import k8s_pods as pods
from lczscale.execute.cluster_config import KubernetesClusterConfig, load_cluster_config
from lczscale.execute.k8s_manifests import dask_cluster, render, to_yaml
from lczscale.train_config import TrainJob

# The files this module writes; a stale one (say, the autoscaler of an earlier adaptive
# config) is removed, so a directory always holds exactly what its kustomization lists.
_DIRS = ("cluster", "map", "train")
_FILES = ("kustomization.yaml", "daskcluster.yaml", "daskautoscaler.yaml", "configmap.yaml",
          "daskjob.yaml", "service.yaml", "job.yaml")


def load_kubernetes_config(path: str | Path) -> KubernetesClusterConfig:
    cfg = load_cluster_config(path)
    if not isinstance(cfg, KubernetesClusterConfig):
        raise ConfigError(
            f"{path} is a `kind: {cfg.kind}` cluster; Kubernetes manifests need `kind: "
            "kubernetes` (see deploy/kubernetes/cluster.yaml)"
        )
    return cfg


def load_train_job(path: str | Path) -> TrainJob:
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
    return written


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

    TLS is refused: KubeCluster itself talks to the scheduler over plain ``tcp://`` and has no
    ``Security``, so it cannot reach a TLS scheduler. With TLS, run the map as the rendered
    DaskJob (the client runs inside the cluster, with the certificates mounted).
    """
    if cfg.security.tls:
        raise ConfigError(
            "security.tls with a kubernetes cluster from Python: dask-kubernetes' KubeCluster "
            "connects to the scheduler over plain tcp:// and cannot use TLS. Render the "
            "manifests (`lczscale deploy kubernetes`) and run the map as the DaskJob, which "
            "connects with tls:// from inside the cluster, or drop security.tls"
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
