"""Cluster configs, rendered SLURM job scripts and GPU pinning, without starting anything."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lczscale.cli import map_config, parser
from lczscale.config import MapConfig
from lczscale.config.clusters import (
    AddressClusterConfig,
    LocalClusterConfig,
    SecurityConfig,
    SlurmClusterConfig,
    cluster_for_map,
    load_cluster_config,
    parse_cluster_config,
)
from lczscale.errors import ConfigError
from lczscale.execute.cluster_executor import cuda_index
from lczscale.execute.clusters import gpu_pin
from lczscale.execute.clusters.start import (
    local_worker_specs,
    security,
    slurm_job_kwargs,
    slurm_job_script,
    slurm_seconds,
    visible_gpus,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "lczscale-unit-secret-5d1e"


@pytest.fixture
def pem(tmp_path: Path) -> SecurityConfig:
    """TLS settings pointing at (dummy) PEM files that exist."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return SecurityConfig(tls=True, ca_file=str(tmp_path / "ca.pem"),
                          cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"))


# -- config -----------------------------------------------------------------------------------


def test_the_example_slurm_config_parses() -> None:
    cfg = load_cluster_config(REPO / "deploy" / "slurm" / "cluster.yaml")
    assert isinstance(cfg, SlurmClusterConfig)
    slurm_job_kwargs(cfg)  # lifetime fits the walltime, and so on


@pytest.mark.parametrize(("data", "match"), [
    ({"workers": 2}, "needs a `kind:`"),
    ({"kind": "pbs"}, "invalid pbs cluster"),
    ({"kind": "slurm", "partitions": "gpu"}, "partitions"),
    ({"kind": "slurm", "gpus_per_job": 4, "processes": 1}, "processes=4"),
    ({"kind": "address", "address": "tls://h:1", "security": {"tls": True}},
     "ca_file, cert_file and key_file"),
    ({"kind": "slurm", "security": {"ca_file": "/ca.pem"}}, "all of ca_file, cert_file"),
    ({"kind": "slurm", "adaptive": {"minimum": 3, "maximum": 2}}, "minimum 3 > "),
])
def test_bad_cluster_configs_say_what_is_wrong(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_cluster_config(data)


def test_a_missing_cluster_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_cluster_config(tmp_path / "nope.yaml")


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cfg = SecurityConfig(tls=True, ca_file=str(tmp_path / "ca.pem"),
                         cert_file=str(tmp_path / "c.pem"), key_file=str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match=r"missing here: ca_file=.*ca\.pem"):
        security(cfg)
    assert security(SecurityConfig()) is None


def test_security_requires_encryption_for_every_role(pem: SecurityConfig) -> None:
    sec = security(pem)
    assert sec is not None
    assert sec.require_encryption
    for role in ("client", "scheduler", "worker"):
        tls = sec.get_tls_config_for_role(role)
        assert tls["ca_file"] == pem.ca_file
        assert tls["cert"] == pem.cert_file


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), ("30:15", 1815), ("01:00:00", 3600), ("1-00", 86400),
    ("1-02:30", 95400), ("2-00:00:10", 172810),
])
def test_slurm_walltimes(text: str, seconds: int) -> None:
    assert slurm_seconds(text) == seconds


def test_lifetime_must_end_before_the_walltime() -> None:
    with pytest.raises(ConfigError, match="workers would be killed"):
        slurm_job_kwargs(SlurmClusterConfig(walltime="00:30:00", worker_lifetime="28m",
                                            lifetime_stagger="4m"))
    with pytest.raises(ConfigError, match="not a SLURM time"):
        slurm_job_kwargs(SlurmClusterConfig(walltime="1h"))


# -- which cluster a map runs on --------------------------------------------------------------


def _map(**kw: object) -> MapConfig:
    return MapConfig.model_validate({"source": "e.zarr", "model": "m", "out": "o.zarr"} | kw)


def test_workers_and_scheduler_become_local_and_address_clusters() -> None:
    local = cluster_for_map(_map(workers=3, threads_per_worker=2))
    assert local == LocalClusterConfig(workers=3, threads_per_worker=2)
    address = cluster_for_map(_map(scheduler_address="tcp://10.0.0.1:8786"))
    assert address == AddressClusterConfig(address="tcp://10.0.0.1:8786")


def test_cluster_file_wins_and_conflicts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kind": "slurm", "partition": "gpu"}))
    assert cluster_for_map(_map(cluster=str(path))).partition == "gpu"
    with pytest.raises(ConfigError, match="not both"):
        cluster_for_map(_map(cluster=str(path), scheduler_address="tcp://h:1"))
    path.write_text(yaml.safe_dump({"kind": "local", "threads_per_worker": 4}))
    with pytest.raises(ConfigError, match="decides the cube's bytes"):
        cluster_for_map(_map(cluster=str(path)))


