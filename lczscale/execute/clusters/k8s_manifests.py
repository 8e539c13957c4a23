"""Kubernetes manifests for a map run and a training run, rendered from the typed configs.

Three kustomize directories, each one ``kubectl apply -k``:

- ``map/``: a ConfigMap with the map config and a ``DaskJob`` (dask-kubernetes operator) whose
  runner pod runs ``lczscale map`` against the job's own DaskCluster; the cluster goes away when
  the map finishes. Plus a ``DaskAutoscaler`` when the config is adaptive.
- ``train/``: a ConfigMap with the training job, a headless Service and an Indexed ``batch/v1``
  Job: one pod and one GPU per data-parallel rank.
- ``cluster/``: a standing ``DaskCluster`` (what ``open_kube_cluster`` creates), for clients
  that bring their own work (``lczscale map --scheduler ...`` through a port-forward).
- ``tls/``: the Secret with the scheduler's, workers' and client's TLS certificate and key,
  when TLS is on (the default) and no ``security.tls_secret`` of your own is named; applied
  once, before the others. It holds a private key: ``kubernetes.write_manifests`` writes it
  0600 and keeps it across renders, and it never goes into version control.

Separate directories because they run at different times: training must finish before the
map reads its checkpoint. Pure: dicts in, dicts out; ``kubernetes.write_manifests`` writes them.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from lczscale.config import MapConfig
from lczscale.config.clusters import KubernetesClusterConfig
from lczscale.errors import ConfigError
from lczscale.execute.clusters import k8s_pods as pods
from lczscale.io.stores import is_remote
from lczscale.train.settings import TrainJob

Json = dict[str, Any]
API = "kubernetes.dask.org/v1"
HEADER = ("# Rendered by `lczscale deploy kubernetes` from the cluster, map and training configs;"
          "\n# change those and render again rather than editing this file.\n")


def _meta(cfg: KubernetesClusterConfig, name: str, component: str) -> Json:
    return {"name": name, "namespace": cfg.namespace, "labels": pods.labels(cfg, component)}


def map_name(cfg: KubernetesClusterConfig) -> str:
    """The DaskJob's name, which the operator also gives its DaskCluster."""
    return f"{cfg.name}-map"


def train_name(cfg: KubernetesClusterConfig) -> str:
    """The name of the training Job and its resources."""
    return f"{cfg.name}-train"


def cluster_spec(cfg: KubernetesClusterConfig, cluster: str, gpus: int, threads: int = 1,
                 allowed_failures: int = 3) -> Json:
    """The ``spec`` of a DaskCluster named ``cluster`` (also embedded in the DaskJob)."""
    pods.check(cfg)
    replicas = cfg.workers
    if cfg.adaptive:
        replicas = min(max(replicas, cfg.adaptive.minimum), cfg.adaptive.maximum)
    return {
        "scheduler": {"spec": pods.scheduler_pod(cfg, allowed_failures),
                      "service": pods.scheduler_service(cfg, cluster)},
        "worker": {"replicas": replicas, "spec": pods.worker_pod(cfg, cluster, gpus, threads)},
    }


def dask_cluster(cfg: KubernetesClusterConfig, gpus: int | None = None, threads: int = 1,
                 allowed_failures: int = 3) -> Json:
    """The standing ``DaskCluster`` named ``cfg.name``."""
    gpus = cfg.worker_gpus if gpus is None else gpus
    return {"apiVersion": API, "kind": "DaskCluster",
            "metadata": _meta(cfg, cfg.name, "cluster"),
            "spec": cluster_spec(cfg, cfg.name, gpus, threads, allowed_failures)}


def dask_autoscaler(cfg: KubernetesClusterConfig, cluster: str) -> Json | None:
    """Adaptive bounds for the cluster ``cluster`` (named like KubeCluster.adapt names it)."""
    if cfg.adaptive is None:
        return None
    return {"apiVersion": API, "kind": "DaskAutoscaler",
            "metadata": _meta(cfg, cluster, "autoscaler"),
            "spec": {"cluster": cluster, "minimum": cfg.adaptive.minimum,
                     "maximum": cfg.adaptive.maximum}}


