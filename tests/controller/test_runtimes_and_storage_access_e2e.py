"""Runtimes and storage access end to end: API-server stand-in <-> controller <-> a local mesh.

ServingRuntime / ClusterServingRuntime objects decide which runtime serves a Predictor (status
``runtime``); the storage-access ConfigMap decides which storage keys a namespace may name
(hostile: namespace A naming B's key is refused, nothing is registered, B unaffected)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.controller.k8s_env import ControllerEnv
from tests.controller.test_controller import TABLE, event_reasons, loaded, predictor
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

memory_only = pytest.mark.parametrize("cluster_kind", ["memory"])

CM = "modelmux-storage-access"


def runtime_obj(name: str, formats: list[dict[str, Any]], *, namespace: str | None = None) -> dict[str, Any]:
    kind = "ServingRuntime" if namespace else "ClusterServingRuntime"
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": kind, "metadata": meta,
            "spec": {"supportedModelFormats": formats, "multiModel": True, "grpcDataEndpoint": "port:8001"}}


def failure(env: ControllerEnv, name: str, ns: str = "default") -> tuple[str, str]:
    st = env.status("predictors", name, ns)
    f = st.get("lastFailureInfo") or {}
    return str(f.get("reason", "")), str(f.get("message", ""))


def ready(env: ControllerEnv, name: str, ns: str = "default") -> dict[str, Any]:
    return next((c for c in env.status("predictors", name, ns).get("conditions") or () if c.get("type") == "Ready"), {})


@memory_only
async def test_runtime_objects_choose_the_runtime_of_each_predictor(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    ctl = await env.start_controller()
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE)
    env.api.create(predictor("plain", m))
    env.api.create(predictor("skl", "s3://bucket/skl/model.joblib", mtype="sklearn"))
    await env.wait(loaded(env, "plain"), what="plain Loaded")
    assert env.status("predictors", "plain")["runtime"] == "modelmux"
    assert ready(env, "plain")["status"] == "True"
    # no runtime serves sklearn yet: a failed condition, an Event, nothing registered
    await env.wait(lambda: failure(env, "skl")[0] == "NoSupportingRuntime", what="NoSupportingRuntime")
    assert ready(env, "skl")["status"] == "False" and ready(env, "skl")["reason"] == "NoSupportingRuntime"
    assert "skl" not in ctl.state.vmodels.items
    await env.wait(lambda: "InvalidSpec" in event_reasons(env, "skl"), what="an Event")
    # a ClusterServingRuntime serves it in every namespace
    env.api.create(runtime_obj("mlserver-cluster", [{"name": "sklearn", "autoSelect": True}]))
    await env.wait(lambda: env.status("predictors", "skl").get("runtime") == "mlserver-cluster"
                   and env.status("predictors", "skl").get("transitionStatus") != "InvalidSpec", what="cluster runtime chosen")
    await wait_until(lambda: "skl" in ctl.state.vmodels.items, 20, "skl registered")
    first = ctl.state.vmodels.items["skl"].target
    assert env.status("predictors", "skl")["targetModelId"] == first
    # a ServingRuntime of its namespace comes first: the model moves to it (a new model id)
    env.api.create(runtime_obj("mlserver-own", [{"name": "sklearn", "autoSelect": True}], namespace="default"))
    await env.wait(lambda: env.status("predictors", "skl").get("runtime") == "mlserver-own", what="namespace runtime chosen")
    await wait_until(lambda: ctl.state.vmodels.items["skl"].target != first, 20, "new target")
    # the onnx model was not touched by any of it
    assert env.status("predictors", "plain")["runtime"] == "modelmux" and loaded(env, "plain")()


@memory_only
async def test_a_namespace_cannot_name_another_namespaces_storage_key(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    env.api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": "modelmux"},
                    "data": {"team-a": "a-key", "team-b": "b-key"}})
    env.api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "modelmux"},
                    "data": {"team-a": "b-key"}})  # another ConfigMap grants nothing
    ctl = await env.start_controller(namespace="", vmodel_names="namespace.name",
                                     storage_access_configmap=CM, storage_access_namespace="modelmux")
    assert ctl.storage_access_informer is not None
    # team B: a model serving from local disk, and one registered with its own key
    m = add_model(tmp_path / "b" / "model.onnx", 2.0, table_bytes=TABLE)
    env.api.create(predictor("serving", m, namespace="team-b"))
    env.api.create(predictor("keyed", "models/b.onnx", namespace="team-b", storage={"key": "b-key"}))
    await env.wait(loaded(env, "serving", ns="team-b"), what="B serving")
    await wait_until(lambda: "team-b.keyed" in ctl.state.vmodels.items, 20, "B keyed registered")
    b_models = copy.deepcopy({k: (v.path, v.storage_key, v.tenant) for k, v in ctl.state.models.items.items()})
    b_vmodels = {k: v.target for k, v in ctl.state.vmodels.items.items()}
    # team A names B's key (and an unlisted one): refused, with the reason, an Event, nothing registered
    env.api.create(predictor("stolen", "models/b.onnx", namespace="team-a", storage={"key": "b-key"}))
    env.api.create(predictor("unlisted", "models/x.onnx", namespace="team-a", storage={"key": "nobody-key"}))
    for name in ("stolen", "unlisted"):
        await env.wait(lambda n=name: failure(env, n, "team-a")[0] == "StorageKeyNotAllowed", what=f"{name} refused")
        assert env.status("predictors", name, "team-a")["transitionStatus"] == "InvalidSpec"
        assert ready(env, name, "team-a")["status"] == "False" and ready(env, name, "team-a")["reason"] == "StorageKeyNotAllowed"
        await env.wait(lambda n=name: "InvalidSpec" in event_reasons(env, n), what=f"{name} Event")
    _reason, message = failure(env, "stolen", "team-a")
    assert "storage key 'b-key' is not allowed in namespace 'team-a'" in message and "allowed there: a-key" in message
    event = next(e for e in env.api.events("team-a") if e["involvedObject"]["name"] == "stolen")
    assert event["type"] == "Warning" and "StorageKeyNotAllowed" in event["message"]
    # nothing changed in the mesh: no vModel or model of A's, B's records exactly as before
    await wait_until(lambda: loaded(env, "serving", ns="team-b")(), 20, "B still serving")
    assert {k: (v.path, v.storage_key, v.tenant) for k, v in ctl.state.models.items.items()} == b_models
    assert {k: v.target for k, v in ctl.state.vmodels.items.items()} == b_vmodels
    assert not any(k.startswith("team-a.") for k in ctl.state.vmodels.items)
    assert {v.tenant for v in ctl.state.models.items.values()} == {"team-b"}
    assert not any(v.storage_key == "b-key" and v.tenant != "team-b" for v in ctl.state.models.items.values())
    # granting the key to A (the platform team edits the ConfigMap) registers A's model, with A's tenant
    env.api.patch("configmaps", "modelmux", CM, {"data": {"team-a": "a-key b-key"}})
    await wait_until(lambda: "team-a.stolen" in ctl.state.vmodels.items, 20, "A registered once granted")
    granted = ctl.state.models.items[ctl.state.vmodels.items["team-a.stolen"].target]
    assert (granted.tenant, granted.storage_key) == ("team-a", "b-key")
    # revoking it again unregisters A's model (a reload would use the key), B keeps serving
    env.api.patch("configmaps", "modelmux", CM, {"data": {"team-a": "a-key"}})
    await wait_until(lambda: "team-a.stolen" not in ctl.state.vmodels.items, 20, "A unregistered once revoked")
    await env.wait(lambda: failure(env, "stolen", "team-a")[0] == "StorageKeyNotAllowed", what="revoked reported")
    assert {k: v.target for k, v in ctl.state.vmodels.items.items()} == b_vmodels
    assert loaded(env, "serving", ns="team-b")()
    # the ConfigMap deleted: fail closed, B's keyed model is refused too (and unregistered)
    env.api.delete("configmaps", "modelmux", CM)
    await wait_until(lambda: "team-b.keyed" not in ctl.state.vmodels.items, 20, "fail closed")
    assert "team-b.serving" in ctl.state.vmodels.items
