"""Generated bad input on the gRPC edge: V2 ModelInfer (bytes and typed messages) and mmesh.ModelMesh.

Every call carries a deadline; an answer is either OK (the input happened to be valid) or a
well-formed error of the client's fault class. INTERNAL, UNKNOWN or a missed deadline fails.
The ``canary`` fixture checks that good traffic kept being served meanwhile.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from tests.fuzz.fuzzhelp import (
    CALL_TIMEOUT_S,
    GOOD_MODEL,
    INFER,
    Canary,
    Mesh,
    fuzz_settings,
    good_request,
    hostile_key_fields,
    valid_ids,
)

CLIENT_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "BF16", "FP32", "FP64", "BYTES"]
CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents"]
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

V2_METHODS = {
    "ModelInfer": (None, None),
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
}
MM_METHODS = ["registerModel", "unregisterModel", "getModelStatus", "ensureLoaded", "setVModel",
              "deleteVModel", "getVModelStatus"]


def _call(mesh: Mesh, address: str, method: str, payload: bytes, metadata: Any = None) -> tuple[grpc.StatusCode, bytes, str]:
    call = mesh.channel(address).unary_unary(method)
    try:
        return grpc.StatusCode.OK, call(payload, timeout=CALL_TIMEOUT_S, metadata=metadata), ""
    except grpc.RpcError as exc:
        return exc.code(), b"", exc.details() or ""  # type: ignore[attr-defined]


def _assert_client_fault(code: grpc.StatusCode, details: str, what: Any) -> None:
    assert code in CLIENT_FAULTS, (code, details, what)
    assert details, (code, what)  # a reason, not an empty status
    assert len(details) <= 512, details[:100]


def _touches_good_model(payload: bytes) -> bool:
    return GOOD_MODEL.encode() in payload  # never let the fuzzer unregister or rebind the canary's model


# ---------------------------------------------------------------- random bytes, every method


@fuzz_settings(80)
@given(
    method=st.sampled_from([f"/inference.GRPCInferenceService/{m}" for m in V2_METHODS] + [f"/mmesh.ModelMesh/{m}" for m in MM_METHODS]),
    payload=st.binary(max_size=300),
    instance=st.integers(0, 1),
)
def test_random_bytes_to_every_method(mesh: Mesh, canary: Canary, method: str, payload: bytes, instance: int) -> None:
    assume(not _touches_good_model(payload))
    code, _, details = _call(mesh, mesh.grpc[instance], method, payload)
    if code != grpc.StatusCode.OK:
        _assert_client_fault(code, details, (method, payload))


# ---------------------------------------------------------------- structured but wrong V2 requests


def _shape() -> st.SearchStrategy[list[int]]:
    dim = st.one_of(st.integers(-2, 6), st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from([1 << 31, 1 << 40, 1 << 62]))
    return st.lists(dim, max_size=5)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.just(GOOD_MODEL), st.just("missing-model"), st.text(max_size=30))),
        id=draw(st.text(max_size=20)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.one_of(st.just([2, 4]), st.just([1, 4]), _shape()))
        datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.just("FP32"), st.text(max_size=6)))
        t = req.inputs.add(name=draw(st.one_of(st.just("x"), st.text(max_size=8))), datatype=datatype, shape=shape)
        for key, value in draw(st.dictionaries(st.text(max_size=5), st.one_of(st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=5)), max_size=2)).items():
            if isinstance(value, bool):
                t.parameters[key].bool_param = value
            elif isinstance(value, int):
                t.parameters[key].int64_param = value
            else:
                t.parameters[key].string_param = value
        if raw:
            count = math.prod(max(d, 0) for d in shape)
            exact = 4 * min(count, 1 << 12)
            n = draw(st.one_of(st.just(exact), st.integers(0, 64), st.integers(max(exact - 5, 0), exact + 5)))
            req.raw_input_contents.append(draw(st.binary(min_size=n, max_size=n)))
        else:
            field = draw(st.sampled_from(CONTENT_FIELDS))
            values: st.SearchStrategy[Any] = {
                "bool_contents": st.booleans(),
                "int_contents": st.integers(-(1 << 31), (1 << 31) - 1),
                "int64_contents": st.integers(-(1 << 63), (1 << 63) - 1),
                "uint_contents": st.integers(0, (1 << 32) - 1),
                "uint64_contents": st.integers(0, (1 << 64) - 1),
                "fp32_contents": st.floats(width=32),
                "fp64_contents": st.floats(),
                "bytes_contents": st.binary(max_size=8),
            }[field]
            getattr(t.contents, field).extend(draw(st.lists(values, max_size=12)))
    if draw(st.booleans()):  # raw contents that do not pair with the inputs
        for _ in range(draw(st.integers(0, 2))):
            req.raw_input_contents.append(draw(st.binary(max_size=32)))
    for name in draw(st.lists(st.one_of(st.just("y"), st.text(max_size=6)), max_size=2)):
        req.outputs.add(name=name)
    return req


@fuzz_settings(120)
@given(
    req=infer_requests(),
    instance=st.integers(0, 1),
    header=st.one_of(st.none(), st.tuples(st.sampled_from(["mm-model-id", "mm-vmodel-id"]), st.one_of(st.just(GOOD_MODEL), st.text(ASCII, max_size=40)))),
)
def test_structured_wrong_infer_requests(mesh: Mesh, canary: Canary, req: pb.ModelInferRequest, instance: int, header: tuple[str, str] | None) -> None:
    metadata = (header,) if header is not None and header[1].strip() == header[1] else None
    code, body, details = _call(mesh, mesh.grpc[instance], INFER, req.SerializeToString(), metadata)
    if code == grpc.StatusCode.OK:  # the generator made a valid request: the answer must be lin's
        resp = pb.ModelInferResponse.FromString(body)
        (out,) = resp.outputs
        rows = out.shape[0]
        assert out.name == "y" and list(out.shape) == [rows, 3], resp
        assert len(resp.raw_output_contents[0]) == rows * 3 * 4
        return
    _assert_client_fault(code, details, req)


@fuzz_settings(40)
@given(
    req=infer_requests(),
    cut=st.integers(0, 200),
    flip=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    instance=st.integers(0, 1),
)
def test_mutated_request_bytes(mesh: Mesh, canary: Canary, req: pb.ModelInferRequest, cut: int, flip: list[tuple[int, int]], instance: int) -> None:
    """Valid messages, truncated and with bytes overwritten: broken varints, lengths, UTF-8, nesting."""
    data = bytearray(req.SerializeToString())
    for pos, value in flip:
        if data:
            data[pos % len(data)] = value
    payload = bytes(data[: max(len(data) - cut, 0)] if cut < len(data) else data)
    code, _, details = _call(mesh, mesh.grpc[instance], INFER, payload)
    if code != grpc.StatusCode.OK:
        _assert_client_fault(code, details, payload)


# ---------------------------------------------------------------- management API with hostile fields


def _hostile_json() -> st.SearchStrategy[str]:
    deep = st.integers(100, 20_000).map(lambda n: "[" * n + "]" * n)
    deep_obj = st.integers(100, 5_000).map(lambda n: '{"tenant": ' + '{"a":' * n + "1" + "}" * n + "}")
    return st.one_of(st.text(max_size=20), hostile_key_fields().map(json.dumps), hostile_key_fields().map(json.dumps), deep, deep_obj)


def _ids() -> st.SearchStrategy[str]:
    return st.one_of(valid_ids(), valid_ids(), st.text(max_size=20), st.text(ASCII, min_size=250, max_size=300), st.just(""))


@st.composite
def mm_calls(draw: st.DrawFn) -> tuple[str, Any]:
    info = mm.ModelInfo(type=draw(st.one_of(st.sampled_from(["onnx", "xgboost", "pytorch", ""]), st.text(max_size=8))),
                        path=draw(st.one_of(st.just("/nonexistent/model.onnx"), st.text(max_size=30))), key=draw(_hostile_json()))
    mid = draw(_ids())
    method = draw(st.sampled_from(MM_METHODS))
    msg: Any
    if method == "registerModel":
        msg = mm.RegisterModelRequest(modelId=mid, modelInfo=info, lastUsedTime=draw(st.integers(0, (1 << 64) - 1)))
    elif method == "unregisterModel":
        msg = mm.UnregisterModelRequest(modelId=mid)
    elif method == "getModelStatus":
        msg = mm.GetStatusRequest(modelId=mid)
    elif method == "ensureLoaded":
        msg = mm.EnsureLoadedRequest(modelId=mid, lastUsedTime=draw(st.integers(0, (1 << 64) - 1)))
    elif method == "setVModel":
        msg = mm.SetVModelRequest(
            vModelId=mid, targetModelId=draw(st.one_of(st.just(GOOD_MODEL), _ids())), owner=draw(st.text(max_size=10)),
            updateOnly=draw(st.booleans()), autoDeleteTargetModel=draw(st.booleans()), force=draw(st.booleans()),
            expectedTargetModelId=draw(st.one_of(st.just(""), _ids())),
        )
        if draw(st.booleans()):
            msg.modelInfo.CopyFrom(info)
    elif method == "deleteVModel":
        msg = mm.DeleteVModelRequest(vModelId=mid, owner=draw(st.text(max_size=10)))
    else:
        msg = mm.GetVModelStatusRequest(vModelId=mid, owner=draw(st.text(max_size=10)))
    return method, msg


@fuzz_settings(80)
@given(call=mm_calls(), instance=st.integers(0, 1))
def test_management_hostile_fields(mesh: Mesh, canary: Canary, call: tuple[str, Any], instance: int) -> None:
    method, msg = call
    assume(getattr(msg, "modelId", None) != GOOD_MODEL and getattr(msg, "vModelId", None) != GOOD_MODEL)
    code, _, details = _call(mesh, mesh.grpc[instance], f"/mmesh.ModelMesh/{method}", msg.SerializeToString())
    if code != grpc.StatusCode.OK:
        _assert_client_fault(code, details, (method, msg))


# ---------------------------------------------------------------- size limit


def test_64mb_and_limit_boundary_grpc(mesh: Mesh, canary: Canary) -> None:
    """64 MiB requests are RESOURCE_EXHAUSTED under the configured limit; a request just under it is served."""
    big = pb.ModelInferRequest(model_name=GOOD_MODEL)
    big.inputs.add(name="x", datatype="FP32", shape=[1 << 22, 4])
    big.raw_input_contents.append(bytes(64 << 20))
    payload = big.SerializeToString()
    for address in mesh.grpc:
        code, _, details = _call(mesh, address, INFER, payload)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    rows = (mesh.limit_bytes - 1024) // 16
    x = np.ones((rows, 4), np.float32)
    near = pb.ModelInferRequest(model_name=GOOD_MODEL)
    near.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    near.raw_input_contents.append(x.tobytes())
    assert mesh.limit_bytes - 1024 < near.ByteSize() <= mesh.limit_bytes
    for address in mesh.grpc:  # local and forwarded: the forward channel honours the same limit
        code, body, details = _call(mesh, address, INFER, near.SerializeToString())
        assert code == grpc.StatusCode.OK, (code, details)
        assert list(pb.ModelInferResponse.FromString(body).outputs[0].shape) == [rows, 3]
    req, _ = good_request()
    assert _call(mesh, mesh.grpc[0], INFER, req.SerializeToString())[0] == grpc.StatusCode.OK
