"""Where the Dask workers run, as typed YAML: ``local``, ``slurm``, ``kubernetes`` or ``address``.

One file switches a map run from a laptop to an HPC cluster or Kubernetes
(``lczscale map --cluster deploy/slurm/cluster.yaml``). Nothing here changes the cube: the
cluster settings are kept out of the map's provenance so a run resumed on another platform
skips the tiles already written.

Credentials never appear here: storage credentials come from each machine's environment (or,
on Kubernetes, from a named Secret mounted as environment variables), TLS keys are files or
temporary; plain ``env``, job-script lines and the scheduler address are screened for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lczscale.config.screening import reject_env_secrets, reject_shell_secrets, reject_url_secrets
from lczscale.config.settings import MapConfig
from lczscale.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SecurityConfig(_Strict):
    """TLS between client, scheduler and workers (distributed ``Security``).

    ``tls`` unset means the platform's default: **on** for ``slurm`` and ``kubernetes`` (their
    schedulers listen on a network other users share), off for ``local`` (loopback only) and
    ``address`` (the scheduler's owner decides; distributed's own ``comm.tls`` config still
    applies). ``tls: false`` is the opt-out.

    With TLS on and no files named, the certificates are temporary (distributed's
    ``Security.temporary()``, a fresh self-signed CA/key per cluster): kept in memory on a local
    cluster; written by dask-jobqueue as 0600 files into ``shared_temp_directory`` for SLURM
    jobs; on Kubernetes a Secret that ``lczscale deploy kubernetes`` renders. Named files must
    exist on every machine that runs a scheduler, worker or client (a shared file system on
    SLURM; the mounted Secret on Kubernetes, see ``tls_secret``).
    """

    tls: bool | None = Field(
        None, description="None: on for slurm and kubernetes, off for local and address"
    )
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_secret: str | None = Field(
        None, description="Kubernetes: the Secret holding the CA, certificate and key, mounted "
        "at /etc/lczscale/tls; unset: `lczscale deploy kubernetes` renders <name>-tls"
    )

    @model_validator(mode="after")
    def _files(self) -> SecurityConfig:
        files = (self.ca_file, self.cert_file, self.key_file)
        if self.tls is not False and any(files) and not all(files):
            raise ValueError(
                "security: give all of ca_file, cert_file and key_file (PEM files readable on "
                "every machine), or none of them for temporary certificates"
            )
        for name, path in zip(("ca_file", "cert_file", "key_file"), files, strict=True):
            if path:
                reject_url_secrets(path, f"security.{name}")
        return self

    @property
    def has_files(self) -> bool:
        """Whether all three PEM files are given (else temporary certificates are made)."""
        return bool(self.ca_file and self.cert_file and self.key_file)


class AdaptiveConfig(_Strict):
    """Adaptive scaling bounds, in workers."""

    minimum: int = Field(0, ge=0)
    maximum: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _order(self) -> AdaptiveConfig:
        if self.minimum > self.maximum:
            raise ValueError(
                f"adaptive.minimum {self.minimum} > adaptive.maximum {self.maximum}"
            )
        return self


class _ClusterBase(_Strict):
    security: SecurityConfig = SecurityConfig()
    _tls_default: ClassVar[bool] = False

    @model_validator(mode="after")
    def _tls(self) -> _ClusterBase:
        """Settle ``security.tls``: the platform's default when unset (on wherever files are
        named), so everything downstream reads a plain bool."""
        sec = self.security
        if sec.tls is None:
            tls = self._tls_default or sec.has_files
            object.__setattr__(self, "security", sec.model_copy(update={"tls": tls}))
        return self


class LocalClusterConfig(_ClusterBase):
    """Worker processes on this machine: one per GPU when GPUs are present (each seeing only
    its own GPU through ``CUDA_VISIBLE_DEVICES``), else ``workers`` CPU workers."""

    kind: Literal["local"] = "local"
    workers: int = Field(2, ge=1, description="CPU workers when no GPU is used")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    worker_lifetime: str | None = Field(
        None, description="retire each worker after this long (e.g. '10m'); it is restarted"
    )
    lifetime_stagger: str | None = None


class SlurmClusterConfig(_ClusterBase):
    """dask-jobqueue ``SLURMCluster``: each SLURM job runs ``processes`` workers; TLS on unless
    ``security.tls: false``."""

    _tls_default: ClassVar[bool] = True
    kind: Literal["slurm"] = "slurm"
    partition: str | None = None
    account: str | None = None
    walltime: str = "01:00:00"
    cores: int = Field(4, ge=1, description="CPU cores per job")
    memory: str = Field("16GiB", description="memory per job")
    processes: int = Field(1, ge=1, description="worker processes per job")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job; one worker per GPU")
    jobs: int = Field(1, ge=0, description="jobs started when not adaptive")
    adaptive: AdaptiveConfig | None = None
    worker_lifetime: str | None = Field(
        "55m", description="workers retire before the walltime ends (with a stagger)"
    )
    lifetime_stagger: str | None = "4m"
    interface: str | None = Field(None, description="network interface, e.g. ib0")
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = Field(
        (), description="shell lines run before the worker starts (module load, venv activate)"
    )
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = Field(None, description="python on the compute nodes")
    start_timeout: str = Field(
        "1h", description="how long to wait for the first worker job to start (queue time)"
    )
    shared_temp_directory: str = Field(
        "~/.lczscale/tls", description="with TLS on and no certificate files: where the "
        "temporary certificate and key are written (0600) for the worker jobs, on a file system "
        "every node sees; removed when the cluster closes"
    )

    @field_validator("job_script_prologue", "job_extra_directives")
    @classmethod
    def _no_shell_secrets(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return reject_shell_secrets(v, f"slurm.{info.field_name}")

    @model_validator(mode="after")
    def _gpus(self) -> SlurmClusterConfig:
        if self.gpus_per_job and self.processes != self.gpus_per_job:
            raise ValueError(
                f"slurm: gpus_per_job={self.gpus_per_job} needs processes={self.gpus_per_job} "
                f"(one worker per GPU), got processes={self.processes}"
            )
        return self


class Toleration(_Strict):
    """A Kubernetes toleration, letting the pods run on tainted (e.g. GPU) nodes."""
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesClusterConfig(_ClusterBase):
    """dask-kubernetes operator ``DaskCluster``: one worker pod per GPU; TLS on unless
    ``security.tls: false``."""

    _tls_default: ClassVar[bool] = True
    kind: Literal["kubernetes"] = "kubernetes"
    name: str = Field("lczscale", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    namespace: str = "default"
    image: str = "ghcr.io/lczscale/lczscale:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    workers: int = Field(2, ge=0)
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    worker_gpus: int = Field(1, ge=0, description="nvidia.com/gpu per worker pod")
    scheduler_cpu: str = "1"
    scheduler_memory: str = "4Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    adaptive: AdaptiveConfig | None = None
    env_secret: str | None = Field(
        None, description="a Secret whose keys become environment variables (storage "
        "credentials such as AWS_ACCESS_KEY_ID); referenced by name, never copied"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="plain, non-secret environment (AWS_ENDPOINT_URL …)"
    )
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    volume_claim: str | None = Field(
        None, description="a PersistentVolumeClaim (ReadWriteMany when pods span nodes) mounted "
        "at volume_mount in workers, the map client and training ranks: model checkpoints, "
        "training output and local cubes live there (pods' own disks vanish with them)"
    )
    volume_mount: str = Field("/data", pattern=r"^/[^:]*[^/:]$")

    @field_validator("env")
    @classmethod
    def _no_env_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        return reject_env_secrets(v, "env")


class AddressClusterConfig(_ClusterBase):
    """A scheduler someone else started."""

    kind: Literal["address"] = "address"
    address: str

    @field_validator("address")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        return reject_url_secrets(v, "address")

    @model_validator(mode="after")
    def _tls_files(self) -> AddressClusterConfig:
        if self.security.tls and not self.security.has_files:
            raise ValueError(
                "security.tls with an existing scheduler needs ca_file, cert_file and key_file "
                "(certificates signed by the CA the scheduler trusts); temporary certificates "
                "only work for clusters lczscale starts itself"
            )
        return self


ClusterConfig = Annotated[
    LocalClusterConfig | SlurmClusterConfig | KubernetesClusterConfig | AddressClusterConfig,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClusterConfig)


def parse_cluster_config(data: dict[str, Any], where: str = "cluster config") -> Any:
    """A ``ClusterConfig`` from a mapping; ConfigError naming what was wrong."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(
            f"{where}: needs a `kind:` of local, slurm, kubernetes or address "
            "(see deploy/*/cluster.yaml)"
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid {data.get('kind')} cluster: {exc}") from exc


