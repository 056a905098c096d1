"""A runtime worker for fault tests: the real adapters plus a ``hostile`` model type whose
models misbehave on purpose (``python -m tests.mesh.runtimes.hostile_runtime --address ...``).

A hostile model's ``action`` option says how, at inference: ``exit`` (``os._exit``), ``segv``
(a null read through ctypes), ``hang`` (SIGSTOP itself), ``alloc`` (allocate without bound);
``read`` (return the bytes of the file ``path``, or the error); at load: ``leak`` keeps ``leak_mb`` MiB alive after the model is unloaded. Any other action
answers an ``OUTPUT0`` echo of ``INPUT0``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
from pathlib import Path
from typing import Any

from runtime_adapters import (
    AdapterRegistry,
    AdapterSettings,
    InferOutput,
    InferRequest,
    InferResponse,
    LoadedModel,
    ModelMetadata,
    ModelSpec,
    ModelState,
    RuntimeAdapter,
    RuntimeServerSettings,
    RuntimeService,
    RuntimeStatus,
    TensorMetadata,
    start_frame_server,
    start_runtime_server,
)
from runtime_adapters._registry import FRAMEWORK_ADAPTERS

_LEAKED: list[bytearray] = []


class HostileModel(LoadedModel):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.size_bytes = 1 << 20
        self.metadata = ModelMetadata(
            spec.model_id, "hostile", (), (TensorMetadata("INPUT0", "FP32", (-1,)),), (TensorMetadata("OUTPUT0", "FP32", (-1,)),)
        )
        self._state = ModelState.LOADED

    @property
    def status(self) -> ModelState:
        return self._state

    async def infer(self, request: InferRequest) -> InferResponse:
        action = self.spec.options.get("action", "")
        if action == "exit":
            os._exit(7)
        if action == "segv":
            ctypes.string_at(0)
        if action == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)
        if action == "alloc":
            hog = []
            while True:
                hog.append(bytearray(256 << 20))
        if action == "read":
            try:
                with open(self.spec.options["path"], "rb") as f:
                    data = f.read()
            except OSError as exc:
                data = f"ERR {type(exc).__name__}: {exc}".encode()
            return InferResponse(request.model_name, (InferOutput("OUTPUT0", "BYTES", (1,), len(data).to_bytes(4, "little") + data),), request.id)
        raw = request.inputs[0].raw or b""
        return InferResponse(request.model_name, (InferOutput("OUTPUT0", "FP32", request.inputs[0].shape, raw),), request.id)

    async def unload(self) -> None:
        self._state = ModelState.UNLOADED


class HostileAdapter(RuntimeAdapter):
    name = "hostile"
    model_types = ("hostile",)

    async def load(self, spec: ModelSpec, local_path: Path) -> LoadedModel:
        if spec.options.get("action") == "leak":
            chunk = bytearray(int(spec.options.get("leak_mb", "300")) << 20)
            chunk[:: 4096] = b"x" * len(chunk[:: 4096])  # touch every page: resident, not just reserved
            _LEAKED.append(chunk)
        if spec.options.get("action") == "exit_on_load":
            os._exit(9)
        return HostileModel(spec)

    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        return 1 << 20

    async def status(self) -> RuntimeStatus:
        return RuntimeStatus(name=self.name, ready=True, loaded_models=0, used_bytes=0)


async def serve(address: str, frames: str) -> None:
    settings = AdapterSettings()
    adapters: list[Any] = [cls(settings) for cls in FRAMEWORK_ADAPTERS if cls.available()]
    registry = AdapterRegistry(settings, [*adapters, HostileAdapter()])
    service = RuntimeService(registry, RuntimeServerSettings())
    server, port = await start_runtime_server(service, address)
    if frames:  # the instance's inference path to its workers
        await start_frame_server(service, frames, inline_below_s=0.001)
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--frames", default="")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.frames))


if __name__ == "__main__":
    main()
