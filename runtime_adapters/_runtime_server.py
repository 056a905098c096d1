"""The model-runtime gRPC edge: ``mmesh.ModelRuntime`` plus the V2 ``GRPCInferenceService``
for the models it loaded, over an :class:`AdapterRegistry`, so another process (a
modelmux instance, or KServe ModelMesh itself) can use these adapters as an external
runtime.

``mmesh.ModelRuntime`` behaviour (ModelMesh's runtime contract):

* ``loadModel``: the model type is ``modelKey``'s ``model_type.name`` (JSON), falling back
  to ``modelType`` when the key has none or names a type no adapter serves; ``modelKey``
  may also carry ``schema_path`` and string ``options`` (modelmux extensions). The model is
  loaded from ``modelPath`` (file or directory). Concurrent loads of one id share one load;
  loading an id that is already loaded returns its size. The answer carries the measured
  ``sizeInBytes``.
* ``unloadModel``: unloads and returns once freed; an unknown id is not an error.
* ``predictModelSize``: the adapter's prediction from file sizes (no load).
* ``modelSize``: the measured size; an unknown id is NOT_FOUND.
* ``runtimeStatus``: READY with the settings' capacity and limits, and ``methodInfos``
  telling the caller to inject the model id into field 1 (``model_name``) of V2
  ``ModelInfer`` / ``ModelMetadata`` / ``ModelReady``. With ``purge_on_status`` it first
  unloads every model, as the contract requires of a runtime that is asked again after a
  mesh restart.

V2 inference: the model is the ``mm-model-id`` (or ``mm-model-id-bin``) header when present,
else ``model_name``; only models loaded through this service are served.

Errors: every :class:`AdapterError` becomes a gRPC status derived from its semantic code
(``invalid_argument`` -> ``INVALID_ARGUMENT`` ...; ``load_failed`` -> ``INTERNAL``), or by
the ``status_for`` callable given to the service (the mesh passes its one table).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as mr
from protos import model_runtime_pb2_grpc as mr_grpc

from ._base import LoadedModel
from ._batching import BatchingSettings, with_batching
from ._errors import AdapterError, InvalidInput, ModelLoadError, ModelNotLoaded
from ._registry import AdapterRegistry
from ._settings import RuntimeServerSettings
from ._types import ModelSpec
from ._v2 import request_from_pb, response_to_pb

log = logging.getLogger(__name__)

V2_SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "modelmux-runtime"

StatusFor = Callable[[BaseException], tuple[grpc.StatusCode, str]]
T = TypeVar("T")


def default_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """A semantic code's gRPC status: the code's upper-case name (``load_failed`` -> INTERNAL)."""
    code = getattr(exc, "code", None)
    status = grpc.StatusCode.INTERNAL
    if isinstance(code, str):
        status = getattr(grpc.StatusCode, code.upper(), grpc.StatusCode.INTERNAL)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return status, message


def _model_key(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"modelKey is not JSON: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


# ---------------------------------------------------------------- the service


class RuntimeService:
    """State and handlers of the runtime server: the models it holds, by id."""

    def __init__(
        self,
        registry: AdapterRegistry,
        settings: RuntimeServerSettings,
        *,
        status_for: StatusFor | None = None,
        batching: BatchingSettings | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        # adaptive batching of the loaded models (off unless enabled here or by a model's options)
        self.batching = batching or BatchingSettings()
        self._status_for = status_for or default_status_for
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._load_slots = asyncio.Semaphore(settings.max_loading_concurrency)

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        return self._models

    # -- management

    def spec_for(self, model_id: str, model_type: str, model_key: str) -> ModelSpec:
        key = _model_key(model_key)
        mtype = ""
        key_type = key.get("model_type")
        if isinstance(key_type, dict) and isinstance(key_type.get("name"), str):
            mtype = key_type["name"]
        elif isinstance(key_type, str):
            mtype = key_type
        if not mtype or mtype.strip().lower() not in self.registry.model_types:
            mtype = model_type or mtype
        if not mtype:
            raise InvalidInput(f"model '{model_id}': no model type in modelKey or modelType")
        options = key.get("options")
        schema_path = key.get("schema_path")
        return ModelSpec(
            model_id=model_id,
            model_type=mtype,
            schema_path=schema_path if isinstance(schema_path, str) and schema_path else None,
            options={str(k): str(v) for k, v in options.items()} if isinstance(options, dict) else {},
        )

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str) -> LoadedModel:
        if not model_id:
            raise InvalidInput("loadModel needs a modelId")
        if model_id in self._models:
            return self._models[model_id]
        task = self._loading.get(model_id)
        if task is None:
            spec = self.spec_for(model_id, model_type, model_key)
            adapter = self.registry.for_type(spec.model_type)
            task = asyncio.create_task(self._load(adapter.load, spec, Path(model_path)), name=f"load-{model_id}")
            self._loading[model_id] = task
            task.add_done_callback(functools.partial(self._loaded, model_id))
        return await asyncio.shield(task)

    async def _load(
        self, load: Callable[[ModelSpec, Path], Awaitable[LoadedModel]], spec: ModelSpec, path: Path
    ) -> LoadedModel:
        async with self._load_slots:
            try:
                model = await asyncio.wait_for(load(spec, path), timeout=self.settings.model_loading_timeout_s)
            except TimeoutError as exc:
                raise ModelLoadError(
                    f"model '{spec.model_id}': load did not finish in {self.settings.model_loading_timeout_s}s"
                ) from exc
            try:
                return with_batching(model, self.batching)
            except BaseException:
                await model.unload()
                raise

    def _loaded(self, model_id: str, task: asyncio.Task[LoadedModel]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("load of %s failed: %s", model_id, exc)
            return
        self._models[model_id] = task.result()

    async def unload(self, model_id: str) -> None:
        task = self._loading.get(model_id)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        model = self._models.pop(model_id, None)
        if model is not None:
            await model.unload()

    async def unload_all(self) -> None:
        for mid in list(self._loading) + list(self._models):
            await self.unload(mid)

    def predict_size(self, model_id: str, model_type: str, model_path: str, model_key: str) -> int:
        spec = self.spec_for(model_id, model_type, model_key)
        return self.registry.for_type(spec.model_type).predict_size(spec, Path(model_path))

    def model(self, model_id: str) -> LoadedModel:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotLoaded(f"model '{model_id}' is not loaded in this runtime")
        return model

    def status_for(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        return self._status_for(exc)

    # -- gRPC plumbing

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except AdapterError as exc:
            status, message = self._status_for(exc)
        except Exception as exc:
            log.exception("runtime call failed")
            status, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        await context.abort(status, message)
        raise AssertionError("unreachable")  # context.abort raises

    def add_to_server(self, server: grpc.aio.Server) -> None:
        mr_grpc.add_ModelRuntimeServicer_to_server(_ModelRuntimeServicer(self), server)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(_InferenceServicer(self), server)


def _model_id(request_name: str, context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "mm-model-id" and isinstance(value, str) and value:
            return value
        if key == "mm-model-id-bin" and isinstance(value, bytes) and value:
            return value.decode("utf-8", errors="replace")
    return request_name


class _ModelRuntimeServicer(mr_grpc.ModelRuntimeServicer):
    def __init__(self, service: RuntimeService) -> None:
        self.s = service

    async def loadModel(self, request: Any, context: Any) -> mr.LoadModelResponse:
        async def run() -> mr.LoadModelResponse:
            model = await self.s.load(request.modelId, request.modelType, request.modelPath, request.modelKey)
            return mr.LoadModelResponse(sizeInBytes=model.size_bytes)

        return await self.s._call(context, run)

    async def unloadModel(self, request: Any, context: Any) -> mr.UnloadModelResponse:
        async def run() -> mr.UnloadModelResponse:
            await self.s.unload(request.modelId)
            return mr.UnloadModelResponse()

        return await self.s._call(context, run)

    async def predictModelSize(self, request: Any, context: Any) -> mr.PredictModelSizeResponse:
        async def run() -> mr.PredictModelSizeResponse:
            size = await asyncio.to_thread(
                self.s.predict_size, request.modelId, request.modelType, request.modelPath, request.modelKey
            )
            return mr.PredictModelSizeResponse(sizeInBytes=size)

        return await self.s._call(context, run)

    async def modelSize(self, request: Any, context: Any) -> mr.ModelSizeResponse:
        async def run() -> mr.ModelSizeResponse:
            return mr.ModelSizeResponse(sizeInBytes=self.s.model(request.modelId).size_bytes)

        return await self.s._call(context, run)

    async def runtimeStatus(self, request: Any, context: Any) -> mr.RuntimeStatusResponse:
        async def run() -> mr.RuntimeStatusResponse:
            st = self.s.settings
            if st.purge_on_status:
                await self.s.unload_all()
            statuses = [await a.status() for a in self.s.registry.adapters]
            ready = bool(statuses) and any(x.ready for x in statuses)
            msg = mr.RuntimeStatusResponse(
                status=mr.RuntimeStatusResponse.READY if ready else mr.RuntimeStatusResponse.FAILING,
                capacityInBytes=st.capacity_bytes,
                maxLoadingConcurrency=st.max_loading_concurrency,
                modelLoadingTimeoutMs=int(st.model_loading_timeout_s * 1000),
                defaultModelSizeInBytes=st.default_model_size_bytes,
                runtimeVersion=st.runtime_version,
            )
            for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
                msg.methodInfos[f"{V2_SERVICE}/{method}"].idInjectionPath.append(1)
            return msg

        return await self.s._call(context, run)


class _InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: RuntimeService) -> None:
        self.s = service

    async def ServerLive(self, request: Any, context: Any) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> v2.ServerReadyResponse:
        statuses = [await a.status() for a in self.s.registry.adapters]
        return v2.ServerReadyResponse(ready=any(x.ready for x in statuses))

    async def ServerMetadata(self, request: Any, context: Any) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=self.s.settings.runtime_version)

    async def ModelReady(self, request: Any, context: Any) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=_model_id(request.name, context) in self.s.models)

    async def ModelMetadata(self, request: Any, context: Any) -> v2.ModelMetadataResponse:
        async def run() -> v2.ModelMetadataResponse:
            meta = self.s.model(_model_id(request.name, context)).metadata
            msg = v2.ModelMetadataResponse(name=meta.name, versions=list(meta.versions), platform=meta.platform)
            for t in meta.inputs:
                msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            for t in meta.outputs:
                msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            return msg

        return await self.s._call(context, run)

    async def ModelInfer(self, request: Any, context: Any) -> v2.ModelInferResponse:
        async def run() -> v2.ModelInferResponse:
            model = self.s.model(_model_id(request.model_name, context))
            resp = await model.infer(request_from_pb(request, request.model_name or model.spec.model_id))
            return response_to_pb(resp)

        return await self.s._call(context, run)


async def start_runtime_server(
    service: RuntimeService, address: str = "127.0.0.1:0"
) -> tuple[grpc.aio.Server, int]:
    """Start a ``grpc.aio`` server with both services on ``address``; returns it and its port."""
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    service.add_to_server(server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the runtime server to {address}")
    await server.start()
    return server, port
