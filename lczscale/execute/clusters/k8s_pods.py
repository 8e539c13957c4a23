"""Pod specs for lczscale on Kubernetes, built from the typed cluster config (pure: no API calls).

Each pod is a plain dict in the Kubernetes API's JSON form, so what is rendered is exactly what
``kubectl apply`` sends and what the tests validate against the Kubernetes and operator schemas.
The decisions every pod shares live here once:

- one Dask worker per pod and one GPU per pod (the device plugin shows the pod only its own);
  ``--nthreads 1`` and a pinned ``OMP_NUM_THREADS``, because the CPU thread count is part of
  what makes the cube bit-reproducible;
- credentials only by reference (``envFrom`` a Secret by name), never a value in a manifest;
- TLS (on unless ``security.tls: false``): a Secret mounted read-only at ``TLS_DIR`` and
  distributed pointed at its files through ``DASK_DISTRIBUTED__COMM__TLS__*`` (every role uses
  the one certificate: distributed checks the CA, not host names). The Secret is
  ``security.tls_secret`` (yours, e.g. cert-manager's), else ``<name>-tls`` with keys
  ``ca.pem``/``cert.pem``/``key.pem``, which ``lczscale deploy kubernetes`` renders;
- ports are referred to by name: the operator's CRDs type int-or-string fields as strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from lczscale.config.clusters import KubernetesClusterConfig
from lczscale.errors import ConfigError
from lczscale.execute.clusters.worker_profiler import NO_PROFILER_ENV

TLS_DIR = "/etc/lczscale/tls"
CONFIG_DIR = "/config"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = 8788
RENDEZVOUS_PORT = 29500
USER_ID = 10001  # the image's non-root user (deploy/kubernetes/Dockerfile)
# The operator scales through the scheduler's HTTP API (its RPC fallback speaks plain tcp://,
# which a TLS scheduler refuses), so the API route is added to distributed's defaults.
HTTP_ROUTES = [
    "distributed.http.scheduler.prometheus", "distributed.http.scheduler.info",
    "distributed.http.scheduler.json", "distributed.http.health", "distributed.http.proxy",
    "distributed.http.statics", "distributed.http.scheduler.api",
]
_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|session|private|_key$", re.I)

Json = dict[str, Any]


def check(cfg: KubernetesClusterConfig) -> None:
    """Refuse settings that would render manifests that cannot work or would leak secrets."""
    if cfg.worker_gpus > 1:
        raise ConfigError(
            f"worker_gpus: {cfg.worker_gpus}: lczscale runs one Dask worker per GPU, so each "
            f"worker pod gets one GPU; set worker_gpus: 1 and workers: {cfg.workers} × "
            f"{cfg.worker_gpus}"
        )
    leaked = sorted(k for k in cfg.env if _SECRET_NAME.search(k) or k == "AWS_ACCESS_KEY_ID")
    if leaked:
        raise ConfigError(
            f"env {leaked} look like credentials, and env values are written into the "
            "manifests; put them in a Secret (kubectl create secret generic NAME "
            "--from-literal=...) and set env_secret: NAME"
        )
    sec = cfg.security
    if sec.tls and sec.has_files and not sec.tls_secret:
        raise ConfigError(
            "security.ca_file/cert_file/key_file on Kubernetes name the keys of a Secret: set "
            f"security.tls_secret to the Secret holding them (mounted at {TLS_DIR}; kubectl "
            "create secret generic NAME --from-file=ca.pem --from-file=cert.pem "
            "--from-file=key.pem), or leave the files unset and apply the Secret that "
            "`lczscale deploy kubernetes` renders"
        )
    mount = tls_mount(cfg)
    if mount is None:
        return
    for field, path in (("ca_file", mount.ca), ("cert_file", mount.cert), ("key_file", mount.key)):
        if PurePosixPath(path).parent != PurePosixPath(TLS_DIR):
            raise ConfigError(
                f"security.{field} {path!r}: on Kubernetes the TLS files are the keys of "
                f"the Secret {mount.secret!r}, mounted at {TLS_DIR}; set it to "
                f"{TLS_DIR}/<key>, e.g. {TLS_DIR}/{field.split('_')[0]}.pem"
            )


@dataclass(frozen=True)
class TlsMount:
    """Where the pods find their TLS files: the Secret, the three paths under ``TLS_DIR``, and
    whether ``lczscale deploy kubernetes`` renders the Secret (no ``tls_secret`` given)."""

    secret: str
    ca: str
    cert: str
    key: str
    rendered: bool


def tls_mount(cfg: KubernetesClusterConfig) -> TlsMount | None:
    """The TLS Secret and files of ``cfg``; None with ``security.tls: false``."""
    sec = cfg.security
    if not sec.tls:
        return None
    return TlsMount(secret=sec.tls_secret or f"{cfg.name}-tls",
                    ca=sec.ca_file or f"{TLS_DIR}/ca.pem",
                    cert=sec.cert_file or f"{TLS_DIR}/cert.pem",
                    key=sec.key_file or f"{TLS_DIR}/key.pem",
                    rendered=sec.tls_secret is None)


def labels(cfg: KubernetesClusterConfig, component: str) -> dict[str, str]:
    """The ``app.kubernetes.io`` labels of the cluster's resources, by component."""
    return {"app.kubernetes.io/name": "lczscale", "app.kubernetes.io/instance": cfg.name,
            "app.kubernetes.io/component": component}


