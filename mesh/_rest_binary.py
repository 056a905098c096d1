"""V2 REST with the binary tensor data extension (Triton / KServe), both directions.

A request whose ``Inference-Header-Content-Length`` header is N carries its JSON inference header
in the first N bytes of the body and, after it, the raw data of every input that declares
``"parameters": {"binary_data_size": S}`` (S bytes each, in input order; little-endian, row
major; BYTES elements 4-byte length-prefixed). Such inputs become :class:`InferInput` with
``raw`` set, so that a request for a model on another instance is forwarded as ``raw_input_contents``
with no JSON round trip of its data.

An output is answered in binary when its requested output says ``"binary_data": true``, or, for
outputs that do not say, when the request's ``"binary_data_output"`` parameter is true (tritonclient
sends it when it names no outputs). The answer then carries ``Inference-Header-Content-Length``
and ``Content-Type: application/octet-stream``, its JSON header first, then the binary outputs.

Pure converters: no I/O, no numpy (tensors stay bytes or flat lists here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import InferInput, InferOutput, InferRequest, InferResponse, list_to_raw

from . import _codec
from ._errors import InvalidRequest

HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_OUTPUT = "binary_data_output"
OCTET_STREAM = "application/octet-stream"
JSON_TYPE = "application/json"


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None: the body is all JSON)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():  # also refuses '-1', '+3', '1e3', '' and non-ASCII digits' lookalikes
        raise InvalidRequest(f"Inference-Header-Content-Length must be a non-negative integer, got {value[:40]!r}")
    n = int(text)
    if n > body_length:
        raise InvalidRequest(f"Inference-Header-Content-Length {n} is past the end of the {body_length}-byte body")
    return n


@dataclass(frozen=True)
class RestInferRequest:
    """A decoded V2 REST request and how its answer is to be written."""

    request: InferRequest
    binary_outputs: frozenset[str]  # outputs explicitly asked in binary
    json_outputs: frozenset[str]  # outputs explicitly asked in JSON
    binary_by_default: bool  # for every output the request does not name

    def wants_binary(self, output: str) -> bool:
        if output in self.binary_outputs:
            return True
        if output in self.json_outputs:
            return False
        return self.binary_by_default


def _param_bool(params: Any, key: str, where: str) -> bool | None:
    if not isinstance(params, Mapping) or key not in params:
        return None
    value = params[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: parameter '{key}' must be true or false")
    return value


def decode_request(model_name: str, body: bytes, header_length: str | None) -> RestInferRequest:
    """A V2 REST body (all JSON, or JSON header + binary tensors) → domain request."""
    n = parse_header_length(header_length, len(body))
    head = body if n is None else body[:n]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = "the JSON inference header" if n is not None else "request body"
        raise InvalidRequest(f"{what} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object")
    binary = memoryview(body)[n:] if n is not None else memoryview(b"")
    raw_by_input: dict[int, bytes] = {}
    raw_inputs = doc.get("inputs")
    if isinstance(raw_inputs, list):
        offset = 0
        stripped = []
        for k, t in enumerate(raw_inputs):
            params = t.get("parameters") if isinstance(t, dict) else None
            if isinstance(params, Mapping) and BINARY_SIZE in params:
                size = params[BINARY_SIZE]
                name = t.get("name", f"inputs[{k}]")
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise InvalidRequest(f"input '{name}': '{BINARY_SIZE}' must be a non-negative integer")
                if "data" in t:
                    raise InvalidRequest(f"input '{name}' has both 'data' and '{BINARY_SIZE}'")
                if n is None:
                    raise InvalidRequest(
                        f"input '{name}' declares binary data but the request has no Inference-Header-Content-Length header"
                    )
                if offset + size > len(binary):
                    raise InvalidRequest(
                        f"input '{name}': {BINARY_SIZE} {size} runs past the binary data "
                        f"({len(binary) - offset} bytes left)"
                    )
                raw_by_input[k] = bytes(binary[offset : offset + size])
                offset += size
                # the JSON decoder wants 'data': a placeholder, replaced by the raw bytes below
                t = {**t, "data": [], "parameters": {p: v for p, v in params.items() if p != BINARY_SIZE}}
            stripped.append(t)
        if offset != len(binary):
            raise InvalidRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input's {BINARY_SIZE}")
        doc = {**doc, "inputs": stripped}
    elif n is not None and len(binary):
        raise InvalidRequest("binary data sent without inputs that declare it")
    request = _codec.infer_request_from_json(model_name, doc)
    if raw_by_input:
        inputs = tuple(
            InferInput(name=i.name, datatype=i.datatype, shape=i.shape, raw=raw_by_input[k], parameters=i.parameters)
            if k in raw_by_input
            else i
            for k, i in enumerate(request.inputs)
        )
        request = InferRequest(
            model_name=request.model_name, inputs=inputs, outputs=request.outputs, id=request.id,
            model_version=request.model_version, parameters=request.parameters,
        )
    binary_outs: set[str] = set()
    json_outs: set[str] = set()
    for k, o in enumerate(doc.get("outputs") or []):
        flag = _param_bool(o.get("parameters"), BINARY_DATA, f"outputs[{k}]")
        if flag is True:
            binary_outs.add(o["name"])
        elif flag is False:
            json_outs.add(o["name"])
    default = _param_bool(doc.get("parameters"), BINARY_OUTPUT, "request") or False
    # the extension's parameters are for the transport, not the model
    params = {k: v for k, v in request.parameters.items() if k != BINARY_OUTPUT}
    outputs = tuple(
        type(o)(name=o.name, parameters={k: v for k, v in o.parameters.items() if k != BINARY_DATA}) for o in request.outputs
    )
    request = InferRequest(
        model_name=request.model_name, inputs=request.inputs, outputs=outputs, id=request.id,
        model_version=request.model_version, parameters=params,
    )
    return RestInferRequest(request, frozenset(binary_outs), frozenset(json_outs), default)


def encode_request(request: InferRequest, *, binary_outputs: bool = True) -> tuple[bytes, dict[str, str]]:
    """Domain request → V2 REST body with every input in binary (what tritonclient sends); for
    clients, tests and benchmarks. Returns (body, headers)."""
    inputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for i in request.inputs:
        raw = i.raw if i.raw is not None else list_to_raw(i.datatype, list(() if i.contents is None else i.contents))
        chunks.append(raw)
        inputs.append({"name": i.name, "datatype": i.datatype, "shape": list(i.shape),
                       "parameters": {**dict(i.parameters), BINARY_SIZE: len(raw)}})
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    params = dict(request.parameters)
    if request.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {**o.parameters, BINARY_DATA: binary_outputs}} for o in request.outputs]
    elif binary_outputs:
        params[BINARY_OUTPUT] = True
    if params:
        doc["parameters"] = params
    head = json.dumps(doc, separators=(",", ":")).encode()
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head)), "content-type": OCTET_STREAM}


def encode_response(resp: InferResponse, wants_binary: Any = None) -> tuple[bytes, dict[str, str]]:
    """Domain answer → V2 REST body and headers. ``wants_binary(name) -> bool`` (None: all JSON)."""
    outputs = []
    chunks: list[bytes] = []
    for o in resp.outputs:
        if wants_binary is not None and wants_binary(o.name):
            outputs.append({"name": o.name, "datatype": o.datatype, "shape": list(o.shape), "parameters": {BINARY_SIZE: len(o.raw)}})
            chunks.append(o.raw)
        else:
            outputs.append(_codec.infer_response_to_json(InferResponse(model_name=resp.model_name, outputs=(o,)))["outputs"][0])
    doc = {"model_name": resp.model_name, "model_version": resp.model_version, "id": resp.id, "outputs": outputs}
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return head, {"content-type": JSON_TYPE}
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head)), "content-type": OCTET_STREAM}


def decode_response(body: bytes, header_length: str | None) -> dict[str, Any]:
    """V2 REST answer → JSON document whose binary outputs carry ``raw`` bytes (for tests and clients)."""
    n = parse_header_length(header_length, len(body))
    doc: dict[str, Any] = json.loads(body if n is None else body[:n])
    offset = n or 0
    for o in doc.get("outputs", []):
        size = (o.get("parameters") or {}).get(BINARY_SIZE)
        if size is not None:
            o["raw"] = body[offset : offset + size]
            offset += size
    return doc


def response_from_pb(msg: pb.ModelInferResponse) -> InferResponse:
    """A forwarded gRPC answer → domain (outputs as raw bytes, whichever way the holder wrote them)."""
    raws = msg.raw_output_contents
    outputs = []
    for k, o in enumerate(msg.outputs):
        if raws:
            raw = raws[k]
        else:
            field = _codec.CONTENTS_FIELD.get(o.datatype, "fp32_contents")
            raw = list_to_raw(o.datatype, list(getattr(o.contents, field)))
        outputs.append(InferOutput(name=o.name, datatype=o.datatype, shape=tuple(o.shape), raw=raw))
    return InferResponse(model_name=msg.model_name, outputs=tuple(outputs), id=msg.id, model_version=msg.model_version)