def load_cluster_config(path: str | Path) -> Any:
    """Read a cluster YAML file (``kind: local|slurm|kubernetes|address``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster config {p} not found; see deploy/*/cluster.yaml for examples")
    return parse_cluster_config(yaml.safe_load(p.read_text()) or {}, str(p))


def dump_cluster_config(cfg: BaseModel) -> str:
    """YAML text of a cluster config, round-trippable through ``load_cluster_config``."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def cluster_for_map(cfg: MapConfig) -> Any:
    """The cluster a map runs on: its ``cluster`` YAML, else ``scheduler_address`` (an
    ``address`` cluster), else a local cluster of ``workers`` processes."""
    if cfg.cluster and cfg.scheduler_address:
        raise ConfigError(
            f"give either cluster ({cfg.cluster}) or scheduler_address "
            f"({cfg.scheduler_address}), not both; an existing scheduler is `kind: address` "
            "in a cluster YAML"
        )
    if cfg.scheduler_address:
        return AddressClusterConfig(address=cfg.scheduler_address)
    if not cfg.cluster:
        return LocalClusterConfig(workers=cfg.workers, threads_per_worker=cfg.threads_per_worker)
    cluster = load_cluster_config(cfg.cluster)
    if (isinstance(cluster, LocalClusterConfig) and "threads_per_worker" in cluster.model_fields_set
            and cluster.threads_per_worker != cfg.threads_per_worker):
        raise ConfigError(
            f"{cfg.cluster} sets threads_per_worker {cluster.threads_per_worker} but the map "
            f"uses {cfg.threads_per_worker}; the map's value decides the cube's bytes, so "
            "remove it from the cluster YAML or set both the same"
        )
    return cluster
