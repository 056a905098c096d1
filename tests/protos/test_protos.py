"""Wire compatibility of our .proto files with the published ones, and import side by side with the SDKs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Dump every message of a file descriptor: {full_name: {field: [number, type, label, message_type]}}
_DUMP = textwrap.dedent(
    """
    import json, sys
    def dump(fd):
        out = {}
        def walk(desc):
            out[desc.full_name] = {
                f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else ""]
                for f in desc.fields
            }
            for n in desc.nested_types:
                walk(n)
        for m in fd.message_types_by_name.values():
            walk(m)
        services = {s.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name] for m in s.methods}
                    for s in fd.services_by_name.values()}
        return {"messages": out, "services": services}
    """
)


def _run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _ours(module: str) -> dict:
    return _run(f"from protos import {module} as m\nprint(json.dumps(dump(m.DESCRIPTOR)))")


def _require(module: str) -> None:
    # find_spec, not importorskip: importing kserve here would fill protobuf's default pool
    # with the V2 symbols and break the in-process tritonclient test below
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")


def test_v2_is_a_compatible_subset_of_kserve_sdk() -> None:
    _require("kserve")
    theirs = _run(
        "import kserve  # noqa\n"
        "from kserve.protocol.grpc import grpc_predict_v2_pb2 as k\n"
        "from protos import grpc_predict_v2_pb2  # must import next to it\n"
        "print(json.dumps(dump(k.DESCRIPTOR)))"
    )
    ours = _ours("grpc_predict_v2_pb2")
    _assert_subset(ours, theirs, exact_fields=False)


def _assert_subset(ours: dict, theirs: dict, *, exact_fields: bool = True) -> None:
    """Every method of ours exists in theirs with the same types; shared fields have the same number and type.

    With ``exact_fields`` every message has exactly the same fields (tritonclient); the kserve SDK's
    ``InferParameter`` lacks Triton's ``double_param`` / ``uint64_param``, so there only shared fields must agree.
    """
    their_methods = theirs["services"]["inference.GRPCInferenceService"]
    assert set(ours["services"]["inference.GRPCInferenceService"]) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    }
    for name, types in ours["services"]["inference.GRPCInferenceService"].items():
        assert their_methods[name] == types
    for msg, fields in ours["messages"].items():
        assert msg in theirs["messages"], msg
        shared = set(fields) & set(theirs["messages"][msg])
        assert {k: fields[k] for k in shared} == {k: theirs["messages"][msg][k] for k in shared}, msg
        if exact_fields:
            assert set(fields) == set(theirs["messages"][msg]), msg
        else:
            assert len(shared) >= len(fields) - 2, msg


def test_v2_is_a_compatible_subset_of_tritonclient() -> None:
    _require("tritonclient")
    theirs = _run(
        "import tritonclient.grpc  # noqa\n"
        "from tritonclient.grpc import service_pb2 as t\n"
        "from protos import grpc_predict_v2_pb2  # must import next to it\n"
        "print(json.dumps(dump(t.DESCRIPTOR)))"
    )
    ours = _ours("grpc_predict_v2_pb2")
    _assert_subset(ours, theirs)


def test_mmesh_field_numbers() -> None:
    mm = _ours("model_mesh_pb2")
    assert mm["services"]["mmesh.ModelMesh"]["registerModel"] == ["mmesh.RegisterModelRequest", "mmesh.ModelStatusInfo"]
    assert set(mm["services"]["mmesh.ModelMesh"]) == {
        "registerModel", "unregisterModel", "getModelStatus", "ensureLoaded", "setVModel", "deleteVModel", "getVModelStatus",
    }
    req = mm["messages"]["mmesh.SetVModelRequest"]
    assert {k: v[0] for k, v in req.items()} == {
        "vModelId": 1, "targetModelId": 2, "updateOnly": 3, "modelInfo": 4, "autoDeleteTargetModel": 5,
        "loadNow": 6, "force": 7, "sync": 8, "expectedTargetModelId": 9, "owner": 10,
    }
    rt = _ours("model_runtime_pb2")
    assert set(rt["services"]["mmesh.ModelRuntime"]) == {
        "loadModel", "unloadModel", "predictModelSize", "modelSize", "runtimeStatus",
    }
    status = rt["messages"]["mmesh.RuntimeStatusResponse"]
    assert status["allowAnyMethod"][0] == 10 and status["methodInfos"][0] == 8


def test_enum_values() -> None:
    from protos import model_mesh_pb2 as mm

    s = mm.ModelStatusInfo.ModelStatus
    assert [s.Value(n) for n in ("NOT_FOUND", "NOT_LOADED", "LOADING", "LOADED", "LOADING_FAILED", "UNKNOWN")] == [0, 1, 2, 3, 4, 5]
    v = mm.VModelStatusInfo.VModelStatus
    assert [v.Value(n) for n in ("NOT_FOUND", "DEFINED", "TRANSITIONING", "TRANSITION_FAILED", "UNKNOWN")] == [0, 1, 2, 3, 5]


def test_bytes_round_trip_with_tritonclient_messages() -> None:
    _require("tritonclient")
    from tritonclient.grpc import service_pb2

    from protos import grpc_predict_v2_pb2 as pb

    req = service_pb2.ModelInferRequest(model_name="m", id="42")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.parameters["p"].int64_param = 7
    req.raw_input_contents.append(b"\x00" * 8)
    ours = pb.ModelInferRequest.FromString(req.SerializeToString())
    assert (ours.model_name, ours.id, list(ours.inputs[0].shape)) == ("m", "42", [1, 2])
    assert ours.inputs[0].parameters["p"].int64_param == 7
    assert ours.SerializeToString() == req.SerializeToString()


def test_generated_code_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protos.generate", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
