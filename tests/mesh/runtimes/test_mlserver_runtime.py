"""MLServer as an external runtime of a real instance: a scikit-learn model (trained here, in
MLServer's own venv) registered with the mesh is staged into MLServer's model repository,
loaded through its V2 model-repository API, served through the instance's V2 gRPC edge (bytes
forwarded to MLServer's gRPC port), reached through a vModel and ``ensureLoaded``, and unloaded
from MLServer when unregistered.

MLServer lives in ``var/mlserver-venv`` (tests/peer_venv.py: built by ``make test`` before the
suite, else on first use, and kept for reruns).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from mesh import InstanceSettings
from mesh._instance import Instance
from mesh._runtimes import ExternalRuntime, RuntimeCopy, RuntimeSettings, RuntimeSupervisor
from mesh._store import MemoryStore
from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from puller import Puller, PullerSettings
from runtime_adapters import AdapterSettings, build_registry
from tests import peer_venv
from tests.mesh.runtimes.rthelp import readable_dir, wait_for

pytestmark = pytest.mark.slow


TRAIN = """
import sys, joblib
from sklearn.linear_model import LinearRegression
X = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 3.0]]
y = [2 * a + 3 * b + 1 for a, b in X]
joblib.dump(LinearRegression().fit(X, y), sys.argv[1])
"""


def _venv_python() -> Path:
    try:
        return peer_venv.ensure()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot install MLServer with pip into {peer_venv.VENV}: {out.decode(errors='replace')[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mlserver(py: Path, repo: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int]]]:
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    # models load in the server process (no inference worker pool): quicker to start, one RSS to watch
    (repo / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "parallel_workers": 0, "debug": False, **ports}))
    log = open(repo.parent / "mlserver.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([str(py.parent / "mlserver"), "start", str(repo)], stdout=log, stderr=subprocess.STDOUT, cwd=repo.parent, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (repo.parent / "mlserver.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{ports['http_port']}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "MLServer did not become ready in 180 s"
            time.sleep(0.2)
        yield proc, ports
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Instance, Path, dict[str, int]]]:
    py = _venv_python()
    with readable_dir() as d:
        model = d / "models" / "sk" / "model.joblib"
        model.parent.mkdir(parents=True)
        subprocess.run([str(py), "-c", TRAIN, str(model)], check=True)
        repo = d / "mlserver-repo"
        repo.mkdir()
        with mlserver(py, repo) as (proc, ports):
            store = MemoryStore()
            puller = Puller(PullerSettings(cache_dir=d / "cache", allowed_roots=[d]))
            await puller.start()
            ext = ExternalRuntime(
                name="mlserver", kind="mlserver", model_types=("sklearn",), address=f"127.0.0.1:{ports['grpc_port']}",
                rest_address=f"127.0.0.1:{ports['http_port']}", model_repository=str(repo), pid=proc.pid,
            )
            # with parallel_workers 0 MLServer imports scikit-learn on its event loop at the first
            # load: on a busy host its health answers pause for seconds
            sup = RuntimeSupervisor(
                RuntimeSettings(isolated_types=(), external=(ext,), health_interval_s=0.2, health_timeout_s=5.0, health_failures=4)
            )
            settings = InstanceSettings(instance_id="mls-i0", grpc_port=0, rest_port=-1, data_dir=d / "data", publish_interval_s=0.2)
            inst = Instance(settings, store, build_registry(AdapterSettings()), puller, runtimes=sup)
            await inst.start()
            try:
                yield inst, d, ports
            finally:
                await inst.stop(graceful=False)
                await inst.adapters.close()
                await puller.close()
                await store.close()


def _request(name: str, rows: list[list[float]]) -> bytes:
    req = pb.ModelInferRequest(model_name=name, id="q1")
    t = req.inputs.add(name="x", datatype="FP64", shape=[len(rows), len(rows[0])])
    t.contents.fp64_contents.extend(v for r in rows for v in r)
    return req.SerializeToString()


def _predictions(raw: bytes) -> list[float]:
    import numpy as np

    msg = pb.ModelInferResponse.FromString(raw)
    out = msg.outputs[0]
    if msg.raw_output_contents:
        return [float(v) for v in np.frombuffer(msg.raw_output_contents[0], dtype=np.float64)]
    return list(out.contents.fp64_contents)


async def _mlserver_state(port: int) -> dict[str, str]:
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"http://127.0.0.1:{port}/v2/repository/index", json={}, timeout=10)
    return {m["name"]: m.get("state", "") for m in resp.json()}


async def test_sklearn_model_served_by_mlserver_through_the_mesh(setup: tuple[Instance, Path, dict[str, int]]) -> None:
    inst, d, ports = setup
    model = d / "models" / "sk" / "model.joblib"
    async with grpc.aio.insecure_channel(inst.endpoints.grpc) as ch:
        mesh = mm_grpc.ModelMeshStub(ch)
        infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        st = await mesh.registerModel(
            mm.RegisterModelRequest(modelId="sk:lin@1", modelInfo=mm.ModelInfo(type="sklearn", path=str(model)), loadNow=True, sync=True),
            timeout=120,
        )
        assert st.status == mm.ModelStatusInfo.LOADED, st
        copy = inst.router.loaded.get("sk:lin@1")
        assert isinstance(copy, RuntimeCopy) and copy.runtime_name == "mlserver"
        assert copy.size_bytes >= model.stat().st_size  # RSS growth of MLServer, at least the artifact
        states = await _mlserver_state(ports["http_port"])
        [name] = [n for n in states if n.startswith("sk_lin_1-")]  # staged under a folder-safe name
        assert states[name] == "READY"

        got = _predictions(await infer(_request("sk:lin@1", [[1.0, 2.0], [0.0, 0.0]]), timeout=30))
        assert got == pytest.approx([9.0, 1.0])
        vst = await mesh.setVModel(mm.SetVModelRequest(vModelId="lin-v", targetModelId="sk:lin@1"), timeout=10)
        assert vst.activeModelId == "sk:lin@1", vst
        answer = await infer(_request("lin-v", [[2.0, 1.0]]), timeout=30)
        assert _predictions(answer) == pytest.approx([8.0])
        assert pb.ModelInferResponse.FromString(answer).model_name == "lin-v"  # the name asked for, not MLServer's

        # a second model, loaded on demand with ensureLoaded
        st = await mesh.registerModel(
            mm.RegisterModelRequest(modelId="sk2", modelInfo=mm.ModelInfo(type="sklearn", path=str(model))), timeout=10
        )
        st = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId="sk2", sync=True), timeout=120)
        assert st.status == mm.ModelStatusInfo.LOADED, st
        assert _predictions(await infer(_request("sk2", [[1.0, 1.0]]), timeout=30)) == pytest.approx([6.0])

        # unregistering unloads it from MLServer and removes its staged folder
        await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId="lin-v"), timeout=10)
        await mesh.unregisterModel(mm.UnregisterModelRequest(modelId="sk:lin@1"), timeout=30)
        await wait_for(lambda: "sk:lin@1" not in inst.router.loaded, 20, "the copy unloaded")
        for _ in range(200):  # the unload reached MLServer
            if (await _mlserver_state(ports["http_port"])).get(name) != "READY":
                break
            await asyncio.sleep(0.1)
        assert (await _mlserver_state(ports["http_port"])).get(name) != "READY"
        await wait_for(lambda: not (d / "mlserver-repo" / name).exists(), 20, "the staged folder removed")
        # the other model still serves
        assert _predictions(await infer(_request("sk2", [[0.0, 1.0]]), timeout=30)) == pytest.approx([4.0])
