"""Offline schema validation of Kubernetes manifests (no API server needed).

- Core kinds (Job, Service, ConfigMap, Pod) against the Kubernetes OpenAPI schemas that
  ``kubernetes-validate`` ships, in strict mode (unknown fields fail).
- The operator's kinds (DaskCluster, DaskJob, DaskAutoscaler) against the CRDs that the
  dask-kubernetes Helm chart installs (``deployment/helm/.../crds``: the ``customresources/``
  YAML next to them are templates whose ``$ref``s need the operator's build-time resolver).
  A CRD's ``openAPIV3Schema`` is OpenAPI v3, turned into JSON Schema here: ``nullable`` becomes
  a ``null`` type, ``x-kubernetes-*`` keys are dropped (``x-kubernetes-int-or-string`` becomes
  integer-or-string; ``preserve-unknown-fields`` keeps an object open), and every other object
  gets ``additionalProperties: false``. The API server would *prune* unknown fields of a CRD
  silently, which for us is a bug (a setting that never reaches the pod), so it fails here.
- The pod specs embedded in those resources also as Pods, against today's Kubernetes schema:
  the CRDs embed an old (1.21) PodSpec, and both must accept what is rendered.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import dask_kubernetes
import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = (Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
           / "dask-kubernetes-operator" / "crds")
CUSTOM_KINDS = ("DaskCluster", "DaskJob", "DaskAutoscaler", "DaskWorkerGroup")

Json = dict[str, Any]


class SchemaError(AssertionError):
    """A manifest does not validate; the message names the path and the reason, briefly."""


def to_json_schema(node: Json) -> Json:
    """One OpenAPI v3 schema node (as Kubernetes CRDs write it) as strict JSON Schema."""
    out: Json = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value,
                                                                                        dict)):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = "properties" in node or node.get("type") == "object"
    if (is_object and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str) -> Json:
    """JSON Schema of a whole custom resource (apiVersion, kind, metadata added: the API
    server handles them for every kind)."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = to_json_schema(version["schema"]["openAPIV3Schema"])
        strings = {"type": "object", "additionalProperties": {"type": "string"}}
        schema["properties"] |= {
            "apiVersion": {"const": f"{crd['spec']['group']}/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "additionalProperties": False, "required": ["name"],
                         "properties": {"name": {"type": "string"},
                                        "namespace": {"type": "string"},
                                        "labels": strings, "annotations": strings}},
        }
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        jsonschema.Draft7Validator.check_schema(schema)
        return schema
    raise LookupError(f"no CRD for {kind} in {CRD_DIR}")


def _brief(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:300]}"


def validate_custom(manifest: Json) -> None:
    validator = jsonschema.Draft7Validator(crd_schema(manifest["kind"]))
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:
        raise SchemaError(f"{manifest['kind']} {_brief(error)}")


def validate_core(manifest: Json, version: str) -> None:
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise SchemaError(f"{manifest.get('kind')} (Kubernetes {version}) "
                          f"{_brief(exc)}") from None


def embedded(manifest: Json) -> list[tuple[str, Json]]:
    """(where, a Pod or Service wrapping it) for every spec embedded in an operator resource."""
    spec = manifest.get("spec", {})
    found: list[tuple[str, str, Json]] = []
    if manifest["kind"] == "DaskJob":
        found.append(("spec.job.spec", "Pod", spec["job"]["spec"]))
        spec = spec["cluster"]["spec"]
        prefix = "spec.cluster.spec"
    else:
        prefix = "spec"
    if manifest["kind"] in ("DaskCluster", "DaskJob"):
        found += [(f"{prefix}.scheduler.spec", "Pod", spec["scheduler"]["spec"]),
                  (f"{prefix}.scheduler.service", "Service", spec["scheduler"]["service"]),
                  (f"{prefix}.worker.spec", "Pod", spec["worker"]["spec"])]
    return [(where, {"apiVersion": "v1", "kind": kind, "metadata": {"name": "embedded"},
                     "spec": body}) for where, kind, body in found]


def validate(manifest: Json, version: str) -> None:
    """A manifest of any kind we render, with its embedded pod specs."""
    missing = [k for k in ("apiVersion", "kind") if k not in manifest]
    if missing:
        raise SchemaError(f"(root): {missing} missing")
    if manifest["kind"] in CUSTOM_KINDS:
        validate_custom(manifest)
        for where, wrapped in embedded(manifest):
            try:
                validate_core(wrapped, version)
            except SchemaError as exc:
                raise SchemaError(f"{manifest['kind']} {where} as a {exc}") from None
    elif manifest["kind"] != "Kustomization":
        validate_core(manifest, version)
