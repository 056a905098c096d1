"""The controller end to end: API-server stand-in <-> controller <-> a real local mesh (memory store or etcd)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from controller import FINALIZER
from tests.controller.k8s_env import ControllerEnv
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model, answer, request_bytes

memory_only = pytest.mark.parametrize("cluster_kind", ["memory"])

INFER = "/inference.GRPCInferenceService/ModelInfer"
TABLE = 16 << 10


def predictor(name: str, path: Path | str, *, namespace: str = "default", mtype: str = "onnx", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelType": {"name": mtype}, "path": str(path), **spec},
    }


def loaded(env: ControllerEnv, name: str, model_id: str | None = None, plural: str = "predictors", ns: str = "default") -> Any:
    def check() -> bool:
        st = env.status(plural, name, ns)
        if plural == "inferenceservices":
            ms = st.get("modelStatus") or {}
            return (ms.get("states") or {}).get("activeModelState") == "Loaded" and ms.get("transitionStatus") == "UpToDate"
        return (
            st.get("activeModelState") == "Loaded"
            and st.get("transitionStatus") == "UpToDate"
            and st.get("available") is True
            and (model_id is None or st.get("activeModelId") == model_id)
        )

    return check


def event_reasons(env: ControllerEnv, name: str) -> list[str]:
    """Reasons of the events about ``name`` (also usable inside a wait predicate)."""
    return [
        o.get("reason", "")
        for (p, _, _), o in list(env.api.objects.items())
        if p == "events" and (o.get("involvedObject") or {}).get("name") == name
    ]


async def _instance_view(rest: str, vmodel: str, model_id: str) -> bool:
    async with httpx.AsyncClient(base_url=rest, timeout=10) as client:
        st = (await client.get(f"/v1/vmodels/{vmodel}")).json()
    return bool(st.get("activeModelId") == model_id == st.get("targetModelId"))


async def infer(channel: grpc.aio.Channel, name: str) -> float:
    call = channel.unary_unary(INFER)
    out = answer(await call(request_bytes(name, np.zeros((1, 4), np.float32)), timeout=20))
    return float(out[0, 0])


async def test_predictor_lifecycle(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    ctl = await env.start_controller()
    m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
    m2 = add_model(tmp_path / "m2" / "model.onnx", 2.0, table_bytes=TABLE)
    env.api.create(predictor("mnist", m1))
    await env.wait(loaded(env, "mnist"), what="mnist Loaded")

    obj = env.api.get("predictors", "default", "mnist")
    assert obj is not None and FINALIZER in obj["metadata"]["finalizers"]
    st = obj["status"]
    first_id = st["activeModelId"]
    assert first_id.startswith("mnist__ksp-")
    assert st["loadedCopies"] >= 1 and st["holders"] and st["totalCopies"] >= 1
    assert st["grpcEndpoint"] == "grpc://modelmux.default:8033"
    assert st["observedGeneration"] == 1
    vm = ctl.management.vmodel_status("mnist")
    assert (vm.status, vm.active_model_id, vm.owner) == ("DEFINED", first_id, "ksp/default")

    async with grpc.aio.insecure_channel(env.cluster.grpc[0]) as channel:
        assert await infer(channel, "mnist") == 1.0
    changed = copy.deepcopy(obj)
    changed["spec"]["path"] = str(m2)
    env.api.update(changed)
    await env.wait(lambda: env.status("predictors", "mnist").get("activeModelId") not in (None, first_id), what="new active model")
    await env.wait(loaded(env, "mnist"), what="transition done")
    new_id = env.api.get("predictors", "default", "mnist")["status"]["activeModelId"]  # type: ignore[index]
    # the instance's own view follows the store: wait for it before asking it
    await wait_until(lambda: _instance_view(env.cluster.rest[1], "mnist", new_id), 20, "instance view of the switch")
    async with grpc.aio.insecure_channel(env.cluster.grpc[1]) as channel:
        assert await infer(channel, "mnist") == 2.0
    st = env.api.get("predictors", "default", "mnist")["status"]  # type: ignore[index]
    assert st["activeModelId"] != first_id and st["observedGeneration"] == 2
    await env.wait(lambda: {"TransitionStarted", "TransitionComplete"} <= set(event_reasons(env, "mnist")), what="transition events")
    # the old model was auto-deleted
    await wait_until(lambda: first_id not in ctl.state.models.items, 20, "old model auto-deleted")

    # delete: the finalizer holds the object until the vModel is gone
    env.api.delete("predictors", "default", "mnist")
    await env.wait(lambda: env.obj("predictors", "mnist") is None, what="mnist deleted")
    await wait_until(lambda: "mnist" not in ctl.state.vmodels.items and new_id not in ctl.state.models.items, 20, "unregistered")
    assert ctl.management.vmodel_status("mnist").status == "NOT_FOUND"


@memory_only
async def test_invalid_spec_then_fixed_then_broken_again(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    await env.start_controller()
    m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
    env.api.create(predictor("tf", "s3://bucket/tf/model", mtype="tensorflow"))

    def invalid(name: str) -> Any:
        return lambda: env.status("predictors", name).get("transitionStatus") == "InvalidSpec"

    await env.wait(invalid("tf"), what="InvalidSpec")
    st = env.api.get("predictors", "default", "tf")["status"]  # type: ignore[index]
    assert st["activeModelState"] == "Pending" and st["available"] is False
    assert st["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    assert "tensorflow" in st["lastFailureInfo"]["message"]
    await env.wait(lambda: "InvalidSpec" in event_reasons(env, "tf"), what="InvalidSpec event")
    warning = next(e for e in env.api.events() if e["reason"] == "InvalidSpec")
    assert warning["type"] == "Warning" and warning["involvedObject"]["kind"] == "Predictor"

    # fix it
    obj = env.api.get("predictors", "default", "tf")
    assert obj is not None
    obj["spec"] = {"modelType": {"name": "onnx"}, "path": str(m1)}
    env.api.update(obj)
    await env.wait(loaded(env, "tf"), what="fixed predictor Loaded")
    assert "lastFailureInfo" not in env.api.get("predictors", "default", "tf")["status"]  # type: ignore[index]

    # break it again: the old model keeps serving
    obj = env.api.get("predictors", "default", "tf")
    assert obj is not None
    obj["spec"]["path"] = "s3://bucket-without-path"
    env.api.update(obj)
    await env.wait(invalid("tf"), what="InvalidSpec again")
    st = env.api.get("predictors", "default", "tf")["status"]  # type: ignore[index]
    assert st["activeModelState"] == "Loaded" and st["available"] is True
    assert "no object path" in st["lastFailureInfo"]["message"]
    async with grpc.aio.insecure_channel(env.cluster.grpc[1]) as channel:
        assert await infer(channel, "tf") == 1.0


@memory_only
async def test_load_failure_is_reported(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    await env.start_controller()
    bad = tmp_path / "bad" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not an onnx model")
    env.api.create(predictor("broken", bad))
    await env.wait(lambda: env.status("predictors", "broken").get("activeModelState") == "FailedToLoad", what="FailedToLoad")
    st = env.api.get("predictors", "default", "broken")["status"]  # type: ignore[index]
    assert st["available"] is False
    assert st["lastFailureInfo"]["reason"] == "ModelLoadFailed"
    assert st["lastFailureInfo"]["modelId"].startswith("broken__ksp-")
    assert st["failedCopies"] >= 1
    await env.wait(lambda: "ModelLoadFailed" in [e["reason"] for (p, _, _), e in env.api.objects.items() if p == "events"], what="event")


@memory_only
async def test_inference_service(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    await env.start_controller()
    m = add_model(tmp_path / "m" / "model.onnx", 3.0, table_bytes=TABLE)
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "digits", "namespace": "default", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": f"file://{m}"}}},
    }
    env.api.create(isvc)
    other = copy.deepcopy(isvc)
    other["metadata"] = {"name": "kserve-owned", "namespace": "default", "annotations": {"serving.kserve.io/deploymentMode": "Serverless"}}
    env.api.create(other)
    await env.wait(loaded(env, "digits", plural="inferenceservices"), what="isvc Loaded")
    st = env.api.get("inferenceservices", "default", "digits")["status"]  # type: ignore[index]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"PredictorReady": "True", "Ready": "True"}
    assert st["components"]["predictor"]["grpcUrl"] == "grpc://modelmux.default:8033"
    assert st["modelStatus"]["copies"]["totalCopies"] >= 1
    async with grpc.aio.insecure_channel(env.cluster.grpc[0]) as channel:
        assert await infer(channel, "digits") == 3.0
    untouched = env.api.get("inferenceservices", "default", "kserve-owned")
    assert untouched is not None and "status" not in untouched and not untouched["metadata"].get("finalizers")
    # a Predictor of the same name from another source does not take the vModel over
    env.api.create(predictor("digits", m))
    await env.wait(lambda: env.status("predictors", "digits").get("transitionStatus") == "InvalidSpec", what="conflict")
    conflict = env.api.get("predictors", "default", "digits")["status"]  # type: ignore[index]
    assert "isvc/default" in conflict["lastFailureInfo"]["message"]
    assert conflict["activeModelState"] == "Pending" and conflict["available"] is False
    env.api.delete("inferenceservices", "default", "digits")
    await env.wait(lambda: env.obj("inferenceservices", "digits") is None, what="isvc deleted")


@memory_only
async def test_same_name_in_two_namespaces_conflicts_unless_namespaced(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE)
    ctl = await env.start_controller(vmodel_names="namespace.name")
    env.api.create(predictor("same", m, namespace="a"))
    env.api.create(predictor("same", m, namespace="b"))
    await env.wait(lambda: loaded(env, "same", ns="a")() and loaded(env, "same", ns="b")(), what="both Loaded")
    assert {"a.same", "b.same"} <= set(ctl.state.vmodels.items)
    assert ctl.state.vmodels.items["a.same"].owner == "ksp/a"


@memory_only
async def test_watch_survives_errors_gone_and_restarts(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE)
    env.api.create(predictor("early", m))
    # the first lists fail: the informer backs off and retries
    env.api.fail(lambda method, path: method == "GET" and path.endswith("/predictors"), times=3, code=500)
    ctl = await env.start_controller()
    inf = ctl.informers["Predictor"]
    assert inf.errors >= 3
    await env.wait(loaded(env, "early"), what="early Loaded")

    # history compacted and every watch cut: the informer gets 410 and lists again
    relists = inf.relists
    # a write elsewhere moves the cluster's version past the last one the informer saw
    env.api.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "other", "namespace": "default"}})
    env.api.compact()
    env.api.break_watches()
    env.api.create(predictor("after-gone", m))
    await env.wait(loaded(env, "after-gone"), what="after-gone Loaded")
    assert inf.relists > relists
    assert env.api.stats["gone predictors"] >= 1

    # a watch that fails with 500 is retried from its last version (no re-list needed)
    env.api.fail(lambda method, path: method == "WATCH" and path.endswith("/predictors"), times=2, code=500)
    env.api.break_watches()
    env.api.create(predictor("after-errors", m))
    await env.wait(loaded(env, "after-errors"), what="after-errors Loaded")


@memory_only
async def test_objects_deleted_while_the_controller_was_down_are_unregistered(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE)
    ctl = await env.start_controller()
    env.api.create(predictor("orphan", m))
    env.api.create(predictor("kept", m))
    await env.wait(lambda: loaded(env, "orphan")() and loaded(env, "kept")(), what="Loaded")
    await env.stop_controller(ctl)
    # force-delete behind the controller's back (finalizer removed by hand)
    env.api.patch("predictors", "default", "orphan", {"metadata": {"finalizers": None}})
    env.api.delete("predictors", "default", "orphan")
    assert env.api.get("predictors", "default", "orphan") is None
    ctl2 = await env.start_controller()
    await wait_until(lambda: "orphan" not in ctl2.state.vmodels.items, 20, "orphan unregistered")
    assert "kept" in ctl2.state.vmodels.items


async def test_spec_change_under_traffic_fails_no_request(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    await env.start_controller()
    m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
    m2 = add_model(tmp_path / "m2" / "model.onnx", 2.0, table_bytes=TABLE)
    env.api.create(predictor("hot", m1))
    await env.wait(loaded(env, "hot"), what="hot Loaded")
    first_id = env.api.get("predictors", "default", "hot")["status"]["activeModelId"]  # type: ignore[index]
    answers: list[float] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def traffic(channel: grpc.aio.Channel) -> None:
        while not stop.is_set():
            try:
                answers.append(await infer(channel, "hot"))
            except grpc.aio.AioRpcError as exc:
                errors.append(exc)

    channels = [grpc.aio.insecure_channel(e) for e in env.cluster.grpc]
    try:
        tasks = [asyncio.create_task(traffic(ch)) for ch in channels]
        await wait_until(lambda: len(answers) > 10, 20, "traffic on the first model")
        env.api.patch("predictors", "default", "hot", {"spec": {"path": str(m2)}})
        await env.wait(lambda: env.status("predictors", "hot").get("activeModelId") not in (None, first_id), what="switch")
        await env.wait(loaded(env, "hot"), what="transition done")
        await wait_until(lambda: answers.count(2.0) > 10, 20, "traffic on the new model")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for ch in channels:
            await ch.close()
    assert errors == [], errors[:3]
    assert set(answers) <= {1.0, 2.0}


@memory_only
async def test_serving_runtimes_extend_the_accepted_model_types(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    await env.start_controller()
    env.api.create(predictor("skl", "s3://bucket/skl/model.joblib", mtype="sklearn", runtime={"name": "mlserver-1.x"}))
    await env.wait(lambda: env.status("predictors", "skl").get("transitionStatus") == "InvalidSpec", what="unknown runtime")
    assert env.api.get("predictors", "default", "skl")["status"]["lastFailureInfo"]["reason"] == "RuntimeNotRecognized"  # type: ignore[index]
    env.api.create({
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "mlserver-1.x", "namespace": "default"},
        "spec": {"supportedModelFormats": [{"name": "sklearn", "version": "1", "autoSelect": True}], "multiModel": True},
    })
    # now registered; the instances have no sklearn adapter, so loading it fails (reported, not invalid)
    await env.wait(lambda: env.status("predictors", "skl").get("transitionStatus") == "UpToDate", what="registered")
    await env.wait(lambda: env.status("predictors", "skl").get("activeModelState") in ("Standby", "Loading", "FailedToLoad"), what="a model state")


@memory_only
async def test_isvc_that_leaves_modelmesh_mode_is_unregistered(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    ctl = await env.start_controller()
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=TABLE)
    env.api.create({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "moving", "namespace": "default", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storage": {"path": str(m)}}}},
    })
    await env.wait(loaded(env, "moving", plural="inferenceservices"), what="isvc Loaded")
    env.api.patch("inferenceservices", "default", "moving", {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Serverless"}}})
    await env.wait(lambda: not (env.obj("inferenceservices", "moving") or {}).get("metadata", {}).get("finalizers"), what="finalizer removed")
    await wait_until(lambda: "moving" not in ctl.state.vmodels.items, 20, "vmodel removed")
    assert env.api.get("inferenceservices", "default", "moving") is not None
