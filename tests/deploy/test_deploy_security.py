"""deploy/ is locked down (issue 13) and runs model code apart (issue 14): every container's
securityContext, which containers hold which Secrets, the runtime container, native gRPC
probes (issue 15), who may reach whom under the NetworkPolicies, the cert-manager overlay
and the auth file example (parsed by the instance's own parser)."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh._auth import Role, parse_principals
from tests.deploy.test_deploy_manifests import ALL, DEPLOY

WORKLOADS = [(p, d) for p, _, d in ALL if d["kind"] in {"Deployment", "StatefulSet", "Job"}]
POLICIES = [d for p, _, d in ALL if d["kind"] == "NetworkPolicy" and "overlays" not in p.parts]
NAMESPACE = "modelmux"
# Secrets that hold credentials of the mesh or its store (the storage-config Secret holds model
# storage credentials: the instance's puller only).
CREDENTIAL_SECRETS = {
    "modelmux-tls", "modelmux-auth", "modelmux-etcd-client-tls", "modelmux-etcd-credentials",
    "modelmux-etcd-root", "modelmux-controller-tls", "modelmux-controller-token", "storage-config",
    "modelmux-etcd-server-tls", "modelmux-etcd-peer-tls",
}  # fmt: skip


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["template"]["spec"])


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def _workload(name: str) -> dict[str, Any]:
    [doc] = [d for _, d in WORKLOADS if d["metadata"]["name"] == name]
    return doc


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    [c] = [c for c in _pod(doc)["containers"] if c["name"] == name]
    return dict(c)


def _volume_secrets(volume: dict[str, Any]) -> set[str]:
    if "secret" in volume:
        return {volume["secret"]["secretName"]}
    return {s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s}


def secrets_of(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    """Secrets a container can read: through its volume mounts, env and envFrom."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out: set[str] = set()
    for m in container.get("volumeMounts", []):
        out |= _volume_secrets(volumes.get(m["name"], {}))  # volumeClaimTemplates hold no Secret
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out.add(ref["name"])
    for e in container.get("envFrom", []):
        if "secretRef" in e:
            out.add(e["secretRef"]["name"])
    return out


def test_every_container_is_locked_down() -> None:
    assert {d["metadata"]["name"] for _, d in WORKLOADS} >= {"modelmux", "modelmux-controller", "modelmux-etcd", "modelmux-etcd-auth"}
    for path, doc in WORKLOADS:
        pod = _pod(doc)
        where = f"{path.relative_to(DEPLOY)}:{doc['metadata']['name']}"
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True and pod.get("hostIPC") is not True, where
        assert pod.get("enableServiceLinks") is False, where  # no other Services' addresses in the env
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc.get("privileged") is not True and sc.get("runAsUser", 1) != 0, (where, c["name"])
            assert "memory" in c["resources"]["limits"], (where, c["name"])
            # writable paths are volumes; nothing else is writable
            volumes = {v["name"]: v for v in pod.get("volumes", [])} | {
                t["metadata"]["name"]: {"pvc": True} for t in doc["spec"].get("volumeClaimTemplates", [])
            }
            for m in c.get("volumeMounts", []):
                v = volumes[m["name"]]
                if "secret" in v or "projected" in v or "configMap" in v:
                    assert m.get("readOnly") is True, (where, c["name"], m)
                else:
                    assert "emptyDir" in v or "pvc" in v, (where, c["name"], m)


def test_only_the_processes_that_need_them_hold_credentials() -> None:
    """Store and TLS secrets: instance container, controller, etcd, the auth Job; never the runtime."""
    held: dict[tuple[str, str], set[str]] = {}
    for _path, doc in WORKLOADS:
        pod = _pod(doc)
        for c in pod["containers"]:
            held[(doc["metadata"]["name"], c["name"])] = secrets_of(pod, c) & CREDENTIAL_SECRETS
    store = {"modelmux-etcd-client-tls", "modelmux-etcd-credentials"}
    assert held == {
        ("modelmux", "modelmux"): {"modelmux-tls", "modelmux-auth", "storage-config", *store},
        ("modelmux", "runtime"): set(),
        ("modelmux-controller", "controller"): {"modelmux-controller-tls", "modelmux-controller-token", *store},
        ("modelmux-etcd", "etcd"): {"modelmux-etcd-server-tls", "modelmux-etcd-peer-tls"},
        ("modelmux-etcd-auth", "etcd-auth"): {"modelmux-etcd-root", *store},
    }
    # the root password is only in the Job; the auth file only in the instance container
    assert [k for k, v in held.items() if "modelmux-etcd-root" in v] == [("modelmux-etcd-auth", "etcd-auth")]
    # every pod that has no business with the API server mounts no service account token
    for _path, doc in WORKLOADS:
        if doc["metadata"]["name"] != "modelmux-controller":
            assert _pod(doc)["automountServiceAccountToken"] is False, doc["metadata"]["name"]


