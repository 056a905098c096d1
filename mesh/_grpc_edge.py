"""The gRPC edge: V2 inference (bytes in, bytes out) and mmesh.ModelMesh, on one server.

It only translates: V2 calls go to the :class:`~mesh._dataplane.DataPlane`, mmesh calls to
:class:`~mesh._management.Management`. ``ModelInfer`` is registered with identity
(de)serializers, so the router gets the request bytes and either parses them once (local copy)
or forwards them untouched (remote copy). One interceptor maps every error to its status
through :func:`mesh._errors.status_for` (:func:`error_mapped`, wrapped once when the server is built).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

from . import _codec
from ._auth import Authenticator, Principal
from ._dataplane import DataPlane, RequestContext
from ._errors import InvalidRequest, status_for
from ._holder import holder_trailer
from ._management import Management, ModelInfoSpec, ModelStatus, VModelStatus
from ._router import FORWARDED_HEADER, MODEL_ID_HEADER, VMODEL_ID_HEADER
from ._security import grpc_principal
from ._wire import WireError, read_string_field

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    md = context.invocation_metadata() or ()
    out: dict[str, str] = {}
    for item in md:
        key, value = item[0], item[1]
        if isinstance(value, str):
            out[key] = value
    return out


def error_mapped(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with every exception it raises mapped to its gRPC status, once.

    Wrapped when the server is built, not per call (a ``grpc.aio.ServerInterceptor`` runs a
    coroutine and rebuilds the handler on every call: measurable on a sub-millisecond
    inference). Request bytes are parsed here rather than by grpc, whose own parse failure
    answers INTERNAL. (Request metrics are ModelMesh's: inference calls only, timed by the data
    plane.)"""
    inner = handler.unary_unary
    if inner is None:
        return handler
    deserialize = handler.request_deserializer

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if deserialize is not None:
                try:
                    request = deserialize(request)
                except DecodeError as exc:
                    raise InvalidRequest(f"malformed request to {method}: {exc}") from exc
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except grpc.aio.AioRpcError as exc:  # an error from a forwarded call: pass it through
            await context.abort(exc.code(), exc.details() or "")
        except Exception as exc:
            status, message = status_for(exc)
            if status.grpc == grpc.StatusCode.INTERNAL and getattr(exc, "code", None) is None:
                log.exception("unexpected error in %s", method)
            hint = getattr(exc, "retry_after_s", None)
            if isinstance(hint, int | float):  # RESOURCE_EXHAUSTED by admission: when to retry
                context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(hint)))),))
            await context.abort(status.grpc, message)

    return handler._replace(unary_unary=wrapped, request_deserializer=None)


def _service_handlers(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, grpc.RpcMethodHandler]:
    return {name: error_mapped(h, f"/{service}/{name}") for name, h in handlers.items()}


def _context(context: grpc.aio.ServicerContext, authenticator: Authenticator, md: dict[str, str] | None = None) -> RequestContext:
    """The call's context, its caller authenticated once (UNAUTHENTICATED raised here)."""
    md = _metadata(context) if md is None else md
    return RequestContext(
        timeout_s=context.time_remaining(),
        forwarded=FORWARDED_HEADER in md,
        principal=grpc_principal(authenticator, context, md),
        metadata=md,
    )


class InferenceHandlers:
    """The V2 ``GRPCInferenceService``: protobuf in and out, everything else the data plane's."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def model_infer(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = _metadata(context)
        name = md.get(VMODEL_ID_HEADER) or md.get(MODEL_ID_HEADER)
        if not name:
            try:
                name = read_string_field(payload, 1)
            except WireError as exc:
                raise InvalidRequest(f"malformed ModelInferRequest: {exc}") from exc
        if not name:
            raise InvalidRequest("no model named: set model_name or the mm-vmodel-id / mm-model-id header")
        out = await self.dataplane.infer_bytes(name, payload, _context(context, self.dataplane.authenticator, md))
        holder = holder_trailer()  # where the copy that answered lives (direct routing)
        if holder is not None:
            context.set_trailing_metadata(holder)
        return out

    async def server_live(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live(_context(context, self.dataplane.authenticator)))

    async def server_ready(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready(_context(context, self.dataplane.authenticator)))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        info = self.dataplane.server_info(_context(context, self.dataplane.authenticator))
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=list(info.extensions))

    async def model_ready(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await self.dataplane.model_ready(request.name, _context(context, self.dataplane.authenticator)))

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return _codec.metadata_to_pb(await self.dataplane.model_metadata(request.name, _context(context, self.dataplane.authenticator)))

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's method handlers, errors mapped (:func:`error_mapped`)."""

        def unary(fn: Any, req_cls: Any = None) -> grpc.RpcMethodHandler:
            if req_cls is None:
                return grpc.unary_unary_rpc_method_handler(fn)  # bytes in, bytes out
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString()
            )

        return _service_handlers(
            SERVICE,
            {
                "ModelInfer": unary(self.model_infer),
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            },
        )


