"""Server processes for the benchmarks (each in its own process, started by the bench and stopped by SIGTERM).

``python -m bench._servers bare --type T --model P --ready F``: the model's adapter behind a bare
grpc.aio ModelInfer handler and a bare FastAPI ``/v2/models/{name}/infer`` route (parse, convert,
infer, serialize: the baseline, with the same codec modelmux uses and no routing).
``--batching`` wraps the model in the adaptive batcher (``runtime_adapters.with_batching``, defaults).
``python -m bench._servers mesh --type T --model P --ready F --instances N``: a local mesh of N
instances over the memory store, one process; the model is loaded on one instance, which is
listed first (a local hit); the others are remote hits (forwarded bytes).
The ready file holds ``{"grpc": [...], "rest": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import grpc
from fastapi import Request  # module level: FastAPI resolves the handler's annotations here


def _write_ready(ready: Path, endpoints: dict[str, object]) -> None:
    """Write the ready file atomically: a reader that sees it exist never reads it half-written."""
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(json.dumps(endpoints))
    os.replace(tmp, ready)


async def bare(model_type: str, model: Path, ready: Path, name: str, batching: bool = False) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from mesh import _codec
    from runtime_adapters import (
        AdapterSettings,
        BatchingSettings,
        ModelSpec,
        build_registry,
        with_batching,
    )

    registry = build_registry(AdapterSettings())
    loaded = await registry.for_type(model_type).load(ModelSpec(model_id=name, model_type=model_type), model)
    loaded = with_batching(loaded, BatchingSettings(enabled=batching))

    async def infer(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        msg = _codec.parse_infer_request(payload)
        resp = await loaded.infer(_codec.infer_request_from_pb(msg))
        return _codec.infer_response_to_pb(resp).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def rest_infer(name: str, request: Request) -> JSONResponse:
        req = _codec.infer_request_from_json(name, json.loads(await request.body()))
        return JSONResponse(_codec.infer_response_to_json(await loaded.infer(req)))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as modelmux's
    sock.bind(("127.0.0.1", 0))
    rest = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    task = asyncio.create_task(rest.serve(sockets=[sock]))
    while not rest.started:  # uvicorn offers no event for this
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    _write_ready(ready, {"grpc": [f"127.0.0.1:{port}"], "rest": [f"127.0.0.1:{sock.getsockname()[1]}"]})
    await _wait_signal()
    rest.should_exit = True
    await task
    await server.stop(None)


async def mesh(model_type: str, model: Path, ready: Path, instances: int, name: str) -> None:
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec

    with tempfile.TemporaryDirectory() as tmp:
        config = LocalMeshConfig(instances=instances, data_dir=Path(tmp), allowed_roots=[model.parent])
        local = LocalMesh(config)
        await local.start()
        inst0 = local.instances[0]
        await inst0.management.register_model(name, ModelInfoSpec(type=model_type, path=str(model)), load_now=True, sync=True)
        holders = inst0.state.holders(name)
        order = sorted(local.instances, key=lambda i: i.instance_id not in holders)
        eps: dict[str, Any] = {"grpc": [i.endpoints.grpc for i in order if i.endpoints],
                               "rest": [i.endpoints.rest for i in order if i.endpoints]}
        _write_ready(ready, eps)
        await _wait_signal()
        await local.stop()


async def density(artifacts: Path, ready: Path, instances: int, models: int, capacity_bytes: int, *,
                  etcd: str = "", prefix: str = "/modelmux", id_prefix: str = "local", register: bool = True) -> None:
    """A local mesh with ``models`` registered models over the ONNX files in ``artifacts`` (round robin).

    ``etcd``: the store is that etcd (several of these processes form one mesh, each with its own
    ``id_prefix``; the one with ``register`` registers the models, the others serve them)."""
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec
    from mesh._store import StoreSettings
    from runtime_adapters import collect_for_freezing

    files = sorted(artifacts.glob("*/model.onnx"))
    store = StoreSettings(kind="etcd", endpoints=[etcd], prefix=prefix) if etcd else StoreSettings(kind="memory")
    with tempfile.TemporaryDirectory() as tmp:
        config = LocalMeshConfig(instances=instances, capacity_bytes=capacity_bytes, data_dir=Path(tmp), allowed_roots=[artifacts],
                                 store=store, id_prefix=id_prefix)
        local = LocalMesh(config)
        await local.start()
        m = local.instances[0].management
        sem = asyncio.Semaphore(64)

        async def reg(i: int) -> None:
            async with sem:
                await m.register_model(f"m{i}", ModelInfoSpec(type="onnx", path=str(files[i % len(files)])))

        for start in range(0, models if register else 0, 1000):
            await asyncio.gather(*(reg(i) for i in range(start, min(start + 1000, models))))
        # every instance serves once its mirror holds every model (the registering one at once)
        while len(local.instances[0].state.models.items) < models:  # noqa: ASYNC110 (the mirror offers no event per count)
            await asyncio.sleep(0.05)
        # the models were registered after start: one full collection, as an instance makes at start,
        # so the heap policy freezes their records before the measured phases (not during the first)
        collect_for_freezing()
        probe = ready.with_suffix(".memory")
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _memory_reading, probe)
        _write_ready(ready, ({"grpc": [i.endpoints.grpc for i in local.instances if i.endpoints],
                                     "rest": [i.endpoints.rest for i in local.instances if i.endpoints],
                                     "pid": os.getpid(), "memory": str(probe)}))
        await _wait_signal()
        await local.stop()


def _memory_reading(path: Path) -> None:
    """SIGUSR1 in the density server: append where the process's memory is (settled as the load
    meter settles it: gc and malloc_trim) to ``path`` as a JSON line: RSS, the C heap's bytes in
    use (glibc mallinfo2: arenas' in-use chunks plus mmapped blocks) and its free bytes kept in
    arenas. What is neither is outside the C heap: libraries, Python's small-object arenas, stacks."""
    from runtime_adapters._memory import process_meter

    meter, _ = process_meter()
    rss = meter.settle()
    reading = {"rss": rss, "heap_in_use": meter.heap_in_use(), "heap_free": meter.heap_free()}
    with path.open("a") as f:
        f.write(json.dumps(reading) + "\n")


async def _wait_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    # every server here runs on the loop modelmux serve runs on
    from runtime_adapters import run_event_loop

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["bare", "mesh", "density"])
    ap.add_argument("--type", default="onnx")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--ready", type=Path, required=True)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--name", default="bench")
    ap.add_argument("--batching", action="store_true", help="bare: adaptive batching on")
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--capacity-bytes", type=int, default=32 << 20)
    ap.add_argument("--etcd", default="", help="density: the store is this etcd endpoint (default: memory)")
    ap.add_argument("--prefix", default="/modelmux", help="density: the etcd key prefix")
    ap.add_argument("--id-prefix", default="local", help="density: instance ids are <id-prefix>-<i>")
    ap.add_argument("--no-register", action="store_true", help="density: serve the models another process registers")
    a = ap.parse_args()
    if a.kind == "density":
        run_event_loop(density(a.model, a.ready, a.instances, a.models, a.capacity_bytes, etcd=a.etcd, prefix=a.prefix,
                               id_prefix=a.id_prefix, register=not a.no_register))
    elif a.kind == "bare":
        run_event_loop(bare(a.type, a.model, a.ready, a.name, a.batching))
    else:
        run_event_loop(mesh(a.type, a.model, a.ready, a.instances, a.name))


if __name__ == "__main__":
    main()