def test_secrets_of_sees_every_way_in() -> None:
    """The check above is not vacuous: a Secret through a mount, a projected volume, env or envFrom is seen."""
    dep = copy.deepcopy(_workload("modelmux"))
    pod = _pod(dep)
    runtime = _container(dep, "runtime")
    for how in ("mount-tls", "mount-etcd", "env", "envFrom"):
        c = copy.deepcopy(runtime)
        if how == "mount-tls":
            c["volumeMounts"].append({"name": "tls", "mountPath": "/x", "readOnly": True})
        elif how == "mount-etcd":
            c["volumeMounts"].append({"name": "etcd", "mountPath": "/x", "readOnly": True})
        elif how == "env":
            c["env"].append({"name": "P", "valueFrom": {"secretKeyRef": {"name": "modelmux-etcd-credentials", "key": "password"}}})
        else:
            c["envFrom"] = [{"secretRef": {"name": "modelmux-auth"}}]
        assert secrets_of(pod, c) & CREDENTIAL_SECRETS, how


def test_runtime_container_runs_model_code_apart() -> None:
    dep = _workload("modelmux")
    pod = _pod(dep)
    instance, runtime = _container(dep, "modelmux"), _container(dep, "runtime")
    assert [c["name"] for c in pod["containers"]] == ["modelmux", "runtime"]
    assert pod.get("shareProcessNamespace") is not True  # the runtime cannot see the instance's /proc
    assert runtime["command"] == ["python", "-m", "runtime_adapters"]
    [address] = [a.split("=", 1)[1] for a in runtime["args"] if a.startswith("--address=")]
    assert address.startswith("unix:/")
    # nothing from the instance's configuration: no ConfigMap, no MODELMUX_* settings, no ports
    assert "envFrom" not in runtime and "ports" not in runtime
    assert {e["name"] for e in runtime.get("env", [])} <= {"HOME"}
    assert _quantity(runtime["resources"]["limits"]["memory"]) > 0
    mounts = {m["name"]: m for m in runtime["volumeMounts"]}
    imounts = {m["name"]: m for m in instance["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # staged models: the instance's data volume at the same path (the instance sends paths), read-only
    assert mounts["data"]["mountPath"] == imounts["data"]["mountPath"] and mounts["data"]["readOnly"] is True
    assert imounts["data"].get("readOnly") is not True
    # the socket directory is shared, and the instance's external runtime points into it
    socket_dir = mounts["runtime-socket"]["mountPath"]
    assert imounts["runtime-socket"]["mountPath"] == socket_dir and "emptyDir" in volumes["runtime-socket"]
    assert address == f"unix:{socket_dir}/{Path(address).name}"
    env = {e["name"]: e.get("value") for e in instance["env"]}
    [external] = yaml.safe_load(env["MODELMUX_RUNTIMES_EXTERNAL"])
    assert external["address"] == address
    assert {"pytorch", "torchscript", "torch_export"} <= set(external["model_types"])  # model code: out of process
    assert yaml.safe_load(env["MODELMUX_RUNTIMES_ISOLATED_TYPES"]) == []  # no worker processes inside the instance container
    # its own scratch space, not the instance's /tmp
    assert mounts["runtime-tmp"]["mountPath"] == "/tmp" and "tmp" not in mounts


def _quantity(q: str) -> int:
    from tests.deploy.test_deploy_manifests import _quantity as parse

    return parse(q)


def test_instance_serves_tls_with_auth_from_secrets() -> None:
    dep = _workload("modelmux")
    pod, c = _pod(dep), _container(dep, "modelmux")
    args = dict(a.split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def from_secret(path: str, secret: str, key: str) -> None:
        [(name, mount)] = [(n, m) for n, m in mounts.items() if path.startswith(m + "/")]
        assert path == f"{mount}/{key}", path
        assert _volume_secrets(volumes[name]) == {secret} and "optional" not in volumes[name]["secret"], path

    from_secret(args["--tls-cert"], "modelmux-tls", "tls.crt")
    from_secret(args["--tls-key"], "modelmux-tls", "tls.key")
    from_secret(args["--tls-client-ca"], "modelmux-tls", "ca.crt")
    from_secret(args["--auth-file"], "modelmux-auth", "auth.yaml")
    assert "--insecure" not in c["args"]  # binds 0.0.0.0 with auth + TLS, not by opting out
    assert args["--host"] == "0.0.0.0"


def test_store_credentials_reach_the_store_clients_as_files() -> None:
    config = next(d for _, _, d in ALL if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "modelmux-config")["data"]
    files = {k: config[k] for k in ("MODELMUX_STORE_CA_CERT_PATH", "MODELMUX_STORE_CERT_PATH", "MODELMUX_STORE_KEY_PATH", "MODELMUX_STORE_PASSWORD_FILE")}
    assert config["MODELMUX_STORE_USER"] and config["MODELMUX_STORE_USER"] != "root"
    for name, container in (("modelmux", "modelmux"), ("modelmux-controller", "controller")):
        doc = _workload(name)
        pod, c = _pod(doc), _container(doc, container)
        assert {"configMapRef": {"name": "modelmux-config"}} in c["envFrom"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for setting, path in files.items():
            [m] = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
            items = {i["path"]: (s["secret"]["name"], i["key"]) for s in volumes[m["name"]]["projected"]["sources"] for i in s["secret"]["items"]}
            assert path[len(m["mountPath"]) + 1 :] in items, (name, setting)
    # etcd requires TLS from clients and peers
    etcd = _container(_workload("modelmux-etcd"), "etcd")
    flags = dict(a.split("=", 1) for a in etcd["args"])
    assert flags["--listen-client-urls"].startswith("https://") and flags["--advertise-client-urls"].startswith("https://")
    assert flags["--listen-peer-urls"].startswith("https://") and flags["--initial-cluster"].count("https://") == 1
    assert flags["--client-cert-auth"] == "true" and flags["--peer-client-cert-auth"] == "true"
    for f in ("--cert-file", "--key-file", "--trusted-ca-file", "--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file"):
        assert flags[f].startswith("/etc/etcd/tls/"), f


def test_probes_are_native_grpc_health_checks() -> None:
    from mesh._grpc_health import INFERENCE_SERVICE

    c = _container(_workload("modelmux"), "modelmux")
    health_port = int(next(a for a in c["args"] if a.startswith("--health-port=")).split("=")[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == health_port and health_port not in (ports["grpc"], ports["http"], ports["metrics"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert c[probe]["grpc"]["port"] == health_port
    # ready = serving inference; alive = the server as a whole; start-up gets two minutes
    assert c["readinessProbe"]["grpc"]["service"] == INFERENCE_SERVICE
    assert c["livenessProbe"]["grpc"]["service"] == "" and c["startupProbe"]["grpc"]["service"] == ""
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    # the health port is not a data port: no Service exposes it
    for svc in (d for _, _, d in ALL if d["kind"] == "Service"):
        assert all(p.get("targetPort") != "health" and p["port"] != health_port for p in svc["spec"]["ports"]), svc["metadata"]["name"]


# ----------------------------------------------------------------------------- NetworkPolicy


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # our policies use matchLabels only
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict[str, Any], src: dict[str, Any], policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if src.get("ip") is None:
            return False
        ip = ipaddress.ip_address(src["ip"])
        block = peer["ipBlock"]
        if ip.version != ipaddress.ip_network(block["cidr"]).version:
            return False
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip.version == ipaddress.ip_network(e).version and ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if src.get("ip") is not None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], src["ns_labels"]):
            return False
    elif src["ns"] != policy_ns:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], src["labels"])


def _port_ok(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"])


def _allowed(direction: str, pod_labels: dict[str, str], other: dict[str, Any], port: int, policies: list[dict[str, Any]]) -> bool:
    kind = "Ingress" if direction == "ingress" else "Egress"
    selecting = [p for p in policies if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return True
    key = "from" if direction == "ingress" else "to"
    return any(
        _port_ok(rule, port) and any(_peer_matches(peer, other, NAMESPACE) for peer in rule.get(key, [{}]) if peer or not rule.get(key))
        for p in selecting
        for rule in p["spec"].get(direction, [])
    )


def reaches(src: dict[str, Any], dst: dict[str, Any], port: int, policies: list[dict[str, Any]] = POLICIES) -> bool:
    """Whether ``src`` may open a TCP connection to ``dst`` on ``port`` under ``policies``
    (both ends' policies apply when they are pods of the modelmux namespace)."""
    if dst.get("ip") is not None:  # leaving the cluster: only the source's egress applies
        return _allowed("egress", src["labels"], dst, port, policies)
    ok_in = dst["ns"] != NAMESPACE or _allowed("ingress", dst["labels"], src, port, policies)
    ok_out = src.get("ns") != NAMESPACE or _allowed("egress", src["labels"], dst, port, policies)
    return ok_in and ok_out


def _pod_of(name: str) -> dict[str, Any]:
    return {"ns": NAMESPACE, "ns_labels": {"kubernetes.io/metadata.name": NAMESPACE}, "labels": _labels(_workload(name))}


INSTANCE, CONTROLLER, ETCD, ETCD_AUTH = (_pod_of(n) for n in ("modelmux", "modelmux-controller", "modelmux-etcd", "modelmux-etcd-auth"))
CLIENT_NS = {"ns": "team-a", "ns_labels": {"modelmux.io/client": "true"}, "labels": {"app": "x"}}
OTHER_NS = {"ns": "team-b", "ns_labels": {}, "labels": {"app": "x"}}
CLIENT_POD = {"ns": NAMESPACE, "ns_labels": {}, "labels": {"modelmux.io/client": "true"}}
STRAY_POD = {"ns": NAMESPACE, "ns_labels": {}, "labels": {"app": "debug"}}
MONITORING = {"ns": "monitoring", "ns_labels": {"modelmux.io/monitoring": "true"}, "labels": {"app": "prometheus"}}
S3 = {"ip": "52.216.0.10"}
METADATA = {"ip": "169.254.169.254"}
PORTS = (8033, 8008, 2112, 8034, 8035, 2379, 2380, 2381)

EXPECTED = {  # (source, destination): the ports it may reach; every other port in PORTS is closed
    ("client-ns", "instance"): {8033, 8008},
    ("client-pod", "instance"): {8033, 8008},
    ("instance", "instance"): {8033, 8035},  # gRPC and the peer link
    ("controller", "instance"): {8033},
    ("monitoring", "instance"): {2112},
    ("instance", "etcd"): {2379},
    ("controller", "etcd"): {2379},
    ("etcd-auth", "etcd"): {2379},
    ("etcd", "etcd"): {2380},
    ("monitoring", "etcd"): {2381},
}
SOURCES = {"client-ns": CLIENT_NS, "client-pod": CLIENT_POD, "other-ns": OTHER_NS, "stray-pod": STRAY_POD, "monitoring": MONITORING,
           "instance": INSTANCE, "controller": CONTROLLER, "etcd": ETCD, "etcd-auth": ETCD_AUTH}  # fmt: skip
DESTINATIONS = {"instance": INSTANCE, "controller": CONTROLLER, "etcd": ETCD, "etcd-auth": ETCD_AUTH}


@pytest.mark.parametrize("src", sorted(SOURCES))
def test_network_policies_open_exactly_the_documented_paths(src: str) -> None:
    for dst, dst_pod in DESTINATIONS.items():
        open_ports = {p for p in PORTS if reaches(SOURCES[src], dst_pod, p)}
        assert open_ports == EXPECTED.get((src, dst), set()), (src, dst)


def test_network_policies_leaving_the_cluster() -> None:
    assert reaches(INSTANCE, S3, 443) and reaches(INSTANCE, S3, 80)  # model storage
    assert not reaches(INSTANCE, S3, 2379) and not reaches(INSTANCE, S3, 22)
    assert not reaches(INSTANCE, METADATA, 80) and not reaches(INSTANCE, {"ip": "fe80::1"}, 443)  # cloud metadata
    assert reaches(CONTROLLER, {"ip": "10.96.0.1"}, 443)  # the API server
    for pod in (ETCD, ETCD_AUTH):
        assert not reaches(pod, S3, 443)
    dns = {"ns": "kube-system", "ns_labels": {}, "labels": {"k8s-app": "kube-dns"}}
    for pod in (INSTANCE, CONTROLLER, ETCD, ETCD_AUTH):
        assert _allowed("egress", pod["labels"], dns, 53, POLICIES)


def test_network_policy_model_is_not_vacuous() -> None:
    """Without the default-deny, anyone could reach a pod no other policy selects (a debug pod)."""
    assert any(p["metadata"]["name"] == "modelmux-default-deny" and p["spec"]["podSelector"] == {} for p in POLICIES)
    without = [p for p in POLICIES if p["metadata"]["name"] != "modelmux-default-deny"]
    assert not reaches(OTHER_NS, STRAY_POD, 8080, POLICIES)
    assert reaches(OTHER_NS, STRAY_POD, 8080, without)
    opened = copy.deepcopy(POLICIES)
    [inst] = [p for p in opened if p["metadata"]["name"] == "modelmux-instance"]
    inst["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    assert reaches(OTHER_NS, INSTANCE, 8033, opened) and not reaches(OTHER_NS, INSTANCE, 8033)


# ----------------------------------------------------------------------------- cert-manager, auth file

CERT_MANAGER = DEPLOY / "overlays" / "cert-manager"


def _certificates() -> dict[str, dict[str, Any]]:
    return {d["spec"]["secretName"]: d for p, _, d in ALL if d["kind"] == "Certificate"}


def test_cert_manager_issues_every_tls_secret_the_base_mounts() -> None:
    certs = _certificates()
    issuers = {d["metadata"]["name"]: d for p, _, d in ALL if d["kind"] == "Issuer"}
    for secret, cert in certs.items():
        assert cert["apiVersion"] == "cert-manager.io/v1" and cert["metadata"]["namespace"] == NAMESPACE
        assert cert["spec"]["issuerRef"]["kind"] == "Issuer" and cert["spec"]["issuerRef"]["name"] in issuers, secret
    tls_secrets = set()
    for _path, doc in WORKLOADS:
        pod = _pod(doc)
        for c in pod["containers"]:
            tls_secrets |= {s for s in secrets_of(pod, c) if s.endswith("-tls")}
    assert tls_secrets <= set(certs)
    ca = issuers["modelmux-ca"]["spec"]["ca"]["secretName"]
    assert certs[ca]["spec"]["isCA"] is True
    instance = certs["modelmux-tls"]["spec"]
    # the instances forward to each other with their own certificate: server and client auth
    assert {"server auth", "client auth"} <= set(instance["usages"])
    env = {e["name"]: e.get("value") for e in _container(_workload("modelmux"), "modelmux")["env"]}
    assert env["MODELMUX_INSTANCE_PEER_TLS_SERVER_NAME"] in instance["dnsNames"]
    assert {"modelmux", f"modelmux.{NAMESPACE}.svc", f"modelmux.{NAMESPACE}.svc.cluster.local"} <= set(instance["dnsNames"])
    assert "client auth" in certs["modelmux-controller-tls"]["spec"]["usages"]
    assert "client auth" in certs["modelmux-etcd-client-tls"]["spec"]["usages"]
    assert {"server auth", "client auth"} <= set(certs["modelmux-etcd-peer-tls"]["spec"]["usages"])
    etcd_names = set(certs["modelmux-etcd-server-tls"]["spec"]["dnsNames"])
    config = next(d for _, _, d in ALL if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "modelmux-config")["data"]
    assert config["MODELMUX_STORE_ENDPOINTS"].split(":")[0] in etcd_names
    kustomization = yaml.safe_load((CERT_MANAGER / "kustomization.yaml").read_text())
    assert {(CERT_MANAGER / r).resolve() for r in kustomization["resources"][1:]} == {p.resolve() for p in CERT_MANAGER.glob("*.yaml") if p.name != "kustomization.yaml"}


def test_auth_file_example_parses_and_names_the_mesh_principals() -> None:
    [secret] = [d for p, _, d in ALL if d["kind"] == "Secret" and d["metadata"]["name"] == "modelmux-auth"]
    dep = _workload("modelmux")
    key = next(a for a in _container(dep, "modelmux")["args"] if a.startswith("--auth-file=")).rsplit("/", 1)[1]
    table = parse_principals(secret["stringData"][key])
    instance_cn = _certificates()["modelmux-tls"]["spec"]["commonName"]
    assert table.by_cert_name[instance_cn].role is Role.INSTANCE
    assert any(p.role is Role.ADMIN and p.name == "modelmux-controller" for p in table.by_token_sha256.values())
    # the controller's certificate is transport only: its CN is no principal (admin comes from the token)
    assert _certificates()["modelmux-controller-tls"]["spec"]["commonName"] not in table.by_cert_name
