"""Leases: expiry and revocation delete bound keys and emit delete events (memory and etcd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from mesh._store import LeaseExpired, MemoryStore, Store, StoreInvalidArgument, WatchEvent
from tests.mesh.store.conftest import ManualClock

Collect = Callable[..., Awaitable[list[WatchEvent]]]


async def test_keepalive_returns_ttl_and_revoke_deletes_keys(
    store: Store, key_prefix: str, collect_events: Collect
) -> None:
    lease = await store.grant_lease(5)
    assert lease != 0
    assert await store.keepalive(lease) == 5
    await store.put(key_prefix + "a", b"1", lease=lease)
    await store.put(key_prefix + "b", b"2", lease=lease)
    r_free = await store.put(key_prefix + "free", b"3")
    kv = await store.get(key_prefix + "a")
    assert kv is not None and kv.lease == lease
    async with contextlib.aclosing(store.watch_prefix(key_prefix, r_free + 1)) as watch:
        assert await anext(watch) == []
        await store.revoke_lease(lease)
        events = await collect_events(watch, 2)
    assert sorted((e.kind, e.key) for e in events) == [
        ("delete", key_prefix + "a"),
        ("delete", key_prefix + "b"),
    ]
    assert events[0].mod_revision == events[1].mod_revision  # one revision for the whole lease
    assert await store.get(key_prefix + "a") is None
    assert await store.get(key_prefix + "free") is not None
    with pytest.raises(LeaseExpired):
        await store.keepalive(lease)
    await store.revoke_lease(lease)  # idempotent


async def test_expiry_deletes_keys_and_emits_deletes(
    store: Store,
    key_prefix: str,
    collect_events: Collect,
    expire_lease: Callable[[Store, int], Awaitable[None]],
) -> None:
    ttl = 2  # etcd's minimum
    lease = await store.grant_lease(ttl)
    rev = await store.put(key_prefix + "inst/1", b"alive", lease=lease)
    async with contextlib.aclosing(store.watch_prefix(key_prefix, rev + 1)) as watch:
        assert await anext(watch) == []
        await expire_lease(store, ttl)
        events = await collect_events(watch, 1, timeout_s=15.0)
    assert [(e.kind, e.key, e.prev_value) for e in events] == [
        ("delete", key_prefix + "inst/1", b"alive")
    ]
    assert await store.get(key_prefix + "inst/1") is None
    with pytest.raises(LeaseExpired):
        await store.keepalive(lease)
    with pytest.raises(LeaseExpired):
        await store.put(key_prefix + "inst/1", b"again", lease=lease)


async def test_put_with_unknown_lease_fails(store: Store, key_prefix: str) -> None:
    with pytest.raises(LeaseExpired, match="lease"):
        await store.put(key_prefix + "x", b"v", lease=0x7FFF_1234_5678)
    assert await store.get(key_prefix + "x") is None


async def test_rewrite_without_lease_detaches(store: Store, key_prefix: str) -> None:
    lease = await store.grant_lease(10)
    await store.put(key_prefix + "k", b"leased", lease=lease)
    await store.put(key_prefix + "k", b"free")
    await store.revoke_lease(lease)
    kv = await store.get(key_prefix + "k")
    assert kv is not None and kv.value == b"free" and kv.lease == 0


async def test_bad_ttl_rejected(store: Store) -> None:
    with pytest.raises(StoreInvalidArgument):
        await store.grant_lease(0)


async def test_memory_keepalive_extends_and_late_keepalive_expires(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    try:
        lease = await store.grant_lease(10)
        await store.put("/k", b"v", lease=lease)
        for _ in range(5):
            clock.advance(6)
            assert await store.keepalive(lease) == 10
            assert store.expire_leases_now() == 0
        clock.advance(10)
        with pytest.raises(LeaseExpired, match="expired"):
            await store.keepalive(lease)
        assert await store.get("/k") is None
    finally:
        await store.close()


async def test_memory_background_task_expires_on_the_clock(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock, max_expiry_interval_s=0.02)
    try:
        lease = await store.grant_lease(3)
        rev = await store.put("/k", b"v", lease=lease)
        async with contextlib.aclosing(store.watch_prefix("/", rev + 1)) as watch:
            assert await anext(watch) == []
            clock.advance(4)  # no explicit expire: the background task must notice
            async with asyncio.timeout(5):
                batch = await anext(watch)
        assert [(e.kind, e.key) for e in batch] == [("delete", "/k")]
    finally:
        await store.close()
