"""Pure converters between the wire (V2 protobuf, V2 JSON, mmesh protobuf) and domain types.

Generated ``_pb2`` types appear here and in the gRPC edge only. Each converter is a
pure function with a round-trip test (tests/mesh/test_codec.py).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import (
    V2_CONTENTS_FIELD,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestedOutput,
    TensorMetadata,
    list_to_raw,
    raw_to_list,
    v2_request_from_pb,
    v2_response_to_pb,
)

from ._errors import InvalidRequest

CONTENTS_FIELD = V2_CONTENTS_FIELD  # V2 typed-contents field per datatype


# ---------------------------------------------------------------- parameters


def params_to_pb(params: Mapping[str, Any], target: Any) -> None:
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value >= 1 << 63:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif value is not None:
            p.string_param = str(value)


# ---------------------------------------------------------------- V2 gRPC


def parse_infer_request(payload: bytes) -> pb.ModelInferRequest:
    """A serialized ModelInferRequest, parsed; bytes that are not one are INVALID_ARGUMENT."""
    try:
        return pb.ModelInferRequest.FromString(payload)
    except DecodeError as exc:  # e.g. a string field that is not UTF-8, a broken nested message
        raise InvalidRequest(f"malformed ModelInferRequest: {exc}") from exc


def parse_infer_response(payload: bytes) -> pb.ModelInferResponse:
    """A peer's serialized ModelInferResponse (a peer we trust to send valid ones)."""
    return pb.ModelInferResponse.FromString(payload)


def infer_request_from_pb(req: pb.ModelInferRequest) -> InferRequest:
    return v2_request_from_pb(req)


def infer_request_to_pb(request: InferRequest) -> pb.ModelInferRequest:
    """Domain -> wire (used by clients, tests and the runtime bridge); raw when given."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    params_to_pb(request.parameters, msg.parameters)
    use_raw = any(i.raw is not None for i in request.inputs)
    for i in request.inputs:
        t = msg.inputs.add(name=i.name, datatype=i.datatype, shape=list(i.shape))
        params_to_pb(i.parameters, t.parameters)
        if use_raw:
            if i.raw is None:
                raise InvalidRequest(f"input '{i.name}': mix of raw and typed inputs")
            msg.raw_input_contents.append(i.raw)
        elif i.contents is not None:
            getattr(t.contents, CONTENTS_FIELD[i.datatype]).extend(i.contents)
    for o in request.outputs:
        out = msg.outputs.add(name=o.name)
        params_to_pb(o.parameters, out.parameters)
    return msg


infer_response_to_pb = v2_response_to_pb


def metadata_to_pb(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=meta.name, versions=list(meta.versions), platform=meta.platform)
    for t in meta.inputs:
        msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    for t in meta.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return msg


def infer_response_from_pb(msg: pb.ModelInferResponse) -> InferResponse:
    """Wire -> domain for a forwarded (remote) answer: typed contents become raw bytes, so that
    :func:`infer_response_to_json` renders it as :func:`pb_response_to_json` would."""
    raws = msg.raw_output_contents
    outputs = []
    for idx, o in enumerate(msg.outputs):
        if raws:
            raw = raws[idx]
        else:
            raw = list_to_raw(o.datatype, list(getattr(o.contents, CONTENTS_FIELD.get(o.datatype, "fp32_contents"))))
        outputs.append(InferOutput(name=o.name, datatype=o.datatype, shape=tuple(o.shape), raw=raw))
    return InferResponse(model_name=msg.model_name, outputs=tuple(outputs), id=msg.id, model_version=msg.model_version)


def metadata_request_bytes(name: str) -> bytes:
    """A serialized ModelMetadataRequest (what the router sends a peer for a model's metadata)."""
    return pb.ModelMetadataRequest(name=name).SerializeToString()


def metadata_from_pb_bytes(raw: bytes) -> ModelMetadata:
    """A peer's serialized ModelMetadataResponse -> domain."""
    msg = pb.ModelMetadataResponse.FromString(raw)
    return ModelMetadata(
        name=msg.name,
        platform=msg.platform,
        versions=tuple(msg.versions),
        inputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.inputs),
        outputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.outputs),
    )


# ---------------------------------------------------------------- V2 JSON


