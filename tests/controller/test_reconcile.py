"""The pure mapping: objects -> registrations / rejections, mesh state -> status, status -> events."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

import pytest

from controller import (
    ControllerSettings,
    CRStatus,
    FailureInfo,
    ObjectRef,
    ReconcileContext,
    Registration,
    Rejection,
    Runtime,
    compute_status,
    desired_state,
    events_between,
    merge_patch,
    ref_for_vmodel,
    spec_hash,
    status_from_json,
    status_json,
    vmodel_of_model,
)
from mesh import CopyStatus, ModelStatus, VModelStatus

CTX = ReconcileContext()


def predictor(spec: Any, name: str = "mnist", namespace: str = "team-a", annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace, **meta}
    if annotations is not None:
        md["annotations"] = annotations
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": md, "spec": spec}


def isvc(predictor_spec: Any, name: str = "mnist", namespace: str = "team-a", annotations: dict[str, str] | None = None, mode: str | None = "ModelMesh") -> dict[str, Any]:
    ann = dict(annotations or {})
    if mode is not None:
        ann["serving.kserve.io/deploymentMode"] = mode
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "annotations": ann},
        "spec": {"predictor": predictor_spec},
    }


def key_of(reg: Registration) -> dict[str, Any]:
    return dict(json.loads(reg.info.key))


# ---------------------------------------------------------------- valid objects

VALID: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    (
        "predictor storage key + path",
        predictor({"modelType": {"name": "ONNX"}, "storage": {"key": "minio", "path": "onnx/mnist.onnx", "parameters": {"bucket": "b"}}}),
        "onnx",
        "onnx/mnist.onnx",
        {"storage_key": "minio", "storage_params": {"bucket": "b"}, "tenant": "team-a", "model_type": {"name": "ONNX"}},
    ),
    (
        "predictor legacy s3",
        predictor({"modelType": {"name": "pytorch", "version": "1"}, "path": "pytorch/cifar", "schemaPath": "s.json", "storage": {"s3": {"secretKey": "minio", "bucket": "models"}}}),
        "pytorch",
        "pytorch/cifar",
        {"storage_key": "minio", "storage_params": {"bucket": "models"}, "schema_path": "s.json", "model_type": {"name": "pytorch", "version": "1"}},
    ),
    (
        "predictor path is a URI, no storage",
        predictor({"modelType": {"name": "xgboost"}, "path": "s3://bucket/xgb/model.json"}),
        "xgboost",
        "s3://bucket/xgb/model.json",
        {"tenant": "team-a"},
    ),
    (
        "predictor local path",
        predictor({"modelType": {"name": "onnx"}, "path": "/models/m.onnx"}),
        "onnx",
        "/models/m.onnx",
        {},
    ),
    (
        "predictor extras: fields win over annotations",
        predictor(
            {"modelType": {"name": "onnx"}, "path": "p", "minCopies": 2, "maxCopies": 5, "pinned": True},
            annotations={"modelmux.io/min-copies": "9", "modelmux.io/max-copies": "9", "modelmux.io/pinned": "false", "modelmux.io/tenant-quota": "gold"},
        ),
        "onnx",
        "p",
        {"min_copies": 2, "max_copies": 5, "pinned": True, "tenant": "gold"},
    ),
    (
        "predictor extras from annotations",
        predictor({"modelType": {"name": "onnx"}, "path": "p"}, annotations={"modelmux.io/min-copies": "1", "modelmux.io/pinned": "true"}),
        "onnx",
        "p",
        {"min_copies": 1, "pinned": True},
    ),
    (
        "predictor batching: fields win over annotations",
        predictor(
            {"modelType": {"name": "onnx"}, "path": "p", "batching": True, "maxBatchSize": 8, "maxBatchDelaySeconds": 0.002, "gpu": "required"},
            annotations={"modelmux.io/batching": "false", "modelmux.io/max-batch-size": "64", "modelmux.io/max-batch-delay-s": "1"},
        ),
        "onnx",
        "p",
        {"options": {"batching": "true", "max_batch_size": "8", "max_batch_delay_s": "0.002", "device": "cuda"}},
    ),
    (
        "predictor batching from annotations",
        predictor({"modelType": {"name": "onnx"}, "path": "p"}, annotations={"modelmux.io/batching": "false", "modelmux.io/max-batch-delay-s": "0"}),
        "onnx",
        "p",
        {"options": {"batching": "false", "max_batch_delay_s": "0.0"}},
    ),
    (
        "predictor runtime, protocol and gpu",
        predictor({"modelType": {"name": "onnx"}, "path": "p", "runtime": {"name": "modelmux"}, "protocolVersion": "GRPC-V2", "gpu": "required"}),
        "onnx",
        "p",
        {"runtime": "modelmux", "protocol_version": "grpc-v2", "options": {"device": "cuda"}},
    ),
    (
        "isvc model + storage spec",
        isvc({"model": {"modelFormat": {"name": "onnx"}, "storage": {"key": "minio", "path": "onnx/mnist.onnx", "schemaPath": "schema.json"}}}),
        "onnx",
        "onnx/mnist.onnx",
        {"storage_key": "minio", "schema_path": "schema.json", "tenant": "team-a"},
    ),
    (
        "isvc storageUri + annotations",
        isvc(
            {"model": {"modelFormat": {"name": "xgboost", "version": "1"}, "storageUri": "s3://b/xgb/model.json", "storage": {"parameters": {"region": "eu"}}}},
            annotations={"serving.kserve.io/secretKey": "minio", "serving.kserve.io/schemaPath": "sch.json", "modelmux.io/max-copies": "3"},
        ),
        "xgboost",
        "s3://b/xgb/model.json",
        {"storage_key": "minio", "schema_path": "sch.json", "storage_params": {"region": "eu"}, "max_copies": 3, "model_type": {"name": "xgboost", "version": "1"}},
    ),
    (
        "isvc legacy framework spec",
        isvc({"xgboost": {"storageUri": "gs://bucket/model.json"}}),
        "xgboost",
        "gs://bucket/model.json",
        {},
    ),
    (
        "isvc framework + runtime annotation",
        isvc({"onnx": {"storageUri": "pvc://claim/m.onnx"}}, annotations={"serving.kserve.io/servingRuntime": "modelmux"}),
        "onnx",
        "pvc://claim/m.onnx",
        {"runtime": "modelmux"},
    ),
]


@pytest.mark.parametrize(("case", "obj", "mtype", "path", "key_subset"), VALID, ids=[v[0] for v in VALID])
def test_valid_objects_map_to_registrations(case: str, obj: dict[str, Any], mtype: str, path: str, key_subset: dict[str, Any]) -> None:
    d = desired_state(obj, CTX)
    assert isinstance(d, Registration), d
    assert d.info.type == mtype
    assert d.info.path == path
    key = key_of(d)
    for k, v in key_subset.items():
        assert key[k] == v, (k, key)
    assert d.vmodel == "mnist"
    source = "ksp" if obj["kind"] == "Predictor" else "isvc"
    assert d.owner == f"{source}/team-a"
    assert re.fullmatch(rf"mnist__{source}-[0-9a-f]{{10}}", d.model_id), d.model_id
    assert d.model_id.endswith(d.spec_hash)


def test_serving_runtime_adds_model_types_per_namespace() -> None:
    rt = Runtime("mlserver-1.x", frozenset({"sklearn", "lightgbm"}), frozenset({"sklearn"}))
    ctx = ReconcileContext(runtimes={"team-a": {rt.name: rt}})
    named = predictor({"modelType": {"name": "lightgbm"}, "path": "p", "runtime": {"name": "mlserver-1.x"}})
    assert isinstance(desired_state(named, ctx), Registration)
    auto = predictor({"modelType": {"name": "sklearn"}, "path": "p"})
    assert isinstance(desired_state(auto, ctx), Registration)
    # lightgbm is not auto-selectable; and the runtime does not exist in another namespace
    no_auto = desired_state(predictor({"modelType": {"name": "lightgbm"}, "path": "p"}), ctx)
    assert isinstance(no_auto, Rejection) and no_auto.reason == "NoSupportingRuntime"
    other_ns = desired_state(predictor({"modelType": {"name": "sklearn"}, "path": "p"}, namespace="team-b"), ctx)
    assert isinstance(other_ns, Rejection)


# ---------------------------------------------------------------- invalid objects

P = {"modelType": {"name": "onnx"}, "path": "p"}

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown model type", predictor({"modelType": {"name": "tensorflow"}, "path": "p"}), "NoSupportingRuntime", "model type 'tensorflow' is not supported"),
    ("no model type", predictor({"path": "p"}), "InvalidPredictorSpec", "spec.modelType.name is required"),
    ("no storage at all", predictor({"modelType": {"name": "onnx"}}), "InvalidPredictorSpec", "storage is missing"),
    ("storage without path", predictor({"modelType": {"name": "onnx"}, "storage": {"key": "k"}}), "InvalidPredictorSpec", "storage is missing"),
    ("unsupported URI scheme", predictor({**P, "path": "ftp://host/m.onnx"}), "InvalidPredictorSpec", "unsupported scheme 'ftp'"),
    ("URI without object path", predictor({**P, "path": "s3://bucket"}), "InvalidPredictorSpec", "no object path"),
    ("URI without bucket", predictor({**P, "path": "s3:///m.onnx"}), "InvalidPredictorSpec", "has no bucket"),
    ("http URI without host", predictor({**P, "path": "https:///m.onnx"}), "InvalidPredictorSpec", "has no host"),
    ("URI without scheme", predictor({**P, "path": "://m.onnx"}), "InvalidPredictorSpec", "has no scheme"),
    ("URI with spaces", predictor({**P, "path": "s3://b/my model.onnx"}), "InvalidPredictorSpec", "white space"),
    ("file URI on a host", predictor({**P, "path": "file://server/m.onnx"}), "InvalidPredictorSpec", "file URI"),
    ("path twice", predictor({**P, "storage": {"path": "q"}}), "InvalidPredictorSpec", "only one of spec.path and spec.storage.path"),
    ("schemaPath twice", predictor({**P, "schemaPath": "a", "storage": {"schemaPath": "b"}}), "InvalidPredictorSpec", "only one of spec.schemaPath"),
    ("pvc storage", predictor({**P, "storage": {"persistentVolumeClaim": {"claimName": "c"}}}), "InvalidPredictorSpec", "persistentVolumeClaim is not supported"),
    ("s3 with other keys", predictor({**P, "storage": {"s3": {"secretKey": "k"}, "key": "k"}}), "InvalidPredictorSpec", "s3 cannot be specified"),
    ("unknown runtime", predictor({**P, "runtime": {"name": "triton-2.x"}}), "RuntimeNotRecognized", "runtime 'triton-2.x' is not recognized"),
    ("protocol v1", predictor({**P, "protocolVersion": "v1"}), "InvalidPredictorSpec", "protocolVersion 'v1' is not supported"),
    ("bad gpu", predictor({**P, "gpu": "maybe"}), "InvalidPredictorSpec", "spec.gpu"),
    ("min above max", predictor({**P, "minCopies": 3, "maxCopies": 2}), "InvalidPredictorSpec", "min copies (3) exceed max copies (2)"),
    ("bad min-copies annotation", predictor(P, annotations={"modelmux.io/min-copies": "two"}), "InvalidPredictorSpec", "annotation modelmux.io/min-copies must be a non-negative integer"),
    ("negative max-copies annotation", predictor(P, annotations={"modelmux.io/max-copies": "-1"}), "InvalidPredictorSpec", "modelmux.io/max-copies"),
    ("bad batching annotation", predictor(P, annotations={"modelmux.io/batching": "maybe"}), "InvalidPredictorSpec", "modelmux.io/batching must be true or false"),
    ("zero max batch size", predictor({**P, "maxBatchSize": 0}), "InvalidPredictorSpec", "max batch size must be at least 1"),
    ("bad batch delay", predictor({**P, "maxBatchDelaySeconds": "soon"}), "InvalidPredictorSpec", "spec.maxBatchDelaySeconds must be a number of seconds"),
    ("batch delay too long", predictor(P, annotations={"modelmux.io/max-batch-delay-s": "60"}), "InvalidPredictorSpec", "modelmux.io/max-batch-delay-s must be a number"),
    ("bad pinned annotation", predictor(P, annotations={"modelmux.io/pinned": "maybe"}), "InvalidPredictorSpec", "modelmux.io/pinned must be true or false"),
    ("spec is a string", predictor("onnx"), "InvalidPredictorSpec", "spec must be an object"),
    ("empty spec", predictor({}), "InvalidPredictorSpec", "spec is required"),
    ("nested storage parameters", predictor({**P, "storage": {"path": None, "parameters": {"a": {"b": 1}}}}), "InvalidPredictorSpec", "spec.storage.parameters.a must be a string"),
    ("modelType is a list", predictor({"modelType": ["onnx"], "path": "p"}), "InvalidPredictorSpec", "spec.modelType must be an object"),
    ("name too long", predictor(P, name="m" * 250), "InvalidPredictorSpec", "invalid model id"),
    ("isvc model and framework", isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"}, "onnx": {}}), "InvalidPredictorSpec", "both model and a framework"),
    ("isvc model + runtime annotation", isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"}}, annotations={"serving.kserve.io/servingRuntime": "x"}), "InvalidPredictorSpec", "cannot be combined"),
    ("isvc uri and storage path", isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m", "storage": {"path": "m"}}}), "InvalidPredictorSpec", "both storageUri and storage.path"),
    ("isvc without storage", isvc({"model": {"modelFormat": {"name": "onnx"}}}), "InvalidPredictorSpec", "storage is missing"),
    ("isvc without model format", isvc({"model": {"storageUri": "s3://b/m"}}), "InvalidPredictorSpec", "modelFormat.name is required"),
    ("isvc without predictor", isvc({}), "InvalidPredictorSpec", "spec.predictor is required"),
    ("isvc two frameworks", isvc({"onnx": {"storageUri": "s3://b/m"}, "xgboost": {}}), "InvalidPredictorSpec", "several framework specs"),
    ("isvc bad uri", isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s4://b/m"}}), "InvalidPredictorSpec", "unsupported scheme 's4'"),
    ("isvc unknown format", isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/m"}}), "NoSupportingRuntime", "'sklearn' is not supported"),
]


@pytest.mark.parametrize(("case", "obj", "reason", "message"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_objects_are_rejected_with_a_message(case: str, obj: dict[str, Any], reason: str, message: str) -> None:
    d = desired_state(obj, CTX)
    assert isinstance(d, Rejection), d
    assert d.reason == reason
    assert message in d.message, d.message
    assert d.vmodel == obj["metadata"]["name"]


def test_objects_that_are_not_ours_map_to_nothing() -> None:
    assert desired_state(isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"}}, mode=None), CTX) is None
    assert desired_state(isvc({"model": {}}, mode="Serverless"), CTX) is None
    assert desired_state({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, CTX) is None


def test_garbage_never_raises() -> None:
    for obj in (
        {"kind": "Predictor"},
        {"kind": "Predictor", "metadata": "x", "spec": {}},
        {"kind": "Predictor", "metadata": {"name": "a", "annotations": ["x"]}, "spec": P},
        {"kind": "Predictor", "metadata": {"name": "a", "generation": "many"}, "spec": P},
        {"kind": "InferenceService", "metadata": {"name": "a", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}}, "spec": {"predictor": "x"}},
    ):
        d = desired_state(obj, CTX)
        assert d is None or isinstance(d, Registration | Rejection)


# ---------------------------------------------------------------- model ids


def test_model_id_is_stable_and_pinned() -> None:
    # a fixed spec keeps its id across releases: changing the hash input is a breaking change
    d = desired_state(predictor({"modelType": {"name": "onnx"}, "storage": {"key": "minio", "path": "onnx/mnist.onnx"}}, namespace="default"), CTX)
    assert isinstance(d, Registration)
    assert d.model_id == f"mnist__ksp-{spec_hash(d.info)}"
    assert d.model_id == "mnist__ksp-" + _expected_pinned_hash()


def _expected_pinned_hash() -> str:
    import hashlib

    key = {"model_type": {"name": "onnx"}, "storage_key": "minio", "tenant": "default"}
    canonical = json.dumps({"key": key, "path": "onnx/mnist.onnx", "type": "onnx"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:10]


def _id(obj: dict[str, Any]) -> str:
    d = desired_state(obj, CTX)
    assert isinstance(d, Registration), d
    return d.model_id


def test_model_id_ignores_cosmetic_changes() -> None:
    base = predictor({"modelType": {"name": "onnx"}, "storage": {"key": "k", "path": "m.onnx", "parameters": {"a": "1", "b": "2"}}})
    reordered = predictor({"storage": {"parameters": {"b": "2", "a": "1"}, "path": "m.onnx", "key": "k"}, "modelType": {"name": "onnx"}})
    assert _id(base) == _id(reordered)
    relabelled = copy.deepcopy(base)
    relabelled["metadata"]["labels"] = {"team": "x"}
    relabelled["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    relabelled["status"] = {"activeModelState": "Loaded"}
    assert _id(base) == _id(relabelled)
    # spec.path and spec.storage.path are the same registration
    legacy = predictor({"modelType": {"name": "onnx"}, "path": "m.onnx", "storage": {"key": "k", "parameters": {"a": "1", "b": "2"}}})
    assert _id(base) == _id(legacy)


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o["spec"]["storage"].__setitem__("path", "m2.onnx"),
        lambda o: o["spec"]["storage"].__setitem__("key", "other"),
        lambda o: o["spec"]["storage"]["parameters"].__setitem__("a", "9"),
        lambda o: o["spec"]["modelType"].__setitem__("version", "2"),
        lambda o: o["spec"].__setitem__("runtime", {"name": "modelmux"}),
        lambda o: o["spec"].__setitem__("minCopies", 1),
        lambda o: o["metadata"].__setitem__("annotations", {"modelmux.io/pinned": "true"}),
        lambda o: o["metadata"].__setitem__("annotations", {"modelmux.io/tenant-quota": "gold"}),
        lambda o: o["metadata"].__setitem__("namespace", "team-b"),
    ],
    ids=["path", "key", "params", "version", "runtime", "min-copies", "pinned", "tenant", "namespace"],
)
def test_model_id_changes_with_the_spec(change: Any) -> None:
    base = predictor({"modelType": {"name": "onnx"}, "storage": {"key": "k", "path": "m.onnx", "parameters": {"a": "1"}}})
    changed = copy.deepcopy(base)
    change(changed)
    assert _id(base) != _id(changed)


def test_namespaced_vmodel_names() -> None:
    ctx = ReconcileContext(naming="namespace.name")
    d = desired_state(predictor(P, name="m", namespace="team-a"), ctx)
    assert isinstance(d, Registration)
    assert d.vmodel == "team-a.m"
    assert d.model_id.startswith("team-a.m__ksp-")
    settings = ControllerSettings(vmodel_names="namespace.name")
    assert ref_for_vmodel("team-a.m", "ksp/team-a", settings.vmodel_names) == ObjectRef("Predictor", "team-a", "m")
    assert ref_for_vmodel("team-b.m", "ksp/team-a", settings.vmodel_names) is None


def test_owner_and_model_id_lead_back_to_the_object() -> None:
    s = ControllerSettings()
    assert ref_for_vmodel("mnist", "isvc/prod", s.vmodel_names) == ObjectRef("InferenceService", "prod", "mnist")
    assert ref_for_vmodel("mnist", "someone-else", s.vmodel_names) is None
    assert ref_for_vmodel("mnist", "", s.vmodel_names) is None
    assert vmodel_of_model("my__model__ksp-0123456789") == "my__model"
    assert vmodel_of_model("plain-model") is None
    assert vmodel_of_model("x__other-0123") is None


# ---------------------------------------------------------------- status

def _registration(obj: dict[str, Any]) -> Registration:
    d = desired_state(obj, CTX)
    assert isinstance(d, Registration), d
    return d


REG = _registration(predictor(P, name="m", namespace="ns"))
MID = REG.model_id
OLD = "m__ksp-0000000000"


def ms(status: str, *copies: tuple[str, str, int], errors: tuple[str, ...] = ()) -> ModelStatus:
    return ModelStatus(status, errors, tuple(CopyStatus(loc, st, t) for loc, st, t in copies))


def vms(status: str, active: str, target: str, a: ModelStatus | None, t: ModelStatus | None = None, owner: str = "ksp/ns") -> VModelStatus:
    return VModelStatus(status, active, target, a, t, owner)


STATUS_CASES: list[tuple[str, VModelStatus | None, dict[str, Any]]] = [
    ("not registered", None, {"available": False, "active_model_state": "Pending", "transition_status": "UpToDate"}),
    (
        "vmodel not found",
        VModelStatus("NOT_FOUND", active_status=ModelStatus("NOT_FOUND")),
        {"available": False, "active_model_state": "Pending"},
    ),
    ("standby", vms("DEFINED", MID, MID, ms("NOT_LOADED")), {"available": True, "active_model_state": "Standby", "target_model_state": ""}),
    ("loading", vms("DEFINED", MID, MID, ms("LOADING", ("i1", "LOADING", 5))), {"active_model_state": "Loading", "loading_copies": 1, "total_copies": 1}),
    (
        "loaded twice",
        vms("DEFINED", MID, MID, ms("LOADED", ("i2", "LOADED", 5), ("i1", "LOADED", 6), ("i3", "LOADING", 7))),
        {"available": True, "active_model_state": "Loaded", "loaded_copies": 2, "loading_copies": 1, "total_copies": 3, "holders": ("i1", "i2"), "last_failure": None},
    ),
    (
        "failed to load",
        vms("DEFINED", MID, MID, ms("LOADING_FAILED", ("i1", "LOADING_FAILED", 1_700_000_000_000), errors=("bad file",))),
        {
            "available": False,
            "active_model_state": "FailedToLoad",
            "failed_copies": 1,
            "last_failure": FailureInfo("ModelLoadFailed", "bad file", MID, "i1", "2023-11-14T22:13:20Z"),
        },
    ),
    (
        "transition in progress",
        vms("TRANSITIONING", OLD, MID, ms("LOADED", ("i1", "LOADED", 1)), ms("LOADING", ("i2", "LOADING", 2))),
        {
            "available": True,
            "active_model_state": "Loaded",
            "target_model_state": "Loading",
            "transition_status": "InProgress",
            "total_copies": 2,
            "active_model_id": OLD,
            "target_model_id": MID,
            "holders": ("i1",),
        },
    ),
    (
        "transition blocked",
        vms("TRANSITION_FAILED", OLD, MID, ms("LOADED", ("i1", "LOADED", 1)), ms("LOADING_FAILED", ("i2", "LOADING_FAILED", 2000), errors=("boom",))),
        {
            "transition_status": "BlockedByFailedLoad",
            "target_model_state": "FailedToLoad",
            "available": True,
            "last_failure": FailureInfo("ModelLoadFailed", "boom", MID, "i2", "1970-01-01T00:00:02Z"),
        },
    ),
    (
        "blocked but retrying elsewhere",
        vms("TRANSITION_FAILED", OLD, MID, ms("LOADED"), ms("LOADING", ("i3", "LOADING", 3))),
        {"transition_status": "InProgress", "target_model_state": "Loading"},
    ),
    (
        "spec changed, not applied yet",
        vms("DEFINED", OLD, OLD, ms("LOADED", ("i1", "LOADED", 1))),
        {"transition_status": "InProgress", "target_model_state": "Pending", "target_model_id": MID, "active_model_state": "Loaded"},
    ),
    (
        "someone else's vmodel",
        vms("DEFINED", "x", "x", ms("LOADED"), owner="isvc/ns"),
        {"active_model_state": "Pending", "available": False, "active_model_id": ""},
    ),
]


@pytest.mark.parametrize(("case", "vm", "expect"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_status_from_mesh_state(case: str, vm: VModelStatus | None, expect: dict[str, Any]) -> None:
    st = compute_status(REG, vm, CTX, now=1000.0)
    for k, v in expect.items():
        assert getattr(st, k) == v, (k, st)
    assert st.grpc_endpoint == "grpc://modelmux.ns:8033"
    assert st.http_endpoint == "http://modelmux.ns:8008"


def test_rejection_keeps_serving_the_old_model() -> None:
    bad = desired_state(predictor({**P, "path": "ftp://x/y"}, name="m", namespace="ns"), CTX)
    assert isinstance(bad, Rejection)
    st = compute_status(bad, vms("DEFINED", OLD, OLD, ms("LOADED", ("i1", "LOADED", 1))), CTX)
    assert (st.transition_status, st.active_model_state, st.available) == ("InvalidSpec", "Loaded", True)
    assert st.last_failure is not None and st.last_failure.reason == "InvalidPredictorSpec" and "ftp" in st.last_failure.message
    fresh = compute_status(bad, None, CTX)
    assert (fresh.transition_status, fresh.active_model_state, fresh.available) == ("InvalidSpec", "Pending", False)


def test_conflict_is_reported_as_invalid_spec() -> None:
    st = compute_status(REG, None, CTX, conflict="vmodel 'm' belongs to owner 'isvc/ns'")
    assert st.transition_status == "InvalidSpec"
    assert st.last_failure == FailureInfo("InvalidPredictorSpec", "vmodel 'm' belongs to owner 'isvc/ns'", MID)


def test_failure_without_a_copy_keeps_its_first_time() -> None:
    vm = vms("DEFINED", MID, MID, ms("LOADING_FAILED", errors=("no instance has room",)))
    first = compute_status(REG, vm, CTX, now=100.0)
    assert first.last_failure is not None and first.last_failure.time == "1970-01-01T00:01:40Z"
    again = compute_status(REG, vm, CTX, previous=first, now=500.0)
    assert again == first  # no status write for an unchanged failure
    other = compute_status(REG, vms("DEFINED", MID, MID, ms("LOADING_FAILED", errors=("other",))), CTX, previous=first, now=500.0)
    assert other.last_failure is not None and other.last_failure.time == "1970-01-01T00:08:20Z"


def test_endpoints_use_the_service_namespace_when_set() -> None:
    ctx = ReconcileContext(service_name="mm", service_namespace="serving", grpc_port=1, rest_port=2)
    st = compute_status(REG, None, ctx)
    assert (st.grpc_endpoint, st.http_endpoint) == ("grpc://mm.serving:1", "http://mm.serving:2")


SAMPLE = CRStatus(
    available=True,
    active_model_state="Loaded",
    target_model_state="FailedToLoad",
    transition_status="BlockedByFailedLoad",
    last_failure=FailureInfo("ModelLoadFailed", "boom", "m__ksp-1", "i2", "2024-01-01T00:00:00Z"),
    total_copies=3,
    failed_copies=1,
    loaded_copies=2,
    loading_copies=0,
    holders=("i1", "i3"),
    grpc_endpoint="grpc://a:1",
    http_endpoint="http://a:2",
    active_model_id="m__ksp-0",
    target_model_id="m__ksp-1",
    observed_generation=4,
)


def test_predictor_status_json_round_trips() -> None:
    raw = status_json("Predictor", SAMPLE)
    assert raw["lastFailureInfo"]["modelId"] == "m__ksp-1"
    assert status_from_json("Predictor", json.loads(json.dumps(raw))) == SAMPLE
    no_failure = replace(SAMPLE, last_failure=None)
    assert "lastFailureInfo" not in status_json("Predictor", no_failure)
    assert status_from_json("Predictor", None) is None
    assert status_from_json("Predictor", {"totalCopies": "many"}) is None


def test_isvc_status_json_uses_kserve_layout() -> None:
    raw = status_json("InferenceService", SAMPLE, None, now=0.0)
    assert raw["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert raw["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
    assert raw["modelStatus"]["lastFailureInfo"]["modelRevisionName"] == "m__ksp-1"
    assert raw["components"]["predictor"] == {"url": "grpc://a:1", "grpcUrl": "grpc://a:1", "restUrl": "http://a:2"}
    assert {c["type"]: c["status"] for c in raw["conditions"]} == {"PredictorReady": "True", "Ready": "True"}
    back = status_from_json("InferenceService", raw)
    assert back == replace(SAMPLE, active_model_id="", target_model_id="")
    # condition times stay while the condition holds, move when it flips
    later = status_json("InferenceService", SAMPLE, raw, now=9999.0)
    assert later["conditions"] == raw["conditions"]
    down = status_json("InferenceService", replace(SAMPLE, available=False), raw, now=9999.0)
    assert down["conditions"][0]["lastTransitionTime"] == "1970-01-01T02:46:39Z"
    assert "components" not in down and "url" not in down


# ---------------------------------------------------------------- events


def _events(old: CRStatus | None, new: CRStatus) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in events_between(old, new)]


def test_events_for_transitions_and_failures() -> None:
    up = CRStatus(active_model_state="Loaded", active_model_id="a", target_model_id="a")
    progress = replace(up, transition_status="InProgress", target_model_state="Loading", target_model_id="b")
    blocked_failure = FailureInfo("ModelLoadFailed", "boom", "b", "i1", "t")
    blocked = replace(progress, transition_status="BlockedByFailedLoad", target_model_state="FailedToLoad", last_failure=blocked_failure)
    done = replace(up, active_model_id="b", target_model_id="b")
    invalid = replace(up, transition_status="InvalidSpec", last_failure=FailureInfo("InvalidPredictorSpec", "bad uri"))
    assert _events(None, up) == []
    assert _events(up, up) == []
    assert _events(up, progress) == [("Normal", "TransitionStarted")]
    assert _events(progress, blocked) == [("Warning", "TransitionBlocked"), ("Warning", "ModelLoadFailed")]
    assert _events(blocked, blocked) == []
    assert _events(progress, done) == [("Normal", "TransitionComplete")]
    assert _events(None, invalid) == [("Warning", "InvalidSpec")]
    assert _events(invalid, replace(invalid, last_failure=FailureInfo("InvalidPredictorSpec", "other"))) == [("Warning", "InvalidSpec")]
    assert _events(invalid, up) == [("Normal", "TransitionComplete")]
    failed = replace(up, active_model_state="FailedToLoad", last_failure=FailureInfo("ModelLoadFailed", "x", "a", "i1", "t"))
    assert _events(up, failed) == [("Warning", "ModelLoadFailed")]
    msg = events_between(up, failed)[0].message
    assert "model a failed to load on i1: x" == msg


# ---------------------------------------------------------------- merge patch


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({}, {"a": 1}),
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2}}),
        ({"a": [1, 2]}, {"a": [2]}),
        ({"lastFailureInfo": {"reason": "x"}, "available": True}, {"available": False}),
        ({"x": {"y": 1}}, {"x": 5}),
    ],
)
def test_merge_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    from tests.controller.apiserver import merge_patch as apply_merge_patch

    patch = merge_patch(old, new)
    assert apply_merge_patch(old, patch) == new
    assert merge_patch(new, new) == {}
