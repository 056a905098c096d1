"""An external runtime (a server written here that speaks ``mmesh.ModelRuntime`` + V2 gRPC,
``toy_runtime``) declared in the runtime settings serves models through a real instance:
registration, inference, a vModel, ``ensureLoaded``, eviction (the unload reaches the server),
and a kill -9 of the server reports its copy lost at once; the copy comes back when it returns."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from mesh import InstanceSettings
from mesh._instance import Instance
from mesh._runtimes import ExternalRuntime, RuntimeCopy, RuntimeSettings, RuntimeSupervisor
from mesh._store import MemoryStore
from protos import grpc_predict_v2_pb2 as pb
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from puller import Puller, PullerSettings
from runtime_adapters import AdapterSettings, build_registry
from tests.mesh.runtimes.rthelp import readable_dir, wait_for

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]


@contextmanager
def toy_server(sock: Path) -> Iterator[subprocess.Popen[bytes]]:
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mesh.runtimes.toy_runtime", "--address", f"unix:{sock}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"listening"), "the toy runtime did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Instance, Path]]:
    with readable_dir() as d:
        store = MemoryStore()
        puller = Puller(PullerSettings(cache_dir=d / "cache", allowed_roots=[d]))
        await puller.start()
        toy = ExternalRuntime(name="toy", address=f"unix:{d / 'toy.sock'}", model_types=("scale",))
        sup = RuntimeSupervisor(
            RuntimeSettings(isolated_types=(), external=(toy,), health_interval_s=0.1, health_timeout_s=0.5, health_failures=2)
        )
        assert [r.name for r in sup.runtimes] == ["toy"]  # no worker processes: only the external server
        settings = InstanceSettings(
            instance_id="ext-i0", grpc_port=0, rest_port=-1, data_dir=d / "data", publish_interval_s=0.2,
            capacity_bytes=100 * MiB, scheduler_tick_s=0.3,
        )
        inst = Instance(settings, store, build_registry(AdapterSettings()), puller, runtimes=sup)
        try:
            yield inst, d
        finally:
            await inst.stop(graceful=False)
            await inst.adapters.close()
            await puller.close()
            await store.close()


def _model(d: Path, name: str, factor: float, size: int) -> Path:
    p = d / "models" / name / "model.txt"
    p.parent.mkdir(parents=True)
    p.write_text(f"{factor} {size}")
    os.chmod(p.parent, 0o755)
    os.chmod(p.parent.parent, 0o755)
    return p


def _request(name: str, values: list[float]) -> bytes:
    req = pb.ModelInferRequest(model_name=name, id="r1")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, len(values)])
    t.contents.fp32_contents.extend(values)
    return req.SerializeToString()


def _values(raw: bytes) -> list[float]:
    msg = pb.ModelInferResponse.FromString(raw)
    data = msg.raw_output_contents[0]
    return list(struct.unpack(f"<{len(data) // 4}f", data))


async def _toy_ready(sock: Path, model_id: str) -> bool:
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        resp = await v2_grpc.GRPCInferenceServiceStub(ch).ModelReady(pb.ModelReadyRequest(name=model_id), timeout=5)
    return bool(resp.ready)


async def test_external_runtime_serves_through_the_mesh(setup: tuple[Instance, Path]) -> None:
    inst, d = setup
    sock = d / "toy.sock"
    a = _model(d, "a", 2.0, 60 * MiB)
    b = _model(d, "b", 3.0, 60 * MiB)
    with toy_server(sock) as toy:
        await inst.start()
        assert inst.runtimes is not None
        rt = inst.runtimes.runtimes[0]
        async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:
            mesh = mm_grpc.ModelMeshStub(ch)
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            st = await mesh.registerModel(
                mm.RegisterModelRequest(modelId="a", modelInfo=mm.ModelInfo(type="scale", path=str(a)), loadNow=True, sync=True),
                timeout=30,
            )
            assert st.status == mm.ModelStatusInfo.LOADED, st
            copy = inst.router.loaded.get("a")
            assert isinstance(copy, RuntimeCopy) and copy.runtime_name == "toy"
            assert copy.size_bytes == 60 * MiB  # the runtime's measured size, not the file's
            assert _values(await infer(_request("a", [1.0, 2.5]), timeout=10)) == [2.0, 5.0]
            # a vModel on a model of the external runtime
            vst = await mesh.setVModel(mm.SetVModelRequest(vModelId="va", targetModelId="a"), timeout=10)
            assert vst.activeModelId == "a", vst
            assert _values(await infer(_request("va", [4.0]), timeout=10)) == [8.0]

            # b registered but not loaded; ensureLoaded loads it, and a (least recently used) is
            # evicted for it: 60 + 60 MiB do not fit in 100
            st = await mesh.registerModel(
                mm.RegisterModelRequest(modelId="b", modelInfo=mm.ModelInfo(type="scale", path=str(b))), timeout=10
            )
            assert st.status != mm.ModelStatusInfo.LOADED
            assert not await _toy_ready(sock, "b")
            st = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId="b", sync=True), timeout=30)
            assert st.status == mm.ModelStatusInfo.LOADED, st
            assert await _toy_ready(sock, "b")
            assert _values(await infer(_request("b", [1.0]), timeout=10)) == [3.0]
            await wait_for(lambda: "a" not in inst.router.loaded, 20, "a evicted")
            for _ in range(100):  # the unload reached the external server
                if not await _toy_ready(sock, "a"):
                    break
                await asyncio.sleep(0.05)
            assert not await _toy_ready(sock, "a")
            assert sorted(rt.copies) == ["b"]

            # the server dies: its copy is reported lost within a few probes, not a lease expiry
            lost_copy = inst.router.loaded.get("b")
            t0 = time.monotonic()
            os.kill(toy.pid, signal.SIGKILL)
            # (the leader places it again at once; that load waits for a runtime that can take it)
            await wait_for(lambda: inst.router.loaded.get("b") is not lost_copy, 10, "b reported lost")
            lost_after = time.monotonic() - t0
            assert isinstance(lost_copy, RuntimeCopy) and "unreachable" in lost_copy.lost_reason
            assert "unreachable" in rt.last_reason

        # the server comes back on its socket: the mesh loads b there again and serves it
        with toy_server(sock):
            async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:
                infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                assert _values(await infer(_request("b", [2.0]), timeout=30)) == [6.0]
            assert await _toy_ready(sock, "b")
    print(f"\nexternal runtime killed: copy reported lost after {lost_after:.3f}s")


async def test_a_model_naming_its_runtime_loads_there_and_an_unknown_runtime_fails_clearly(setup: tuple[Instance, Path]) -> None:
    """``runtime`` in the registration key (what the controller writes for a model a ServingRuntime
    serves) picks the runtime by name, whatever the model type says: a type no runtime lists
    loads on the named one; a name this instance does not have fails the load with the reason."""
    inst, d = setup
    sock = d / "toy.sock"
    m = _model(d, "named", 5.0, 1 * MiB)
    with toy_server(sock):
        await inst.start()
        async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:
            mesh = mm_grpc.ModelMeshStub(ch)
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            info = mm.ModelInfo(type="sklearn", path=str(m), key='{"runtime": "toy"}')  # toy lists only "scale"
            st = await mesh.registerModel(mm.RegisterModelRequest(modelId="named", modelInfo=info, loadNow=True, sync=True), timeout=30)
            assert st.status == mm.ModelStatusInfo.LOADED, st
            copy = inst.router.loaded.get("named")
            assert isinstance(copy, RuntimeCopy) and copy.runtime_name == "toy"
            assert _values(await infer(_request("named", [2.0]), timeout=10)) == [10.0]

            info = mm.ModelInfo(type="scale", path=str(m), key='{"runtime": "triton-2"}')
            st = await mesh.registerModel(mm.RegisterModelRequest(modelId="elsewhere", modelInfo=info, loadNow=True, sync=True), timeout=30)
            assert st.status == mm.ModelStatusInfo.LOADING_FAILED, st
            assert "runtime 'triton-2'" in st.errors[0] and "toy" in st.errors[0], st.errors
            assert not await _toy_ready(sock, "elsewhere")
            # the other model never noticed
            assert _values(await infer(_request("named", [1.0]), timeout=10)) == [5.0]
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await mesh.registerModel(
                    mm.RegisterModelRequest(modelId="bad", modelInfo=mm.ModelInfo(type="scale", path=str(m), key='{"runtime": 7}')),
                    timeout=10,
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
