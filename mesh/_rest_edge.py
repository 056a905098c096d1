"""The REST edge: V2 inference over HTTP (JSON and the binary tensor extension), KServe V1
(:mod:`mesh._rest_protocols`) and a JSON management API under ``/api/v1`` (FastAPI).

It only translates: V2 routes call the :class:`~mesh._dataplane.DataPlane` (the same one the
gRPC edge calls), management routes :class:`~mesh._management.Management`. Built per instance
by :func:`build_rest_app` (no module-level app). Errors go through one exception handler that
uses the same status table as gRPC.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import make_asgi_app

from . import _codec
from ._auth import Action
from ._cluster_mirror import ClusterMirror
from ._dashboard import ClusterOverview, install
from ._dataplane import DataPlane, RequestContext
from ._errors import (
    ERROR_ROOTS,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    TenantNotFound,
    status_for,
)
from ._management import Management, ModelInfoSpec, ModelStatus, VModelStatus, parse_bytes
from ._metrics import Metrics
from ._model_status import ModelState
from ._rest_binary import HEADER_LENGTH
from ._rest_fast import V2InferFastPath
from ._rest_protocols import install_v1, v2_infer
from ._security import AuthMiddleware, rest_principal
from ._traffic_split import SESSION_HEADER
from ._validation import parse_rate
from ._vmodel_split import install_split_routes

_JSON_INLINE_LIMIT = 64 << 10  # parse bigger bodies off the event loop


def _model_status_json(st: ModelStatus) -> dict[str, Any]:
    return {
        "status": st.status,
        "errors": list(st.errors),
        "copies": [{"location": c.location, "status": c.status, "time": c.time_ms} for c in st.copies],
    }


def _vmodel_status_json(st: VModelStatus) -> dict[str, Any]:
    return {
        "status": st.status,
        "activeModelId": st.active_model_id,
        "targetModelId": st.target_model_id,
        "owner": st.owner,
        "activeModelStatus": _model_status_json(st.active_status) if st.active_status else None,
        "targetModelStatus": _model_status_json(st.target_status) if st.target_status else None,
    }


async def _read_body(request: Request, limit: int) -> bytearray:
    """The body, read as it streams in and refused (413) the moment it passes ``limit``: a
    declared length over the limit is refused before reading anything."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        body += chunk
    return body


async def _read_json(request: Request, limit: int, sizes: list[int] | None = None) -> Any:
    body = await _read_body(request, limit)
    if sizes is not None:
        sizes.append(len(body))
    if not body:
        raise InvalidRequest("empty request body")
    try:
        if len(body) > _JSON_INLINE_LIMIT:
            return await asyncio.to_thread(json.loads, body)
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc


def _text(obj: dict[str, Any], key: str) -> str:
    """A string field of a JSON body ('' when absent); any other type is INVALID_ARGUMENT."""
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string, got {type(value).__name__}")
    return value


_MAX_TIMEOUT_S = 24 * 3600.0


def _timeout(request: Request) -> float | None:
    """The request's timeout header in seconds; a value that is not a positive finite number is a 400."""
    return timeout_header(request.headers.get("grpc-timeout") or request.headers.get("x-request-timeout"))


def timeout_header(value: str | None) -> float | None:
    """A timeout header's value in seconds (None: absent or not a number; <= 0 or not finite: a 400)."""
    if not value:
        return None
    try:
        t = float(value)
    except ValueError:
        return None
    if not math.isfinite(t) or t <= 0:
        raise InvalidRequest(f"timeout header {value!r} must be a positive number of seconds")
    return min(t, _MAX_TIMEOUT_S)


_GRPC_TO_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
}


def _retry_after(exc: BaseException) -> dict[str, str] | None:
    """A ``Retry-After`` header (whole seconds, at least 1) for an error that carries a hint."""
    hint = getattr(exc, "retry_after_s", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool):
        return {"retry-after": str(max(1, math.ceil(hint)))}
    return None


def error_response(exc: BaseException) -> JSONResponse:
    """Any exception as its table status and ``{"error": message}`` (the REST edge's one answer to errors)."""
    if isinstance(exc, grpc.aio.AioRpcError):  # a forwarded call failed on the holder
        return JSONResponse(
            {"error": exc.details() or str(exc.code())},
            status_code=_GRPC_TO_HTTP.get(exc.code(), 500),
            headers={"retry-after": "1"} if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None,
        )
    status, message = status_for(exc)
    return JSONResponse({"error": message}, status_code=status.http, headers=_retry_after(exc))


def install_error_handler(app: FastAPI) -> None:
    """The one REST error handler: every exception becomes :func:`error_response`."""

    async def _errors(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    # one handler, registered per error root (a handler for bare Exception would run in
    # Starlette's outermost middleware, which re-raises after answering)
    for root in ERROR_ROOTS:
        app.add_exception_handler(root, _errors)  # type: ignore[arg-type]
    app.add_exception_handler(grpc.aio.AioRpcError, _errors)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _errors)  # last resort: 500


