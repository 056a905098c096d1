"""Tenant byte quotas, end to end: set through the management API, enforced by the live leader.

Every test runs on the memory store in process and on real etcd with ``modelmux serve`` processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from tests.mesh.cluster import ROOT, MemoryCluster, wait_until
from tests.mesh.models import add_model
from tests.mesh.test_cluster import TABLE, Client

SLOT = TABLE + (16 << 10)  # about what one test model holds once loaded


async def _register(rest: str, model_id: str, path: Path, tenant: str) -> None:
    async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
        r = await c.post(f"/api/v1/models/{model_id}", json={"modelInfo": {"type": "onnx", "path": str(path), "key": {"tenant": tenant}}})
        assert r.status_code == 200, r.text


async def _tenants(rest: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
        r = await c.get("/api/v1/tenants")
        assert r.status_code == 200, r.text
        return {t["tenant"]: t for t in r.json()["tenants"]}


async def _set_quota(rest: str, tenant: str, max_bytes: int | str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
        return await c.put(f"/api/v1/tenants/{tenant}", json={"maxBytes": max_bytes})


async def _model_sizes(rest: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
        return {m["model_id"]: m["size_bytes"] for m in (await c.get("/api/v1/models")).json()["models"]}


async def test_a_tenants_scan_stays_within_its_quota_and_spares_the_others(make_cluster: Any, tmp_path: Path) -> None:
    # room for about 24 models in the cluster; tenant "scan" may hold about 5 of them
    cluster = await make_cluster(2, capacity_bytes=12 * SLOT)
    client = Client(cluster.grpc)
    rest = cluster.rest[0]
    try:
        hot = []
        for k in range(4):
            p = add_model(tmp_path / f"hot{k}" / "model.onnx", 100.0 + k)
            await _register(rest, f"hot{k}", p, "steady")
            hot.append(f"hot{k}")
        for k, mid in enumerate(hot):
            assert np.allclose(await client.infer(k, mid), 100.0 + k)
        sizes = await _model_sizes(rest)
        size = max(sizes[m] for m in hot)
        assert size > 0
        quota = 5 * size + size // 2
        r = await _set_quota(rest, "scan", quota)
        assert r.status_code == 200, r.text
        assert r.json()["max_bytes"] == quota
        await wait_until(lambda: _has_quota(cluster, "scan"), 10, "quota visible on every instance")

        loads_before = {}
        for m in hot:
            loads_before[m] = await _copy_since(rest, m)
        for k in range(30):
            p = add_model(tmp_path / f"scan{k}" / "model.onnx", float(k))
            await _register(rest, f"scan{k}", p, "scan")
            assert np.allclose(await client.infer(k, f"scan{k}"), float(k))
            # placement reserves each copy's predicted size; a measured size may come out a little
            # larger, which the next tick corrects: never more than one model over
            used = (await _tenants(rest))["scan"]["used_bytes"]
            assert used <= quota + size, f"after scan{k}: tenant 'scan' holds {used} bytes, quota {quota}"
            # the steady tenant keeps using its models meanwhile
            mid = hot[k % len(hot)]
            assert np.allclose(await client.infer(k + 1, mid), 100.0 + hot.index(mid))
        await wait_until(lambda: _used_at_most(rest, "scan", quota), 30, "tenant 'scan' back within its quota")
        # the scan never evicted the steady tenant's models: the copy loaded at first is still there
        # (a second copy may have joined it: they are in regular use)
        for m in hot:
            assert set(loads_before[m]) <= set(await _copy_since(rest, m)), m
        t = await _tenants(rest)
        assert t["scan"]["models"] == 30 and t["scan"]["max_bytes"] == quota
        assert t["steady"]["max_bytes"] == 0 and t["steady"]["copies"] >= 4
    finally:
        await client.close()


def _has_quota(cluster: Any, tenant: str) -> Any:
    async def check() -> bool:
        for rest in cluster.rest:
            if (await _tenants(rest)).get(tenant, {}).get("max_bytes", 0) <= 0:
                return False
        return True

    return check()


async def _copy_since(rest: str, model_id: str) -> tuple[tuple[str, int], ...]:
    async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
        st = (await c.get(f"/api/v1/models/{model_id}")).json()
    return tuple(sorted((c["location"], c["time"]) for c in st["copies"] if c["status"] == "LOADED"))


async def test_quota_change_takes_effect_and_a_model_over_quota_fails_clearly(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(2, capacity_bytes=16 * SLOT)
    client = Client(cluster.grpc)
    rest = cluster.rest[0]
    try:
        for k in range(6):
            p = add_model(tmp_path / f"a{k}" / "model.onnx", float(k))
            await _register(rest, f"a{k}", p, "acme")
            assert np.allclose(await client.infer(k, f"a{k}"), float(k))
        sizes = await _model_sizes(rest)
        held = (await _tenants(rest))["acme"]["used_bytes"]
        assert held >= sum(sizes.values())
        # lower the quota below what the tenant holds: the next ticks evict its coldest copies
        quota = held // 2
        assert (await _set_quota(rest, "acme", f"{quota}")).status_code == 200
        await wait_until(
            lambda: _used_at_most(rest, "acme", quota), 30, "tenant evicted down to its new quota"
        )
        # the newest models are the ones kept
        assert np.allclose(await client.infer(0, "a5"), 5.0)
        # a model bigger than the whole quota: a clear RESOURCE_EXHAUSTED, and nothing is evicted for it
        big = add_model(tmp_path / "big" / "model.onnx", 42.0, table_bytes=5 * TABLE)
        await _register(rest, "big", big, "acme")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(1, "big", timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in (err.value.details() or "")
        # removing the quota lets it load
        async with httpx.AsyncClient(base_url=rest, timeout=30) as c:
            assert (await c.delete("/api/v1/tenants/acme")).status_code == 200
            assert (await c.delete("/api/v1/tenants/acme")).status_code == 404
        await wait_until(lambda: _no_quota(rest, "acme"), 10, "quota gone")
        # the remembered placement failure goes with the quota change: served well before its
        # TTL (failure_ttl_s, 30 s) would have ended
        await wait_until(lambda: _infer_ok(client, "big", 42.0), 20, "big model served once the quota is gone")
    finally:
        await client.close()


async def _used_at_most(rest: str, tenant: str, limit: int) -> bool:
    return bool((await _tenants(rest))[tenant]["used_bytes"] <= limit)


async def _no_quota(rest: str, tenant: str) -> bool:
    return bool((await _tenants(rest))[tenant]["max_bytes"] == 0)


async def _infer_ok(client: Client, model: str, value: float) -> bool:
    try:
        return bool(np.allclose(await client.infer(0, model, timeout=10), value))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False
        raise


@pytest.fixture
async def memory_cluster(tmp_path: Path) -> AsyncIterator[MemoryCluster]:
    """One in-process instance: validation and the CLI do not depend on the store."""
    c = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20)
    await c.start()
    yield c
    await c.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"maxBytes": 0}, 400),
        ({"maxBytes": -5}, 400),
        ({"maxBytes": "lots"}, 400),
        ({"maxBytes": True}, 400),
        ({"maxBytes": "9" * 400}, 400),  # exact, not a float overflow (was a 500)
        ({"maxBytes": 1 << 63}, 400),
        ({}, 400),
        ({"maxRps": 0}, 400),  # neither limit: not a quota
        ({"maxRps": -1}, 400),
        ({"maxRps": "fast"}, 400),
        ({"maxRps": True}, 400),
        ({"maxRps": 1e12}, 400),
        ({"maxBytes": "8Gi"}, 200),
        ({"maxBytes": "1.5G"}, 200),
        ({"maxRps": 2.5}, 200),
    ],
)
async def test_quota_validation(memory_cluster: MemoryCluster, body: dict[str, Any], status: int) -> None:
    cluster = memory_cluster
    async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
        r = await c.put("/api/v1/tenants/t1", json=body)
        assert r.status_code == status, r.text
        if status == 200:
            want = {"8Gi": 8 << 30, "1.5G": 1_500_000_000, None: 0}[body.get("maxBytes")]
            assert (r.json()["max_bytes"], r.json()["max_rps"]) == (want, body.get("maxRps", 0.0))
        else:
            assert "error" in r.json()
        assert (await c.put("/api/v1/tenants/bad%20name", json={"maxBytes": 1})).status_code == 400
        for raw in (b'{"maxRps": NaN}', b'{"maxRps": Infinity}'):  # Python's json reads them; not a rate
            r = await c.put("/api/v1/tenants/t2", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
        assert (await c.get("/api/v1/tenants/nobody")).status_code == 404


async def test_tenant_cli(memory_cluster: MemoryCluster) -> None:
    addr = memory_cluster.rest[0]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh", "tenant", *args, "--address", addr], cwd=ROOT, capture_output=True, text=True, timeout=60)

    # the CLI is a separate process: run it off the event loop that serves the mesh
    r = await asyncio.to_thread(cli, "set", "team-a", "--max-bytes", "2Gi", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_bytes"] == 2 << 30
    # a limit left out keeps its value: the rate is added to the byte quota, not in its place
    r = await asyncio.to_thread(cli, "set", "team-a", "--max-rps", "50", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["max_bytes"], json.loads(r.stdout)["max_rps"]) == (2 << 30, 50.0)
    r = await asyncio.to_thread(cli, "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert {t["tenant"]: (t["max_bytes"], t["max_rps"]) for t in json.loads(r.stdout)} == {"team-a": (2 << 30, 50.0)}
    r = await asyncio.to_thread(cli, "list")
    assert r.returncode == 0 and "2.0GiB   50/s" in r.stdout, r.stdout
    r = await asyncio.to_thread(cli, "set", "team-a")
    assert r.returncode == 2 and "--max-bytes, --max-rps" in r.stderr, r.stderr
    r = await asyncio.to_thread(cli, "set", "team-a", "--max-bytes", "nonsense")
    assert r.returncode == 1 and "maxBytes" in r.stdout
    r = await asyncio.to_thread(cli, "delete", "team-a")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "get", "team-a")
    assert r.returncode == 1 and "404" in r.stdout
