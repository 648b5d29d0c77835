"""manifests/: render the kustomize overlays and validate every object against the Kubernetes schema.

Rendering: kustomize may be absent in CI, so `render` follows `resources:` lists recursively (all these
kustomizations use, and `test_kustomizations_use_only_resources` enforces it); when kubectl is present
its built-in kustomize renders the same objects (cross-check).

Validation is strict, against the OpenAPI models of the installed `kubernetes` client (and of
`kfp-server-api` for the recurring run): every key must be a field of its model, every value of the
field's type, and a model built from the object must pass the client's required-field checks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kfp_server_api
import pytest
import yaml
from kubernetes.client import models as k8s_models

from protege.agent.sandbox.kubernetes import SANDBOX_LABEL_VALUE
from protege.config import PipelineConfig, SandboxConfig

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
OVERLAYS = sorted(p for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}
LIST_TYPE = re.compile(r"^list\[(.+)\]$")
DICT_TYPE = re.compile(r"^dict\(str, (.+)\)$")
SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


class SchemaError(AssertionError):
    """An object does not match its model; the message names the path of the bad field."""


# ---- rendering --------------------------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """All objects of a kustomization directory, following `resources:` (files and directories)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
            objects += [{**doc, "_file": str(path.relative_to(MANIFESTS))} for doc in docs]
    return objects


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


# ---- strict validation against OpenAPI models ---------------------------------------------------------


def k8s_model(obj: dict[str, Any]) -> type:
    """`apps/v1` + `Deployment` -> kubernetes.client.V1Deployment."""
    version = obj["apiVersion"].split("/")[-1]
    name = version[0].upper() + version[1:] + obj["kind"]
    model = getattr(k8s_models, name, None)
    if model is None:
        raise SchemaError(f"{obj.get('_file')}: no Kubernetes model for {obj['apiVersion']} {obj['kind']}")
    return model


def validate(value: Any, type_name: str, path: str, models: Any) -> None:
    """Check `value` against an OpenAPI type name of `models` (a client's models module); raise SchemaError."""
    if match := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            validate(item, match.group(1), f"{path}[{i}]", models)
        return
    if match := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a map, got {type(value).__name__}")
        for key, item in value.items():
            validate(item, match.group(1), f"{path}.{key}", models)
        return
    if type_name in ("object", "datetime"):
        return
    if type_name in SCALARS:
        if isinstance(value, bool) != (type_name == "bool") or not isinstance(value, SCALARS[type_name]):
            raise SchemaError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    validate_model(value, getattr(models, type_name), path, models)


def validate_model(value: Any, model: type, path: str, models: Any) -> None:
    allowed = getattr(model, "allowable_values", None)
    if allowed is not None and not model.openapi_types:  # an enum model
        if value not in allowed:
            raise SchemaError(f"{path}: {value!r} is not one of {allowed}")
        return
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: expected a {model.__name__} object, got {type(value).__name__}")
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            raise SchemaError(f"{path}.{key}: unknown field of {model.__name__}")
        validate(item, model.openapi_types[by_json[key]], f"{path}.{key}", models)
    try:  # the generated setters reject a missing required field (and bad enum values)
        model(**{by_json[key]: item for key, item in value.items()})
    except ValueError as err:
        raise SchemaError(f"{path}: {model.__name__}: {err}") from err


def validate_k8s(obj: dict[str, Any]) -> None:
    body = {k: v for k, v in obj.items() if k != "_file"}
    validate_model(
        body, k8s_model(obj), f"{obj.get('_file')}:{obj['kind']}/{obj['metadata']['name']}", k8s_models
    )


# ---- the tests -----------------------------------------------------------------------------------------


def test_overlays_exist():
    assert {p.name for p in OVERLAYS} == {"local", "cluster"}


def test_kustomizations_use_only_resources():
    """`render` implements `resources:` only; anything else (patches, generators) would be silently lost."""
    for path in MANIFESTS.rglob("kustomization.yaml"):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= {"apiVersion", "kind", "resources"}, f"{path}: unsupported keys {keys}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_object_is_valid_kubernetes(overlay: Path):
    objects = render(overlay)
    assert len(objects) >= 20
    for obj in objects:
        validate_k8s(obj)
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") in {"protege", "protege-sandboxes"}, identity(obj)
    ids = [identity(o) for o in objects]
    assert len(ids) == len(set(ids)), f"{overlay.name}: duplicate objects"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed")
