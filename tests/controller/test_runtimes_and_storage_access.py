"""Pure parts: which runtime serves a model (ServingRuntime / ClusterServingRuntime objects) and
which storage keys a namespace may name (the storage-access ConfigMap). No I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller import (
    ReconcileContext,
    Registration,
    Rejection,
    RuntimeCatalog,
    compute_status,
    desired_state,
    runtime_from_object,
    status_json,
    storage_access_from_configmap,
)
from controller._runtimes import cluster_runtimes, runtimes_by_namespace


def sr(name: str, formats: list[dict[str, Any]], *, namespace: str = "team-a", kind: str = "ServingRuntime", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if kind == "ServingRuntime":
        meta["namespace"] = namespace
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": kind, "metadata": meta,
            "spec": {"supportedModelFormats": formats, "multiModel": True, **spec}}


def pred(mtype: str, *, namespace: str = "team-a", version: str | None = None, runtime: str | None = None, **spec: Any) -> dict[str, Any]:
    model_type = {"name": mtype, **({"version": version} if version else {})}
    body: dict[str, Any] = {"modelType": model_type, **({} if "storage" in spec else {"path": "s3://bucket/m"}), **spec}
    if runtime:
        body["runtime"] = {"name": runtime}
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "p", "namespace": namespace}, "spec": body}


def ctx_with(*objs: dict[str, Any], **kw: Any) -> ReconcileContext:
    return ReconcileContext(
        runtimes=runtimes_by_namespace([o for o in objs if o["kind"] == "ServingRuntime"]),
        cluster_runtimes=cluster_runtimes([o for o in objs if o["kind"] == "ClusterServingRuntime"]),
        **kw,
    )


def runtime_of(obj: dict[str, Any], ctx: ReconcileContext) -> str:
    d = desired_state(obj, ctx)
    assert isinstance(d, Registration), d
    return d.runtime


# ---------------------------------------------------------------- runtimes


def test_runtime_object_fields_are_read() -> None:
    rt = runtime_from_object(sr("mlserver-1.x", [
        {"name": "SKLearn", "version": "1", "autoSelect": True, "priority": 2},
        {"name": "lightgbm", "autoSelect": False},
    ], grpcDataEndpoint="port:8001", protocolVersions=["grpc-v2"]))
    assert rt is not None
    assert rt.model_types == {"sklearn", "lightgbm"} and rt.auto_select == {"sklearn"}
    assert rt.entry_for("sklearn", "1", auto=True) is not None and rt.entry_for("sklearn", "2", auto=True) is None
    assert rt.entry_for("sklearn", None, auto=True).priority == 2  # type: ignore[union-attr]
    assert rt.entry_for("lightgbm", None, auto=True) is None and rt.entry_for("lightgbm", None, auto=False) is not None
    assert (rt.grpc_data_endpoint, rt.protocols, rt.kind, rt.usable) == ("port:8001", ("grpc-v2",), "ServingRuntime", True)
    single = runtime_from_object({**sr("x", []), "spec": {"supportedModelFormats": []}})
    assert single is not None and not single.usable  # multiModel defaults to false (KServe)
    assert runtime_from_object({"metadata": {}, "spec": {}}) is None
    assert runtime_from_object({"metadata": {"name": "x"}, "spec": {"supportedModelFormats": 3}}) is None


def test_priority_chooses_among_auto_select_runtimes_and_ties_go_by_name() -> None:
    low = sr("b-low", [{"name": "sklearn", "autoSelect": True, "priority": 1}])
    high = sr("c-high", [{"name": "sklearn", "autoSelect": True, "priority": 5}])
    off = sr("a-off", [{"name": "sklearn", "autoSelect": False, "priority": 9}])
    assert runtime_of(pred("sklearn"), ctx_with(low, high, off)) == "c-high"
    tie = sr("a-tie", [{"name": "sklearn", "autoSelect": True, "priority": 5}])
    assert runtime_of(pred("sklearn"), ctx_with(low, high, tie)) == "a-tie"
    # the choice is part of the registration: another runtime gives another model id
    d1, d2 = desired_state(pred("sklearn"), ctx_with(low)), desired_state(pred("sklearn"), ctx_with(low, high))
    assert isinstance(d1, Registration) and isinstance(d2, Registration)
    assert json.loads(d2.info.key)["runtime"] == "c-high" and d1.model_id != d2.model_id


def test_namespace_runtimes_come_before_cluster_runtimes_then_the_builtin() -> None:
    cluster = sr("triton", [{"name": "onnx", "autoSelect": True, "priority": 100}, {"name": "sklearn", "priority": 100}], kind="ClusterServingRuntime")
    own = sr("ovms", [{"name": "onnx", "autoSelect": True}], namespace="team-a")
    ctx = ctx_with(cluster, own)
    assert runtime_of(pred("onnx"), ctx) == "ovms"  # its namespace's, despite the priority
    assert runtime_of(pred("onnx", namespace="team-b"), ctx) == "triton"  # other namespaces: the cluster one
    assert runtime_of(pred("sklearn", namespace="team-b"), ctx) == "triton"
    # the built-in runtime serves what no object does; left out of the key (model ids unchanged)
    d = desired_state(pred("xgboost"), ctx)
    assert isinstance(d, Registration) and d.runtime == "modelmux" and "runtime" not in json.loads(d.info.key)
    assert d.model_id == desired_state(pred("xgboost"), ReconcileContext()).model_id  # type: ignore[union-attr]


def test_a_named_runtime_is_used_whatever_auto_select_says() -> None:
    ctx = ctx_with(sr("mlserver", [{"name": "lightgbm", "autoSelect": False}]),
                   sr("shared", [{"name": "lightgbm", "autoSelect": False}], kind="ClusterServingRuntime"))
    assert runtime_of(pred("lightgbm", runtime="mlserver"), ctx) == "mlserver"
    assert runtime_of(pred("lightgbm", runtime="shared", namespace="team-z"), ctx) == "shared"
    assert runtime_of(pred("onnx", runtime="modelmux"), ctx) == "modelmux"
    d = desired_state(pred("lightgbm"), ctx)  # not auto-selectable anywhere
    assert isinstance(d, Rejection) and d.reason == "NoSupportingRuntime" and "'lightgbm' is not supported by any runtime" in d.message


@pytest.mark.parametrize(("runtime", "obj", "reason", "message"), [
    ("nope", sr("other", [{"name": "onnx"}]), "RuntimeNotRecognized", "runtime 'nope' is not recognized (known: modelmux, other)"),
    ("off", sr("off", [{"name": "onnx"}], disabled=True), "NoSupportingRuntime", "runtime 'off' is disabled"),
    ("single", sr("single", [{"name": "onnx"}], multiModel=False), "NoSupportingRuntime", "not a multi-model runtime"),
    ("v2only", sr("v2only", [{"name": "onnx", "version": "2"}]), "NoSupportingRuntime", "does not support model type 'onnx version 1' (it supports: onnx:2)"),
])
def test_a_named_runtime_that_cannot_serve_is_refused_with_the_reason(runtime: str, obj: dict[str, Any], reason: str, message: str) -> None:
    d = desired_state(pred("onnx", version="1", runtime=runtime), ctx_with(obj))
    assert isinstance(d, Rejection) and d.reason == reason and message in d.message, d


def test_disabled_and_single_model_runtimes_are_never_chosen() -> None:
    ctx = ctx_with(sr("off", [{"name": "sklearn"}], disabled=True), sr("single", [{"name": "sklearn"}], multiModel=False))
    d = desired_state(pred("sklearn"), ctx)
    assert isinstance(d, Rejection) and d.reason == "NoSupportingRuntime"
    assert RuntimeCatalog(ReconcileContext().builtin).choose("ns", "onnx", None, None).runtime is not None


def test_the_runtime_is_in_the_status_and_a_refusal_is_a_failed_condition() -> None:
    ctx = ctx_with(sr("mlserver", [{"name": "sklearn"}]))
    ok = desired_state(pred("sklearn"), ctx)
    assert isinstance(ok, Registration)
    st = status_json("Predictor", compute_status(ok, None, ctx))
    assert st["runtime"] == "mlserver"
    bad = desired_state(pred("tensorflow"), ctx)
    assert isinstance(bad, Rejection)
    st = status_json("Predictor", compute_status(bad, None, ctx), None, 1_700_000_000.0)
    [ready] = st["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "NoSupportingRuntime")
    assert "'tensorflow' is not supported by any runtime" in ready["message"] and st["transitionStatus"] == "InvalidSpec"
    assert st["runtime"] == ""


# ---------------------------------------------------------------- storage access


ACCESS_CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelmux-storage-access"},
             "data": {"team-a": "a-s3, a-gcs\nshared-extra", "team-b": "b-s3", "_all": "public"}}


def test_storage_access_configmap_is_parsed() -> None:
    access = storage_access_from_configmap(ACCESS_CM)
    assert access.allowed("team-a") == {"a-s3", "a-gcs", "shared-extra", "public"}
    assert access.allowed("team-b") == {"b-s3", "public"}
    assert access.allowed("team-c") == {"public"}
    assert storage_access_from_configmap(None).allowed("team-a") == frozenset()  # missing: fail closed
    assert storage_access_from_configmap({"data": "garbage"}).allowed("x") == frozenset()


def test_a_key_of_another_namespace_is_refused_and_the_message_names_only_own_keys() -> None:
    ctx = ReconcileContext(storage_access=storage_access_from_configmap(ACCESS_CM))
    stolen = pred("onnx", storage={"key": "b-s3", "path": "models/b.onnx"})
    d = desired_state(stolen, ctx)
    assert isinstance(d, Rejection) and d.reason == "StorageKeyNotAllowed"
    assert "storage key 'b-s3' is not allowed in namespace 'team-a'" in d.message
    assert "team-b" not in d.message and d.message.count("b-s3") == 1  # nothing of B's grants leaks
    # the same through the s3 form, an InferenceService's key and its annotation
    s3 = pred("onnx", storage={"s3": {"secretKey": "b-s3", "bucket": "x"}})
    s3["spec"]["path"] = "m.onnx"
    isvc_key = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {"name": "i", "namespace": "team-a", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storage": {"key": "b-s3", "path": "m.onnx"}}}}}
    isvc_ann = {**isvc_key, "metadata": {**isvc_key["metadata"], "annotations": {
        "serving.kserve.io/deploymentMode": "ModelMesh", "serving.kserve.io/secretKey": "b-s3"}},
        "spec": {"predictor": {"onnx": {"storageUri": "s3://bucket/m.onnx"}}}}
    for obj in (s3, isvc_key, isvc_ann):
        r = desired_state(obj, ctx)
        assert isinstance(r, Rejection) and r.reason == "StorageKeyNotAllowed", (obj, r)
    # its own keys, shared keys and no key at all are fine
    for key in ("a-s3", "public"):
        assert isinstance(desired_state(pred("onnx", storage={"key": key, "path": "m.onnx"}), ctx), Registration)
    assert isinstance(desired_state(pred("onnx"), ctx), Registration)
    # off (no ConfigMap configured): any key, as before
    assert isinstance(desired_state(stolen, ReconcileContext()), Registration)
