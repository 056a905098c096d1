"""The store's own quota, against a real etcd with a small ``--quota-backend-bytes``: registrations
fill it until they are refused (HTTP 507), the refusal comes before etcd's NOSPACE alarm, the
models already there keep serving, and unregistering (plus the compaction and defragmentation
an operator runs) gives the room back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aetcd import rpc

from mesh import LocalMesh, LocalMeshConfig
from mesh._store import EtcdStore, StoreSettings, build_store
from tests.etcd_server import EtcdServer
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

pytestmark = pytest.mark.etcd

QUOTA = 2 << 20  # 2 MiB: small enough to fill in seconds
INPUT = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}


async def _alarms(store: EtcdStore) -> list[object]:
    ep = store._endpoint()
    resp = await ep.maintenance.Alarm(rpc.AlarmRequest(action=rpc.AlarmRequest.GET))
    return list(resp.alarms)


async def test_registrations_are_refused_before_etcds_nospace_alarm(
    etcd_factory: Callable[..., EtcdServer], tmp_path: Path
) -> None:
    # --backend-batch-limit 1: etcd commits its backend after every write, so the bytes in use
    # that Status reports are current after each put (batched, they lag by up to 100 ms of
    # writes, and the ballast below overshot its mark by as much)
    etcd = etcd_factory("--quota-backend-bytes", str(QUOTA), "--backend-batch-limit", "1")
    settings = StoreSettings(
        kind="etcd", endpoints=[etcd.endpoint], prefix=f"/q-{uuid.uuid4().hex[:8]}", quota_bytes=QUOTA
    )
    store = build_store(settings)
    assert isinstance(store, EtcdStore)
    add_model(tmp_path / "m" / "serving.onnx", 5.0, table_bytes=4 << 10)
    mesh = LocalMesh(
        LocalMeshConfig(instances=1, data_dir=tmp_path / "var", allowed_roots=[tmp_path], store=settings),
        store=store,
    )
    await mesh.start()
    try:
        inst = mesh.instances[0]
        inst.management.room.max_age_s = 0.0  # every registration reads etcd's Status afresh
        assert inst.endpoints is not None
        async with httpx.AsyncClient(base_url=f"http://{inst.endpoints.rest}", timeout=60) as c:

            async def infer() -> list[float]:
                r = await c.post("/v2/models/serving/infer", json=INPUT)
                assert r.status_code == 200, r.text
                return [float(x) for x in r.json()["outputs"][0]["data"]]

            body = {"modelInfo": {"type": "onnx", "path": str(tmp_path / "m" / "serving.onnx")}, "loadNow": True, "sync": True}
            assert (await c.post("/api/v1/models/serving", json=body)).status_code == 200
            assert await infer() == [6.0] * 4

            n = 0

            async def ballast_to(mark: float) -> None:
                """Ballast straight into etcd, in small writes, until its bytes in use reach ``mark``."""
                nonlocal n
                while (await store.usage()).fraction < mark:
                    await store.put(f"{settings.prefix}/ballast/{n:05d}", bytes([n % 251]) * 2048)
                    n += 1
                    assert n < 5000, f"etcd's usage never reached {mark:.0%} of its quota"

            await ballast_to(0.75)  # fast

            # then registrations, one after the other, until the store refuses them
            key = json.dumps({"storage_params": {"note": "n" * 2000}})
            registered: list[str] = []
            refusal: httpx.Response | None = None
            for i in range(1000):
                info = {"type": "onnx", "path": f"s3://bucket/model-{i}", "key": key}
                r = await c.post(f"/api/v1/models/filler-{i}", json={"modelInfo": info})
                if r.status_code != 200:
                    refusal = r
                    break
                registered.append(f"filler-{i}")
            assert refusal is not None, "the store never refused a registration"
            assert refusal.status_code == 507, refusal.text
            assert "refused: the store holds" in refusal.text and "quota" in refusal.text
            assert registered, "refused before any registration: the ballast overshot"
            assert (await store.usage()).fraction < 1.0
            # bolt reuses the pages each commit frees, so the bytes in use move by several pages
            # either way (a CI run saw them fall from 92% to under 90% of this 2 MiB quota across
            # the next few writes): ballast past the high-water mark before each check that follows
            await ballast_to(0.93)

            # refused before etcd's own alarm: etcd still takes writes, none is raised
            assert await _alarms(store) == []
            await store.put(f"{settings.prefix}/probe", b"x")
            assert await infer() == [6.0] * 4  # the models already there still serve
            listed = (await c.get("/api/v1/models")).json()["models"]
            assert f"filler-{len(registered)}" not in {m["model_id"] for m in listed}
            # a new vModel is refused the same way
            await ballast_to(0.93)
            r = await c.put("/api/v1/vmodels/vm", json={"targetModelId": "serving"})
            assert r.status_code == 507, r.text

            # deletes are not refused, and (once compacted and defragmented) give the room back
            for mid in registered:
                assert (await c.delete(f"/api/v1/models/{mid}")).status_code == 200
            for i in range(n):
                await store.delete(f"{settings.prefix}/ballast/{i:05d}")
            _, rev = await store.get_prefix(f"{settings.prefix}/ballast/")
            await store.compact(rev)

            # what an operator runs (etcd counts freed pages at its next backend commit)
            await store._endpoint().maintenance.Defragment(rpc.DefragmentRequest())

            async def room_back() -> bool:
                return (await store.usage()).fraction < 0.9

            await wait_until(room_back, 30, "etcd's bytes in use back under the high-water mark")
            info = {"type": "onnx", "path": "s3://bucket/after", "key": key}
            r = await c.post("/api/v1/models/after", json={"modelInfo": info})
            assert r.status_code == 200, r.text
            assert await _alarms(store) == []
        metrics = inst.metrics.registry.get_sample_value("modelmux_store_quota_bytes")
        assert metrics == QUOTA  # the usage reads fed the gauges
        used = inst.metrics.registry.get_sample_value("modelmux_store_used_bytes")
        assert used is not None and 0 < used < QUOTA
    finally:
        await mesh.stop()
        await store.close()