def test_renderer_matches_kubectl_kustomize(overlay: Path):
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    rendered = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert sorted(map(identity, rendered)) == sorted(map(identity, render(overlay)))


def test_validator_rejects_unknown_and_missing_fields():
    good = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]},
    }
    validate_k8s(good)
    with pytest.raises(SchemaError, match=r"spec\.ports\[0\]\.prot: unknown field"):
        validate_k8s({**good, "spec": {"ports": [{"port": 80, "prot": "TCP"}]}})
    with pytest.raises(SchemaError, match="port.*must not be `None`"):
        validate_k8s({**good, "spec": {"ports": [{"name": "http"}]}})
    with pytest.raises(SchemaError, match="expected int"):
        validate_k8s({**good, "spec": {"ports": [{"port": "80"}]}})
    with pytest.raises(SchemaError, match="no Kubernetes model"):
        validate_k8s({**good, "kind": "Servic"})


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in render(MANIFESTS / "base") if o["kind"] == kind]


def test_sandbox_pods_are_denied_egress():
    cfg = SandboxConfig()
    policies = {p["metadata"]["name"]: p for p in by_kind("NetworkPolicy")}
    sandbox = policies["sandbox-deny-egress"]
    assert sandbox["metadata"]["namespace"] == cfg.namespace
    assert sandbox["spec"]["podSelector"] == {"matchLabels": {cfg.pod_label: SANDBOX_LABEL_VALUE}}
    assert SANDBOX_LABEL_VALUE == "true"
    assert "Egress" in sandbox["spec"]["policyTypes"] and sandbox["spec"]["egress"] == []
    grading = policies["grading-deny-egress"]["spec"]
    assert grading["podSelector"]["matchLabels"] == {cfg.pod_label: "grading"} and grading["egress"] == []


def test_pipeline_service_account_may_manage_sandbox_pods():
    namespace = SandboxConfig().namespace
    (role,) = by_kind("Role")
    (binding,) = by_kind("RoleBinding")
    (account,) = by_kind("ServiceAccount")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    needed = {("pods", v) for v in ("create", "get", "list", "delete")} | {
        ("pods/exec", "create"),
        ("pods/log", "get"),
    }
    assert needed <= granted, needed - granted
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_secret_templates_match_the_pipeline_config():
    cfg = PipelineConfig()
    secrets = {s["metadata"]["name"]: set(s["stringData"]) for s in by_kind("Secret")}
    assert secrets[cfg.anthropic_secret] == {"api_key"}
    assert secrets[cfg.s3_secret] == {"access_key", "secret_key"}
    assert secrets[cfg.mlflow_secret] == {"username", "password"}


def test_references_resolve():
    """Every secretKeyRef names an existing secret key, every claim and service selector a real pod."""
    objects = render(MANIFESTS / "base")
    secrets = {s["metadata"]["name"]: set(s["stringData"]) for s in objects if s["kind"] == "Secret"}
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for work in workloads:
        pod = work["spec"]["template"]["spec"]
        if work["kind"] != "Job":
            assert (
                work["spec"]["selector"]["matchLabels"].items()
                <= work["spec"]["template"]["metadata"]["labels"].items()
            )
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), (work["metadata"]["name"], ref)
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_recurring_run_is_a_valid_kfp_request():
    path = MANIFESTS / "recurring-run" / "recurring-run.yaml"
    body = yaml.safe_load(path.read_text())
    validate_model(body, kfp_server_api.V2beta1RecurringRun, path.name, kfp_server_api.models)
    assert len(body["trigger"]["cron_schedule"]["cron"].split()) == 6  # KFP cron has a seconds field
    assert body["max_concurrency"] == str(PipelineConfig().schedule_max_concurrency)
    assert body["service_account"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    with pytest.raises(SchemaError, match="unknown field"):
        validate_model(
            {**body, "cron": "x"}, kfp_server_api.V2beta1RecurringRun, path.name, kfp_server_api.models
        )
