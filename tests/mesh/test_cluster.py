"""Cluster behaviour: 3 instances over one store (memory in process, or processes over real etcd)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model, answer, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"
TABLE = 256 << 10  # bytes of weights per test model


class Client:
    """Raw V2 gRPC + management clients to every instance."""

    def __init__(self, endpoints: list[str]) -> None:
        self.channels = [grpc.aio.insecure_channel(e) for e in endpoints]
        self.infer_calls = [ch.unary_unary(INFER) for ch in self.channels]
        self.mgmt = [mm_grpc.ModelMeshStub(ch) for ch in self.channels]

    async def infer(self, i: int, model: str, x: np.ndarray | None = None, timeout: float = 30) -> np.ndarray:
        return answer(await self.infer_calls[i % len(self.infer_calls)](request_bytes(model, x), timeout=timeout))

    async def register(self, model_id: str, path: Path, i: int = 0, **kw: Any) -> mm.ModelStatusInfo:
        return await self.mgmt[i % len(self.mgmt)].registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path)), **kw), timeout=30
        )

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


@pytest.fixture
async def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d


async def _register_many(client: Client, models_dir: Path, n: int, *, table: int = TABLE) -> list[str]:
    ids = []
    for k in range(n):
        p = add_model(models_dir / f"m{k:03d}" / "model.onnx", float(k), table_bytes=table)
        await client.register(f"m{k:03d}", p, i=k)
        ids.append(f"m{k:03d}")
    return ids


async def test_round_robin_many_models_over_small_capacity(make_cluster: Any, models_dir: Path) -> None:
    # 200 models, room for about 50 at a time in the whole cluster: constant eviction and reloading
    per_instance = 17 * (TABLE + (16 << 10))
    cluster = await make_cluster(3, capacity_bytes=per_instance)
    client = Client(cluster.grpc)
    try:
        ids = await _register_many(client, models_dir, 200)
        n = 0
        for k, mid in enumerate(ids):
            out = await client.infer(n, mid)
            n += 1
            assert np.allclose(out, k), (mid, out)
        for k in range(0, 200, 7):  # a second pass over a spread of them (many were evicted)
            out = await client.infer(n, ids[k])
            n += 1
            assert np.allclose(out, k), (ids[k], out)
        counters = await cluster.counters()
        assert sum(c["loads"] for c in counters) >= 200
        assert sum(c["unloads"] for c in counters) >= 100  # eviction happened
        for c in counters:
            assert c["used_bytes"] <= per_instance
        loaded = sum(1 for c in counters for st in c["copies"].values() if st == "loaded")
        assert 30 <= loaded <= 3 * (per_instance // TABLE)  # about 50 fit at once, never more
    finally:
        await client.close()


async def test_burst_of_first_requests_loads_once(make_cluster: Any, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # only the misses may load it: a burst that lasts seconds on a busy machine makes the model warm
    # enough for placement's second copy, which is a load too (CI stop 21: 2 loads)
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")
    cluster = await make_cluster(3)
    client = Client(cluster.grpc)
    try:
        p = add_model(models_dir / "burst" / "model.onnx", 7.0)
        await client.register("burst", p)
        outs = await asyncio.gather(*(client.infer(i, "burst") for i in range(50)))
        assert all(np.allclose(o, 7.0) for o in outs)
        counters = await cluster.counters()
        assert sum(c["loads"] for c in counters) == 1
    finally:
        await client.close()


async def test_forwarding_grpc_and_rest(make_cluster: Any, models_dir: Path) -> None:
    cluster = await make_cluster(3)
    client = Client(cluster.grpc)
    try:
        p = add_model(models_dir / "fwd" / "model.onnx", 3.0)
        await client.register("fwd", p, loadNow=True, sync=True)
        counters = await cluster.counters()
        holders = [k for k, c in enumerate(counters) if c["copies"].get("fwd") == "loaded"]
        assert len(holders) == 1
        others = [k for k in range(3) if k not in holders]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for k in others:
            assert np.allclose(await client.infer(k, "fwd", x), x + 3.0)
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(
                    f"{cluster.rest[k]}/v2/models/fwd/infer",
                    json={"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()}]},
                )
            assert r.status_code == 200, r.text
            assert np.allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 4), x + 3.0)
        counters = await cluster.counters()
        assert sum(counters[k]["forwarded"] for k in others) >= 2 * len(others)
        assert sum(c["loads"] for c in counters) == 1
    finally:
        await client.close()


async def test_unknown_model_is_not_found(make_cluster: Any) -> None:
    cluster = await make_cluster(2)
    client = Client(cluster.grpc)
    try:
        for i in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.infer(i, "no-such-model")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "no-such-model" in (info.value.details() or "")
    finally:
        await client.close()


async def test_vmodel_switch_under_traffic(make_cluster: Any, models_dir: Path) -> None:
    cluster = await make_cluster(3)
    client = Client(cluster.grpc)
    try:
        old = add_model(models_dir / "old" / "model.onnx", 1.0)
        new = add_model(models_dir / "new" / "model.onnx", 2.0)
        await client.register("old", old)
        await client.register("new", new)
        st = await client.mgmt[0].setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="old", loadNow=True, sync=True), timeout=30)
        assert st.activeModelId == "old"
        seen: list[float] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def traffic(w: int) -> None:
            n = w
            while not stop.is_set():
                try:
                    seen.append(float((await client.infer(n, "v"))[0, 0]))
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc)
                n += 1

        tasks = [asyncio.create_task(traffic(w)) for w in range(4)]
        await wait_until(lambda: len(seen) > 20, 30, "traffic on the old model")
        await client.mgmt[1].setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="new"), timeout=30)
        await wait_until(lambda: seen.count(2.0) > 20, 60, "traffic to reach the new model")
        stop.set()
        await asyncio.gather(*tasks)
        assert not errors, errors[:3]
        assert set(seen) <= {1.0, 2.0}
        # once switched, never back
        first_new = seen.index(2.0)
        assert seen[first_new:].count(1.0) <= 4 * 2  # in-flight requests of each worker may still finish on old
        st = await client.mgmt[2].getVModelStatus(mm.GetVModelStatusRequest(vModelId="v"), timeout=10)
        assert st.status == mm.VModelStatusInfo.DEFINED and st.activeModelId == "new"
    finally:
        await client.close()


async def test_registrations_survive_restart_of_all_instances(make_cluster: Any, models_dir: Path) -> None:
    cluster = await make_cluster(3)
    client = Client(cluster.grpc)
    try:
        ids = await _register_many(client, models_dir, 5)
        assert np.allclose(await client.infer(0, ids[3]), 3.0)
    finally:
        await client.close()
    await cluster.stop()
    await cluster.start()
    client = Client(cluster.grpc)
    try:
        for k, mid in enumerate(ids):
            assert np.allclose(await client.infer(k, mid), float(k))
    finally:
        await client.close()


async def test_failed_load_reports_reason_everywhere_then_retries(make_cluster: Any, models_dir: Path) -> None:
    cluster = await make_cluster(3, failure_ttl_s=2)
    client = Client(cluster.grpc)
    try:
        bad = models_dir / "bad" / "model.onnx"
        bad.parent.mkdir()
        bad.write_bytes(b"this is not an onnx model")
        await client.register("bad", bad)
        for i in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.infer(i, "bad", timeout=20)
            assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
            assert "bad" in (info.value.details() or "")
        st = await client.mgmt[0].getModelStatus(mm.GetStatusRequest(modelId="bad"), timeout=10)
        assert st.status == mm.ModelStatusInfo.LOADING_FAILED and st.errors
        # fix the artifact; after the failure expires the next request loads it
        add_model(bad, 5.0)

        async def works() -> bool:
            try:
                return bool(np.allclose(await client.infer(1, "bad", timeout=20), 5.0))
            except grpc.aio.AioRpcError:
                return False

        await wait_until(works, 30, "retry after the failure expired")
    finally:
        await client.close()


async def test_management_validation(make_cluster: Any, models_dir: Path) -> None:
    cluster = await make_cluster(1)
    client = Client(cluster.grpc)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.mgmt[0].registerModel(mm.RegisterModelRequest(modelId="x/y", modelInfo=mm.ModelInfo(type="onnx", path="/p")))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        p = add_model(models_dir / "a" / "model.onnx", 1.0)
        await client.register("a", p)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.mgmt[0].registerModel(mm.RegisterModelRequest(modelId="a", modelInfo=mm.ModelInfo(type="xgboost", path=str(p))))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        await client.mgmt[0].setVModel(mm.SetVModelRequest(vModelId="va", targetModelId="a", owner="team1"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.mgmt[0].unregisterModel(mm.UnregisterModelRequest(modelId="a"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.mgmt[0].setVModel(mm.SetVModelRequest(vModelId="va", targetModelId="a", owner="team2"))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        st = await client.mgmt[0].getVModelStatus(mm.GetVModelStatusRequest(vModelId="va", owner="team2"))
        assert st.status == mm.VModelStatusInfo.NOT_FOUND
        await client.mgmt[0].deleteVModel(mm.DeleteVModelRequest(vModelId="va", owner="team1"))
        await client.mgmt[0].unregisterModel(mm.UnregisterModelRequest(modelId="a"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.infer(0, "a")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await client.close()


async def test_model_larger_than_any_instance_fails_clearly_and_others_keep_serving(make_cluster: Any, models_dir: Path) -> None:
    # capacity for a few small models; one model whose weights alone exceed it
    cluster = await make_cluster(2, capacity_bytes=4 * (TABLE + (16 << 10)))
    client = Client(cluster.grpc)
    try:
        small = add_model(models_dir / "small" / "model.onnx", 3.0)
        huge = add_model(models_dir / "huge" / "model.onnx", 9.0, table_bytes=8 * TABLE)
        await client.register("small", small)
        await client.register("huge", huge)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(0, "huge", timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert "huge" in (err.value.details() or "")
        # while that failure is remembered, the instances (and the leader) keep working
        for i in range(4):
            assert np.allclose(await client.infer(i, "small", timeout=20), 3.0)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await client.infer(1, "huge", timeout=20)
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        p = add_model(models_dir / "other" / "model.onnx", 5.0)
        await client.register("other", p, i=1)
        assert np.allclose(await client.infer(1, "other", timeout=20), 5.0)
    finally:
        await client.close()