def _flatten(data: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 64:
        raise InvalidRequest("tensor data nested deeper than 64 levels")
    if isinstance(data, list):
        for item in data:
            if isinstance(item, list):
                _flatten(item, out, depth + 1)
            else:
                out.append(item)
    else:
        out.append(data)


def _json_bytes_item(name: str, item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, dict) and "b64" in item:
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise InvalidRequest(f"input '{name}': invalid base64 BYTES element") from exc
    raise InvalidRequest(f"input '{name}': BYTES elements must be strings or {{\"b64\": ...}}")


def infer_request_from_json(model_name: str, body: Any) -> InferRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("request must have a non-empty 'inputs' list")
    inputs = []
    for n, t in enumerate(raw_inputs):
        if not isinstance(t, dict):
            raise InvalidRequest(f"inputs[{n}] must be an object")
        name = t.get("name")
        datatype = t.get("datatype")
        shape = t.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"inputs[{n}] needs a string 'name'")
        if not isinstance(datatype, str):
            raise InvalidRequest(f"input '{name}' needs a string 'datatype'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidRequest(f"input '{name}' needs 'shape' as a list of integers")
        if "data" not in t:
            raise InvalidRequest(f"input '{name}' has no 'data'")
        flat: Any = []
        if isinstance(t["data"], np.ndarray):  # already read as a flat array (mesh._json_tensors)
            flat = t["data"]
        else:
            _flatten(t["data"], flat)
        if datatype == "BYTES":
            flat = [_json_bytes_item(name, x) for x in flat]
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest(f"input '{name}': 'parameters' must be an object")
        inputs.append(
            InferInput(name=name, datatype=datatype, shape=tuple(shape), contents=flat, parameters=params)
        )
    outputs: list[RequestedOutput] = []
    for n, o in enumerate(body.get("outputs") or []):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidRequest(f"outputs[{n}] needs a string 'name'")
        outputs.append(RequestedOutput(name=o["name"], parameters=o.get("parameters") or {}))
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("'parameters' must be an object")
    req_id = body.get("id")
    if isinstance(req_id, dict | list):
        raise InvalidRequest("'id' must be a string")
    return InferRequest(
        model_name=model_name,
        id=str(req_id) if req_id is not None else "",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        parameters=params,
    )


_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_value(datatype: str, values: Sequence[Any]) -> list[Any]:
    if datatype in _FLOAT_TYPES:
        floats = list(values)
        if not all(map(math.isfinite, floats)):
            # JSON has no NaN or infinity: write them as the protobuf JSON mapping does
            return [v if math.isfinite(v) else _NON_FINITE[repr(float(v))] for v in floats]
        return floats
    if datatype != "BYTES":
        return list(values)
    out: list[Any] = []
    for v in values:
        if isinstance(v, bytes | bytearray):
            try:
                out.append(bytes(v).decode("utf-8"))
            except UnicodeDecodeError:
                out.append({"b64": base64.b64encode(bytes(v)).decode()})
        else:
            out.append(v)
    return out


def infer_response_to_json(resp: InferResponse) -> dict[str, Any]:
    return {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "id": resp.id,
        "outputs": [
            {
                "name": o.name,
                "datatype": o.datatype,
                "shape": list(o.shape),
                "data": _json_value(o.datatype, raw_to_list(o.datatype, o.shape, o.raw)),
            }
            for o in resp.outputs
        ],
    }


def pb_response_to_json(msg: pb.ModelInferResponse) -> dict[str, Any]:
    """A forwarded (remote) gRPC answer rendered as V2 JSON."""
    outputs = []
    raws = msg.raw_output_contents
    for idx, o in enumerate(msg.outputs):
        if raws:
            data: Iterable[Any] = raw_to_list(o.datatype, tuple(o.shape), raws[idx])
        else:
            data = list(getattr(o.contents, CONTENTS_FIELD.get(o.datatype, "fp32_contents")))
        outputs.append(
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape), "data": _json_value(o.datatype, list(data))}
        )
    return {"model_name": msg.model_name, "model_version": msg.model_version, "id": msg.id, "outputs": outputs}


def metadata_to_json(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
    }


def metadata_from_pb(msg: pb.ModelMetadataResponse) -> dict[str, Any]:
    return {
        "name": msg.name,
        "versions": list(msg.versions),
        "platform": msg.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in msg.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in msg.outputs],
    }
