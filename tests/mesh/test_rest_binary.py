"""V2 REST binary tensor extension and KServe V1 converters, checked against tritonclient's own
encoder/decoder (tritonclient.http.InferenceServerClient.generate_request_body / parse_response_body)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as th

from mesh._errors import InvalidRequest
from mesh._rest_binary import (
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    response_from_pb,
)
from mesh._v1 import request_from_v1, response_to_v1
from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    TensorMetadata,
    raw_to_list,
)


def _triton_body(arrays: dict[str, tuple[np.ndarray, str, bool]], outputs: list[tuple[str, bool]] | None = None) -> tuple[bytes, str | None]:
    inputs = []
    for name, (arr, datatype, binary) in arrays.items():
        i = th.InferInput(name, list(arr.shape), datatype)
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    outs = [th.InferRequestedOutput(n, binary_data=b) for n, b in outputs] if outputs is not None else None
    body, json_size = th.InferenceServerClient.generate_request_body(inputs, outputs=outs, request_id="r1")
    return body, (str(json_size) if json_size is not None else None)


def test_tritonclient_binary_and_mixed_inputs_decode_exactly() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.array([[1, -2]], dtype=np.int64)
    words = np.array([b"hello", "wörld".encode(), b""], dtype=np.object_)
    body, hlen = _triton_body({"x": (x, "FP32", True), "ids": (ids, "INT64", False), "w": (words, "BYTES", True)})
    assert hlen is not None
    got = decode_request("m", body, hlen)
    r = got.request
    assert (r.model_name, r.id) == ("m", "r1")
    by = {i.name: i for i in r.inputs}
    assert by["x"].raw == x.tobytes() and by["x"].shape == (3, 4)
    assert by["ids"].raw is None and list(by["ids"].contents or ()) == [1, -2]
    assert raw_to_list("BYTES", (3,), by["w"].raw or b"") == [b"hello", "wörld".encode(), b""]
    assert "binary_data_size" not in by["x"].parameters
    # tritonclient named no outputs: it asks for every output in binary
    assert got.binary_by_default and got.wants_binary("anything")
    assert "binary_data_output" not in r.parameters


def test_per_output_binary_choice_and_json_body_without_header() -> None:
    x = np.ones((1, 4), dtype=np.float32)
    body, hlen = _triton_body({"x": (x, "FP32", False)}, outputs=[("a", True), ("b", False)])
    assert hlen is None  # all JSON: tritonclient sends no header
    got = decode_request("m", body, hlen)
    assert got.wants_binary("a") and not got.wants_binary("b") and not got.wants_binary("c")
    assert [o.name for o in got.request.outputs] == ["a", "b"]
    assert all("binary_data" not in o.parameters for o in got.request.outputs)


def test_responses_parse_in_tritonclient_binary_json_and_mixed() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, 8], dtype=np.int32)
    resp = InferResponse(
        model_name="m", id="r1",
        outputs=(InferOutput("a", "FP32", (2, 3), a.tobytes()), InferOutput("b", "INT32", (2,), b.tobytes())),
    )
    for wants in (lambda n: True, lambda n: n == "a", None):
        body, headers = encode_response(resp, wants)
        hl = headers.get("inference-header-content-length")
        result = th.InferenceServerClient.parse_response_body(body, header_length=int(hl) if hl else None)
        assert np.array_equal(result.as_numpy("a"), a) and np.array_equal(result.as_numpy("b"), b)
        assert (headers["content-type"] == "application/octet-stream") == (wants is not None)
        assert decode_response(body, hl)["outputs"][0]["name"] == "a"


def test_own_encoder_round_trips() -> None:
    req = InferRequest(model_name="m", inputs=(InferInput("x", "FP32", (2,), contents=[1.5, -2.0]),), id="q")
    body, headers = encode_request(req)
    back = decode_request("m", body, headers["inference-header-content-length"]).request
    assert back.inputs[0].raw == np.array([1.5, -2.0], dtype=np.float32).tobytes() and back.id == "q"


@pytest.mark.parametrize(
    ("header", "message"),
    [("-1", "non-negative integer"), ("abc", "non-negative integer"), ("1e3", "non-negative integer"), ("", "non-negative integer"),
     ("99999", "past the end")],
)
def test_bad_header_lengths_are_clear_400s(header: str, message: str) -> None:
    body, _ = _triton_body({"x": (np.ones(4, dtype=np.float32), "FP32", True)})
    with pytest.raises(InvalidRequest, match=message):
        decode_request("m", body, header)


def test_binary_sizes_must_match_the_data() -> None:
    head = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}
    h = json.dumps(head).encode()
    with pytest.raises(InvalidRequest, match="runs past the binary data"):
        decode_request("m", h + b"\0" * 4, str(len(h)))
    with pytest.raises(InvalidRequest, match="not claimed"):
        decode_request("m", h + b"\0" * 12, str(len(h)))
    with pytest.raises(InvalidRequest, match="no Inference-Header-Content-Length"):
        decode_request("m", h, None)
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": -8}}]}
    hb = json.dumps(bad).encode()
    with pytest.raises(InvalidRequest, match="non-negative integer"):
        decode_request("m", hb, str(len(hb)))
    both = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], "parameters": {"binary_data_size": 8}}]}
    hb = json.dumps(both).encode()
    with pytest.raises(InvalidRequest, match="both 'data'"):
        decode_request("m", hb + b"\0" * 8, str(len(hb)))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        decode_request("m", b"\xff\xfe" + b"\0" * 8, "2")


def test_forwarded_answer_in_either_form_becomes_raw() -> None:
    msg = pb.ModelInferResponse(model_name="m", id="i")
    o = msg.outputs.add(name="y", datatype="FP32", shape=[2])
    o.contents.fp32_contents.extend([1.0, 2.0])
    raw = pb.ModelInferResponse(model_name="m", id="i")
    raw.outputs.add(name="y", datatype="FP32", shape=[2])
    raw.raw_output_contents.append(np.array([1.0, 2.0], dtype=np.float32).tobytes())
    assert response_from_pb(msg) == response_from_pb(raw)


META1 = ModelMetadata(name="m", versions=(), platform="onnx", inputs=(TensorMetadata("x", "FP32", (-1, 3)),), outputs=(TensorMetadata("y", "FP32", (-1, 1)),))


def test_v1_single_input_and_output() -> None:
    req = request_from_v1("m", {"instances": [[1, 2, 3], [4, 5, 6]]}, META1)
    assert req.inputs[0].shape == (2, 3) and list(req.inputs[0].contents or ()) == [1, 2, 3, 4, 5, 6]
    assert request_from_v1("m", {"instances": [{"x": [1, 2, 3]}]}, META1).inputs[0].shape == (1, 3)
    resp = InferResponse("m", (InferOutput("y", "FP32", (2, 1), np.array([[0.5], [1.5]], dtype=np.float32).tobytes()),))
    assert response_to_v1(resp) == {"predictions": [[0.5], [1.5]]}


def test_v1_named_inputs_and_several_outputs() -> None:
    meta = ModelMetadata("m", (), "onnx", (TensorMetadata("a", "FP32", (-1,)), TensorMetadata("b", "INT64", (-1, 2))), ())
    req = request_from_v1("m", {"instances": [{"a": 1.0, "b": [1, 2]}, {"a": 2.0, "b": [3, 4]}]}, meta)
    assert [(i.name, i.shape) for i in req.inputs] == [("a", (2,)), ("b", (2, 2))]
    with pytest.raises(InvalidRequest, match="missing inputs"):
        request_from_v1("m", {"instances": [{"a": 1.0}]}, meta)
    with pytest.raises(InvalidRequest, match="keyed by them"):
        request_from_v1("m", {"instances": [[1, 2]]}, meta)
    resp = InferResponse("m", (
        InferOutput("p", "FP32", (2,), np.array([0.1, 0.9], dtype=np.float32).tobytes()),
        InferOutput("label", "INT64", (2,), np.array([0, 1], dtype=np.int64).tobytes()),
    ))
    preds = response_to_v1(resp)["predictions"]
    assert [p["label"] for p in preds] == [0, 1] and len(preds) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [({"instances": []}, "non-empty"), ([1, 2], "JSON object"), ({"instances": [[1, 2], [3]]}, "ragged"),
     ({"instances": [["a", "b", "c"]]}, "must hold numbers"), ({"instances": [{"z": 1}]}, "one key")],
)
def test_v1_bad_bodies(body: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        request_from_v1("m", body, META1)
