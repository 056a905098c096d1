"""The REST edge's inference protocols besides plain V2 JSON: the V2 binary tensor extension and KServe V1.

Both only translate, with the pure converters of :mod:`mesh._rest_binary` and :mod:`mesh._v1`,
and call the same :class:`~mesh._dataplane.DataPlane` as every other route. A binary request
keeps its tensors as bytes (``InferInput.raw``): served locally they go to the runtime as they
are, for a model held elsewhere they become ``raw_input_contents`` of the forwarded gRPC call
with no JSON round trip. Big bodies are decoded and encoded off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from runtime_adapters import InferInput, InferRequest, InferResponse, list_to_raw

from ._auth import Action
from ._dataplane import DataPlane, RequestContext
from ._errors import InvalidRequest
from ._json_tensors import loads_infer_request
from ._paging import PageRequest, page_of
from ._rest_binary import (
    BINARY_DATA,
    BINARY_OUTPUT,
    RestInferRequest,
    decode_request,
    encode_response,
)
from ._v1 import request_from_v1, response_to_v1

INLINE_LIMIT = 64 << 10  # decode / encode bigger bodies off the event loop


def _decode(name: str, body: bytes | bytearray, header_length: str | None) -> RestInferRequest:
    if header_length is None:  # all JSON: the bounded decoder (tensors straight into arrays)
        return _transport_flags(loads_infer_request(name, body))
    try:
        rr = decode_request(name, bytes(body), header_length)
    except RecursionError as exc:
        raise InvalidRequest("request body is nested too deeply") from exc
    return RestInferRequest(all_raw_if_mixed(rr.request), rr.binary_outputs, rr.json_outputs, rr.binary_by_default)


def _flag(params: Any, key: str, where: str) -> bool | None:
    if key not in params:
        return None
    if not isinstance(params[key], bool):
        raise InvalidRequest(f"{where}: parameter '{key}' must be true or false")
    return bool(params[key])


def _transport_flags(request: InferRequest) -> RestInferRequest:
    """An all-JSON request may still ask for binary outputs (``binary_data`` per output,
    ``binary_data_output`` for the rest): read them, and take them off what the model sees."""
    binary: set[str] = set()
    as_json: set[str] = set()
    outputs = []
    for k, o in enumerate(request.outputs):
        flag = _flag(o.parameters, BINARY_DATA, f"outputs[{k}]")
        if flag is not None:
            (binary if flag else as_json).add(o.name)
            o = type(o)(name=o.name, parameters={p: v for p, v in o.parameters.items() if p != BINARY_DATA})
        outputs.append(o)
    default = _flag(request.parameters, BINARY_OUTPUT, "request") or False
    if binary or as_json or BINARY_OUTPUT in request.parameters:
        request = InferRequest(
            model_name=request.model_name, inputs=request.inputs, outputs=tuple(outputs), id=request.id,
            model_version=request.model_version, parameters={k: v for k, v in request.parameters.items() if k != BINARY_OUTPUT},
        )
    return RestInferRequest(request, frozenset(binary), frozenset(as_json), default)


def all_raw_if_mixed(request: InferRequest) -> InferRequest:
    """A request mixing binary and JSON inputs, with every input as raw bytes (the gRPC wire has
    either ``raw_input_contents`` for all inputs or typed contents for all)."""
    raws = [i.raw is not None for i in request.inputs]
    if all(raws) or not any(raws):
        return request
    inputs = tuple(
        i if i.raw is not None
        else InferInput(name=i.name, datatype=i.datatype, shape=i.shape, raw=list_to_raw(i.datatype, list(() if i.contents is None else i.contents)),
                        parameters=i.parameters)
        for i in request.inputs
    )
    return InferRequest(model_name=request.model_name, inputs=inputs, outputs=request.outputs, id=request.id,
                        model_version=request.model_version, parameters=request.parameters)


def _encode(rr: RestInferRequest, resp: InferResponse) -> tuple[bytes, dict[str, str]]:
    return encode_response(resp, rr.wants_binary)


async def v2_infer(
    dataplane: DataPlane, name: str, body: bytes | bytearray, header_length: str | None, ctx: RequestContext
) -> tuple[bytes, dict[str, str]]:
    """One V2 REST inference (JSON or binary, either way): body in, (body, headers) out."""
    if len(body) > INLINE_LIMIT:
        rr = await asyncio.to_thread(_decode, name, body, header_length)
    else:
        rr = _decode(name, body, header_length)
    result = await dataplane.infer(name, rr.request, ctx)
    resp = InferResponse(model_name=name, outputs=result.outputs, id=rr.request.id, model_version=result.model_version)
    if sum(len(o.raw) for o in resp.outputs) > INLINE_LIMIT:
        return await asyncio.to_thread(_encode, rr, resp)
    return _encode(rr, resp)


def install_v1(
    app: FastAPI,
    dataplane: DataPlane,
    *,
    read_json: Callable[[Request], Awaitable[Any]],
    context: Callable[[Request], RequestContext],
) -> None:
    """KServe V1: ``POST /v1/models/{name}:predict``, readiness ``GET /v1/models/{name}``, the list
    ``GET /v1/models``. Errors are KServe's ``{"error": message}`` (the edge's one error handler)."""
    mirror = dataplane.router.mirror

    @app.get("/v1/models")
    async def v1_models(request: Request, limit: str = "", page_token: str = "") -> dict[str, Any]:
        """The names of the caller's models and vModels (scoped, then paged: :mod:`mesh._paging`)."""
        principal = context(request).principal
        principal.require(Action.READ, "models")
        page = PageRequest.parse("v1/models", limit, page_token)
        names = {n for n, m in mirror.models.items.items() if principal.sees(m.tenant)}
        names.update(n for n, v in mirror.vmodels.items.items() if principal.sees(v.tenant))
        found = page_of(names, page)
        return {"models": found.items, "next_page_token": found.next_page_token}

    @app.get("/v1/models/{name}")
    async def v1_ready(name: str, request: Request) -> JSONResponse:
        ready = await dataplane.model_ready(name, context(request))  # NOT_FOUND: 404 {"error"}
        # KServe answers a model that is not ready with 503 (its SDK reads that as "not ready")
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @app.post("/v1/models/{name}:predict")
    async def v1_predict(name: str, request: Request) -> JSONResponse:
        with dataplane.measure(name, RequestContext()) as timer:
            body = await read_json(request)
            ctx = context(request)
            meta = await dataplane.model_metadata(name, ctx)  # decides how instances map to tensors
            resp = await dataplane.infer(name, request_from_v1(name, body, meta), ctx)
            out = JSONResponse(response_to_v1(resp))
            timer.response_bytes = len(out.body)
            return out