def test_cli_cluster_flag(tmp_path: Path) -> None:
    base = ["map", "--source", "e.zarr", "--model", "m", "--out", "o.zarr"]
    assert map_config(parser().parse_args([*base, "--cluster", "c.yaml"])).cluster == "c.yaml"
    config = tmp_path / "map.yaml"
    config.write_text(yaml.safe_dump({"source": "e.zarr", "model": "m", "out": "o.zarr",
                                      "cluster": "c.yaml"}))
    cfg = map_config(parser().parse_args(["map", "--config", str(config), "--scheduler",
                                          "tcp://h:1"]))
    assert cfg.cluster is None
    assert cfg.scheduler_address == "tcp://h:1"


# -- SLURM job scripts ------------------------------------------------------------------------


def test_job_script_carries_the_slurm_settings(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET + "-id")
    cfg = SlurmClusterConfig(
        partition="gpu-a100", account="proj42", walltime="02:00:00", cores=16, memory="64GiB",
        processes=4, gpus_per_job=4, worker_lifetime="110m", lifetime_stagger="5m",
        job_extra_directives=("--constraint=a100",), log_directory=str(tmp_path / "logs"),
        job_script_prologue=("module load cuda",), interface="ib0",
    )
    script = slurm_job_script(cfg, threads=4)
    for expected in ("#SBATCH -p gpu-a100", "#SBATCH -A proj42", "#SBATCH -t 02:00:00",
                     "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G",
                     "#SBATCH --gres=gpu:4", "#SBATCH --constraint=a100",
                     "#SBATCH -J lczscale-worker", f"-e {tmp_path}/logs/",
                     "export OMP_NUM_THREADS=4", "module load cuda",
                     "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",
                     f"{sys.executable} -m distributed.cli.dask_worker",
                     "--nthreads 1", "--nworkers 4", "--lifetime 110m",
                     "--lifetime-stagger 5m", "--resources GPU=1",
                     "--preload-nanny lczscale.execute.clusters.gpu_pin", "--interface ib0"):
        assert expected in script, expected
    assert "--lifetime-restart" not in script  # the job ends; the cluster submits a new one
    assert SECRET not in script
    assert "AWS_" not in script


def test_cpu_job_script_has_no_gpu_settings() -> None:
    script = slurm_job_script(SlurmClusterConfig(cores=2, worker_lifetime=None))
    assert "--gres" not in script
    assert "GPU" not in script
    assert "preload" not in script
    assert "--lifetime" not in script
    assert "-p " not in script
    assert "--nthreads 1" in script


def test_one_gpu_jobs_need_no_pinning_preload() -> None:
    script = slurm_job_script(SlurmClusterConfig(gpus_per_job=1, processes=1))
    assert "--gres=gpu:1" in script
    assert "--resources GPU=1" in script
    assert "preload" not in script  # SLURM gives the job exactly its one GPU


def test_tls_job_script(pem: SecurityConfig) -> None:
    script = slurm_job_script(SlurmClusterConfig(security=pem), scheduler="tcp://head:8786")
    assert "tls://head:8786" in script
    assert "--protocol tls://" in script
    for flag, path in (("--tls-ca-file", pem.ca_file), ("--tls-cert", pem.cert_file),
                       ("--tls-key", pem.key_file)):
        assert f"{flag} {path}" in script
    plain = slurm_job_script(SlurmClusterConfig(security={"tls": False}))
    assert "tls" not in plain


# -- TLS by default ---------------------------------------------------------------------------


def test_tls_is_on_by_default_for_slurm_and_kubernetes_only() -> None:
    for kind in ("slurm", "kubernetes"):
        assert parse_cluster_config({"kind": kind}).security.tls is True, kind
        assert parse_cluster_config({"kind": kind, "security": {"tls": False}}) \
            .security.tls is False, f"{kind}: the opt-out"
    assert parse_cluster_config({"kind": "local"}).security.tls is False
    assert parse_cluster_config({"kind": "address", "address": "tcp://h:1"}).security.tls \
        is False


def test_naming_certificate_files_turns_tls_on(pem: SecurityConfig) -> None:
    files = pem.model_dump(exclude={"tls"})
    assert LocalClusterConfig(security=files).security.tls is True
    assert LocalClusterConfig(security=files | {"tls": False}).security.tls is False


def test_slurm_default_tls_uses_temporary_certificates_in_files(tmp_path: Path) -> None:
    """No files named: a fresh in-memory ``Security.temporary()`` for scheduler and client,
    and the job scripts name the files dask-jobqueue writes into shared_temp_directory: the
    key itself is never in a script."""
    cfg = SlurmClusterConfig(shared_temp_directory=str(tmp_path / "tls"))
    kwargs = slurm_job_kwargs(cfg)
    sec = kwargs["security"]
    assert sec.require_encryption
    assert "-----BEGIN" in sec.tls_scheduler_key
    assert kwargs["protocol"] == "tls://"
    assert kwargs["shared_temp_directory"] == str(
        tmp_path / "tls")
    script = slurm_job_script(cfg, scheduler="tcp://head:8786")
    assert "tls://head:8786" in script
    assert "--protocol tls://" in script
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        assert f"{flag} {tmp_path}/tls/.dask-jobqueue.worker." in script, flag
    assert "BEGIN" not in script
    home = slurm_job_kwargs(SlurmClusterConfig())["shared_temp_directory"]
    assert home == str(Path("~/.lczscale/tls").expanduser())