# ---------------------------------------------------------------- mmesh.ModelMesh

_MS = mm.ModelStatusInfo
_VS = mm.VModelStatusInfo


def model_status_to_pb(st: ModelStatus) -> mm.ModelStatusInfo:
    msg = mm.ModelStatusInfo(status=_MS.ModelStatus.Value(st.status), errors=list(st.errors))
    for c in st.copies:
        msg.modelCopyInfos.add(location=c.location, copyStatus=_MS.ModelStatus.Value(c.status), time=c.time_ms)
    return msg


def vmodel_status_to_pb(st: VModelStatus) -> mm.VModelStatusInfo:
    msg = mm.VModelStatusInfo(
        status=_VS.VModelStatus.Value(st.status),
        activeModelId=st.active_model_id,
        targetModelId=st.target_model_id,
        owner=st.owner,
    )
    if st.active_status is not None:
        msg.activeModelStatus.CopyFrom(model_status_to_pb(st.active_status))
    if st.target_status is not None:
        msg.targetModelStatus.CopyFrom(model_status_to_pb(st.target_status))
    return msg


def _info(msg: mm.ModelInfo) -> ModelInfoSpec:
    return ModelInfoSpec(type=msg.type, path=msg.path, key=msg.key)


def _timeout(context: grpc.aio.ServicerContext, default: float = 60.0) -> float:
    t = context.time_remaining()
    return default if t is None else max(t, 0.0)


class ModelMeshServicer(mm_grpc.ModelMeshServicer):
    """mmesh.ModelMesh; every call authenticated, then scoped by :class:`Management`."""

    def __init__(self, management: Management, authenticator: Authenticator | None = None) -> None:
        self.m = management
        self.authenticator = authenticator or Authenticator()

    def _who(self, context: grpc.aio.ServicerContext) -> Principal:
        return grpc_principal(self.authenticator, context, _metadata(context))

    async def registerModel(self, request: mm.RegisterModelRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # type: ignore[override]
        if not request.HasField("modelInfo"):
            raise InvalidRequest("modelInfo is required")
        st = await self.m.register_model(
            request.modelId,
            _info(request.modelInfo),
            load_now=request.loadNow,
            sync=request.sync,
            last_used_ms=request.lastUsedTime,
            timeout_s=_timeout(context),
            principal=self._who(context),
        )
        return model_status_to_pb(st)

    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> mm.UnregisterModelResponse:  # type: ignore[override]
        await self.m.unregister_model(request.modelId, principal=self._who(context))
        return mm.UnregisterModelResponse()

    async def getModelStatus(self, request: mm.GetStatusRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # type: ignore[override]
        return model_status_to_pb(self.m.model_status(request.modelId, principal=self._who(context)))

    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # type: ignore[override]
        st = await self.m.ensure_loaded(
            request.modelId, sync=request.sync, timeout_s=_timeout(context), principal=self._who(context)
        )
        return model_status_to_pb(st)

    async def setVModel(self, request: mm.SetVModelRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # type: ignore[override]
        st = await self.m.set_vmodel(
            request.vModelId,
            request.targetModelId,
            owner=request.owner,
            update_only=request.updateOnly,
            model_info=_info(request.modelInfo) if request.HasField("modelInfo") else None,
            auto_delete_target=request.autoDeleteTargetModel,
            load_now=request.loadNow,
            force=request.force,
            sync=request.sync,
            expected_target=request.expectedTargetModelId,
            timeout_s=_timeout(context),
            principal=self._who(context),
        )
        return vmodel_status_to_pb(st)

    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> mm.DeleteVModelResponse:  # type: ignore[override]
        await self.m.delete_vmodel(request.vModelId, request.owner, principal=self._who(context))
        return mm.DeleteVModelResponse()

    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # type: ignore[override]
        return vmodel_status_to_pb(self.m.vmodel_status(request.vModelId, request.owner, principal=self._who(context)))


def build_grpc_server(
    dataplane: DataPlane, management: Management, *, max_message_bytes: int
) -> tuple[grpc.aio.Server, InferenceHandlers]:
    """The server with both services; the caller adds its port (plaintext or TLS)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    inference = InferenceHandlers(dataplane)
    # registered methods: grpc looks them up by name, no generic handler called per call
    server.add_registered_method_handlers(SERVICE, inference.handlers())
    server.add_registered_method_handlers(MM_SERVICE, model_mesh_handlers(ModelMeshServicer(management, dataplane.authenticator)))
    return server, inference


MM_SERVICE = "mmesh.ModelMesh"


def model_mesh_handlers(servicer: ModelMeshServicer) -> dict[str, grpc.RpcMethodHandler]:
    """mmesh.ModelMesh's method handlers from its descriptor, errors mapped (every method is unary)."""
    desc = mm.DESCRIPTOR.services_by_name["ModelMesh"]
    handlers = {}
    for method in desc.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString()
        )
    return _service_handlers(MM_SERVICE, handlers)
