"""Runtime processes wired into an instance: TorchScript served through a runtime process,
the router forwarding bytes to its socket; a kill -9 of the runtime under traffic."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh import InstanceSettings
from mesh._instance import Instance
from mesh._runtimes import RuntimeCopy, RuntimeSettings, RuntimeSupervisor
from mesh._store import MemoryStore
from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from puller import Puller, PullerSettings
from runtime_adapters import AdapterSettings, build_registry
from tests import model_factory as mf
from tests.mesh.runtimes.rthelp import fp32_request, open_up, readable_dir, wait_for


@pytest.fixture
async def instance() -> AsyncIterator[tuple[Instance, Path]]:
    with readable_dir() as d:
        store = MemoryStore()
        puller = Puller(PullerSettings(cache_dir=d / "cache", allowed_roots=[d]))
        await puller.start()
        sup = RuntimeSupervisor(RuntimeSettings(count=1, health_timeout_s=1.0, restart_backoff_s=0.05))
        settings = InstanceSettings(instance_id="rt-i0", grpc_port=0, rest_port=-1, data_dir=d / "data", publish_interval_s=0.2)
        inst = Instance(settings, store, build_registry(AdapterSettings()), puller, runtimes=sup)
        await inst.start()
        try:
            yield inst, d
        finally:
            await inst.stop(graceful=False)
            await inst.adapters.close()
            await puller.close()
            await store.close()


async def _register(addr: str, model_id: str, mtype: str, path: Path) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        st = await mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=mtype, path=str(path)), loadNow=True, sync=True),
            timeout=60,
        )
    assert st.status == mm.ModelStatusInfo.LOADED, st


async def test_torchscript_served_by_a_runtime_survives_kill9(instance: tuple[Instance, Path]) -> None:
    inst, d = instance
    ts = open_up(mf.make_torchscript_model(d / "ts"))
    ox = open_up(mf.make_onnx_model(d / "ox"))
    await _register(inst.endpoints.grpc, "ts", "pytorch", ts)
    await _register(inst.endpoints.grpc, "ox", "onnx", ox)
    assert isinstance(inst.router.loaded.get("ts"), RuntimeCopy)
    assert not isinstance(inst.router.loaded.get("ox"), RuntimeCopy)  # ONNX stays in process by default
    ts_in = inst.router.loaded.get("ts").metadata.inputs[0].name
    ox_meta = inst.router.loaded.get("ox").metadata.inputs[0]
    async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        ts_req = fp32_request("ts", ts_in, [1, 2, 3, 4])
        ox_req = fp32_request("ox", ox_meta.name, [0.5] * int(ox_meta.shape[-1]))
        first = pb.ModelInferResponse.FromString(await call(ts_req, timeout=30))
        assert first.model_name == "ts" and first.outputs[0].shape == [1, 3]
        errors: dict[str, list[str]] = {"ts": [], "ox": []}
        ok = {"ts": 0, "ox": 0}
        stop = asyncio.Event()

        async def traffic(model: str, payload: bytes) -> None:
            while not stop.is_set():
                try:
                    await call(payload, timeout=30)
                    ok[model] += 1
                except grpc.aio.AioRpcError as exc:
                    errors[model].append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(traffic("ts", ts_req)), asyncio.create_task(traffic("ox", ox_req))]
        await wait_for(lambda: ok["ts"] >= 5 and ok["ox"] >= 5, 20, "steady traffic")
        assert inst.runtimes is not None
        rt = inst.runtimes.runtimes[0]
        old_copy: Any = inst.router.loaded.get("ts")
        pid = rt.pid
        assert pid is not None
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: inst.router.loaded.get("ts") is not old_copy, 10, "the lost copy to be dropped")
        dropped = time.monotonic() - t0
        await wait_for(lambda: isinstance(inst.router.loaded.get("ts"), RuntimeCopy), 60, "the copy to be reloaded")
        back = time.monotonic() - t0
        served_before = ok["ts"]
        await wait_for(lambda: ok["ts"] >= served_before + 5, 20, "traffic on the reloaded copy")
        stop.set()
        await asyncio.gather(*tasks)
    assert errors["ox"] == []
    assert errors["ts"] == []  # in-flight requests waited for the reload within their deadline
    assert rt.pid != pid
    print(f"\nkill -9 of the runtime: copy dropped after {dropped:.3f}s, reloaded after {back:.3f}s")
