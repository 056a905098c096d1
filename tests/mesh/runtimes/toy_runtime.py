"""An external runtime written for the tests, independent of ``runtime_adapters``: a server that
speaks ``mmesh.ModelRuntime`` + V2 gRPC and serves one model type, ``scale``.

A ``scale`` model is a file (or a folder holding ``model.txt``) with two numbers: a factor and
the size in bytes the runtime reports for it. Inference multiplies an FP32 input by the factor.

``python -m tests.mesh.runtimes.toy_runtime --address unix:/path`` prints ``listening`` once
it accepts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from pathlib import Path
from typing import Any

import grpc

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as mr
from protos import model_runtime_pb2_grpc as mr_grpc


def _read(path: str) -> tuple[float, int]:
    p = Path(path)
    if p.is_dir():
        p = p / "model.txt"
    factor, size = p.read_text().split()
    return float(factor), int(size)


def _model_id(name: str, context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "mm-model-id":
            return str(value)
    return name


class ToyRuntime(mr_grpc.ModelRuntimeServicer, v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.models: dict[str, tuple[float, int]] = {}

    async def loadModel(self, request: Any, context: Any) -> mr.LoadModelResponse:
        try:
            factor, size = await asyncio.to_thread(_read, request.modelPath)
        except (OSError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot read {request.modelPath}: {exc}")
        self.models[request.modelId] = (factor, size)
        return mr.LoadModelResponse(sizeInBytes=size)

    async def unloadModel(self, request: Any, context: Any) -> mr.UnloadModelResponse:
        self.models.pop(request.modelId, None)
        return mr.UnloadModelResponse()

    async def modelSize(self, request: Any, context: Any) -> mr.ModelSizeResponse:
        if request.modelId not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, request.modelId)
        return mr.ModelSizeResponse(sizeInBytes=self.models[request.modelId][1])

    async def runtimeStatus(self, request: Any, context: Any) -> mr.RuntimeStatusResponse:
        return mr.RuntimeStatusResponse(status=mr.RuntimeStatusResponse.READY)

    async def ServerLive(self, request: Any, context: Any) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ModelReady(self, request: Any, context: Any) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=_model_id(request.name, context) in self.models)

    async def ModelMetadata(self, request: Any, context: Any) -> v2.ModelMetadataResponse:
        mid = _model_id(request.name, context)
        if mid not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {mid} is not loaded")
        msg = v2.ModelMetadataResponse(name=mid, platform="toy-scale")
        msg.inputs.add(name="x", datatype="FP32", shape=[-1, -1])
        msg.outputs.add(name="y", datatype="FP32", shape=[-1, -1])
        return msg

    async def ModelInfer(self, request: Any, context: Any) -> v2.ModelInferResponse:
        mid = _model_id(request.model_name, context)
        if mid not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {mid} is not loaded")
        factor = self.models[mid][0]
        t = request.inputs[0]
        if request.raw_input_contents:
            raw = request.raw_input_contents[0]
            values = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        else:
            values = list(t.contents.fp32_contents)
        out = v2.ModelInferResponse(model_name=request.model_name, id=request.id)
        out.outputs.add(name="y", datatype="FP32", shape=list(t.shape))
        out.raw_output_contents.append(struct.pack(f"<{len(values)}f", *(v * factor for v in values)))
        return out


async def serve(address: str) -> None:
    server = grpc.aio.server()
    toy = ToyRuntime()
    mr_grpc.add_ModelRuntimeServicer_to_server(toy, server)
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(toy, server)
    server.add_insecure_port(address)
    await server.start()
    print("listening", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    asyncio.run(serve(parser.parse_args().address))


if __name__ == "__main__":
    main()
