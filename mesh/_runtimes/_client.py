"""Talking to one runtime over gRPC: ``mmesh.ModelRuntime`` for management, V2 for inference.

:class:`RuntimeCopy` is a loaded copy that lives in a runtime: it is a ``LoadedModel`` (the
agent and router use it like an in-process one) plus :meth:`RuntimeCopy.infer_bytes`, which
forwards a serialized ``ModelInferRequest`` unparsed, as the router forwards to a peer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from protos import grpc_predict_v2_pb2 as v2
from protos import model_runtime_pb2 as mr
from protos import model_runtime_pb2_grpc as mr_grpc
from runtime_adapters import (
    InferOutput,
    InferRequest,
    InferResponse,
    LoadedModel,
    ModelMetadata,
    ModelNotLoaded,
    ModelSpec,
    ModelState,
    TensorMetadata,
)

from .. import _codec
from ._frames import FrameClient

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
LIVE_METHOD = "/inference.GRPCInferenceService/ServerLive"
METADATA_METHOD = "/inference.GRPCInferenceService/ModelMetadata"
MODEL_ID_HEADER = "mm-model-id"
# the runtime is gone or going: the copy is lost, not the request's fault
LOST_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def cancelled_by_a_close() -> bool:
    """Whether a CancelledError just caught was not asked for by the running task: grpc.aio
    cancels the calls of a channel closed under them (the supervisor closes a torn-down
    runtime's client), and a caller must see that as the runtime lost, not as its own cancellation."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _ser(msg: Any) -> bytes:
    return bytes(msg.SerializeToString())


class RuntimeClient:
    """One channel to one runtime and the calls the supervisor makes on it."""

    def __init__(self, address: str, *, frames_path: str = "", max_message_bytes: int = 64 << 20) -> None:
        self.address = address
        # a worker we started also answers inference in frames (two thread wake-ups per call
        # instead of gRPC's nine); external servers get V2 gRPC
        self.frames = FrameClient(frames_path) if frames_path else None
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.enable_retries", 0),
            ],
        )
        self.runtime = mr_grpc.ModelRuntimeStub(self.channel)
        self.infer_raw = self.channel.unary_unary(INFER_METHOD)  # no (de)serializers: bytes in, bytes out
        self._live = self.channel.unary_unary(
            LIVE_METHOD, request_serializer=_ser, response_deserializer=v2.ServerLiveResponse.FromString
        )
        self._metadata = self.channel.unary_unary(
            METADATA_METHOD, request_serializer=_ser, response_deserializer=v2.ModelMetadataResponse.FromString
        )

    async def live(self, timeout_s: float) -> bool:
        resp = await self._live(v2.ServerLiveRequest(), timeout=timeout_s, wait_for_ready=False)
        return bool(resp.live)

    async def load(self, spec: ModelSpec, path: str, timeout_s: float) -> int:
        key: dict[str, Any] = {"model_type": {"name": spec.model_type}}
        if spec.schema_path:
            key["schema_path"] = spec.schema_path
        if spec.options:
            key["options"] = dict(spec.options)
        resp = await self.runtime.loadModel(
            mr.LoadModelRequest(
                modelId=spec.model_id, modelType=spec.model_type, modelPath=path, modelKey=json.dumps(key)
            ),
            timeout=timeout_s,
        )
        size = int(resp.sizeInBytes)
        if size == 0:  # the runtime sizes later (the contract allows it): ask once
            size = int((await self.runtime.modelSize(mr.ModelSizeRequest(modelId=spec.model_id), timeout=timeout_s)).sizeInBytes)
        return size

    async def unload(self, model_id: str, timeout_s: float) -> None:
        await self.runtime.unloadModel(mr.UnloadModelRequest(modelId=model_id), timeout=timeout_s)

    async def metadata(self, model_id: str, timeout_s: float) -> ModelMetadata:
        msg = await self._metadata(
            v2.ModelMetadataRequest(name=model_id), timeout=timeout_s, metadata=((MODEL_ID_HEADER, model_id),)
        )
        return ModelMetadata(
            name=model_id,
            platform=msg.platform,
            versions=tuple(msg.versions),
            inputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.inputs),
            outputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.outputs),
        )

    async def infer(self, model_id: str, payload: bytes, timeout_s: float) -> bytes:
        """A serialized ModelInferRequest in, the serialized response out (not parsed here)."""
        if self.frames is not None:
            return await self.frames.call(model_id, payload, timeout_s)
        result: bytes = await self.infer_raw(payload, timeout=timeout_s, metadata=((MODEL_ID_HEADER, model_id),))
        return result

    async def close(self) -> None:
        if self.frames is not None:
            await self.frames.close()
        await self.channel.close()


