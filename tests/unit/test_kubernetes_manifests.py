"""Rendered Kubernetes manifests: valid against the Kubernetes and operator schemas (offline),
and saying what they must (GPUs, node placement, TLS, credentials by reference only)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import k8s_schemas as schemas
import pytest
import yaml

from lczscale.config import MapConfig
from lczscale.config.clusters import KubernetesClusterConfig
from lczscale.errors import ConfigError
from lczscale.execute.clusters import k8s_manifests as km
from lczscale.execute.clusters import kubernetes_cluster as kube
from lczscale.execute.clusters.k8s_pods import TLS_DIR
from lczscale.train.settings import LabelSet, TrainJob

REPO = Path(__file__).parents[2]
EXAMPLES = REPO / "deploy" / "kubernetes"
VERSIONS = ("1.30", "1.37")  # oldest we claim to support, newest kubernetes-validate ships
TLS = {"tls": True, "tls_secret": "lcz-tls", "ca_file": f"{TLS_DIR}/ca.pem",
       "cert_file": f"{TLS_DIR}/cert.pem", "key_file": f"{TLS_DIR}/key.pem"}
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRET"
SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_ACCESS_KEY_ID": "AKIAZZZFAKEKEYID12",
              "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFAKEsessiontoken", "AZURE_STORAGE_KEY":
              "fakeazurestoragekey=="}


def cluster(**kw: Any) -> KubernetesClusterConfig:
    base: dict[str, Any] = {"name": "lcz", "namespace": "maps", "image": "reg.example/lcz:1",
                            "workers": 3, "env_secret": "lcz-storage", "volume_claim": "lcz-data",
                            "env": {"AWS_ENDPOINT_URL": "https://s3.example"}}
    return KubernetesClusterConfig.model_validate(base | kw)


def map_cfg(**kw: Any) -> MapConfig:
    return MapConfig.model_validate({"source": "s3://b/emb.zarr", "model": "/data/model",
                                     "out": "s3://b/lcz.zarr"} | kw)


def train(**kw: Any) -> TrainJob:
    return TrainJob.model_validate({"source": "s3://b/emb.zarr", "out": "/data/model",
                                    "labels": [LabelSet(name="zurich", path="/data/z.tif")]}
                                   | kw)


CONFIGS = {
    "gpu": cluster(),
    "cpu-only": cluster(worker_gpus=0, volume_claim=None),
    "gpu-nodes-adaptive-tls": cluster(
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        adaptive={"minimum": 1, "maximum": 6}, security=TLS, service_type="LoadBalancer"),
}


def rendered(name: str) -> dict[str, dict]:
    cfg = CONFIGS[name]
    job = train(out="/data/model") if cfg.volume_claim else None
    return km.render(cfg, map_cfg(), job, ranks=4 if job else None)


def containers(manifests: dict[str, dict]) -> Iterator[tuple[str, dict, dict]]:
    """(role, pod spec, container) for every container rendered."""
    for m in manifests.values():
        if m["kind"] in ("DaskCluster", "DaskJob"):
            spec = m["spec"]["cluster"]["spec"] if m["kind"] == "DaskJob" else m["spec"]
            if m["kind"] == "DaskJob":
                pod = m["spec"]["job"]["spec"]
                yield "client", pod, pod["containers"][0]
            for role in ("scheduler", "worker"):
                pod = spec[role]["spec"]
                yield role, pod, pod["containers"][0]
        elif m["kind"] == "Job":
            pod = m["spec"]["template"]["spec"]
            yield "rank", pod, pod["containers"][0]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CONFIGS)
def test_every_manifest_validates(name: str, version: str) -> None:
    manifests = rendered(name)
    kinds = {m["kind"] for m in manifests.values()}
    assert {"DaskCluster", "DaskJob", "ConfigMap", "Kustomization"} <= kinds
    for path, manifest in manifests.items():
        try:
            schemas.validate(manifest, version)
        except schemas.SchemaError as exc:
            pytest.fail(f"{name} {path}: {exc}")


def _parent(m: dict, path: str) -> tuple[Any, Any]:
    """The node holding the last key of ``path`` ('/'-separated, '~' for a '/' in a key, list
    indices as numbers)."""
    *parents, last = (key.replace("~", "/") for key in path.split("/"))
    node: Any = m
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    return node, int(last) if last.isdigit() else last


# (file, what, path, None = remove it, else the wrong value to set)
BREAKAGES: list[tuple[str, str, str, Any]] = [
    ("cluster/daskcluster.yaml", "no scheduler service", "spec/scheduler/service", None),
    ("cluster/daskcluster.yaml", "no worker", "spec/worker", None),
    ("cluster/daskcluster.yaml", "no worker containers", "spec/worker/spec/containers", None),
    ("cluster/daskcluster.yaml", "no container name", "spec/scheduler/spec/containers/0/name",
     None),
    ("cluster/daskcluster.yaml", "int targetPort (the CRD wants a string)",
     "spec/scheduler/service/ports/0/targetPort", 8786),
    ("cluster/daskcluster.yaml", "a field the CRD would prune",
     "spec/worker/spec/containers/0/resources/claims", [{"name": "gpu"}]),
    ("cluster/daskcluster.yaml", "no name", "metadata/name", None),
    ("map/daskjob.yaml", "no job", "spec/job", None),
    ("map/daskjob.yaml", "no runner containers", "spec/job/spec/containers", None),
    ("map/daskjob.yaml", "no cluster scheduler", "spec/cluster/spec/scheduler", None),
    ("map/daskjob.yaml", "GPU count as a number",
     "spec/cluster/spec/worker/spec/containers/0/resources/limits/nvidia.com~gpu", 1),
    ("map/daskautoscaler.yaml", "no maximum", "spec/maximum", None),
    ("map/daskautoscaler.yaml", "no cluster", "spec/cluster", None),
    ("map/configmap.yaml", "unknown field", "spec", {}),
    ("train/job.yaml", "no template", "spec/template", None),
    ("train/job.yaml", "no containers", "spec/template/spec/containers", None),
    ("train/job.yaml", "no env var name", "spec/template/spec/containers/0/env/0/name", None),
    ("train/job.yaml", "misspelt field", "spec/template/spec/restartpolicy", "Never"),
    ("train/service.yaml", "no port number", "spec/ports/0/port", None),
    ("train/service.yaml", "no kind", "kind", None),
]


@pytest.mark.parametrize(("path", "what", "where", "value"), BREAKAGES,
                         ids=[f"{p}: {w}" for p, w, _, _ in BREAKAGES])
def test_a_broken_manifest_fails_validation(path: str, what: str, where: str,
                                            value: Any) -> None:
    manifest = rendered("gpu-nodes-adaptive-tls")[path]
    schemas.validate(manifest, VERSIONS[-1])  # valid as rendered
    broken = copy.deepcopy(manifest)
    node, key = _parent(broken, where)
    if value is None:
        del node[key]
    else:
        node[key] = value
    with pytest.raises(schemas.SchemaError):
        schemas.validate(broken, VERSIONS[-1])


def test_operator_accepts_the_cluster_names() -> None:
    from dask_kubernetes.operator.validation import validate_cluster_name

    cfg = cluster(name="a" * 40)  # the longest name the config allows
    manifests = km.render(cfg, map_cfg())
    for m in manifests.values():
        if m["kind"] in ("DaskCluster", "DaskJob"):
            validate_cluster_name(m["metadata"]["name"])


# --- what the manifests say -----------------------------------------------------------------


@pytest.mark.parametrize("gpus", [0, 1])
def test_gpu_requests_only_with_worker_gpus(gpus: int) -> None:
    manifests = km.render(cluster(worker_gpus=gpus), map_cfg(), train(), ranks=2)
    roles = set()
    for role, _, c in containers(manifests):
        roles.add(role)
        has_gpu = [("nvidia.com/gpu" in c["resources"][k]) for k in ("requests", "limits")]
        gpu_role = role in ("worker", "rank")
        assert has_gpu == [bool(gpus) and gpu_role] * 2, (role, c["resources"])
        if gpus and gpu_role:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"  # one GPU per pod
        if role == "worker":
            assert ("GPU=1" in c["command"]) == bool(gpus)
            assert c["command"][c["command"].index("--nthreads") + 1] == "1"
            assert env_of(c)["OMP_NUM_THREADS"] == "1"
    assert roles == {"client", "scheduler", "worker", "rank"}
    config = yaml.safe_load(manifests["map/configmap.yaml"]["data"]["map.yaml"])
    assert config["device"] == ("cuda" if gpus else "cpu")  # what the client records


def test_device_cpu_renders_no_gpus() -> None:
    manifests = km.render(cluster(worker_gpus=1), map_cfg(device="cpu"))
    assert not any("nvidia.com/gpu" in c["resources"]["limits"]
                   for _, _, c in containers(manifests))


def test_node_selector_and_tolerations_on_gpu_pods_only() -> None:
    manifests = rendered("gpu-nodes-adaptive-tls")
    assert {role for role, _, _ in containers(manifests)} == {"client", "scheduler", "worker",
                                                              "rank"}
    for role, pod, _ in containers(manifests):
        if role in ("worker", "rank"):
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]
        else:
            assert "nodeSelector" not in pod, role
            assert "tolerations" not in pod, role


def test_tls_mounts_the_secret_and_uses_tls_addresses() -> None:
    manifests = rendered("gpu-nodes-adaptive-tls")
    for role, pod, c in containers(manifests):
        env = env_of(c)
        if role == "rank":  # torch.distributed, not Dask
            continue
        assert {"name": "tls", "secret": {"secretName": "lcz-tls", "defaultMode": 0o440}} \
            in pod["volumes"], role
        assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"]
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == f"{TLS_DIR}/ca.pem"
        for r in ("SCHEDULER", "WORKER", "CLIENT"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{r}__KEY"] == f"{TLS_DIR}/key.pem"
        if role == "scheduler":
            assert c["command"][-2:] == ["--protocol", "tls"]
        else:
            assert env["DASK_SCHEDULER_ADDRESS"].startswith("tls://"), role
    job = manifests["map/daskjob.yaml"]
    client = env_of(job["spec"]["job"]["spec"]["containers"][0])
    assert client["DASK_SCHEDULER_ADDRESS"] == \
        "tls://lcz-map-scheduler.maps.svc.cluster.local:8786"  # the job's own scheduler
    plain = km.render(cluster(security={"tls": False}), map_cfg())  # the opt-out
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" not in str(plain)
    assert "tls://" not in str(plain)
    assert "secretName" not in str(plain)


def test_tls_is_on_by_default_with_the_rendered_secret() -> None:
    """No security section: TLS anyway, from the Secret <name>-tls that deploy renders."""
    default, named = km.render(cluster(), map_cfg()), km.render(cluster(security=TLS), map_cfg())
    assert default == named  # the Secret lcz-tls and its ca/cert/key.pem either way
    assert "tls://lcz-map-scheduler" in str(default["map/daskjob.yaml"])


def test_map_client_command_parses_and_its_config_loads() -> None:
    from lczscale.cli import parser

    manifests = rendered("gpu")
    pod = manifests["map/daskjob.yaml"]["spec"]["job"]["spec"]
    c = pod["containers"][0]
    address = env_of(c)["DASK_SCHEDULER_ADDRESS"]
    assert c["command"][0] == "lczscale"
    args = parser().parse_args([a.replace("$(DASK_SCHEDULER_ADDRESS)", address)
                                for a in c["command"][1:]])
    assert args.scheduler == address
    assert args.config == "/config/map.yaml"
    configmap = manifests["map/configmap.yaml"]
    assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    loaded = MapConfig.model_validate(yaml.safe_load(configmap["data"]["map.yaml"]))
    assert loaded == map_cfg(device="cuda")


def test_training_ranks_find_each_other() -> None:
    from lczscale.train.data_parallel import Ranks, from_environment

    manifests = km.render(cluster(), map_cfg(), train(), ranks=4)
    job, service = manifests["train/job.yaml"], manifests["train/service.yaml"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == \
        ("Indexed", 4, 4)
    pod = spec["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    c = pod["containers"][0]
    env = env_of(c)
    assert env["RANK"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # pod hostnames of an Indexed Job are <job>-<index>; rank 0 serves the rendezvous
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    for index in range(4):
        seen = {k: v for k, v in env.items() if isinstance(v, str)} | {"RANK": str(index)}
        assert from_environment(seen) == Ranks(index, 4, 0)
    assert c["command"] == ["python", "-m", "lczscale.train.launch", "/config/train_job.json"]
    data = manifests["train/configmap.yaml"]["data"]["train_job.json"]
    assert TrainJob.model_validate_json(data) == train()


# --- credentials ----------------------------------------------------------------------------

_SECRETISH = re.compile(r"secret|password|passwd|token|credential|private.?key|access.?key",
                        re.I)
_REFERENCES = {"secretRef", "secretKeyRef", "secretName", "secret"}


def literal_secrets(node: Any, path: str = "") -> list[str]:
    """Places where a secret-looking key carries a literal value (a reference is fine)."""
    found: list[str] = []
    if isinstance(node, dict):
        if {"name", "value"} <= node.keys() and isinstance(node["value"], str):  # env entry
            name = node["name"]
            is_file = node["value"].startswith(TLS_DIR + "/")  # a path, not the key itself
            if (_SECRETISH.search(name) or name.endswith("_KEY")) and not is_file:
                found.append(f"{path}: env {name}")
        for key, value in node.items():
            if key in _REFERENCES:
                continue
            if isinstance(value, str | int | float) and _SECRETISH.search(key):
                found.append(f"{path}.{key}")
            found += literal_secrets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += literal_secrets(item, f"{path}[{i}]")
    return found


def test_no_credentials_in_any_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    # values of credential-like variables of this very environment, too
    values = {v for k, v in os.environ.items()
              if (_SECRETISH.search(k) or k.endswith("_KEY")) and len(v) >= 8}
    for name in CONFIGS:
        cfg = CONFIGS[name]
        path = tmp_path / name / "cluster.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        (tmp_path / name / "map.yaml").write_text(yaml.safe_dump(map_cfg().model_dump(
            mode="json")))
        (tmp_path / name / "train.json").write_text(train().model_dump_json())
        files = kube.write_manifests(path, tmp_path / name / "map.yaml", tmp_path / name / "out",
                                     tmp_path / name / "train.json" if cfg.volume_claim else None)
        for f in files:
            text = f.read_text()
            leaked = [k for k in values if k in text]
            assert not leaked, f"{f} contains the value of a credential variable"
            for doc in yaml.safe_load_all(text):
                assert not literal_secrets(doc), (f, literal_secrets(doc))
                for nested in ("map.yaml", "train_job.json"):
                    inner = doc.get("data", {}).get(nested)
                    if inner:
                        assert not literal_secrets(yaml.safe_load(inner)), (f, nested)
    secret_refs = [c.get("envFrom") for role, _, c in containers(rendered("gpu"))
                   if role != "scheduler"]
    assert secret_refs
    assert all(r == [{"secretRef": {"name": "lcz-storage"}}]
                               for r in secret_refs)


def test_the_scan_finds_a_literal_credential() -> None:
    job = copy.deepcopy(rendered("gpu")["train/job.yaml"])
    job["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": FAKE_SECRET})
    job["metadata"]["annotations"] = {"db-password": "hunter2"}
    assert len(literal_secrets(job)) == 2


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                                  "GITHUB_TOKEN", "DB_PASSWORD"])
def test_credentials_in_plain_env_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="env_secret"):
        km.render(cluster(env={name: "x"}), map_cfg())


# --- bad input ------------------------------------------------------------------------------

BAD = {
    "serial executor": (cluster(), map_cfg(executor="serial"), None, None, "executor: dask"),
    "local cube without a volume": (cluster(volume_claim=None), map_cfg(out="/tmp/lcz.zarr"),
                                    None, None, "volume_claim"),
    "local cube off the volume": (cluster(), map_cfg(out="/tmp/lcz.zarr"), None, None,
                                  "under volume_mount /data"),
    "training output off the volume": (cluster(), map_cfg(), train(out="/tmp/m"), 2,
                                       "training output"),
    "two GPUs per worker": (cluster(worker_gpus=2), map_cfg(), None, None, "one GPU"),
    "tls without its secret": (cluster(security=TLS | {"tls_secret": None}), map_cfg(), None,
                               None, "tls_secret"),
    "tls file elsewhere": (cluster(security=TLS | {"ca_file": "/home/me/ca.pem"}), map_cfg(),
                           None, None, "security.ca_file"),
    "cuda without GPUs": (cluster(worker_gpus=0), map_cfg(device="cuda"), None, None,
                          "worker_gpus: 0"),
    "no ranks": (cluster(), map_cfg(), train(), 0, "--ranks must be"),
    "ranks without a job": (cluster(), map_cfg(), None, 2, "--ranks needs --train"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_config_error(case: str) -> None:
    cfg, mcfg, job, ranks, message = BAD[case]
    with pytest.raises(ConfigError, match=re.escape(message)):
        km.render(cfg, mcfg, job, ranks)


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lczscale.cli import main

    (tmp_path / "slurm.yaml").write_text("kind: slurm\n")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(map_cfg().model_dump(mode="json")))
    args = ["deploy", "kubernetes", "--map", str(tmp_path / "map.yaml"), "--out", str(tmp_path)]
    assert main(args + ["--cluster", str(tmp_path / "slurm.yaml")]) == 2
    assert "kind: kubernetes" in capsys.readouterr().err
    (tmp_path / "k8s.yaml").write_text("kind: kubernetes\nvolume_claim: d\n")
    assert main(args + ["--cluster", str(tmp_path / "k8s.yaml"), "--train",
                        str(tmp_path / "missing.json")]) == 2
    assert "missing.json not found" in capsys.readouterr().err


# --- files ----------------------------------------------------------------------------------


def _render_examples(out: Path) -> list[Path]:
    return kube.write_manifests(EXAMPLES / "cluster.yaml", EXAMPLES / "map.yaml", out,
                                EXAMPLES / "train_job.json", ranks=2)


def test_each_kustomization_lists_exactly_its_files(tmp_path: Path) -> None:
    written = _render_examples(tmp_path)
    dirs = {p.parent for p in written}
    assert {d.name for d in dirs} == {"cluster", "map", "train", "tls"}
    for d in dirs:
        listed = yaml.safe_load((d / "kustomization.yaml").read_text())["resources"]
        assert sorted(listed) == sorted(p.name for p in d.iterdir()
                                        if p.name != "kustomization.yaml")
    # rendering again without adaptive scaling or training removes what no longer belongs
    cfg = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text()) | {"adaptive": None}
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(cfg))
    kube.write_manifests(tmp_path / "fixed.yaml", EXAMPLES / "map.yaml", tmp_path)
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == \
        ["configmap.yaml", "daskjob.yaml", "kustomization.yaml"]
    assert not list((tmp_path / "train").iterdir())


def test_kustomize_builds_each_directory(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing on the CI machine: kustomize builds are not checked")
        pytest.skip("kubectl (kustomize) not installed")
    _render_examples(tmp_path)
    for d in ("cluster", "map", "train", "tls"):
        out = subprocess.run(["kubectl", "kustomize", str(tmp_path / d)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        built = sorted(m["kind"] for m in yaml.safe_load_all(out))
        files = [yaml.safe_load(p.read_text()) for p in (tmp_path / d).glob("*.yaml")]
        assert built == sorted(m["kind"] for m in files if m["kind"] != "Kustomization")


def test_example_manifests_are_up_to_date(tmp_path: Path) -> None:
    """deploy/kubernetes/manifests is what the renderer makes of the example configs; when
    this fails, render them again (the command is in deploy/kubernetes/README.md)."""
    fresh = {p.relative_to(tmp_path): p.read_text() for p in _render_examples(tmp_path)
             if p.parent.name != "tls"}  # a fresh private key each time: never committed
    committed = {p.relative_to(EXAMPLES / "manifests"): p.read_text()
                 for p in (EXAMPLES / "manifests").rglob("*.yaml")
                 if p.parent.name != "tls"}
    assert sorted(fresh) == sorted(committed)
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"re-render deploy/kubernetes/manifests: {stale} differ"


def test_example_cluster_config_is_documented() -> None:
    cfg = kube.load_kubernetes_config(EXAMPLES / "cluster.yaml")
    text = (EXAMPLES / "cluster.yaml").read_text()
    for field in KubernetesClusterConfig.model_fields:
        if field not in ("kind", "security"):
            assert re.search(rf"^{field}:", text, re.M), f"{field} not in the example"
    assert cfg.worker_gpus == 1
    assert cfg.node_selector
    assert cfg.tolerations


# --- the Python entry point -----------------------------------------------------------------


class _Recorder:
    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append(("close", None))

    def adapt(self, **kw: Any) -> None:
        self.calls.append(("adapt", kw))

    def scale(self, n: int) -> None:
        self.calls.append(("scale", n))


@contextmanager
def _client(cluster: Any) -> Iterator[str]:
    yield "client"


@pytest.mark.parametrize("adaptive", [None, {"minimum": 1, "maximum": 5}])
def test_open_kube_cluster_hands_the_operator_the_rendered_spec(
        monkeypatch: pytest.MonkeyPatch, adaptive: dict | None) -> None:
    """Only the hand-over is tested: there is no Kubernetes API here (see the module doc)."""
    import distributed

    _Recorder.calls = []
    monkeypatch.setattr(kube, "_kube_cluster_class", lambda: _Recorder)
    monkeypatch.setattr(distributed, "Client", _client)
    cfg = cluster(adaptive=adaptive, security={"tls": False})
    with kube.open_kube_cluster(cfg, device="auto", allowed_failures=5, threads=2) as client:
        assert client == "client"
    (_, init), (action, arg), close = _Recorder.calls
    assert init == {"custom_cluster_spec": km.dask_cluster(cfg, 1, 2, 5), "namespace": "maps",
                    "shutdown_on_close": True}
    schemas.validate(init["custom_cluster_spec"], VERSIONS[-1])
    assert (action, arg) == (("adapt", adaptive) if adaptive else ("scale", 3))
    assert close == ("close", None)
    for tls in (TLS, {}):  # TLS is the default: refused unless the config opts out
        with pytest.raises(ConfigError, match=r"KubeCluster.*tls: false"), \
                kube.open_kube_cluster(cluster(security=tls)):
            pass


def test_deploy_renders_the_tls_secret_once_and_privately(tmp_path: Path) -> None:
    """TLS by default: ``tls/secret.yaml`` holds a CA/certificate/key pair that fits (the
    Secret validates; the key signs what the certificate verifies), written 0600, kept when
    rendering again (a running cluster keeps its certificate), removed with the opt-out or a
    Secret of the user's own."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "cluster.yaml"
    base = cluster().model_dump(mode="json", exclude={"security"})
    path.write_text(yaml.safe_dump(base))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(map_cfg().model_dump(mode="json")))
    out = tmp_path / "out"
    written = kube.write_manifests(path, tmp_path / "map.yaml", out)
    secret_file = out / "tls" / "secret.yaml"
    assert secret_file in written
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    assert ((out / "tls").stat().st_mode & 0o077) == 0
    text = secret_file.read_text()
    assert "PRIVATE KEY" in text
    assert "never commit" in text
    secret = yaml.safe_load(text)
    for version in VERSIONS:
        schemas.validate(secret, version)
    assert secret["metadata"] == {"name": "lcz-tls", "namespace": "maps",
                                  "labels": km.pods.labels(cluster(), "tls")}
    data = {k: v.encode() for k, v in secret["stringData"].items()}
    assert sorted(data) == ["ca.pem", "cert.pem", "key.pem"]
    cert = x509.load_pem_x509_certificate(data["cert.pem"])
    key = serialization.load_pem_private_key(data["key.pem"], None)
    assert cert.public_key() == key.public_key()  # type: ignore[union-attr]
    assert yaml.safe_load((out / "tls" / "kustomization.yaml").read_text())["resources"] == [
        "secret.yaml"]
    kube.write_manifests(path, tmp_path / "map.yaml", out)
    assert secret_file.read_text() == text, "rendering again must keep the certificate"
    for security in ({"tls": False}, TLS):  # opt-out; a Secret of one's own (cert-manager …)
        path.write_text(yaml.safe_dump(base | {"security": security}))
        kube.write_manifests(path, tmp_path / "map.yaml", out)
        assert not secret_file.exists()
        assert not (out / "tls" / "kustomization.yaml").exists()