def _on_volume(cfg: KubernetesClusterConfig, path: str, what: str) -> None:
    """Pod file systems vanish with the pod: outputs must go to object storage or the claim."""
    if is_remote(path):
        return
    local = path.removeprefix("file://")
    if cfg.volume_claim and (local + "/").startswith(cfg.volume_mount + "/"):
        return
    where = (f"under volume_mount {cfg.volume_mount}" if cfg.volume_claim
             else "on a shared volume: set volume_claim (a ReadWriteMany PersistentVolumeClaim) "
             "and use a path under volume_mount")
    raise ConfigError(
        f"{what} {path!r} would be written inside a pod and lost with it; use an object store "
        f"URL (s3://…) or a path {where}"
    )


def cluster_map_config(cfg: KubernetesClusterConfig, map_cfg: MapConfig) -> MapConfig:
    """The map config as the job's client runs it.

    The client pod has no GPU, and the provenance records the device type the *client*
    resolves, so ``device: auto`` becomes what the workers have. Where to run comes from the
    pod (``--scheduler``), not from the file: its ``scheduler_address``/``cluster`` are cleared.
    """
    if map_cfg.executor != "dask":
        raise ConfigError(
            f"the map config has executor: {map_cfg.executor}, which would ignore the Dask "
            "workers; set executor: dask"
        )
    _on_volume(cfg, map_cfg.out, "the cube (map config `out`)")
    gpus = pods.gpus_for(cfg, map_cfg.device)
    device = map_cfg.device if map_cfg.device != "auto" else ("cuda" if gpus else "cpu")
    where = {k: None for k in ("scheduler_address", "cluster") if k in MapConfig.model_fields}
    return map_cfg.model_copy(update={"device": device} | where)


def map_config_map(cfg: KubernetesClusterConfig, map_cfg: MapConfig) -> Json:
    """The ConfigMap carrying the map run's settings to the pods (only those not at defaults)."""
    # Only what differs from the defaults: the image's lczscale fills in the rest, and the
    # rendered file does not change each time a setting with a default is added.
    data = cluster_map_config(cfg, map_cfg).model_dump(mode="json", exclude_defaults=True)
    text = yaml.safe_dump(data, sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(cfg, f"{map_name(cfg)}-config", "map"),
            "data": {"map.yaml": text}}


def dask_job(cfg: KubernetesClusterConfig, map_cfg: MapConfig) -> Json:
    """``lczscale map`` as a DaskJob: the operator starts a DaskCluster named like the job,
    runs the client pod, and deletes the cluster when the client exits."""
    run = cluster_map_config(cfg, map_cfg)
    name = map_name(cfg)
    gpus = pods.gpus_for(cfg, run.device)
    return {
        "apiVersion": API, "kind": "DaskJob", "metadata": _meta(cfg, name, "map"),
        "spec": {
            "job": {"spec": pods.map_client_pod(cfg, name, f"{name}-config")},
            "cluster": {"spec": cluster_spec(cfg, name, gpus, run.threads_per_worker,
                                             run.faults.allowed_failures)},
        },
    }


def _check_train(cfg: KubernetesClusterConfig, job: TrainJob, ranks: int) -> int:
    if ranks < 1:
        raise ConfigError(f"--ranks must be ≥ 1, got {ranks}")
    _on_volume(cfg, job.out, "the training output (train job `out`)")
    return pods.gpus_for(cfg, job.train.device)


