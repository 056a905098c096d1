"""``python -m mesh serve`` with default settings, as root (as CI runs): TorchScript runs in a
worker process started on the first such load, as an unprivileged user that cannot read the
instance's secrets; ONNX runs in the instance's process."""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests import model_factory as mf
from tests.mesh.cluster import ServeProcess, serve_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="workers run as another user only when the instance is root")

SECRET = "s3cr3t-TOPSECRET-71d0"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, Path]]:
    # the storage configuration, as a mounted Secret: readable by the instance only
    config = tmp_path / "storage-config"
    config.mkdir(mode=0o700)
    secret = config / "my-s3"
    secret.write_text(json.dumps({"type": "s3", "access_key_id": "AKIA", "secret_access_key": SECRET, "bucket": "b"}))
    os.chmod(secret, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMUX_RUNTIMES_")}  # the defaults
    env["MODELMUX_STORAGE_CONFIG_DIR"] = str(config)
    async with serve_process(tmp_path, env=env, args=["--store", "memory"]) as served:
        yield served, secret


async def cluster_self(served: ServeProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{served.rest}/api/v1/cluster")
    assert r.status_code == 200, r.text
    return dict(r.json()["self"])


async def _register(served: ServeProcess, model_id: str, mtype: str, path: Path) -> None:
    async with grpc.aio.insecure_channel(served.grpc) as ch:
        st = await mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=mtype, path=str(path)), loadNow=True, sync=True),
            timeout=120,
        )
    assert st.status == mm.ModelStatusInfo.LOADED, st


async def _infer(served: ServeProcess, model: str, x: np.ndarray) -> pb.ModelInferResponse:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    async with grpc.aio.insecure_channel(served.grpc) as ch:
        raw = await ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(req.SerializeToString(), timeout=60)
    return pb.ModelInferResponse.FromString(raw)


def _out(resp: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(tuple(resp.outputs[0].shape))


def _ref_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(next(iter(mf.onnx_reference(path, {"x": x}).values())))


def _ref_torch(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(mf.torch_reference(path, x)).reshape(1, -1)


def _where(me: dict[str, Any]) -> dict[str, str]:
    """model id -> the runtime process holding it; a loaded copy in none runs in the instance."""
    held = {m: rt["name"] for rt in me["runtimes"] for m in rt["copies"]}
    return {m: held.get(m, "instance") for m in me["copies"]}


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def test_default_serve_isolates_torchscript_and_keeps_onnx_in_process(
    served: tuple[ServeProcess, Path], tmp_path: Path
) -> None:
    from tests.mesh.runtimes.hostile_models import make_file_reader

    srv, secret = served
    models = tmp_path / "models"  # under pytest's 0700 folder: unreadable to the worker user
    ox = mf.make_onnx_model(models / "ox")
    ts = mf.make_torchscript_model(models / "ts")
    reader = make_file_reader(models / "reader", secret, 64)
    secret_mode = stat.S_IMODE(secret.stat().st_mode)
    config_mode = stat.S_IMODE(secret.parent.stat().st_mode)
    folder_modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path, models, models / "ts")}
    x = np.arange(4, dtype=np.float32).reshape(1, 4)

    # no worker process until a model type that runs code is loaded
    me = await cluster_self(srv)
    assert me["runtimes"] and all(rt["pid"] is None and not rt["started"] for rt in me["runtimes"])
    await _register(srv, "ox", "onnx", ox)
    me = await cluster_self(srv)
    assert all(rt["pid"] is None for rt in me["runtimes"])

    await _register(srv, "ts", "pytorch", ts)
    await _register(srv, "reader", "pytorch", reader)
    me = await cluster_self(srv)
    where = _where(me)
    assert where["ox"] == "instance"
    assert where["ts"] != "instance" and where["reader"] != "instance"
    workers = {rt["name"]: rt["pid"] for rt in me["runtimes"] if rt["pid"] is not None}
    nobody = pwd.getpwnam("nobody").pw_uid
    assert workers and all(_uid(pid) == nobody for pid in workers.values())
    assert srv.pid not in workers.values() and _uid(srv.pid) == 0

    # served correctly: the ONNX model in process, the TorchScript model through its worker
    np.testing.assert_allclose(_out(await _infer(srv, "ox", x)), _ref_onnx(ox, x), rtol=1e-5)
    np.testing.assert_allclose(_out(await _infer(srv, "ts", x)), _ref_torch(ts, x), rtol=1e-5)

    # the hostile model asks for the storage configuration: an error, or at least nothing of it
    try:
        leaked = _out(await _infer(srv, "reader", np.zeros(1, np.float32))).astype(np.uint8).tobytes()
    except grpc.aio.AioRpcError as exc:
        leaked = (exc.details() or "").encode()
        assert "Permission denied" in (exc.details() or "") or "open" in (exc.details() or "").lower(), exc
    assert SECRET.encode() not in leaked and b"AKIA" not in leaked

    # nothing else changed: the secret and its folder keep their modes, the worker and both models serve on
    assert stat.S_IMODE(secret.stat().st_mode) == secret_mode and stat.S_IMODE(secret.parent.stat().st_mode) == config_mode
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path, models, models / "ts")} == folder_modes  # never opened up
    after = await cluster_self(srv)
    assert {rt["name"]: rt["pid"] for rt in after["runtimes"] if rt["pid"] is not None} == workers
    np.testing.assert_allclose(_out(await _infer(srv, "ts", x)), _ref_torch(ts, x), rtol=1e-5)
    np.testing.assert_allclose(_out(await _infer(srv, "ox", x)), _ref_onnx(ox, x), rtol=1e-5)
