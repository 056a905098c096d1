"""V2 REST inference served before FastAPI: ``POST /v2/models/{name}/infer`` (and
``/v2/models/{name}/versions/{version}/infer``) is answered here, in front of the app's routing,
dependency solving and request/response objects, which cost more of a small request's CPU than
the data plane and the model together (a tiny XGBoost request through the ASGI app: ~430 us of
the event loop's CPU through the FastAPI route, ~270 us for a bare one-route FastAPI app).

Same steps as the route it stands in front of (which stays, for the OpenAPI page and for paths
this does not take): the principal that :class:`~mesh._security.AuthMiddleware` (outside this)
established, authorization before the body is read, the request timed, the name resolved and an
admission slot held before the body is read, the body refused (413) as soon as it passes the
limit, then :func:`~mesh._rest_protocols.v2_infer`. Errors are the edge's one error answer
(:func:`~mesh._rest_edge.error_response`). Every other request goes to the app unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import Response

from ._dataplane import DataPlane, RequestContext
from ._errors import PayloadTooLarge
from ._request_metrics import RequestTimer
from ._rest_binary import HEADER_LENGTH
from ._rest_protocols import v2_infer
from ._security import scope_principal
from ._traffic_split import SESSION_HEADER

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_HEADER_LENGTH = HEADER_LENGTH.lower()


def infer_name(path: str) -> str | None:
    """The model name of a V2 inference path, as the routes' ``{name}`` would match it (no ``/``
    in a name; an empty one matches nothing), or None."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    inner = path[len(_PREFIX) : -len(_SUFFIX)]
    if not inner:
        return None
    if "/" not in inner:
        return inner
    parts = inner.split("/")
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0]
    return None


class _Disconnected(Exception):
    """The client went away while its body was being read: nobody reads an answer."""


class V2InferFastPath:
    """ASGI middleware: V2 inference here, everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        dataplane: DataPlane,
        max_message_bytes: int,
        error_response: Callable[[BaseException], Response],
        timeout_header: Callable[[str | None], float | None],
    ) -> None:
        self.app = app
        self.dataplane = dataplane
        self.max_message_bytes = max_message_bytes
        self.error_response = error_response
        self.timeout_header = timeout_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = infer_name(scope["path"])
            if name is not None:
                await self._infer(name, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:  # the first of a repeated header, as Starlette's headers.get
            k = key.decode("latin-1")
            if k not in headers:
                headers[k] = value.decode("latin-1")
        dataplane = self.dataplane
        try:
            session = headers.get(SESSION_HEADER)
            ctx = RequestContext(
                timeout_s=self.timeout_header(headers.get("grpc-timeout") or headers.get("x-request-timeout")),
                principal=scope_principal(scope),
                metadata={SESSION_HEADER: session} if session else {},
            )
            await dataplane.authorize(name, ctx)  # before the body is read: another tenant's model is NOT_FOUND
            with dataplane.measure(name, ctx) as timer:
                # the name is resolved (404) and a slot held (429) before the body is read; a slot
                # free at once is taken without the admission's context managers (as gRPC does)
                admission = dataplane.admission
                held = admission.try_admit(name, ctx)
                if held is None:
                    async with dataplane.admit(name, ctx) as ctx:
                        content, out_headers = await self._serve(name, headers, receive, ctx, timer)
                else:
                    try:
                        admitted = RequestContext(timeout_s=ctx.timeout_s, admitted=True, principal=ctx.principal, metadata=ctx.metadata)
                        content, out_headers = await self._serve(name, headers, receive, admitted, timer)
                    finally:
                        admission.release(held)
                timer.response_bytes = len(content)
            response = Response(content, headers=out_headers)
        except _Disconnected:
            return
        except Exception as exc:  # every failure is answered, as the route's error handler would
            response = self.error_response(exc)
        await response(scope, receive, send)

    async def _serve(
        self, name: str, headers: dict[str, str], receive: Receive, ctx: RequestContext, timer: RequestTimer
    ) -> tuple[bytes, dict[str, str]]:
        """The admitted request: its body read, then served."""
        body = await self._read_body(headers.get("content-length"), receive)
        timer.request_bytes = len(body)
        return await v2_infer(self.dataplane, name, body, headers.get(_HEADER_LENGTH), ctx)

    async def _read_body(self, length: str | None, receive: Receive) -> bytearray:
        """The body, refused (413) the moment it passes the limit; a declared length over the
        limit is refused before reading anything."""
        limit = self.max_message_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            body += chunk
            if not message.get("more_body", False):
                return body
