"""TenantQuota objects: pure mapping, and the controller applying them to a real local mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from controller import ReconcileContext, Registration, Rejection, desired_state
from controller._tenants import QuotaRejection, QuotaSpec, owner_of, quota_spec, quota_status
from tests.controller.k8s_env import ControllerEnv
from tests.controller.test_controller import TABLE, infer, loaded, predictor
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

memory_only = pytest.mark.parametrize("cluster_kind", ["memory"])


def tq(name: str, namespace: str, max_bytes: Any, *, tenant: str = "", created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"maxBytes": max_bytes}
    if tenant:
        spec["tenant"] = tenant
    return {
        "apiVersion": "modelmux.io/v1alpha1",
        "kind": "TenantQuota",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


# ---------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        (tq("q", "team-a", "8Gi"), QuotaSpec("team-a", 8 << 30)),
        (tq("q", "team-a", 1000, tenant="shared"), QuotaSpec("shared", 1000)),
        (tq("q", "team-a", "1.5G"), QuotaSpec("team-a", 1_500_000_000)),
    ],
)
def test_quota_spec(obj: dict[str, Any], want: QuotaSpec) -> None:
    assert quota_spec(obj) == want


@pytest.mark.parametrize("bad", ["lots", 0, -1, "8 apples", True, None])
def test_quota_spec_rejects_bad_sizes(bad: Any) -> None:
    got = quota_spec(tq("q", "team-a", bad))
    assert isinstance(got, QuotaRejection) and got.reason == "InvalidSpec" and "maxBytes" in got.message


@pytest.mark.parametrize("bad", ["fast", -1, True, 1e12, None])
def test_quota_spec_rejects_bad_rates(bad: Any) -> None:
    obj = tq("q", "team-a", "8Gi")
    obj["spec"]["maxRps"] = bad
    got = quota_spec(obj)
    assert isinstance(got, QuotaRejection) and got.reason == "InvalidSpec" and "maxRps" in got.message


def test_quota_spec_reads_a_rate() -> None:
    obj = tq("q", "team-a", "8Gi")
    obj["spec"]["maxRps"] = 250
    assert quota_spec(obj) == QuotaSpec("team-a", 8 << 30, 250.0)


def test_quota_spec_rejects_a_bad_tenant_and_a_missing_size() -> None:
    assert isinstance(quota_spec(tq("q", "ns", 5, tenant="no spaces allowed")), QuotaRejection)
    obj = tq("q", "ns", 5)
    del obj["spec"]["maxBytes"]
    assert "required" in quota_spec(obj).message  # type: ignore[union-attr]


def test_the_oldest_claim_owns_a_tenant() -> None:
    old = tq("a", "team-a", "1Gi", created="2026-01-01T00:00:00Z")
    new = tq("b", "other", "2Gi", tenant="team-a", created="2026-02-01T00:00:00Z")
    invalid = tq("c", "team-a", "lots", created="2025-01-01T00:00:00Z")
    assert owner_of("team-a", [new, invalid, old]) is old
    deleting = {**old, "metadata": {**old["metadata"], "deletionTimestamp": "2026-03-01T00:00:00Z"}}
    assert owner_of("team-a", [new, deleting]) is new
    assert owner_of("nobody", [new, old]) is None
    # the claim whose quota is in force keeps the tenant, even against an older one
    assert owner_of("team-a", [new, old], incumbent="TenantQuota/other/b") is new


def test_status_keeps_the_transition_time_while_the_condition_holds() -> None:
    first = quota_status(QuotaSpec("t", 10), {"used_bytes": 4, "models": 1, "copies": 1}, generation=1, previous={}, now=1000.0)
    assert first["conditions"][0]["status"] == "True" and first["maxBytes"] == 10 and first["usedBytes"] == 4
    again = quota_status(QuotaSpec("t", 10), {"used_bytes": 6}, generation=1, previous=first, now=2000.0)
    assert again["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]
    conflict = quota_status(QuotaSpec("t", 10), None, generation=2, previous=again, now=3000.0, conflict="taken")
    assert conflict["maxBytes"] == 0 and conflict["conditions"][0]["reason"] == "Conflict"
    assert conflict["conditions"][0]["lastTransitionTime"] != first["conditions"][0]["lastTransitionTime"]


# ---------------------------------------------------------------- controller


def _ready(env: ControllerEnv, name: str, ns: str, reason: str) -> Any:
    def check() -> bool:
        conds = env.status("tenantquotas", name, ns).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("reason") == reason for c in conds)

    return check


@memory_only
async def test_tenant_quotas_from_the_cluster(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    ctl = await env.start_controller()
    tenants = ctl.state.tenants

    env.api.create(tq("quota", "team-a", "64Mi"))
    await env.wait(_ready(env, "quota", "team-a", "QuotaSet"), what="quota Ready")
    await wait_until(lambda: "team-a" in tenants.items, 10, "quota in the store")
    assert (tenants.items["team-a"].max_bytes, tenants.items["team-a"].source) == (64 << 20, "TenantQuota/team-a/quota")
    obj = env.api.get("tenantquotas", "team-a", "quota")
    assert obj is not None and "modelmux.io/tenant-quota" in obj["metadata"]["finalizers"]
    assert obj["status"]["maxBytes"] == 64 << 20

    # a Predictor of the namespace counts against it: usage reaches the status (store-driven)
    m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
    env.api.create(predictor("p1", m1, namespace="team-a"))
    await env.wait(loaded(env, "p1", ns="team-a"), what="p1 Loaded")
    await env.wait(lambda: env.status("tenantquotas", "quota", "team-a").get("usedBytes", 0) > 0, what="usage in status")
    assert env.status("tenantquotas", "quota", "team-a")["models"] == 1

    # change the quota
    obj = env.api.get("tenantquotas", "team-a", "quota")
    assert obj is not None
    obj["spec"]["maxBytes"] = 128 << 20
    env.api.update(obj)
    await wait_until(lambda: tenants.items["team-a"].max_bytes == 128 << 20, 10, "quota changed")
    # add a rate, then take it away: the object is what the store holds
    obj = env.api.get("tenantquotas", "team-a", "quota")
    assert obj is not None
    obj["spec"]["maxRps"] = 40
    env.api.update(obj)
    await wait_until(lambda: tenants.items["team-a"].max_rps == 40.0, 10, "rate set")
    await env.wait(lambda: env.status("tenantquotas", "quota", "team-a").get("maxRps") == 40.0, what="rate in status")
    assert tenants.items["team-a"].max_bytes == 128 << 20
    obj = env.api.get("tenantquotas", "team-a", "quota")
    assert obj is not None
    del obj["spec"]["maxRps"]
    env.api.update(obj)
    await wait_until(lambda: tenants.items["team-a"].max_rps == 0.0, 10, "rate removed")

    # a second claim on the same tenant conflicts and changes nothing
    env.api.create(tq("also", "other", "1Mi", tenant="team-a"))
    await env.wait(_ready(env, "also", "other", "Conflict"), what="conflict reported")
    assert tenants.items["team-a"].max_bytes == 128 << 20
    assert "already has its quota from TenantQuota/team-a/quota" in env.status("tenantquotas", "also", "other")["conditions"][0]["message"]

    # a bad spec: InvalidSpec with a Warning event, no quota
    env.api.create(tq("bad", "team-b", "lots"))
    await env.wait(_ready(env, "bad", "team-b", "InvalidSpec"), what="InvalidSpec")
    await env.wait(
        lambda: any(e.get("reason") == "InvalidSpec" and e["involvedObject"]["name"] == "bad" for e in env.api.events()),
        what="InvalidSpec event",
    )
    assert "team-b" not in tenants.items

    # deleting the owner hands the tenant to the next claim
    env.api.delete("tenantquotas", "team-a", "quota")
    await env.wait(lambda: env.obj("tenantquotas", "quota", "team-a") is None, what="owner deleted (finalizer released)")
    await wait_until(lambda: tenants.items.get("team-a") is not None and tenants.items["team-a"].source == "TenantQuota/other/also", 10, "next claim owns the tenant")
    assert tenants.items["team-a"].max_bytes == 1 << 20
    await env.wait(_ready(env, "also", "other", "QuotaSet"), what="the next claim is Ready")
    env.api.delete("tenantquotas", "other", "also")
    await wait_until(lambda: "team-a" not in tenants.items, 10, "quota gone with its last object")


def _quota_is(env: ControllerEnv, name: str, ns: str, max_bytes: int) -> Any:
    def check() -> bool:
        st = env.status("tenantquotas", name, ns)
        conds = st.get("conditions") or [{}]
        return bool(st.get("maxBytes") == max_bytes and conds[0].get("reason") == "QuotaSet")

    return check


async def _max_bytes_is(rest: str, tenant: str, value: int) -> bool:
    async with httpx.AsyncClient(base_url=rest, timeout=10) as c:
        r = await c.get(f"/api/v1/tenants/{tenant}")
        return r.status_code == 200 and r.json().get("max_bytes") == value


async def _served(env: ControllerEnv, name: str, value: float) -> bool:
    async with grpc.aio.insecure_channel(env.cluster.grpc[0]) as channel:
        try:
            return await infer(channel, name) == value
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise


@memory_only
async def test_a_predictor_over_its_quota_fails_clearly_and_loads_once_the_quota_is_raised(
    k8s_env: ControllerEnv, tmp_path: Path
) -> None:
    env = k8s_env
    await env.start_controller()
    env.api.create(tq("tiny", "default", 1024, tenant="tiny"))
    await env.wait(_quota_is(env, "tiny", "default", 1024), what="tiny's quota set")
    for rest in env.cluster.rest:  # the leader may run on any instance: every one must see it
        await wait_until(lambda rest=rest: _max_bytes_is(rest, "tiny", 1024), 20, "instances see tiny's quota")
    env.api.create(predictor("small", add_model(tmp_path / "s" / "model.onnx", 1.0, table_bytes=TABLE)))
    await env.wait(loaded(env, "small"), what="small Loaded")

    # a model bigger than its tenant's whole quota: the Predictor's status and clients say so
    big = predictor("big", add_model(tmp_path / "b" / "model.onnx", 2.0, table_bytes=TABLE))
    big["metadata"]["annotations"] = {"modelmux.io/tenant-quota": "tiny"}
    env.api.create(big)

    def failed() -> bool:
        st = env.status("predictors", "big")
        return "quota" in ((st.get("lastFailureInfo") or {}).get("message") or "") and st.get("available") is not True

    await env.wait(failed, what="big fails with a quota message")
    await env.wait(lambda: env.status("tenantquotas", "tiny").get("models") == 1, what="big counted under tiny")
    async with grpc.aio.insecure_channel(env.cluster.grpc[0]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(channel, "big")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in (err.value.details() or "")
        assert await infer(channel, "small") == 1.0  # the other tenant's model is untouched

    # raising the quota lets it load on the next request: the remembered placement failure
    # goes with the change, well before its TTL (failure_ttl_s, 30 s) would end
    raised = env.api.get("tenantquotas", "default", "tiny")
    assert raised is not None
    raised["spec"]["maxBytes"] = "64Mi"
    env.api.update(raised)
    await env.wait(_quota_is(env, "tiny", "default", 64 << 20), what="tiny raised")
    await wait_until(lambda: _served(env, "big", 2.0), 20, "big served once its quota fits")



# ---------------------------------------------------------------- one mesh for every namespace


def test_tenants_resolve_within_the_namespace_when_one_mesh_serves_all() -> None:
    # one mesh per namespace: names as written
    assert quota_spec(tq("q", "team-a", 1, tenant="gold")).tenant == "gold"
    assert quota_spec(tq("q", "team-a", 1, tenant="team-b")).tenant == "team-b"
    # one mesh for every namespace: a quota never reaches another namespace's tenant
    assert quota_spec(tq("q", "team-a", 1), "namespace.name").tenant == "team-a"
    assert quota_spec(tq("q", "team-a", 1, tenant="team-a"), "namespace.name").tenant == "team-a"
    assert quota_spec(tq("q", "team-a", 1, tenant="gold"), "namespace.name").tenant == "team-a.gold"
    assert quota_spec(tq("q", "team-a", 1, tenant="team-b"), "namespace.name").tenant == "team-a.team-b"
    # so an older object elsewhere cannot take over a namespace's tenant
    squatter = tq("s", "team-a", "1", tenant="team-b", created="2020-01-01T00:00:00Z")
    own = tq("q", "team-b", "8Gi", created="2026-01-01T00:00:00Z")
    assert owner_of("team-b", [squatter, own]) is squatter  # one mesh per namespace: names are shared
    assert owner_of("team-b", [squatter, own], naming="namespace.name") is own

    def tenant_of(annotations: dict[str, str], naming: Any, **spec: Any) -> str:
        obj = predictor("m", "s3://b/m", namespace="team-a", **spec)
        obj["metadata"]["annotations"] = annotations
        d = desired_state(obj, ReconcileContext(naming=naming))
        assert isinstance(d, Registration), d
        return str(json.loads(d.info.key)["tenant"])

    assert tenant_of({}, "name") == tenant_of({}, "namespace.name") == "team-a"
    assert tenant_of({"modelmux.io/tenant-quota": "gold"}, "name") == "gold"
    assert tenant_of({"modelmux.io/tenant-quota": "gold"}, "namespace.name") == "team-a.gold"
    assert tenant_of({"modelmux.io/tenant-quota": "team-b"}, "namespace.name") == "team-a.team-b"
    assert tenant_of({"modelmux.io/tenant-quota": "team-a"}, "namespace.name") == "team-a"
    assert tenant_of({}, "namespace.name", tenant="silver") == "team-a.silver"
    bad = predictor("m", "s3://b/m")
    bad["metadata"]["annotations"] = {"modelmux.io/tenant-quota": "no spaces allowed"}
    rej = desired_state(bad, ReconcileContext())
    assert isinstance(rej, Rejection) and "tenant" in rej.message


@memory_only
async def test_one_mesh_for_every_namespace_keeps_each_namespace_to_its_own_quotas(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    ctl = await env.start_controller(namespace="", vmodel_names="namespace.name")
    tenants = ctl.state.tenants
    # namespace "intruder" names team-b's tenant, first: it gets a tenant of its own
    env.api.create(tq("q", "intruder", 1024, tenant="team-b", created="2020-01-01T00:00:00Z"))
    env.api.create(tq("q", "team-b", "64Mi"))
    await env.wait(_quota_is(env, "q", "intruder", 1024), what="intruder's quota set")
    await env.wait(_quota_is(env, "q", "team-b", 64 << 20), what="team-b's quota set, no conflict")
    assert env.status("tenantquotas", "q", "intruder")["tenant"] == "intruder.team-b"
    assert (tenants.items["team-b"].max_bytes, tenants.items["team-b"].source) == (64 << 20, "TenantQuota/team-b/q")
    assert tenants.items["intruder.team-b"].max_bytes == 1024
    # a Predictor of intruder that names team-b counts against intruder's tenant, not team-b's
    m = predictor("m", add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE), namespace="intruder")
    m["metadata"]["annotations"] = {"modelmux.io/tenant-quota": "team-b"}
    env.api.create(m)
    await env.wait(lambda: env.status("tenantquotas", "q", "intruder").get("models") == 1, what="counted under intruder.team-b")
    assert env.status("tenantquotas", "q", "team-b").get("models", 0) == 0
    assert {r.tenant for r in ctl.state.models.items.values()} == {"intruder.team-b"}
