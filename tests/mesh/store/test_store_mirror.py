"""PrefixMirror: convergence, change callbacks, re-list on compaction, outages (memory and etcd)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any

import pytest

from mesh._store import (
    Compare,
    Delete,
    EtcdStore,
    KeyValue,
    MemoryStore,
    MirrorChange,
    PrefixMirror,
    Put,
    Store,
    StoreUnavailable,
    WatchEvent,
)
from tests.etcd_server import EtcdServer


def decode_json(_key: str, value: bytes) -> Any:
    return json.loads(value)


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@contextlib.asynccontextmanager
async def running(mirror: PrefixMirror[Any]) -> AsyncGenerator[PrefixMirror[Any], None]:
    await mirror.start()
    try:
        yield mirror
    finally:
        await mirror.stop()


async def test_mirror_converges_and_reports_changes(store: Store, key_prefix: str) -> None:
    p = key_prefix + "models/"
    await store.put(p + "m1", enc({"v": 1}))
    await store.put(p + "m2", enc({"v": 2}))
    await store.put(key_prefix + "other", enc("ignored"))
    mirror: PrefixMirror[Any] = PrefixMirror(store, p, decode_json)
    changes: list[MirrorChange[Any]] = []
    mirror.subscribe(changes.extend)
    async with running(mirror):
        assert dict(mirror.items) == {"m1": {"v": 1}, "m2": {"v": 2}}
        assert mirror.connected
        assert sorted((c.key, c.old, c.new) for c in changes) == [
            ("m1", None, {"v": 1}),
            ("m2", None, {"v": 2}),
        ]
        changes.clear()
        r3 = await store.put(p + "m3", enc({"v": 3}))
        await store.put(p + "m1", enc({"v": 11}))
        ok, r_txn = await store.txn(
            [Compare(p + "m3", r3)], [Delete(p + "m2"), Put(p + "m4", enc(4))]
        )
        assert ok
        expected = {"m1": {"v": 11}, "m3": {"v": 3}, "m4": 4}
        assert await mirror.wait_for(lambda: dict(mirror.items) == expected, 10.0)
        assert mirror.revision >= r_txn
        assert mirror.revision_of("m3") == r3 and mirror.revision_of("m2") == 0
        assert [(c.key, c.old, c.new) for c in changes] == [
            ("m3", None, {"v": 3}),
            ("m1", {"v": 1}, {"v": 11}),
            *sorted([("m2", {"v": 2}, None), ("m4", None, 4)]),
        ]
        with pytest.raises(TypeError):
            mirror.items["x"] = 1  # type: ignore[index]


async def test_wait_for_times_out_when_nothing_happens(store: Store, key_prefix: str) -> None:
    async with running(PrefixMirror(store, key_prefix, decode_json)) as mirror:
        assert await mirror.wait_for(lambda: "never" in mirror.items, 0.05) is False


async def test_undecodable_value_is_left_out_and_subscriber_errors_are_contained(
    store: Store, key_prefix: str
) -> None:
    calls: list[int] = []

    def broken_subscriber(changes: list[MirrorChange[Any]]) -> None:
        calls.append(len(changes))
        raise RuntimeError("subscriber bug")

    async with running(PrefixMirror(store, key_prefix, decode_json)) as mirror:
        unsubscribe = mirror.subscribe(broken_subscriber)
        await store.put(key_prefix + "good", enc(1))
        await store.put(key_prefix + "bad", b"{not json")
        await store.put(key_prefix + "last", enc(3))
        assert await mirror.wait_for(lambda: "last" in mirror.items, 10.0)
        assert dict(mirror.items) == {"good": 1, "last": 3}
        assert mirror.connected
        await store.put(key_prefix + "bad", enc(2))  # fixed later
        assert await mirror.wait_for(lambda: mirror.items.get("bad") == 2, 10.0)
        unsubscribe()
        n = len(calls)
        await store.put(key_prefix + "after", enc(4))
        assert await mirror.wait_for(lambda: "after" in mirror.items, 10.0)
        assert len(calls) == n and n >= 2


class Interposer(Store):
    """Delegates to a store; can hold watch batches back and then break the watch."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.break_watch = False
        self.watches_started = 0
        self.lists = 0

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self.lists += 1
        return await self.inner.get_prefix(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: str) -> bool:
        return await self.inner.delete(key)

    async def cas(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> int | None:
        return await self.inner.cas(key, value, expected_mod_revision, lease=lease)

    async def delete_if(self, key: str, expected_mod_revision: int) -> bool:
        return await self.inner.delete_if(key, expected_mod_revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> tuple[bool, int]:
        return await self.inner.txn(compares, success, failure)

    async def grant_lease(self, ttl_s: int) -> int:
        return await self.inner.grant_lease(ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        return await self.inner.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def close(self) -> None:
        await self.inner.close()

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        self.watches_started += 1
        async with contextlib.aclosing(self.inner.watch_prefix(prefix, start_revision)) as watch:
            async for batch in watch:
                if batch:
                    await self.gate.wait()
                    if self.break_watch:
                        self.break_watch = False
                        raise StoreUnavailable("injected: watch broke")
                yield batch


async def test_mirror_relists_after_compaction_and_diffs(store: Store, key_prefix: str) -> None:
    proxy = Interposer(store)
    for name in ("keep", "change", "drop"):
        await store.put(key_prefix + name, enc(name))
    mirror: PrefixMirror[Any] = PrefixMirror(proxy, key_prefix, decode_json, retry_initial_s=0.01)
    changes: list[MirrorChange[Any]] = []
    async with running(mirror):
        mirror.subscribe(changes.extend)
        proxy.gate.clear()  # the mirror stops receiving
        await store.put(key_prefix + "change", enc("changed"))
        await store.delete(key_prefix + "drop")
        last = await store.put(key_prefix + "new", enc("new"))
        await store.compact(last)  # the mirror's next revision is gone from history
        proxy.break_watch = True
        proxy.gate.set()
        expected = {"keep": "keep", "change": "changed", "new": "new"}
        assert await mirror.wait_for(
            lambda: dict(mirror.items) == expected and mirror.connected, 10.0
        )
        assert proxy.watches_started >= 2  # the initial watch and the resumed one (Compacted)
        assert proxy.lists == 2  # the initial list and the re-list
        assert mirror.revision >= last
        assert sorted((c.key, c.old, c.new) for c in changes) == [
            ("change", "change", "changed"),
            ("drop", "drop", None),
            ("new", None, "new"),
        ]
        await store.put(key_prefix + "later", enc("later"))  # and it follows again
        assert await mirror.wait_for(lambda: mirror.items.get("later") == "later", 10.0)


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def outage_store(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Store, Callable[[], None], Callable[[], None]]]:
    """(store, go_down, come_back): a memory store with a simulated outage, or a private etcd."""
    if request.param == "memory":
        mem = MemoryStore()
        yield mem, lambda: mem.set_available(False), lambda: mem.set_available(True)
    else:
        server: EtcdServer = request.getfixturevalue("etcd_factory")()
        etcd = EtcdStore([("127.0.0.1", server.client_port)], op_timeout_s=1.0)
        yield etcd, server.stop, server.restart


async def test_mirror_survives_outage_and_resumes(
    outage_store: tuple[Store, Callable[[], None], Callable[[], None]], key_prefix: str
) -> None:
    store, go_down, come_back = outage_store
    try:
        await store.put(key_prefix + "a", enc(1))
        mirror: PrefixMirror[Any] = PrefixMirror(
            store, key_prefix, decode_json, retry_initial_s=0.05, retry_max_s=0.2
        )
        async with running(mirror):
            await store.put(key_prefix + "b", enc(2))
            assert await mirror.wait_for(lambda: "b" in mirror.items, 10.0)
            go_down()
            assert await mirror.wait_for(lambda: not mirror.connected, 10.0)
            assert dict(mirror.items) == {"a": 1, "b": 2}  # keeps serving the last state
            with pytest.raises(StoreUnavailable):
                await store.put(key_prefix + "c", enc(3))
            come_back()
            rev = await _retry_until_up(lambda: store.put(key_prefix + "c", enc(3)))
            await store.delete(key_prefix + "a")
            assert await mirror.wait_for(lambda: dict(mirror.items) == {"b": 2, "c": 3}, 15.0)
            assert mirror.connected and mirror.revision > rev
    finally:
        await store.close()


async def _retry_until_up(op: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """Retry an operation until the store answers (polling a condition under a deadline)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await op()
            except StoreUnavailable:
                await asyncio.sleep(0.05)


async def test_stop_is_idempotent_and_disconnects(store: Store, key_prefix: str) -> None:
    mirror: PrefixMirror[Any] = PrefixMirror(store, key_prefix, decode_json)
    await mirror.start()
    await mirror.start()  # no second watch
    await mirror.stop()
    await mirror.stop()
    assert not mirror.connected
    await store.put(key_prefix + "x", enc(1))
    assert "x" not in mirror.items