def scheduler_address(cfg: KubernetesClusterConfig, cluster: str) -> str:
    """The address the operator gives pods (``DASK_SCHEDULER_ADDRESS``), with ``tls://`` when
    TLS is on: the operator only writes tcp://, and leaves a value it finds alone."""
    scheme = "tls" if cfg.security.tls else "tcp"
    return f"{scheme}://{cluster}-scheduler.{cfg.namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def gpus_for(cfg: KubernetesClusterConfig, device: str) -> int:
    """GPUs per worker pod for a run on ``device`` (auto, cpu or cuda)."""
    if device == "cuda" and not cfg.worker_gpus:
        raise ConfigError(
            f"device is cuda but the Kubernetes cluster {cfg.name!r} has worker_gpus: 0; set "
            "worker_gpus: 1 or run with device auto/cpu"
        )
    return 0 if device == "cpu" else cfg.worker_gpus


def _env(values: dict[str, str]) -> list[Json]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _tls_env(cfg: KubernetesClusterConfig) -> dict[str, str]:
    mount = tls_mount(cfg)
    if mount is None:
        return {}
    env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": mount.ca}
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = mount.cert
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = mount.key
    return env


def _resources(cpu: str, memory: str, gpus: int = 0) -> Json:
    # requests == limits: Guaranteed QoS, so the kubelet does not evict a pod mid-tile.
    amounts = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(cfg: KubernetesClusterConfig, config_map: str | None = None, data: bool = True,
             shm: bool = False, tls: bool = True) -> tuple[list[Json], list[Json]]:
    """(pod volumes, container mounts): the config map, the TLS Secret (Dask pods), the data
    claim, shm."""
    volumes: list[Json] = []
    mounts: list[Json] = []
    if config_map:
        volumes.append({"name": "config", "configMap": {"name": config_map}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    mount = tls_mount(cfg) if tls else None
    if mount is not None:
        # 0440 and fsGroup: readable by the non-root user, by nobody else.
        volumes.append({"name": "tls", "secret": {"secretName": mount.secret,
                                                  "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if data and cfg.volume_claim:
        volumes.append({"name": "data",
                        "persistentVolumeClaim": {"claimName": cfg.volume_claim}})
        mounts.append({"name": "data", "mountPath": cfg.volume_mount})
    if shm:  # NCCL and torch's DataLoader need more shared memory than the default 64 MiB
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _container(cfg: KubernetesClusterConfig, name: str, command: list[str], env: list[Json],
               resources: Json, mounts: list[Json], secrets: bool) -> Json:
    c: Json = {
        "name": name, "image": cfg.image, "imagePullPolicy": cfg.image_pull_policy,
        "command": command, "env": env + _env(cfg.env), "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if secrets and cfg.env_secret:
        c["envFrom"] = [{"secretRef": {"name": cfg.env_secret}}]
    if mounts:
        c["volumeMounts"] = mounts
    return c


def _pod(cfg: KubernetesClusterConfig, container: Json, volumes: list[Json],
         gpu_nodes: bool, **extra: Any) -> Json:
    """A pod spec; only GPU pods (workers, training ranks) get the node selector/tolerations."""
    spec: Json = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                            "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
        **extra,
        "containers": [container],
    }
    if gpu_nodes and cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if gpu_nodes and cfg.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in cfg.tolerations]
    if volumes:
        spec["volumes"] = volumes
    return spec


def scheduler_pod(cfg: KubernetesClusterConfig, allowed_failures: int = 3) -> Json:
    """The Dask scheduler; its health endpoint is the operator's readiness probe."""
    command = ["dask", "scheduler", "--host", "0.0.0.0", "--port", str(SCHEDULER_PORT),
               "--dashboard-address", f":{DASHBOARD_PORT}"]
    if cfg.security.tls:
        command += ["--protocol", "tls"]
    env = _tls_env(cfg) | {
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures),
        "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": json.dumps(HTTP_ROUTES),
    }
    volumes, mounts = _volumes(cfg, data=False)
    c = _container(cfg, "scheduler", command, _env(env),
                   _resources(cfg.scheduler_cpu, cfg.scheduler_memory), mounts, secrets=False)
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    c["ports"] = [
        {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
        {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
    ]
    c["readinessProbe"] = probe | {"initialDelaySeconds": 0, "periodSeconds": 1,
                                   "timeoutSeconds": 300}
    c["livenessProbe"] = probe | {"initialDelaySeconds": 15, "periodSeconds": 20}
    return _pod(cfg, c, volumes, gpu_nodes=False)


def scheduler_service(cfg: KubernetesClusterConfig, cluster: str) -> Json:
    """The scheduler Service spec: the comm port for clients and workers, and the dashboard."""
    return {
        "type": cfg.service_type,
        "selector": {"dask.org/cluster-name": cluster, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT,
             "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
             "targetPort": "http-dashboard"},
        ],
    }


def worker_pod(cfg: KubernetesClusterConfig, cluster: str, gpus: int, threads: int = 1) -> Json:
    """One Dask worker: one thread, ``GPU=1`` advertised when it has its GPU.

    ``$(DASK_WORKER_NAME)`` is set by the operator (one name per worker Deployment).
    """
    command = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1",
               "--dashboard-address", f":{WORKER_DASHBOARD_PORT}"]
    if gpus:
        command += ["--resources", "GPU=1"]
    env = {"DASK_SCHEDULER_ADDRESS": scheduler_address(cfg, cluster),
           "OMP_NUM_THREADS": str(threads)} | NO_PROFILER_ENV | _tls_env(cfg)
    volumes, mounts = _volumes(cfg)
    c = _container(cfg, "worker", command, _env(env),
                   _resources(cfg.worker_cpu, cfg.worker_memory, gpus), mounts, secrets=True)
    c["ports"] = [{"name": "http-dashboard", "containerPort": WORKER_DASHBOARD_PORT,
                   "protocol": "TCP"}]
    return _pod(cfg, c, volumes, gpu_nodes=True)


def map_client_pod(cfg: KubernetesClusterConfig, cluster: str, config_map: str) -> Json:
    """``lczscale map`` against the job's own scheduler; sized like the scheduler.

    The operator would set ``DASK_SCHEDULER_ADDRESS`` itself (tcp:// only); it is set here so
    that TLS gets tls://, and Kubernetes expands ``$(…)`` in the command from it.
    """
    command = ["lczscale", "map", "--config", f"{CONFIG_DIR}/map.yaml",
               "--scheduler", "$(DASK_SCHEDULER_ADDRESS)"]
    env = {"DASK_SCHEDULER_ADDRESS": scheduler_address(cfg, cluster)} | _tls_env(cfg)
    volumes, mounts = _volumes(cfg, config_map)
    c = _container(cfg, "map", command, _env(env),
                   _resources(cfg.scheduler_cpu, cfg.scheduler_memory), mounts, secrets=True)
    # Never: a failed map is resumed by applying the job again (the ledger skips done tiles),
    # instead of being restarted in a loop when a tile keeps failing.
    return _pod(cfg, c, volumes, gpu_nodes=False, restartPolicy="Never")


def rank_pod(cfg: KubernetesClusterConfig, job: str, ranks: int, gpus: int, threads: int,
             config_map: str) -> Json:
    """One data-parallel training rank of an Indexed Job, with torchrun's variables.

    RANK is the pod's completion index (downward API); rank 0's stable host name
    ``<job>-0.<service>`` (the Job's headless Service) is the rendezvous address.
    """
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    env = [{"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}}] + _env({
        "WORLD_SIZE": str(ranks), "LOCAL_RANK": "0", "MASTER_ADDR": f"{job}-0.{job}",
        "MASTER_PORT": str(RENDEZVOUS_PORT), "OMP_NUM_THREADS": str(threads),
    })
    command = ["python", "-m", "lczscale.train.launch", f"{CONFIG_DIR}/train_job.json"]
    volumes, mounts = _volumes(cfg, config_map, shm=True, tls=False)  # torch, not Dask
    c = _container(cfg, "rank", command, env,
                   _resources(cfg.worker_cpu, cfg.worker_memory, gpus), mounts, secrets=True)
    c["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    return _pod(cfg, c, volumes, gpu_nodes=True, restartPolicy="Never", subdomain=job)
