"""The gRPC edge: V2 inference (bytes in, bytes out) and mmesh.ModelMesh, on one server.

``ModelInfer`` is registered with identity (de)serializers, so the router gets
the request bytes and either parses them once (local copy) or forwards them
untouched (remote copy). One interceptor maps every error to its status through
:func:`mesh._errors.status_for`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

from . import _codec
from ._errors import InvalidRequest, ModelNotFound, status_for
from ._management import Management, ModelInfoSpec, ModelStatus, VModelStatus
from ._metrics import Metrics, code_name
from ._router import FORWARDED_HEADER, MODEL_ID_HEADER, VMODEL_ID_HEADER, Router
from ._wire import WireError, read_string_field

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "modelmux"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    md = context.invocation_metadata() or ()
    out: dict[str, str] = {}
    for item in md:
        key, value = item[0], item[1]
        if isinstance(value, str):
            out[key] = value
    return out


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps every exception raised by a handler to its gRPC status, once. (Request metrics are
    ModelMesh's: inference calls only, timed in :meth:`InferenceHandlers.model_infer`.)"""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        # request bytes are parsed here rather than by grpc, whose own parse failure answers INTERNAL
        deserialize = handler.request_deserializer

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if deserialize is not None:
                    try:
                        request = deserialize(request)
                    except DecodeError as exc:
                        raise InvalidRequest(f"malformed request to {handler_call_details.method}: {exc}") from exc
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except grpc.aio.AioRpcError as exc:  # an error from a forwarded call: pass it through
                await context.abort(exc.code(), exc.details() or "")
            except Exception as exc:
                status, message = status_for(exc)
                if status.grpc == grpc.StatusCode.INTERNAL and getattr(exc, "code", None) is None:
                    log.exception("unexpected error in %s", handler_call_details.method)
                await context.abort(status.grpc, message)

        return handler._replace(unary_unary=wrapped, request_deserializer=None)


class InferenceHandlers:
    def __init__(self, router: Router, *, version: str = "", metrics: Metrics | None = None) -> None:
        self.router = router
        self.version = version
        self.ready = True
        self.metrics = metrics or router.metrics

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
        forwarded = FORWARDED_HEADER in md
        if forwarded:  # a peer's request: counted as an API request where it entered the mesh
            return await self.router.infer_bytes(name, payload, timeout_s=context.time_remaining(), forwarded=True)
        t0 = time.perf_counter()
        out = b""
        error: BaseException | None = None
        try:
            out = await self.router.infer_bytes(name, payload, timeout_s=context.time_remaining())
            return out
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.metrics.request(
                external=True,
                code=code_name(error),
                elapsed_ms=(time.perf_counter() - t0) * 1000,
                request_bytes=len(payload),
                response_bytes=len(out) if error is None else -1,
                **self.router.label_ids(name),
            )

    async def server_live(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=["model_repository"])

    async def model_ready(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        mid = await self.router.resolve_fresh(request.name)
        return pb.ModelReadyResponse(ready=bool(self.router.state.holders(mid)) or mid in self.router.local)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return await model_metadata_pb(self.router, request.name, context.time_remaining())

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req_cls: Any = None) -> grpc.RpcMethodHandler:
            if req_cls is None:
                return grpc.unary_unary_rpc_method_handler(fn)  # bytes in, bytes out
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString()
            )

        return grpc.method_handlers_generic_handler(
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


async def model_metadata_pb(router: Router, name: str, timeout_s: float | None) -> pb.ModelMetadataResponse:
    """Metadata from the local copy, or from a holder (loading the model if needed)."""
    mid = await router.resolve_fresh(name)
    model = router.local.get(mid)
    if model is None:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else router.default_deadline_s)
        await router.ensure_loaded(mid, deadline)
        model = router.local.get(mid)
        if model is None:
            for holder in router.state.holders(mid):
                address = router.state.address(holder)
                if address is None:
                    continue
                call = router.channel(address).unary_unary(
                    f"/{SERVICE}/ModelMetadata",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=pb.ModelMetadataResponse.FromString,
                )
                resp: pb.ModelMetadataResponse = await call(
                    pb.ModelMetadataRequest(name=mid), timeout=max(deadline - time.monotonic(), 0.001)
                )
                resp.name = name
                return resp
            raise ModelNotFound(f"model '{name}' has no loaded copy")
    msg = _codec.metadata_to_pb(model.metadata)
    msg.name = name
    return msg


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
    def __init__(self, management: Management) -> None:
        self.m = management

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
        )
        return model_status_to_pb(st)

    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> mm.UnregisterModelResponse:  # type: ignore[override]
        await self.m.unregister_model(request.modelId)
        return mm.UnregisterModelResponse()

    async def getModelStatus(self, request: mm.GetStatusRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # type: ignore[override]
        return model_status_to_pb(self.m.model_status(request.modelId))

    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # type: ignore[override]
        st = await self.m.ensure_loaded(request.modelId, sync=request.sync, timeout_s=_timeout(context))
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
        )
        return vmodel_status_to_pb(st)

    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> mm.DeleteVModelResponse:  # type: ignore[override]
        await self.m.delete_vmodel(request.vModelId, request.owner)
        return mm.DeleteVModelResponse()

    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # type: ignore[override]
        return vmodel_status_to_pb(self.m.vmodel_status(request.vModelId, request.owner))


def build_grpc_server(
    router: Router, management: Management, *, max_message_bytes: int, version: str = "", metrics: Metrics | None = None
) -> tuple[grpc.aio.Server, InferenceHandlers]:
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    inference = InferenceHandlers(router, version=version, metrics=metrics)
    server.add_generic_rpc_handlers((inference.handler(),))
    mm_grpc.add_ModelMeshServicer_to_server(ModelMeshServicer(management), server)
    return server, inference
