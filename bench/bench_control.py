"""Control plane: registration rate, and the memory an instance's routing view holds per registered model.

Run: ``python -m bench.bench_control [--models 100000]``. One instance over the memory store, in
this process. Registration rate: 5,000 models through the gRPC management API (registerModel,
32 in flight, client in the same process), then the rest through the same management code
in process, up to ``--models``. Memory: the deep size (every object reached, counted once) of
the instance's view of models, vModels and copies (``ClusterMirror``: the mirrors the router
resolves names with, their revisions and derived indexes) divided by the number of models;
baseline in the same run: the same view before registration. The process's RSS growth is
shown too; it also counts the memory store's own copy of every record and the placement
leader's view (this instance is the leader). Target (shared/DESIGN.md): <= 2 KB per model.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import psutil


def deep_size(root: Any, stop: tuple[type, ...] = ()) -> int:
    """Bytes of every object reachable from ``root`` (containers, instances, slots), each once."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    skip = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType, *stop)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, types.MappingProxyType):
            stack.append(dict(obj))
        else:
            d = getattr(obj, "__dict__", None)
            if d is not None:
                stack.append(d)
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


def view_size(state: Any) -> int:
    from mesh._store import Store

    parts = [state.models, state.vmodels, state.copies, state._holders, state._copies_by_model]
    return deep_size(parts, stop=(Store, asyncio.AbstractEventLoop, asyncio.Event))


async def main_async(models: int, via_grpc: int = 5000) -> dict[str, float]:
    import grpc

    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec
    from protos import model_mesh_pb2 as mm
    from protos import model_mesh_pb2_grpc as mm_grpc

    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "model.onnx"
        art.write_bytes(b"\x00" * 1024)
        mesh = LocalMesh(LocalMeshConfig(instances=1, data_dir=Path(tmp) / "var", allowed_roots=[Path(tmp)]))
        await mesh.start()
        inst = mesh.instances[0]
        try:
            gc.collect()
            base_view = view_size(inst.state)
            base_rss = proc.memory_info().rss
            sem = asyncio.Semaphore(32)
            async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:  # type: ignore[union-attr]
                stub = mm_grpc.ModelMeshStub(ch)

                async def reg(i: int) -> None:
                    async with sem:
                        await stub.registerModel(mm.RegisterModelRequest(
                            modelId=f"model-{i:06d}", modelInfo=mm.ModelInfo(type="onnx", path=str(art))), timeout=60)

                t0 = time.perf_counter()
                await asyncio.gather(*(reg(i) for i in range(via_grpc)))
                grpc_s = time.perf_counter() - t0

            async def reg_local(i: int) -> None:
                async with sem:
                    await inst.management.register_model(f"model-{i:06d}", ModelInfoSpec(type="onnx", path=str(art)))

            t0 = time.perf_counter()
            for start in range(via_grpc, models, 1000):
                await asyncio.gather(*(reg_local(i) for i in range(start, min(start + 1000, models))))
            local_s = time.perf_counter() - t0
            assert len(inst.state.models.items) == models, len(inst.state.models.items)
            gc.collect()
            view = view_size(inst.state)
            rss = proc.memory_info().rss
        finally:
            await mesh.stop()
    return {
        "models": float(models),
        "grpc_models": float(via_grpc),
        "grpc_rate": via_grpc / grpc_s,
        "local_rate": (models - via_grpc) / local_s,
        "view_bytes_per_model": (view - base_view) / models,
        "rss_bytes_per_model": (rss - base_rss) / models,
    }


def run(models: int = 100_000) -> dict[str, float]:
    return asyncio.run(main_async(models))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=100_000)
    r = run(ap.parse_args().models)
    print(f"registration: {r['grpc_rate']:.0f}/s over gRPC ({int(r['grpc_models'])} models), "
          f"{r['local_rate']:.0f}/s in process (to {int(r['models'])})")
    print(f"routing view per registered model: {r['view_bytes_per_model']:.0f} B (target <= 2048 B); "
          f"process RSS growth per model {r['rss_bytes_per_model']:.0f} B (store + leader view + routing view)")


if __name__ == "__main__":
    main()
