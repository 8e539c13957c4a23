"""Helpers for tests that map on real clusters: cluster YAML files, TLS files, and comparing
cubes by their stored chunk bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lczscale.config.clusters import SecurityConfig, dump_cluster_config
from lczscale.execute.tile import TileResult


def write_cluster(cfg: BaseModel, path: Path) -> str:
    path.write_text(dump_cluster_config(cfg))
    return str(path)


def tls_files(directory: Path) -> SecurityConfig:
    """A self-signed CA/cert/key (distributed's ``Security.temporary``) written as PEM files."""
    from distributed.security import Security

    sec = Security.temporary()
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca.pem": sec.tls_ca_file, "cert.pem": sec.tls_scheduler_cert,
             "key.pem": sec.tls_scheduler_key}
    for name, text in files.items():
        assert text
        assert "-----BEGIN" in text
        (directory / name).write_text(text)
    (directory / "key.pem").chmod(0o600)
    return SecurityConfig(tls=True, ca_file=str(directory / "ca.pem"),
                          cert_file=str(directory / "cert.pem"),
                          key_file=str(directory / "key.pem"))


def chunk_files(url: str) -> dict[str, bytes]:
    """Every stored file of the cube's ``lcz`` and ``confidence`` arrays (chunks + metadata)."""
    root = Path(url)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[1:2] in (("lcz",), ("confidence",))
    }


def assert_same_chunks(url: str, reference: str) -> None:
    got, want = chunk_files(url), chunk_files(reference)
    assert len(want) > 2, f"the reference holds {len(want)} stored files"
    assert got.keys() == want.keys(), (
        f"stored files differ: missing {sorted(want.keys() - got.keys())[:5]}, "
        f"extra {sorted(got.keys() - want.keys())[:5]}"
    )
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} stored files differ, e.g. {differ[:5]}"


def processes(results: list[TileResult]) -> set[str]:
    """The worker processes (host:pid) that made the tiles."""
    return {r.worker for r in results}


def pid_of(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def all_done(report: Any) -> None:
    assert not report.failed, report.summary()["failures"]