def build_rest_app(
    dataplane: DataPlane,
    management: Management,
    mirror: ClusterMirror,
    *,
    max_message_bytes: int,
    version: str = "",
    metrics: Metrics | None = None,
    extra: dict[str, Any] | None = None,
    views: ClusterOverview | None = None,
    fast_v2_infer: bool = True,
) -> FastAPI:
    """The instance's REST app. ``fast_v2_infer`` off: V2 inference goes through its FastAPI route
    too (the tests compare the two)."""
    # FastAPI's native OpenTelemetry is off: modelmux exports Prometheus metrics, and the check for
    # configured global providers it makes on every request was ~10% of a small inference's CPU
    app = FastAPI(
        title="modelmux",
        version=version,
        docs_url="/docs",
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if metrics is not None:
        app.mount("/metrics", make_asgi_app(metrics.registry))

    install_error_handler(app)
    # V2 inference is answered in front of FastAPI's routing (the routes below stay for the rest);
    # added first, so that AuthMiddleware (added next) runs outside it
    if fast_v2_infer:
        app.add_middleware(
            V2InferFastPath,
            dataplane=dataplane,
            max_message_bytes=max_message_bytes,
            error_response=error_response,
            timeout_header=timeout_header,
        )
    if dataplane.authenticator.enabled:  # every route but the public ones needs a principal
        app.add_middleware(AuthMiddleware, authenticator=dataplane.authenticator)
    if views is not None:
        install(app, views)

    # ---------------------------------------------------------------- V2
    def context(request: Request) -> RequestContext:
        session = request.headers.get(SESSION_HEADER)
        return RequestContext(
            timeout_s=_timeout(request), principal=rest_principal(request), metadata={SESSION_HEADER: session} if session else {}
        )

    who = rest_principal

    @app.get("/v2")
    async def server_metadata(request: Request) -> dict[str, Any]:
        info = dataplane.server_info(context(request))
        return {"name": info.name, "version": info.version, "extensions": list(info.extensions)}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": dataplane.live(RequestContext())}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": dataplane.server_ready(RequestContext())}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> dict[str, Any]:
        return _codec.metadata_to_json(await dataplane.model_metadata(name, context(request)))

    @app.get("/v2/models/{name}/versions/{version_id}")
    async def model_metadata_v(name: str, version_id: str, request: Request) -> dict[str, Any]:
        return await model_metadata(name, request)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str, request: Request) -> Response:
        ready = await dataplane.model_ready(name, context(request))
        return JSONResponse({"name": name, "ready": ready}, status_code=200)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        ctx = context(request)
        await dataplane.authorize(name, ctx)  # before the body is read: another tenant's model is NOT_FOUND
        with dataplane.measure(name, ctx) as timer:
            timer.request_bytes = -1
            # the name is resolved (404) and a slot held (429) before the body is read
            async with dataplane.admit(name, ctx) as ctx:
                body = await _read_body(request, max_message_bytes)
                timer.request_bytes = len(body)
                content, headers = await v2_infer(dataplane, name, body, request.headers.get(HEADER_LENGTH), ctx)
            timer.response_bytes = len(content)
            return Response(content, headers=headers)

    @app.post("/v2/models/{name}/versions/{version_id}/infer")
    async def infer_v(name: str, version_id: str, request: Request) -> Response:
        return await infer(name, request)

    install_v1(app, dataplane, read_json=lambda r: _read_json(r, max_message_bytes), context=context)

    # ---------------------------------------------------------------- management (moved off KServe V1's /v1 paths)
    @app.get("/api/v1/models")
    async def list_models(request: Request, limit: str = "", page_token: str = "") -> dict[str, Any]:
        page = management.list_models(principal=who(request), limit=limit, page_token=page_token)
        return {"models": page.items, "next_page_token": page.next_page_token}

    @app.post("/api/v1/models/{model_id}")
    async def register(model_id: str, request: Request) -> dict[str, Any]:
        body = await _read_json(request, 1 << 20)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        info = body.get("modelInfo") or body
        if not isinstance(info, dict):
            raise InvalidRequest("modelInfo must be an object")
        key = info.get("key", "")
        if isinstance(key, dict):
            key = json.dumps(key)
        st = await management.register_model(
            model_id,
            ModelInfoSpec(type=_text(info, "type"), path=_text(info, "path"), key=str(key)),
            load_now=bool(body.get("loadNow", False)),
            sync=bool(body.get("sync", False)),
            principal=who(request),
        )
        return _model_status_json(st)

    @app.get("/api/v1/models/{model_id}")
    async def model_status(model_id: str, request: Request) -> dict[str, Any]:
        st = management.model_status(model_id, principal=who(request))
        if st.status == ModelState.NOT_FOUND:
            raise ModelNotFound(f"model '{model_id}' is not registered")
        return _model_status_json(st)

    @app.delete("/api/v1/models/{model_id}")
    async def unregister(model_id: str, request: Request) -> dict[str, Any]:
        await management.unregister_model(model_id, principal=who(request))
        return {}

    @app.post("/api/v1/models/{model_id}/load")
    async def ensure_loaded(model_id: str, request: Request, sync: bool = False) -> dict[str, Any]:
        return _model_status_json(await management.ensure_loaded(model_id, sync=sync, principal=who(request)))

    @app.put("/api/v1/vmodels/{name}")
    async def set_vmodel(name: str, request: Request) -> dict[str, Any]:
        body = await _read_json(request, 1 << 20)
        if not isinstance(body, dict) or not isinstance(body.get("targetModelId"), str):
            raise InvalidRequest("body must be an object with a string targetModelId")
        info = body.get("modelInfo")
        spec = None
        if isinstance(info, dict):
            key = info.get("key", "")
            spec = ModelInfoSpec(type=_text(info, "type"), path=_text(info, "path"),
                                 key=json.dumps(key) if isinstance(key, dict) else str(key))
        st = await management.set_vmodel(
            name,
            body["targetModelId"],
            owner=_text(body, "owner"),
            update_only=bool(body.get("updateOnly", False)),
            model_info=spec,
            auto_delete_target=bool(body.get("autoDeleteTargetModel", False)),
            load_now=bool(body.get("loadNow", False)),
            force=bool(body.get("force", False)),
            sync=bool(body.get("sync", False)),
            expected_target=_text(body, "expectedTargetModelId"),
            principal=who(request),
        )
        return _vmodel_status_json(st)

    @app.get("/api/v1/vmodels/{name}")
    async def vmodel_status(name: str, request: Request, owner: str = "") -> dict[str, Any]:
        return _vmodel_status_json(management.vmodel_status(name, owner, principal=who(request)))

    @app.delete("/api/v1/vmodels/{name}")
    async def delete_vmodel(name: str, request: Request, owner: str = "") -> dict[str, Any]:
        await management.delete_vmodel(name, owner, principal=who(request))
        return {}

    install_split_routes(app, management, lambda r: _read_json(r, 1 << 20), who)

    @app.get("/api/v1/instances")
    async def instances(request: Request, limit: str = "", page_token: str = "") -> dict[str, Any]:
        page = management.list_instances(principal=who(request), limit=limit, page_token=page_token)
        return {"instances": page.items, "next_page_token": page.next_page_token}

    @app.get("/api/v1/tenants")
    async def tenants(request: Request, limit: str = "", page_token: str = "") -> dict[str, Any]:
        page = management.list_tenants(principal=who(request), limit=limit, page_token=page_token)
        return {"tenants": page.items, "next_page_token": page.next_page_token}

    @app.get("/api/v1/tenants/{name}")
    async def tenant(name: str, request: Request) -> dict[str, Any]:
        return management.tenant(name, principal=who(request))

    @app.put("/api/v1/tenants/{name}")
    async def set_tenant(name: str, request: Request) -> dict[str, Any]:
        body = await _read_json(request, 1 << 16)
        if not isinstance(body, dict) or not ({"maxBytes", "maxRps"} & body.keys()):
            raise InvalidRequest(
                "body must be an object with maxBytes (bytes, or a quantity like 8Gi) and/or maxRps "
                "(requests per second on each instance); a field left out keeps its value, 0 removes it"
            )
        max_bytes = parse_bytes(body["maxBytes"], "maxBytes") if "maxBytes" in body else None
        max_rps = parse_rate(body["maxRps"], "maxRps") if "maxRps" in body else None
        return await management.set_tenant_quota(name, max_bytes, max_rps=max_rps, principal=who(request))

    @app.delete("/api/v1/tenants/{name}")
    async def delete_tenant(name: str, request: Request) -> dict[str, Any]:
        if not await management.delete_tenant_quota(name, principal=who(request)):
            raise TenantNotFound(f"tenant '{name}' has no quota")
        return {}

    @app.get("/api/v1/cluster")
    async def cluster(request: Request, limit: str = "") -> dict[str, Any]:
        """A summary: the first page of instances and of models, their totals, and the tokens
        that continue each on its own list (``/api/v1/instances``, ``/api/v1/models``)."""
        principal = who(request)
        instances = management.list_instances(principal=principal, limit=limit)
        models = management.list_models(principal=principal, limit=limit)
        info = {
            "time": time.time(),
            "instances": instances.items,
            "models": models.items,
            "totals": {"instances": instances.total, "models": models.total},
            "next_page_tokens": {"instances": instances.next_page_token, "models": models.next_page_token},
            "connected": mirror.connected,
        }
        if extra and principal.tenant is None:  # leader and this instance's copies: every tenant's
            principal.require(Action.READ, "the cluster")
            for key, fn in extra.items():
                info[key] = fn()
        return info

    return app
