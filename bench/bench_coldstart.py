"""Cold start: first request for an unloaded model (artifact on local disk) vs the adapter's own load time.

Run: ``python -m bench.bench_coldstart [--models 20]``. For each of N fresh ONNX models (distinct
files, so no cache helps): time ``adapter.load`` directly (baseline), then, in a local mesh of
one instance over the memory store, time the first V2 request after registration (miss ->
placement -> stage -> load -> infer). Target (shared/DESIGN.md): first request <= load + 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np


async def main_async(n: int) -> dict[str, float]:
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec
    from mesh._demo import make_onnx
    from protos import grpc_predict_v2_pb2 as pb
    from runtime_adapters import AdapterSettings, ModelSpec, build_registry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_paths = [make_onnx(root / "base" / f"m{i}" / "model.onnx", 1024, seed=i) for i in range(n)]
        mesh_paths = [make_onnx(root / "mesh" / f"m{i}" / "model.onnx", 1024, seed=100 + i) for i in range(n)]
        registry = build_registry(AdapterSettings())
        adapter = registry.for_type("onnx")
        warm = await adapter.load(ModelSpec(model_id="warm", model_type="onnx"), base_paths[0])
        await warm.unload()
        loads = []
        for i, p in enumerate(base_paths):
            t0 = time.perf_counter()
            m = await adapter.load(ModelSpec(model_id=f"b{i}", model_type="onnx"), p)
            loads.append((time.perf_counter() - t0) * 1000)
            await m.unload()
        await registry.close()

        mesh = LocalMesh(LocalMeshConfig(instances=1, data_dir=root / "var", allowed_roots=[root]))
        await mesh.start()
        inst = mesh.instances[0]
        firsts = []
        try:
            async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:  # type: ignore[union-attr]
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                # warm the runtime once, as the baseline did
                await inst.management.register_model("warm", ModelInfoSpec(type="onnx", path=str(base_paths[0])))
                for i, p in enumerate(["warm", *[str(x) for x in mesh_paths]]):
                    mid = "warm" if i == 0 else f"m{i}"
                    if i:
                        await inst.management.register_model(mid, ModelInfoSpec(type="onnx", path=p))
                    msg = pb.ModelInferRequest(model_name=mid)
                    msg.inputs.add(name="input", datatype="FP32", shape=[1, 16])
                    msg.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
                    t0 = time.perf_counter()
                    await call(msg.SerializeToString(), timeout=60)
                    if i:
                        firsts.append((time.perf_counter() - t0) * 1000)
        finally:
            await mesh.stop()
    return {"models": float(n), "load_p50_ms": statistics.median(loads), "load_max_ms": max(loads),
            "first_p50_ms": statistics.median(firsts), "first_max_ms": max(firsts)}


def run(n: int = 20) -> dict[str, float]:
    return asyncio.run(main_async(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=20)
    r = run(ap.parse_args().models)
    print(f"models: {int(r['models'])} ONNX (16x1024x4 MLP), one instance, memory store")
    print(f"adapter.load (baseline)          p50 {r['load_p50_ms']:.1f} ms  max {r['load_max_ms']:.1f} ms")
    print(f"first request through modelmux   p50 {r['first_p50_ms']:.1f} ms  max {r['first_max_ms']:.1f} ms")
    print(f"overhead p50: {r['first_p50_ms'] - r['load_p50_ms']:+.1f} ms (target <= +20 ms)")


if __name__ == "__main__":
    main()
