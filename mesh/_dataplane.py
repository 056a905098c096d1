"""The data plane: ready, metadata and infer, answered once for both edges.

The gRPC edge (:mod:`mesh._grpc_edge`) and the REST edge (:mod:`mesh._rest_edge`) translate
their wire formats and errors and call this object; nothing here knows protobuf messages or
JSON. It times every client request (:class:`~mesh._request_metrics.RequestMetrics`) and is the
one place that checks who the caller is: the edges authenticate each call once
(:meth:`DataPlane.authenticate`) into :attr:`RequestContext.principal`, and every model call here
is scoped to that principal's tenant (:mod:`mesh._access`): another tenant's model answers the
same NOT_FOUND as a missing one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from runtime_adapters import InferRequest, InferResponse, ModelMetadata

from . import _codec
from ._access import require_model
from ._auth import LOCAL_ADMIN, Action, Authenticator, Principal
from ._errors import ModelNotFound
from ._limits import RequestAdmission
from ._request_metrics import RequestMetrics, RequestTimer
from ._router import Router
from ._traffic_split import SESSION_HEADER

SERVER_NAME = "modelmux"
EXTENSIONS = ("model_repository", "binary_tensor_data")


@dataclass(frozen=True)
class RequestContext:
    """What an edge knows about one call besides its payload."""

    timeout_s: float | None = None  # the client's deadline, None: the instance default
    forwarded: bool = False  # sent by a peer that already counted it (serve locally or NOT_FOUND)
    admitted: bool = False  # already holds an admission slot (mesh._limits)
    principal: Principal = LOCAL_ADMIN  # the edges set the authenticated caller
    metadata: dict[str, str] = field(default_factory=dict)  # request headers / gRPC metadata


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    def __init__(self, router: Router, *, version: str = "", request_metrics: RequestMetrics | None = None) -> None:
        self.router = router
        self.version = version
        self.request_metrics = request_metrics or router.request_metrics
        self.ready = True
        self.admission = RequestAdmission(router)
        self.authenticator = Authenticator()  # off: every caller is LOCAL_ADMIN

    def authenticate(self, authorization: str | None, cert_names: Sequence[str] = ()) -> Principal:
        """The caller of one request, once, at the edge (UNAUTHENTICATED without valid credentials)."""
        return self.authenticator.authenticate(authorization, cert_names)

    async def authorize(self, name: str, ctx: RequestContext) -> None:
        """May ``ctx.principal`` run model ``name``? A forwarded call needs an instance's right to
        forward (a stolen ``mm-forwarded`` header from anyone else is refused); a tenant-bound
        caller sees only its tenant's models (others: the NOT_FOUND a missing model gets)."""
        if not self._authorized_now(name, ctx):
            await self._authorize_resolved(name, ctx)

    async def _authorize_resolved(self, name: str, ctx: RequestContext) -> None:
        """A tenant-bound caller's check once ``name`` is resolved from the store (not in the mirror yet)."""
        router = self.router
        mid = await router.resolve_fresh(name)
        rec = router.mirror.models.items.get(mid)
        require_model(ctx.principal, name, rec.tenant if rec is not None else None, Action.INFER)

    def _authorized_now(self, name: str, ctx: RequestContext) -> bool:
        """:meth:`authorize` where the mirror can answer (raises if refused); False: ``name`` must be
        resolved from the store first. Per request, so no coroutine where none is needed."""
        p = ctx.principal
        if ctx.forwarded:
            p.require(Action.FORWARD, "send forwarded requests (mm-forwarded)")
            return True
        if p.tenant is None:
            if not p.allows(Action.INFER):  # (the message is built only for a refusal)
                p.require(Action.INFER, f"model '{name}'")
            return True
        router = self.router
        mid = router.mirror.resolve(name)
        if mid is None:
            return False
        rec = router.mirror.models.items.get(mid)
        require_model(p, name, rec.tenant if rec is not None else None, Action.INFER)
        return True

    # ------------------------------------------------------------ server

    def live(self, ctx: RequestContext) -> bool:
        return True

    def server_ready(self, ctx: RequestContext) -> bool:
        return self.ready

    def server_info(self, ctx: RequestContext) -> ServerInfo:
        return ServerInfo(SERVER_NAME, self.version, EXTENSIONS)

    # ------------------------------------------------------------ models

    async def model_ready(self, name: str, ctx: RequestContext) -> bool:
        """Whether the model (or vModel) has a loaded copy anywhere; NOT_FOUND when it is not registered."""
        await self.authorize(name, ctx)
        mid = await self.router.resolve_fresh(name)
        return bool(self.router.mirror.holders(mid)) or mid in self.router.loaded

    async def model_metadata(self, name: str, ctx: RequestContext) -> ModelMetadata:
        """Metadata from the local copy, or from a holder (loading the model if needed), named as asked."""
        await self.authorize(name, ctx)
        router = self.router
        mid = await router.resolve_fresh(name)
        model = router.loaded.get(mid)
        if model is None:
            deadline = time.monotonic() + (ctx.timeout_s if ctx.timeout_s is not None else router.default_deadline_s)
            await router.ensure_loaded(mid, deadline)
            model = router.loaded.get(mid)
            if model is None:
                raw = await router.peer_metadata(mid, deadline)
                if raw is None:
                    raise ModelNotFound(f"model '{name}' has no loaded copy")
                return replace(_codec.metadata_from_pb_bytes(raw), name=name)
        return replace(model.metadata, name=name)

    # ------------------------------------------------------------ inference

    def measure(self, name: str, ctx: RequestContext) -> RequestTimer:
        """Times one client request for ``name`` (a ``with`` block around reading, serving and
        writing it); the edge fills in the byte counts it knows."""
        return self.request_metrics.api(name)

    async def infer_bytes(self, name: str, payload: bytes, ctx: RequestContext) -> bytes:
        """A serialized ModelInferRequest in, a serialized ModelInferResponse out (bytes forwarded unparsed).

        A peer's forwarded request is not timed again: it was counted where it entered the mesh.
        """
        if not self._authorized_now(name, ctx):
            await self._authorize_resolved(name, ctx)
        admission = self.admission
        if ctx.forwarded:
            held = admission.try_admit(name, ctx)  # a free slot at once: no context managers
            if held is None:
                async with admission.admit(name, ctx):
                    return await self.router.infer_bytes(name, payload, timeout_s=ctx.timeout_s, forwarded=True)
            try:
                return await self.router.infer_bytes(name, payload, timeout_s=ctx.timeout_s, forwarded=True)
            finally:
                admission.release(held)
        session = ctx.metadata.get(SESSION_HEADER)
        # timed as measure()'s timer times it, from a clock reading (no timer object per request)
        t0 = time.perf_counter()
        try:
            held = admission.try_admit(name, ctx)
            if held is None:
                async with admission.admit(name, ctx):
                    out = await self.router.infer_bytes(name, payload, timeout_s=ctx.timeout_s, session=session)
            else:
                try:
                    out = await self.router.infer_bytes(name, payload, timeout_s=ctx.timeout_s, session=session)
                finally:
                    admission.release(held)
        except BaseException as exc:
            self.request_metrics.api_done(name, t0, len(payload), -1, exc)
            raise
        self.request_metrics.api_done(name, t0, len(payload), len(out))
        return out

    async def infer(self, name: str, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """A decoded request in, a decoded answer out (the REST edge times the call with :meth:`measure`,
        since only it knows the sizes on its wire). An edge that admits the request before reading
        its body (:meth:`admit`) passes the admitted context."""
        await self.authorize(name, ctx)
        session = ctx.metadata.get(SESSION_HEADER)
        if ctx.admitted:
            return await self.router.infer(name, request, timeout_s=ctx.timeout_s, session=session)
        async with self.admission.admit(name, ctx):
            return await self.router.infer(name, request, timeout_s=ctx.timeout_s, session=session)

    def admit(self, name: str, ctx: RequestContext) -> contextlib.AbstractAsyncContextManager[RequestContext]:
        """Resolve ``name`` (NOT_FOUND when unknown) and hold an admission slot for one request
        (RESOURCE_EXHAUSTED when its tenant's or this instance's queue is full). The caller
        authorizes first (:meth:`authorize`)."""
        return self.admission.admit(name, ctx)
