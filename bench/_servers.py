"""Server processes for the routing benchmark.

``python -m bench._servers bare --model P --ready F``: the same ONNX adapter behind a bare
grpc.aio ModelInfer handler (parse, convert, infer, serialize: the baseline).
``python -m bench._servers mesh --model P --ready F --instances N``: a local mesh of N
instances; the model is loaded on instance 0 only, so instance 0 is a local hit and
instance 1 a remote hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
from pathlib import Path

import grpc


async def bare(model: Path, ready: Path) -> None:
    from mesh import _codec
    from protos import grpc_predict_v2_pb2 as pb
    from runtime_adapters import AdapterSettings, ModelSpec, build_registry

    registry = build_registry(AdapterSettings())
    loaded = await registry.for_type("onnx").load(ModelSpec(model_id="bench", model_type="onnx"), model)

    async def infer(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        msg = pb.ModelInferRequest.FromString(payload)
        resp = await loaded.infer(_codec.infer_request_from_pb(msg))
        return _codec.infer_response_to_pb(resp).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ready.write_text(json.dumps({"endpoints": [f"127.0.0.1:{port}"]}))
    await _wait_signal()
    await server.stop(None)


async def mesh(model: Path, ready: Path, instances: int) -> None:
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec

    with tempfile.TemporaryDirectory() as tmp:
        config = LocalMeshConfig(instances=instances, data_dir=Path(tmp), allowed_roots=[model.parent])
        local = LocalMesh(config)
        await local.start()
        # place the model on instance 0 explicitly: ask instance 0 to load it, and wait
        inst0 = local.instances[0]
        await inst0.management.register_model("bench", ModelInfoSpec(type="onnx", path=str(model)), load_now=True, sync=True)
        holders = inst0.state.holders("bench")
        order = sorted(local.instances, key=lambda i: i.instance_id not in holders)
        ready.write_text(json.dumps({"endpoints": [i.endpoints.grpc for i in order if i.endpoints]}))
        await _wait_signal()
        await local.stop()


async def _wait_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["bare", "mesh"])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--ready", type=Path, required=True)
    ap.add_argument("--instances", type=int, default=2)
    a = ap.parse_args()
    if a.kind == "bare":
        asyncio.run(bare(a.model, a.ready))
    else:
        asyncio.run(mesh(a.model, a.ready, a.instances))


if __name__ == "__main__":
    main()
