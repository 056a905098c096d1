"""The usual clients against a real mesh: tritonclient (HTTP binary / JSON / mixed, gRPC), the kserve
SDK (REST V2 binary on and off, REST V1, gRPC), KServe V1 over plain HTTP (what curl sends), gRPC
reflection and health. Every data-plane check runs twice: against the instance holding the model,
and against the other instance, which forwards it (the model is pinned to one copy)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from mesh._rest_binary import HEADER_LENGTH
from tests import model_factory as mf
from tests.mesh.cluster import ROOT, MemoryCluster, wait_until

LIN, MULTI = "lin", "multi"
MAX_BYTES = 1 << 20


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


class Mesh:
    def __init__(self, cluster: MemoryCluster, paths: dict[str, Path]) -> None:
        self.cluster = cluster
        self.paths = paths
        assert cluster.mesh is not None
        self.instances = list(cluster.mesh.instances)

    def holder(self, model: str) -> Any:
        [holder] = [i for i in self.instances if model in i.loaded]  # pinned: one copy
        return holder

    def where(self, forward: bool, model: str = LIN) -> Any:
        """The instance that holds ``model``, or (forward) the one that does not."""
        holder = self.holder(model)
        return next(i for i in self.instances if i is not holder) if forward else holder

    def rest(self, forward: bool, model: str = LIN) -> str:
        ep = self.where(forward, model).endpoints
        assert ep is not None
        return ep.rest

    def grpc(self, forward: bool, model: str = LIN) -> str:
        ep = self.where(forward, model).endpoints
        assert ep is not None
        return ep.grpc

    def forwarded(self) -> int:
        return sum(i.router.counters.forwarded for i in self.instances)

    def lin_ref(self, x: np.ndarray) -> np.ndarray:
        return mf.onnx_reference(self.paths[LIN], {"x": x})["y"]

    def multi_ref(self, a: np.ndarray, b: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
        return mf.onnx_reference(self.paths[MULTI], {"a": a, "b": b, "m": m})


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    cluster = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"max_message_bytes": MAX_BYTES})
    await cluster.start()
    try:
        paths = {}
        for mid, kind in ((LIN, "linear"), (MULTI, "multi")):
            (tmp_path / mid).mkdir()
            paths[mid] = mf.make_onnx_model(tmp_path / mid, kind=kind)
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=60) as c:
            for mid, path in paths.items():
                body = {"modelInfo": {"type": "onnx", "path": str(path), "key": json.dumps({"max_copies": 1})},
                        "loadNow": True, "sync": True}
                r = await c.post(f"/api/v1/models/{mid}", json=body)
                assert r.status_code == 200 and r.json()["status"] == "LOADED", r.text
        assert cluster.mesh is not None
        # the other instance's view knows where both models are (so it forwards at once)
        for inst in cluster.mesh.instances:
            await wait_until(lambda i=inst: all(i.state.holders(m) for m in paths), 10, "holders in every view")
        yield Mesh(cluster, paths)
    finally:
        await cluster.close()


def _x(rows: int = 3) -> np.ndarray:
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7.0


def _multi_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array([[0.5, 1.5, -2.0, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    b = np.array([[1, 2, 3, 4], [-5, 6, 70000000000, 8]], dtype=np.int64)
    m = np.array([[True, False, True, False], [False, False, True, True]])
    return a, b, m


# ---------------------------------------------------------------- tritonclient


def _triton_http(mesh: Mesh, forward: bool) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(url=mesh.rest(forward))
    try:
        assert client.is_server_ready() and client.is_model_ready(LIN)
        x = _x()
        # binary in, binary out (tritonclient's defaults: binary input, binary_data_output for all outputs)
        inp = th.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        r = client.infer(LIN, [inp])
        np.testing.assert_allclose(r.as_numpy("y"), mesh.lin_ref(x), rtol=1e-6)
        assert r.get_output("y")["parameters"]["binary_data_size"] == 3 * 3 * 4
        # binary in, JSON out
        r = client.infer(LIN, [inp], outputs=[th.InferRequestedOutput("y", binary_data=False)])
        assert "parameters" not in r.get_output("y") or "binary_data_size" not in r.get_output("y")["parameters"]
        np.testing.assert_allclose(r.as_numpy("y"), mesh.lin_ref(x), rtol=1e-6)
        # JSON in, binary out
        inp_json = th.InferInput("x", list(x.shape), "FP32")
        inp_json.set_data_from_numpy(x, binary_data=False)
        r = client.infer(LIN, [inp_json], outputs=[th.InferRequestedOutput("y", binary_data=True)])
        np.testing.assert_allclose(r.as_numpy("y"), mesh.lin_ref(x), rtol=1e-6)
    finally:
        client.close()
    client = th.InferenceServerClient(url=mesh.rest(forward, MULTI))
    try:
        # mixed: inputs partly binary, partly JSON; outputs partly binary, partly JSON
        a, b, m = _multi_inputs()
        ins = [th.InferInput("a", [2, 4], "FP32"), th.InferInput("b", [2, 4], "INT64"), th.InferInput("m", [2, 4], "BOOL")]
        ins[0].set_data_from_numpy(a, binary_data=True)
        ins[1].set_data_from_numpy(b, binary_data=False)
        ins[2].set_data_from_numpy(m, binary_data=True)
        outs = [th.InferRequestedOutput("sum", binary_data=True), th.InferRequestedOutput("doubled", binary_data=False),
                th.InferRequestedOutput("inverted", binary_data=True)]
        r = client.infer(MULTI, ins, outputs=outs)
        ref = mesh.multi_ref(a, b, m)
        for name in ("sum", "doubled", "inverted"):
            np.testing.assert_array_equal(r.as_numpy(name), ref[name])
        assert "binary_data_size" in r.get_output("sum")["parameters"]
        assert "binary_data_size" not in (r.get_output("doubled").get("parameters") or {})
    finally:
        client.close()


async def _triton_grpc(mesh: Mesh, forward: bool) -> None:
    # its own process: tritonclient.grpc and the kserve SDK cannot share protobuf's default pool
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.mesh.triton_grpc_client", mesh.grpc(forward), LIN, "5",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    assert answer["ready"] is True and answer["inputs"] == ["x"]
    np.testing.assert_allclose(np.array(answer["y"], dtype=np.float32), mesh.lin_ref(_x(5)), rtol=1e-6)


# ---------------------------------------------------------------- kserve SDK


async def _kserve(mesh: Mesh, forward: bool) -> None:
    """The kserve SDK's REST client (V2 with binary data on and off, V1) and gRPC client, in a
    process of their own (the suite imports tritonclient.grpc: both cannot share protobuf's pool)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.mesh.kserve_client", mesh.rest(forward), mesh.grpc(forward), LIN,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    assert answer["v2_ready"] is True and answer["v1_ready"] is True and answer["grpc_ready"] is True
    for binary in (True, False):
        got = answer[f"v2_binary_{binary}"]
        assert got["model_name"] == LIN
        np.testing.assert_allclose(np.array(got["y"], dtype=np.float32), mesh.lin_ref(_x(2)), rtol=1e-6)
    np.testing.assert_allclose(np.array(answer["v1"], dtype=np.float32), mesh.lin_ref(_x(2)), rtol=1e-6)
    np.testing.assert_allclose(np.array(answer["grpc"], dtype=np.float32), mesh.lin_ref(_x(4)), rtol=1e-6)


# ---------------------------------------------------------------- V1 over plain HTTP (curl)


async def _v1_http(mesh: Mesh, forward: bool) -> None:
    async with httpx.AsyncClient(base_url=f"http://{mesh.rest(forward)}", timeout=60) as c, \
            httpx.AsyncClient(base_url=f"http://{mesh.rest(forward, MULTI)}", timeout=60) as cm:
        x = _x(2)
        r = await c.post(f"/v1/models/{LIN}:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["predictions"], dtype=np.float32), mesh.lin_ref(x), rtol=1e-6)
        # several named inputs, several outputs: one object per instance
        a, b, m = _multi_inputs()
        inst = [{"a": a[k].tolist(), "b": b[k].tolist(), "m": m[k].tolist()} for k in range(2)]
        r = await cm.post(f"/v1/models/{MULTI}:predict", json={"instances": inst})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        ref = mesh.multi_ref(a, b, m)
        assert [p["doubled"] for p in preds] == ref["doubled"].tolist()
        assert [p["inverted"] for p in preds] == ref["inverted"].tolist()
        # readiness and the list
        assert (await c.get(f"/v1/models/{LIN}")).json() == {"name": LIN, "ready": True}
        assert {LIN, MULTI} <= set((await c.get("/v1/models")).json()["models"])
        # KServe error bodies
        r = await c.get("/v1/models/nope")
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = await c.post("/v1/models/nope:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 404 and set(r.json()) == {"error"}
        r = await cm.post(f"/v1/models/{MULTI}:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 400 and "keyed by" in r.json()["error"]
        r = await c.post(f"/v1/models/{LIN}:predict", json={"instances": []})
        assert r.status_code == 400 and "non-empty" in r.json()["error"]


async def _bad_binary(mesh: Mesh, forward: bool) -> None:
    async with httpx.AsyncClient(base_url=f"http://{mesh.rest(forward)}", timeout=60) as c:
        head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 16}}]}).encode()
        body = head + np.ones(4, np.float32).tobytes()
        ok = await c.post(f"/v2/models/{LIN}/infer", content=body, headers={HEADER_LENGTH: str(len(head))})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json"), ok.text
        for value, words in ((str(len(body) + 1), "past the end"), ("-1", "non-negative integer"), ("abc", "non-negative integer")):
            r = await c.post(f"/v2/models/{LIN}/infer", content=body, headers={HEADER_LENGTH: value})
            assert r.status_code == 400 and words in r.json()["error"], (value, r.text)
        r = await c.post(f"/v2/models/{LIN}/infer", content=body[:-4], headers={HEADER_LENGTH: str(len(head))})
        assert r.status_code == 400 and "runs past the binary data" in r.json()["error"]
        # the binary part counts against the message size limit
        big_head = json.dumps({"inputs": [{"name": "x", "shape": [MAX_BYTES // 16, 4], "datatype": "FP32",
                                           "parameters": {"binary_data_size": MAX_BYTES}}]}).encode()
        r = await c.post(f"/v2/models/{LIN}/infer", content=big_head + bytes(MAX_BYTES), headers={HEADER_LENGTH: str(len(big_head))})
        assert r.status_code == 413, r.text


@pytest.mark.parametrize("forward", [False, True], ids=["holder", "forwarded"])
async def test_clients_against_holder_and_through_forward(mesh: Mesh, forward: bool) -> None:
    forwarded_before = mesh.forwarded()
    await asyncio.to_thread(_triton_http, mesh, forward)
    await _triton_grpc(mesh, forward)
    await _kserve(mesh, forward)
    await _v1_http(mesh, forward)
    await _bad_binary(mesh, forward)
    forwarded = mesh.forwarded() - forwarded_before
    if forward:
        assert forwarded >= 12  # the 12 successful inferences above all went through the other instance
    else:
        assert forwarded == 0


# ---------------------------------------------------------------- reflection and health


async def test_reflection_lists_and_describes(tmp_path: Path) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    cluster = MemoryCluster(1, tmp_path, capacity_bytes=16 << 20)
    await cluster.start()
    try:
        def check() -> None:
            with grpc.insecure_channel(cluster.grpc[0]) as ch:
                db = ProtoReflectionDescriptorDatabase(ch)
                services = set(db.get_services())
                assert {"inference.GRPCInferenceService", "mmesh.ModelMesh", "grpc.health.v1.Health"} <= services
                pool = DescriptorPool(db)
                svc = pool.FindServiceByName("inference.GRPCInferenceService")
                assert {"ModelInfer", "ModelMetadata", "ServerReady"} <= {m.name for m in svc.methods}
                infer = svc.methods_by_name["ModelInfer"]
                assert infer.input_type.full_name == "inference.ModelInferRequest"
                assert "raw_input_contents" in infer.input_type.fields_by_name
                assert pool.FindServiceByName("mmesh.ModelMesh").methods_by_name["setVModel"]

        await asyncio.to_thread(check)
    finally:
        await cluster.close()


async def test_reflection_can_be_switched_off(tmp_path: Path) -> None:
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=16 << 20, overrides={"grpc_reflection": False})
    await cluster.start()
    try:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        def check() -> None:
            with grpc.insecure_channel(cluster.grpc[0]) as ch:
                with pytest.raises(grpc.RpcError) as err:
                    list(ProtoReflectionDescriptorDatabase(ch).get_services())
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        await asyncio.to_thread(check)
    finally:
        await cluster.close()


async def test_health_serving_then_watch_sees_not_serving_at_shutdown(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cluster = MemoryCluster(1, tmp_path, capacity_bytes=16 << 20)
    await cluster.start()
    try:
        assert cluster.mesh is not None
        inst = cluster.mesh.instances[0]
        SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        async with grpc.aio.insecure_channel(cluster.grpc[0]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ("", "inference.GRPCInferenceService", "mmesh.ModelMesh"):
                assert (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(inst.stop())
            seen = await asyncio.wait_for(watch.read(), 10)  # pushed before the port closes (it closes last)
            assert seen.status == NOT_SERVING
            await stopping
    finally:
        cluster.mesh = None  # already stopped
        await cluster.close()
