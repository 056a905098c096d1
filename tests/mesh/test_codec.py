"""Round trips of the pure V2 converters (gRPC protobuf and JSON <-> domain)."""

from __future__ import annotations

import pytest

from mesh import _codec
from mesh._errors import InvalidRequest
from runtime_adapters import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    RequestedOutput,
)


def test_grpc_request_round_trip_raw_and_typed() -> None:
    raw = InferRequest(
        model_name="m",
        id="7",
        inputs=(InferInput("a", "FP32", (1, 2), raw=b"\x00" * 8, parameters={"p": 3}),),
        outputs=(RequestedOutput("y"),),
        parameters={"flag": True, "ratio": 0.5, "name": "x"},
    )
    assert _codec.infer_request_from_pb(_codec.infer_request_to_pb(raw)) == raw
    typed = InferRequest(model_name="m", inputs=(InferInput("b", "INT64", (3,), contents=[1, 2, 3]),))
    assert _codec.infer_request_from_pb(_codec.infer_request_to_pb(typed)) == typed


def test_grpc_response_to_json() -> None:
    resp = InferResponse(model_name="m", id="1", outputs=(InferOutput("y", "FP32", (2,), raw=b"\x00\x00\x80?\x00\x00\x00@"),))
    msg = _codec.infer_response_to_pb(resp)
    assert _codec.pb_response_to_json(msg) == _codec.infer_response_to_json(resp)
    assert _codec.infer_response_to_json(resp)["outputs"][0]["data"] == [1.0, 2.0]


def test_grpc_raw_count_mismatch_is_rejected() -> None:
    msg = _codec.infer_request_to_pb(InferRequest(model_name="m", inputs=(InferInput("a", "FP32", (1,), raw=b"\x00" * 4),)))
    msg.raw_input_contents.append(b"extra")
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        _codec.infer_request_from_pb(msg)


def test_json_request_flattens_and_decodes_bytes() -> None:
    req = _codec.infer_request_from_json(
        "m",
        {"id": 5, "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["hi", {"b64": "AAE="}]},
        ], "outputs": [{"name": "y"}]},
    )
    assert req.id == "5"
    assert req.inputs[0].contents == [1, 2, 3, 4]
    assert req.inputs[1].contents == [b"hi", b"\x00\x01"]
    assert req.outputs == (RequestedOutput("y"),)


@pytest.mark.parametrize(
    "body",
    [[], {"inputs": []}, {"inputs": [{"name": "x"}]}, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
     {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}],
)
def test_json_request_errors(body: object) -> None:
    with pytest.raises(InvalidRequest):
        _codec.infer_request_from_json("m", body)
