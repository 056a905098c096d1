"""The store's own quota: every store kind reports its size, and writes that grow the store are
refused past its high-water mark while deletes (which free room) still work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mesh import ClusterMirror, Keys, Management, ModelInfoSpec
from mesh._errors import status_for
from mesh._store import (
    EtcdStore,
    MemoryStore,
    SqliteStore,
    Store,
    StoreQuotaExceeded,
    StoreRoom,
    StoreSettings,
    StoreUsage,
    build_store,
)
from tests.mesh.store.conftest import ManualClock


async def test_every_store_reports_what_it_holds_against_its_quota(store: Store) -> None:
    before = await store.usage()
    assert before.quota_bytes == 2 << 30 and before.high_water == 0.9  # etcd's default quota
    for i in range(64):
        await store.put(f"room/{i:03d}", bytes([i]) * 4096)
    grown = await store.usage()
    if isinstance(store, EtcdStore):  # the backend grows in pages, committed every 100 ms
        assert grown.used_bytes > 0
    else:
        assert grown.used_bytes >= before.used_bytes + 64 * 4096
    if not isinstance(store, EtcdStore):  # etcd frees room only once history is compacted
        for i in range(64):
            await store.delete(f"room/{i:03d}")
        assert (await store.usage()).used_bytes <= before.used_bytes + 4096


async def test_settings_give_each_store_kind_its_quota(tmp_path: Path) -> None:
    for kind in ("memory", "sqlite", "etcd"):
        s = build_store(
            StoreSettings(kind=kind, data_dir=tmp_path / kind, quota_bytes=1 << 20, quota_high_water=0.5)  # type: ignore[arg-type]
        )
        try:
            assert (s.quota_bytes, s.quota_high_water) == (1 << 20, 0.5)  # type: ignore[attr-defined]
        finally:
            await s.close()
    with pytest.raises(ValueError):
        StoreSettings(quota_high_water=1.5)


async def test_room_refuses_past_the_high_water_mark_and_reads_at_most_once_per_max_age() -> None:
    clock = ManualClock()
    store = MemoryStore(quota_bytes=100_000, quota_high_water=0.5)
    reads: list[StoreUsage] = []
    room = StoreRoom(store, max_age_s=1.0, clock=clock)
    room.on_usage = reads.append
    await room.check("a small write")
    await store.put("big", b"x" * 60_000)
    await room.check("a cached reading")  # read less than max_age_s ago: not read again
    assert len(reads) == 1
    clock.advance(1.0)
    with pytest.raises(StoreQuotaExceeded) as err:
        await room.check("registering model 'm'")
    assert len(reads) == 2 and reads[-1].fraction > 0.5
    msg = err.value.message
    assert "registering model 'm' refused" in msg and "of its 0.1 MiB quota" in msg and "50%" in msg
    status, _ = status_for(err.value)
    assert (status.grpc, status.http) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 507)
    await store.delete("big")  # deletes are never checked, and free room
    clock.advance(1.0)
    await room.check("after the delete")
    await store.close()


async def test_room_does_not_refuse_when_the_store_cannot_say() -> None:
    store = MemoryStore(quota_bytes=1)
    await store.put("k", b"v")
    room = StoreRoom(store, max_age_s=0.0)
    store.set_available(False)
    await room.check("a write during an outage")  # the write itself will report the outage
    store.set_available(True)
    with pytest.raises(StoreQuotaExceeded):
        await room.check("a write once it is back")
    await store.close()


async def test_sqlite_counts_its_files_pages_in_use(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path, quota_bytes=10 << 20)
    try:
        empty = await s.usage()
        for i in range(100):
            await s.put(f"reg/{i}", b"r" * 8000)
        lease = await s.grant_lease(30)
        for i in range(100):
            await s.put(f"live/{i}", b"l" * 8000, lease=lease)  # memory only: not on disk
        full = await s.usage()
        assert 100 * 8000 <= full.used_bytes - empty.used_bytes < 2 * 100 * 8000
    finally:
        await s.close()


@pytest.fixture
async def management(tmp_path: Path) -> AsyncIterator[Management]:
    store = MemoryStore(quota_bytes=64 << 10, quota_high_water=0.5)  # refuses from 32 KiB
    state = ClusterMirror(store, Keys("/t"))
    await state.start()
    m = Management(state, "test", store=store)
    m.room.max_age_s = 0.0  # every check reads the store (a test's writes follow each other)
    try:
        yield m
    finally:
        await state.stop()
        await store.close()


async def test_registrations_stop_cleanly_before_the_store_fills_and_unregistering_frees_room(
    management: Management,
) -> None:
    m = management
    key = '{"storage_params": {"note": "' + "n" * 2000 + '"}}'
    info = ModelInfoSpec(type="onnx", path="s3://bucket/m", key=key)
    registered: list[str] = []
    with pytest.raises(StoreQuotaExceeded) as err:
        for i in range(200):
            await m.register_model(f"m{i}", info)
            registered.append(f"m{i}")
    assert 5 <= len(registered) < 200 and f"registering model 'm{len(registered)}' refused" in err.value.message
    refused = f"m{len(registered)}"
    assert refused not in m.state.models.items  # nothing half-written
    usage = await m.store.usage()
    assert 0.5 <= usage.fraction < 0.75  # refused at the mark, well before the quota
    await m.register_model(registered[0], info)  # re-registering the same spec adds nothing: allowed
    with pytest.raises(StoreQuotaExceeded):
        await m.set_vmodel("vm", registered[0])  # a new vModel grows the store too
    with pytest.raises(StoreQuotaExceeded):
        await m.set_tenant_quota("team", 1 << 30)
    for mid in registered[:3]:  # deletes are not refused, and free room
        await m.unregister_model(mid)
    await m.register_model(refused, info)
    assert refused in m.state.models.items
