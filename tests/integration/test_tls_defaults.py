"""TLS by default where lczscale starts the scheduler itself, with temporary certificates when
the cluster YAML names none: a local cluster asked for TLS, and a SLURM cluster (dask-jobqueue)
whose job scripts point at 0600 certificate files in ``shared_temp_directory`` — removed again
when the cluster closes. No SLURM job is submitted here (adaptive minimum 0):
``test_slurm.py`` maps over the same default TLS on a real SLURM cluster."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from distributed import Client

from lczscale.config.clusters import LocalClusterConfig, SlurmClusterConfig
from lczscale.execute.clusters.start import open_cluster

pytestmark = pytest.mark.integration


def _refuses_plain(address: str) -> None:
    plain = address.replace("tls://", "tcp://")
    # TLS only: a plain tcp:// client gets nowhere (refused, or timed out, at that address)
    with pytest.raises(OSError, match=rf"{re.escape(plain)}\b"):
        Client(plain, timeout="3s")


def test_a_local_cluster_with_tls_and_no_files_uses_temporary_certificates() -> None:
    cfg = LocalClusterConfig(workers=1, security={"tls": True})
    with open_cluster(cfg, device="cpu") as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        _refuses_plain(address)


def test_a_slurm_cluster_is_tls_by_default_with_private_temporary_files(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    directory = tmp_path / "shared" / "tls"
    cfg = SlurmClusterConfig(partition="debug", walltime="00:10:00", cores=1, memory="1GiB",
                             worker_lifetime=None, adaptive={"minimum": 0, "maximum": 1},
                             interface="lo", shared_temp_directory=str(directory))
    assert cfg.security.tls
    assert not cfg.security.has_files
    with open_cluster(cfg, device="cpu") as client:
        assert client.scheduler.address.startswith("tls://")
        script = client.cluster.job_script()
        files = sorted(directory.iterdir())
        assert len(files) == 3, files  # the workers' CA, certificate and key
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            assert f.read_text().startswith("-----BEGIN")
            assert str(f) in script
        for flag in ("--protocol tls://", "--tls-ca-file", "--tls-cert", "--tls-key"):
            assert flag in script
        assert "BEGIN" not in script
        assert "tls://" in script
        _refuses_plain(client.scheduler.address)
    assert not list(directory.iterdir()), "the temporary key outlived its cluster"


def test_the_opt_out_starts_a_plain_slurm_scheduler(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    cfg = SlurmClusterConfig(partition="debug", walltime="00:10:00", cores=1, memory="1GiB",
                             worker_lifetime=None, adaptive={"minimum": 0, "maximum": 1},
                             interface="lo", security={"tls": False},
                             shared_temp_directory=str(tmp_path / "tls"))
    with open_cluster(cfg, device="cpu") as client:
        assert client.scheduler.address.startswith("tcp://")
        assert "tls" not in client.cluster.job_script()
    assert not (tmp_path / "tls").exists()
