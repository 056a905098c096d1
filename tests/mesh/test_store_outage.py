"""Store unreachable: loaded models keep serving, management fails fast with UNAVAILABLE, all recovers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos import model_mesh_pb2 as mm
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model
from tests.mesh.test_cluster import Client


async def test_store_outage_and_recovery(make_cluster: Any, cluster_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    etcd = None
    if cluster_kind == "etcd":
        etcd = request.getfixturevalue("etcd_factory")()  # a private etcd we may stop
    cluster = await make_cluster(3, etcd=etcd)
    client = Client(cluster.grpc)
    models = tmp_path / "models"
    try:
        for k in range(3):
            await client.register(f"up{k}", add_model(models / f"up{k}" / "model.onnx", float(k)), loadNow=True, sync=True)
        late = add_model(models / "late" / "model.onnx", 9.0)

        # store goes away
        if etcd is not None:
            etcd.stop()
        else:
            cluster.store.set_available(False)
        try:
            for n in range(30):  # every instance, every model, local or forwarded
                k = n % 3
                assert np.allclose(await client.infer(n, f"up{k}", timeout=10), float(k))
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.register("late", late, i=1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - t0 < 8.0  # fails fast, not at the client's deadline
        finally:
            if etcd is not None:
                etcd.restart()
            else:
                cluster.store.set_available(True)

        # everything converges again
        async def registered() -> bool:
            try:
                await client.register("late", late, i=2)
                return True
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

        await wait_until(registered, 30, "management to recover")
        assert np.allclose(await client.infer(0, "late", timeout=30), 9.0)
        for k in range(3):
            assert np.allclose(await client.infer(k + 1, f"up{k}"), float(k))
        st = await client.mgmt[0].getModelStatus(mm.GetStatusRequest(modelId="up0"), timeout=10)
        assert st.status == mm.ModelStatusInfo.LOADED
    finally:
        await client.close()


async def test_instance_waits_for_a_store_that_is_not_up_yet(tmp_path: Path) -> None:
    """An instance started before its store (etcd starting beside it) retries, then joins."""
    from mesh import LocalMesh, LocalMeshConfig, StoreSettings
    from mesh._store import MemoryStore, StoreUnavailable

    store = MemoryStore()
    store.set_available(False)
    refused = 0
    real_get_prefix = store.get_prefix

    async def counting_get_prefix(prefix: str) -> Any:
        nonlocal refused
        try:
            return await real_get_prefix(prefix)
        except StoreUnavailable:
            refused += 1
            raise

    store.get_prefix = counting_get_prefix  # type: ignore[method-assign]
    mesh = LocalMesh(
        LocalMeshConfig(instances=1, capacity_bytes=64 << 20, data_dir=tmp_path, store=StoreSettings(kind="memory"), allowed_roots=[tmp_path]),
        store=store,
    )
    starting = asyncio.create_task(mesh.start())
    try:
        # it keeps trying while the store is down: two refused attempts (one retry after backoff)
        await wait_until(lambda: refused >= 2, 10, "a second attempt to reach the store")
        assert not starting.done()
        store.set_available(True)
        instances = await asyncio.wait_for(starting, 30)
        assert instances[0].instance_id in instances[0].state.instances.items
    finally:
        if not starting.done():
            starting.cancel()
        await mesh.stop()
        await store.close()
