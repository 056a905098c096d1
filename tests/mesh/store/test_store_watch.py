"""Watches: replay from a revision, batching, gap-free resume, compaction (memory and etcd)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import pytest

from mesh._store import Compacted, Compare, Delete, MemoryStore, Put, Store, WatchEvent

Collect = Callable[..., Awaitable[list[WatchEvent]]]


async def test_first_batch_is_empty_then_live_events(
    store: Store, key_prefix: str, collect_events: Collect
) -> None:
    _, rev = await store.get_prefix(key_prefix)
    async with contextlib.aclosing(store.watch_prefix(key_prefix, rev + 1)) as watch:
        assert await anext(watch) == []
        r1 = await store.put(key_prefix + "a", b"1")
        r2 = await store.put(key_prefix + "a", b"2")
        r3 = await store.put(key_prefix + "other/../x", b"3")
        await store.put("/elsewhere" + key_prefix, b"not mine")
        r4 = await store.delete(key_prefix + "a")
        events = await collect_events(watch, 4)
    assert r4 is True
    assert [(e.kind, e.key, e.value, e.prev_value) for e in events] == [
        ("put", key_prefix + "a", b"1", None),
        ("put", key_prefix + "a", b"2", b"1"),
        ("put", key_prefix + "other/../x", b"3", None),
        ("delete", key_prefix + "a", b"", b"2"),
    ]
    assert [e.mod_revision for e in events[:3]] == [r1, r2, r3]
    assert events[3].mod_revision > r3


async def test_replay_from_revision_includes_start(
    store: Store, key_prefix: str, collect_events: Collect
) -> None:
    revs = [await store.put(key_prefix + f"k{i}", str(i).encode()) for i in range(5)]
    async with contextlib.aclosing(store.watch_prefix(key_prefix, revs[2])) as watch:
        assert await anext(watch) == []
        events = await collect_events(watch, 3)
    assert [e.mod_revision for e in events] == revs[2:]
    assert [e.key for e in events] == [key_prefix + f"k{i}" for i in (2, 3, 4)]


async def test_transaction_events_arrive_in_one_batch(store: Store, key_prefix: str) -> None:
    await store.put(key_prefix + "gone", b"x")
    _, rev = await store.get_prefix(key_prefix)
    async with contextlib.aclosing(store.watch_prefix(key_prefix, rev + 1)) as watch:
        assert await anext(watch) == []
        ok, trev = await store.txn(
            [Compare(key_prefix + "new", 0)],
            [
                Put(key_prefix + "new", b"n"),
                Put(key_prefix + "new2", b"m"),
                Delete(key_prefix + "gone"),
            ],
        )
        assert ok
        batch = await anext(watch)
    assert sorted((e.kind, e.key) for e in batch) == [
        ("delete", key_prefix + "gone"),
        ("put", key_prefix + "new"),
        ("put", key_prefix + "new2"),
    ]
    assert {e.mod_revision for e in batch} == {trev}


async def test_resume_from_last_revision_has_no_gap_or_duplicate(
    store: Store, key_prefix: str, collect_events: Collect
) -> None:
    _, rev = await store.get_prefix(key_prefix)
    seen: list[WatchEvent] = []
    async with contextlib.aclosing(store.watch_prefix(key_prefix, rev + 1)) as watch:
        assert await anext(watch) == []
        for i in range(3):
            await store.put(key_prefix + f"k{i}", b"a")
        seen += await collect_events(watch, 3)
    # the watch is closed: these writes happen while nobody watches
    for i in range(3, 6):
        await store.put(key_prefix + f"k{i}", b"b")
    await store.delete(key_prefix + "k0")
    async with contextlib.aclosing(
        store.watch_prefix(key_prefix, seen[-1].mod_revision + 1)
    ) as watch:
        assert await anext(watch) == []
        await store.put(key_prefix + "k6", b"c")
        seen += await collect_events(watch, 5)
    assert [(e.kind, e.key) for e in seen] == [("put", key_prefix + f"k{i}") for i in range(6)] + [
        ("delete", key_prefix + "k0"),
        ("put", key_prefix + "k6"),
    ]
    revs = [e.mod_revision for e in seen]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)


async def test_watch_from_compacted_revision_raises(store: Store, key_prefix: str) -> None:
    r1 = await store.put(key_prefix + "a", b"1")
    await store.put(key_prefix + "a", b"2")
    r3 = await store.put(key_prefix + "a", b"3")
    await store.compact(r3)
    async with contextlib.aclosing(store.watch_prefix(key_prefix, r1)) as watch:
        assert await anext(watch) == []  # created, then cancelled for compaction
        with pytest.raises(Compacted) as info:
            await anext(watch)
    assert info.value.code == "aborted"
    assert info.value.compact_revision >= r3
    # the current state and watches from the compaction point onwards still work
    kv = await store.get(key_prefix + "a")
    assert kv is not None and kv.value == b"3"
    async with contextlib.aclosing(store.watch_prefix(key_prefix, r3 + 1)) as watch:
        assert await anext(watch) == []
        r4 = await store.put(key_prefix + "a", b"4")
        assert [e.mod_revision for e in await anext(watch)] == [r4]
    await store.compact(r3)  # compacting again is a no-op


async def test_memory_history_is_bounded() -> None:
    store = MemoryStore(history_revisions=3)
    try:
        revs = [await store.put("/k", str(i).encode()) for i in range(5)]
        async with contextlib.aclosing(store.watch_prefix("/", revs[1])) as watch:
            assert await anext(watch) == []
            with pytest.raises(Compacted):
                await anext(watch)
        async with contextlib.aclosing(store.watch_prefix("/", revs[2])) as watch:
            assert await anext(watch) == []
            assert [e.mod_revision for e in await anext(watch)] == revs[2:]
    finally:
        await store.close()


async def test_memory_slow_watcher_breaks_with_compacted() -> None:
    store = MemoryStore(watch_queue_events=5)
    try:
        async with contextlib.aclosing(store.watch_prefix("/", 0)) as watch:
            assert await anext(watch) == []
            for i in range(10):  # the consumer reads nothing meanwhile
                await store.put(f"/k{i}", b"v")
            with pytest.raises(Compacted, match="fell behind"):
                await anext(watch)
    finally:
        await store.close()


async def test_memory_outage_breaks_watches_and_ops() -> None:
    from mesh._store import StoreUnavailable

    store = MemoryStore()
    try:
        async with contextlib.aclosing(store.watch_prefix("/", 0)) as watch:
            assert await anext(watch) == []
            store.set_available(False)
            with pytest.raises(StoreUnavailable):
                await anext(watch)
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await store.put("/k", b"v")
        store.set_available(True)
        assert await store.put("/k", b"v") > 1
    finally:
        await store.close()