def test_secrets_in_job_script_lines_are_refused() -> None:
    for field, line in (("job_script_prologue", f"export AWS_SECRET_ACCESS_KEY={SECRET}"),
                        ("job_script_prologue", f"AWS_SESSION_TOKEN='{SECRET}' true"),
                        ("job_extra_directives", f"--export=ALL,AWS_SECRET_ACCESS_KEY={SECRET}"),
                        ("job_script_prologue", f"curl https://user:{SECRET}@host/x")):
        with pytest.raises(ConfigError, match=f"slurm.{field}") as err:
            parse_cluster_config({"kind": "slurm", field: [line]})
        assert SECRET not in str(err.value)
        assert "\n" not in str(err.value)
    ok = ("set -a; source ~/.config/lczscale/credentials.env; set +a",
          "export AWS_SECRET_ACCESS_KEY=$VAULT_SECRET", "module load cuda")
    assert SlurmClusterConfig(job_script_prologue=ok).job_script_prologue == ok


def test_scheduler_addresses_with_credentials_are_refused() -> None:
    with pytest.raises(ConfigError, match="address: the URL tls://h:8786 carries") as err:
        parse_cluster_config({"kind": "address", "address": f"tls://{SECRET}@h:8786"})
    assert SECRET not in str(err.value)


# -- GPU pinning ------------------------------------------------------------------------------


def test_local_gpu_workers_each_see_one_gpu() -> None:
    specs = local_worker_specs(LocalClusterConfig(workers=7), threads=1,
                               gpus=visible_gpus(2, "4,6"))
    assert list(specs) == [0, 1]
    for i, gpu in enumerate(("4", "6")):
        options = specs[i]["options"]
        assert options["env"] == {"CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": "1"}
        assert options["resources"] == {"GPU": 1}
        assert options["nthreads"] == 1
    assert visible_gpus(2, None) == ["0", "1"]


def test_local_cpu_workers() -> None:
    cfg = LocalClusterConfig(workers=3, worker_lifetime="10m", lifetime_stagger="1m",
                             memory_limit="2GiB")
    specs = local_worker_specs(cfg, threads=2, gpus=[])
    assert len(specs) == 3
    options = specs[2]["options"]
    assert options["env"] == {"OMP_NUM_THREADS": "2"}
    assert "resources" not in options
    assert options["nthreads"] == 1
    assert options["memory_limit"] == "2GiB"
    assert options["lifetime"] == "10m"
    assert options["lifetime_stagger"] == "1m"
    assert options["lifetime_restart"] is True
    assert options["protocol"] == "tcp://"


def test_slurm_workers_are_pinned_by_their_process_index() -> None:
    assert gpu_pin.worker_index("SLURMCluster-12-3") == 3
    assert gpu_pin.pinned_gpu(3, "0,1,2,3") == "3"
    assert gpu_pin.pinned_gpu(1, "GPU-aa, GPU-bb") == "GPU-bb"
    assert gpu_pin.pinned_gpu(2, "") == "2"
    with pytest.raises(ValueError, match="only 2 visible"):
        gpu_pin.pinned_gpu(2, "0,1")
    with pytest.raises(ValueError, match="does not end in -<index>"):
        gpu_pin.worker_index("worker")
    nanny = SimpleNamespace(name="SLURMCluster-0-1", env={"OMP_NUM_THREADS": "1"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "5,7")
        gpu_pin.dask_setup(nanny)
    assert nanny.env == {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "7"}


def test_pinned_workers_use_their_first_visible_gpu() -> None:
    assert cuda_index(3, 4, pinned="2") == 0
    assert cuda_index(3, 4, pinned="") == 3
    assert cuda_index(5, 4, pinned="") == 1
    assert cuda_index("SLURMCluster-1", 2, pinned="") == 0


def test_stop_profiler_stops_a_running_workers_sampler() -> None:
    """For workers lczscale did not start (an address cluster): the map's plugin stops it."""
    from types import SimpleNamespace

    from lczscale.execute.clusters.worker_profiler import stop_profiler

    class Callback:
        running = True

        def stop(self) -> None:
            self.running = False

    profile, cycle, heartbeat = Callback(), Callback(), Callback()
    worker = SimpleNamespace(name="w", periodic_callbacks={
        "profile": profile, "profile-cycle": cycle, "heartbeat": heartbeat})
    assert stop_profiler(worker)
    assert not profile.running
    assert not cycle.running
    assert heartbeat.running
    assert set(worker.periodic_callbacks) == {"heartbeat"}
    assert not stop_profiler(worker)