def train_config_map(cfg: KubernetesClusterConfig, job: TrainJob) -> Json:
    """The ConfigMap carrying the training job to its rank pods."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(cfg, f"{train_name(cfg)}-config", "train"),
            "data": {"train_job.json": job.model_dump_json(indent=2, exclude_defaults=True)
                     + "\n"}}


def train_service(cfg: KubernetesClusterConfig) -> Json:
    """Headless: gives each rank pod a DNS name, so ranks find rank 0 before any is ready."""
    name = train_name(cfg)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, name, "train"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {"lczscale/train-job": name},
                     "ports": [{"name": "rendezvous", "port": pods.RENDEZVOUS_PORT,
                                "targetPort": "rendezvous", "protocol": "TCP"}]}}


def train_job(cfg: KubernetesClusterConfig, job: TrainJob, ranks: int) -> Json:
    """An Indexed Job, one pod per rank. ``backoffLimit: 0``: a lost rank fails the whole run
    at once (the others would wait in a collective); applying it again resumes from the last
    resumable state in ``out``."""
    gpus = _check_train(cfg, job, ranks)
    name = train_name(cfg)
    template_labels = pods.labels(cfg, "train") | {"lczscale/train-job": name}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, name, "train"),
        "spec": {
            "completionMode": "Indexed", "completions": ranks, "parallelism": ranks,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": template_labels},
                "spec": pods.rank_pod(cfg, name, ranks, gpus, job.train.threads,
                                      f"{name}-config"),
            },
        },
    }


SECRET_HEADER = (
    "# Rendered by `lczscale deploy kubernetes`: the TLS certificate and PRIVATE KEY of the Dask"
    "\n# scheduler, workers and map client (a temporary self-signed CA, valid for a year).\n"
    "# Apply once (kubectl apply -k tls); never commit it. Delete this directory to make a new"
    " one.\n"
)


def tls_secret(cfg: KubernetesClusterConfig, mount: pods.TlsMount, sec: Any) -> Json:
    """The Secret ``mount`` names, holding ``sec``'s CA, certificate and key (a distributed
    ``Security.temporary()``: one self-signed certificate is the CA and every role's)."""
    files = {mount.ca: sec.tls_ca_file, mount.cert: sec.tls_scheduler_cert,
             mount.key: sec.tls_scheduler_key}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": _meta(cfg, mount.secret, "tls"), "type": "Opaque",
            "stringData": {path.rsplit("/", 1)[-1]: text for path, text in files.items()}}


def kustomization(files: list[str]) -> Json:
    """A ``kustomization.yaml`` listing ``files``, so the bundle applies with ``kubectl -k``."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(files)}


def _bundle(resources: dict[str, Json | None]) -> dict[str, Json]:
    kept = {f: r for f, r in resources.items() if r is not None}
    return kept | {"kustomization.yaml": kustomization(list(kept))}


def render(cfg: KubernetesClusterConfig, map_cfg: MapConfig, train: TrainJob | None = None,
           ranks: int | None = None) -> dict[str, Json]:
    """Every manifest, by path relative to the output directory."""
    if ranks is not None and train is None:
        raise ConfigError("--ranks needs --train TRAIN_JOB.json")
    run = cluster_map_config(cfg, map_cfg)
    gpus = pods.gpus_for(cfg, run.device)
    out: dict[str, Json] = {}
    dirs: dict[str, dict[str, Json | None]] = {
        "cluster": {"daskcluster.yaml": dask_cluster(cfg, gpus, run.threads_per_worker,
                                                     run.faults.allowed_failures),
                    "daskautoscaler.yaml": dask_autoscaler(cfg, cfg.name)},
        "map": {"configmap.yaml": map_config_map(cfg, map_cfg),
                "daskjob.yaml": dask_job(cfg, map_cfg),
                "daskautoscaler.yaml": dask_autoscaler(cfg, map_name(cfg))},
    }
    if train is not None:
        n = cfg.workers if ranks is None else ranks
        dirs["train"] = {"configmap.yaml": train_config_map(cfg, train),
                         "service.yaml": train_service(cfg),
                         "job.yaml": train_job(cfg, train, n)}
    for d, resources in dirs.items():
        out |= {f"{d}/{f}": r for f, r in _bundle(resources).items()}
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded configs) as literal blocks; no YAML anchors (a shared
    dict written twice stays two plain copies, as kubectl users expect to read it)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(manifest: Json, header: str = HEADER) -> str:
    """The file text: a header, then the manifest (deterministic, so examples can be diffed)."""
    json.dumps(manifest)  # plain JSON types only: what the API server receives
    return header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)
