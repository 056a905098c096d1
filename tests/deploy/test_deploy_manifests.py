"""deploy/: every manifest validates against the Kubernetes schemas (kubernetes-validate, strict),
custom objects against our CRDs' openAPIV3Schema, and the manifests agree with the code
(settings names, ports, probes, grace period, RBAC covering exactly what the controller calls)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from controller import (
    ControllerSettings,
    CRStatus,
    FailureInfo,
    ReconcileContext,
    Registration,
    desired_state,
    status_json,
)
from mesh import InstanceSettings, RuntimeSettings, StoreSettings
from puller import PullerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = kubernetes_validate.latest_version()  # the newest release it ships schemas for (offline)
CUSTOM_KINDS = {"Predictor", "ServingRuntime", "InferenceService", "TenantQuota"}
# cert-manager's kinds (overlays/cert-manager): no CRD of ours to validate against; the fields
# modelmux relies on are checked in test_deploy_security.py
CERT_MANAGER_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(_docs(path)):
            yield path, i, doc


ALL = list(manifests())


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema that rejects fields the API server would prune."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from every CRD in deploy/."""
    out = {}
    for _path, _i, doc in ALL:
        if doc["kind"] != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for v in doc["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


CRDS = crd_schemas()


def validate_custom(doc: dict[str, Any]) -> None:
    schema = CRDS[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize(("path", "index", "doc"), ALL, ids=[f"{p.relative_to(DEPLOY)}#{i}" for p, i, _ in ALL])
def test_manifest_is_valid(path: Path, index: int, doc: dict[str, Any]) -> None:
    assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
    if doc["kind"] in CUSTOM_KINDS:
        validate_custom(doc)
    elif (doc["apiVersion"], doc["kind"]) in CERT_MANAGER_KINDS:
        assert doc["spec"] and doc["metadata"]["namespace"], path
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_mistakes() -> None:
    """The checks above are not vacuous: a typo and a wrong type are rejected."""
    deployment = next(d for p, _, d in ALL if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    example = next(d for p, _, d in ALL if d["kind"] == "Predictor")
    typo = copy.deepcopy(example)
    typo["spec"]["modelTyp"] = {"name": "onnx"}
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(typo)
    wrong = copy.deepcopy(example)
    wrong["spec"]["minCopies"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(wrong)


def test_kustomizations_reference_existing_files_and_cover_the_base() -> None:
    root = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = {(DEPLOY / r).resolve() for r in root["resources"]}
    for r in listed:
        assert r.is_file(), r
    # every base manifest is installed; examples, optional CRDs, overlays, the ServingRuntime
    # (applied after its CRD) and the secret example are applied by hand (deploy/README.md)
    by_hand = {"examples", "optional", "overlays", "runtimes"}
    base = {
        p.resolve()
        for p in DEPLOY.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not by_hand & set(p.relative_to(DEPLOY).parts) and not p.name.endswith(".example.yaml")
    }
    assert base == listed
    for generator in root.get("configMapGenerator", []):
        for f in generator["files"]:
            assert (DEPLOY / f).is_file(), f
    for k in DEPLOY.rglob("overlays/*/kustomization.yaml"):
        for r in yaml.safe_load(k.read_text()).get("resources", []):
            assert (k.parent / r).exists(), (k, r)


def _one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for _, _, d in ALL if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_instance_deployment_matches_the_agent() -> None:
    dep = _one("Deployment", "modelmux")
    pod = dep["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "modelmux"]
    env = _env(c)
    grace = float(env["MODELMUX_INSTANCE_SHUTDOWN_GRACE_S"]["value"])
    # the pod gets the agent's drain time plus time to close the servers, not much more
    assert grace < pod["terminationGracePeriodSeconds"] <= grace + 15
    cap = env["MODELMUX_INSTANCE_CAPACITY_BYTES"]["valueFrom"]["resourceFieldRef"]
    assert cap == {"containerName": c["name"], "resource": "requests.memory", "divisor": "1"}
    assert "memory" in c["resources"]["requests"]
    assert _quantity(c["resources"]["limits"]["memory"]) > _quantity(c["resources"]["requests"]["memory"])
    assert env["MODELMUX_INSTANCE_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8033, "http": 8008, "metrics": 2112, "health": 8034, "peer-link": 8035}
    assert "--peer-link-port=8035" in c["args"]  # a fixed port, so the network policy can open it to instances only
    assert "--host=0.0.0.0" in c["args"] and "--grpc-port=8033" in c["args"] and "--rest-port=8008" in c["args"]
    assert "--metrics-port=2112" in c["args"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "2112"
    assert pod["automountServiceAccountToken"] is False


def _quantity(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "": 1}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|)", q)
    assert m, q
    return int(m.group(1)) * units[m.group(2)]


def test_services_expose_grpc_rest_and_metrics() -> None:
    svc = _one("Service", "modelmux")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8033, "http": 8008}
    metrics = _one("Service", "modelmux-metrics")
    assert [(p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [(2112, "metrics")]
    dep = _one("Deployment", "modelmux")
    # the metrics Service reaches the instance's own metrics server
    container = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics" and ports["metrics"] == 2112
    assert "--metrics-port=2112" in container["args"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    etcd = _one("StatefulSet", "modelmux-etcd")
    config = _one("ConfigMap", "modelmux-config")["data"]
    assert config["MODELMUX_STORE_ENDPOINTS"] == f"{_one('Service', 'modelmux-etcd')['metadata']['name']}:2379"
    assert etcd["spec"]["serviceName"] == "modelmux-etcd-headless"


# env names read by no settings class yet: wired by the entry point (see deploy/README.md)
ENTRY_POINT_ENV = {"MODELMUX_STORAGE_CONFIG_DIR", "HOME", "POD_NAME", "POD_NAMESPACE"}
# What the manifests assume of code that is being wired (issues 13, 14, 15): remove a name
# here when the code reads it (test_pending_names_are_not_implemented_yet says when).
PENDING_ENV: dict[str, str] = {
}
PENDING_FLAGS = {
}
SETTINGS: dict[str, Any] = {
    "MODELMUX_INSTANCE_": InstanceSettings,
    "MODELMUX_STORE_": StoreSettings,
    "MODELMUX_CONTROLLER_": ControllerSettings,
    "MODELMUX_PULLER_": PullerSettings,
    "MODELMUX_RUNTIMES_": RuntimeSettings,
}


def _env_names() -> Iterator[tuple[str, str]]:
    for path, _i, doc in ALL:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "modelmux-config":
            for k in doc["data"]:
                yield str(path), k
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for e in c.get("env", []):
                yield str(path), e["name"]
    for k in DEPLOY.rglob("overlays/*/kustomization.yaml"):
        for name in re.findall(r"\b(MODELMUX_[A-Z0-9_]+)\b", k.read_text()):
            yield str(k), name


def _is_setting(name: str) -> bool:
    prefix = next((p for p in SETTINGS if name.startswith(p)), None)
    return prefix is not None and name[len(prefix) :].lower() in SETTINGS[prefix].model_fields


ETCD_AUTH_SCRIPT = DEPLOY / "etcd" / "etcd_auth.py"


def test_every_setting_in_the_manifests_exists() -> None:
    script_env = set(re.findall(r'(?:environ\.get|_read)\("(ETCD_[A-Z_]+)"', ETCD_AUTH_SCRIPT.read_text()))
    job = _one("Job", "modelmux-etcd-auth")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][-1].endswith("/" + ETCD_AUTH_SCRIPT.name)
    assert set(_env(job)) <= script_env  # the Job sets only what the script reads
    for where, name in _env_names():
        if name in ENTRY_POINT_ENV or name in PENDING_ENV or name in script_env:
            continue
        assert _is_setting(name), f"{where}: {name} is no field of a settings class"


def _serve_options() -> set[str]:
    import typer.main

    from mesh.cli import app

    group = typer.main.get_command(app)
    return {o for p in group.commands["serve"].params for o in p.opts}  # type: ignore[attr-defined]


def test_instance_flags_are_options_of_serve() -> None:
    c = _one("Deployment", "modelmux")["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "serve"
    known = _serve_options()
    for arg in c["args"][1:]:
        flag = arg.split("=", 1)[0]
        assert flag in known or flag in PENDING_FLAGS, f"modelmux serve has no option {flag}"


def test_pending_names_are_not_implemented_yet() -> None:
    """When the code reads a pending name, drop it from PENDING_* so the checks above cover it."""
    done = [n for n in PENDING_ENV if _is_setting(n)] + [f for f in PENDING_FLAGS if f in _serve_options()]
    assert not done, f"now implemented, remove from PENDING_ENV / PENDING_FLAGS: {done}"


def test_controller_rbac_is_least_privilege_and_sufficient() -> None:
    role = _one("Role", "modelmux-controller")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    # exactly what the controller calls: list/watch/get + patch (finalizers), status patch, events
    needed = {
        *{("serving.kserve.io", r, v) for r in ("predictors", "inferenceservices") for v in ("get", "list", "watch", "patch")},
        *{("serving.kserve.io", f"{r}/status", v) for r in ("predictors", "inferenceservices") for v in ("get", "patch")},
        *{("serving.kserve.io", "servingruntimes", v) for v in ("get", "list", "watch")},
        *{("modelmux.io", "tenantquotas", v) for v in ("get", "list", "watch", "patch")},
        *{("modelmux.io", "tenantquotas/status", v) for v in ("get", "patch")},
        ("", "events", "create"),
        ("", "events", "patch"),
    }
    assert granted == needed
    assert not any("*" in x for t in granted for x in t)
    cluster = _one("ClusterRole", "modelmux-controller")
    assert cluster["rules"] == role["rules"]
    binding = _one("RoleBinding", "modelmux-controller")
    dep = _one("Deployment", "modelmux-controller")
    assert binding["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]
    # replicas elect a leader through one Lease in their namespace: exactly that access
    assert dep["spec"]["replicas"] == 2 and ControllerSettings().leader_election
    election = _one("Role", "modelmux-controller-leader-election")
    lease = ControllerSettings().lease_name
    assert {(g, r, v, tuple(rule.get("resourceNames", ()))) for rule in election["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]} == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", (lease,)),
        ("coordination.k8s.io", "leases", "update", (lease,)),
    }
    assert _one("RoleBinding", "modelmux-controller-leader-election")["subjects"][0]["name"] == binding["subjects"][0]["name"]
    # ClusterServingRuntimes (cluster-scoped): read only; the storage-access ConfigMap: by name only
    runtimes = _one("ClusterRole", "modelmux-controller-cluster-runtimes")
    assert [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in runtimes["rules"]] == [
        (["serving.kserve.io"], ["clusterservingruntimes"], ["get", "list", "watch"])]
    access = _one("Role", "modelmux-controller-storage-access")
    assert [(r["apiGroups"], r["resources"], r["resourceNames"], sorted(r["verbs"])) for r in access["rules"]] == [
        ([""], ["configmaps"], ["modelmux-storage-access"], ["get", "list", "watch"])]
    for b in (_one("ClusterRoleBinding", "modelmux-controller-cluster-runtimes"), _one("RoleBinding", "modelmux-controller-storage-access")):
        assert b["subjects"][0]["name"] == binding["subjects"][0]["name"]
    overlay = (DEPLOY / "overlays" / "cluster-wide" / "kustomization.yaml").read_text()
    assert "MODELMUX_CONTROLLER_STORAGE_ACCESS_CONFIGMAP" in overlay and "modelmux-storage-access" in overlay
    assert _one("ConfigMap", "modelmux-storage-access")["data"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["controller"]
    health = ControllerSettings().health_port
    assert {p["containerPort"] for p in c["ports"]} == {health}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the cluster-wide overlay replaces env/0, which must be the namespace setting
    assert c["env"][0]["name"] == "MODELMUX_CONTROLLER_NAMESPACE"


def test_examples_map_to_registrations() -> None:
    examples = [(p, d) for p, _, d in ALL if p.parent.name == "examples"]
    assert {d["kind"] for _, d in examples} == {"Predictor", "InferenceService", "TenantQuota"}
    for path, doc in examples:
        if doc["kind"] == "TenantQuota":
            continue  # test_tenant_quota_status_fits_the_crd
        d = desired_state(doc, ReconcileContext())
        assert isinstance(d, Registration), (path, d)


STATUSES = [
    CRStatus(),
    CRStatus(
        available=True,
        active_model_state="Loaded",
        target_model_state="FailedToLoad",
        transition_status="BlockedByFailedLoad",
        last_failure=FailureInfo("ModelLoadFailed", "boom", "m__ksp-1", "i2", "2024-01-01T00:00:00Z"),
        total_copies=3,
        failed_copies=1,
        loaded_copies=2,
        holders=("i1", "i3"),
        grpc_endpoint="grpc://modelmux.ns:8033",
        http_endpoint="http://modelmux.ns:8008",
        active_model_id="m__ksp-0",
        target_model_id="m__ksp-1",
        observed_generation=3,
    ),
    CRStatus(transition_status="InvalidSpec", last_failure=FailureInfo("InvalidPredictorSpec", "bad")),
]


@pytest.mark.parametrize("status", STATUSES)
def test_controller_status_fits_the_crds(status: CRStatus) -> None:
    """What the controller writes survives the API server's schema (no field pruned or rejected)."""
    pred = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "m"},
            "spec": {"modelType": {"name": "onnx"}, "path": "p"}, "status": status_json("Predictor", status)}
    validate_custom(pred)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"}}},
            "status": status_json("InferenceService", status)}
    validate_custom(isvc)


def test_tenant_quota_status_fits_the_crd() -> None:
    from controller._tenants import QuotaRejection, QuotaSpec, quota_spec, quota_status

    example = _one("TenantQuota", "quota")
    desired = quota_spec(example)
    assert desired == QuotaSpec("team-a", 8 << 30, 500.0)
    for d, conflict in ((desired, ""), (desired, "tenant 'team-a' already has its quota from TenantQuota/x/y"), (QuotaRejection("t", "InvalidSpec", "bad"), "")):
        status = quota_status(d, {"used_bytes": 5, "models": 2, "copies": 3}, generation=2, previous={}, now=1_800_000_000.0, conflict=conflict)
        validate_custom({**example, "status": status})


def test_image_holds_every_package_and_runs_the_controller_command() -> None:
    """The Dockerfile copies every package pyproject installs (the controller is one of its own),
    and the controller Deployment's args name a command the controller adds to ``modelmux``."""
    import tomllib

    import typer

    from controller import register_commands

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
    include = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} <= copied
    assert re.search(r'^ENTRYPOINT \["modelmux"\]$', dockerfile, re.M)
    app = typer.Typer()
    register_commands(app)
    args = _one("Deployment", "modelmux-controller")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] in {c.name for c in app.registered_commands}