class RuntimeCopy(LoadedModel):
    """A copy loaded in a runtime process (or an external runtime server).

    ``on_call`` / ``on_done`` let the owner know which models are in flight (for crash
    attribution); ``on_unload`` lets it forget the copy. A call that finds the runtime gone
    raises ``ModelNotLoaded``, so the router routes the request again (another copy, or the
    reload) within its deadline.
    """

    forwards_raw = True

    def __init__(
        self,
        spec: ModelSpec,
        size_bytes: int,
        metadata: ModelMetadata,
        client: RuntimeClient,
        *,
        runtime_name: str,
        call_timeout_s: float,
        default_timeout_s: float,
        on_call: Callable[[str], None],
        on_done: Callable[[str, bool], None],
        on_unload: Callable[[RuntimeCopy], None],
    ) -> None:
        self.spec = spec
        self.size_bytes = size_bytes
        self.metadata = metadata
        self.runtime_name = runtime_name
        self._client = client
        self._call_timeout_s = call_timeout_s
        self._default_timeout_s = default_timeout_s
        self._on_call = on_call
        self._on_done = on_done
        self._on_unload = on_unload
        self._state = ModelState.LOADED
        self.lost_reason = ""
        self.share: Path | None = None  # the supervisor's read-only copy of the artifact, if any

    @property
    def status(self) -> ModelState:
        return self._state

    def mark_lost(self, reason: str) -> None:
        self._state = ModelState.UNLOADED
        self.lost_reason = reason

    def _gone(self, detail: str = "") -> ModelNotLoaded:
        why = self.lost_reason or detail or "unloaded"
        return ModelNotLoaded(f"model '{self.spec.model_id}' is not loaded in runtime {self.runtime_name} ({why})")

    async def infer_bytes(self, payload: bytes, timeout_s: float | None = None) -> bytes:
        """Forward a serialized ModelInferRequest unparsed; returns the serialized response."""
        if self._state is not ModelState.LOADED:
            raise self._gone()
        mid = self.spec.model_id
        self._on_call(mid)
        lost = False
        try:
            return await self._client.infer(
                mid, payload, max(timeout_s if timeout_s is not None else self._default_timeout_s, 0.001)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in LOST_CODES or self._state is not ModelState.LOADED:
                lost = True
                raise self._gone(f"{exc.code().name}: {exc.details()}") from exc
            raise
        except asyncio.CancelledError:
            if self._state is ModelState.LOADED or not cancelled_by_a_close():
                raise
            lost = True  # the runtime was torn down during the call: routed again, like UNAVAILABLE
            raise self._gone("its channel closed during the call") from None
        finally:
            self._on_done(mid, lost)

    async def infer(self, request: InferRequest) -> InferResponse:
        raw = await self.infer_bytes(_codec.infer_request_to_pb(request).SerializeToString())
        msg = v2.ModelInferResponse.FromString(raw)
        outputs = tuple(
            InferOutput(o.name, o.datatype, tuple(o.shape), bytes(msg.raw_output_contents[i]))
            for i, o in enumerate(msg.outputs)
        )
        return InferResponse(model_name=msg.model_name, outputs=outputs, id=msg.id, model_version=msg.model_version)

    async def unload(self) -> None:
        if self._state is ModelState.UNLOADED:
            return
        self._state = ModelState.UNLOADED
        try:
            await self._client.unload(self.spec.model_id, self._call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in LOST_CODES:
                raise
        except asyncio.CancelledError:
            if not cancelled_by_a_close():
                raise  # a runtime closed under the call holds nothing any more: unloaded
        finally:
            self._on_unload(self)
