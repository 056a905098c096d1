"""Key-value semantics, CAS and transactions: each test runs on memory and on etcd."""

from __future__ import annotations

import asyncio

import pytest

from mesh._store import Compare, Delete, Put, Store, StoreInvalidArgument


async def test_get_missing_returns_none(store: Store, key_prefix: str) -> None:
    assert await store.get(key_prefix + "nothing") is None
    kvs, rev = await store.get_prefix(key_prefix)
    assert kvs == [] and rev >= 1


async def test_put_get_fields_and_versions(store: Store, key_prefix: str) -> None:
    k = key_prefix + "a"
    r1 = await store.put(k, b"one")
    kv = await store.get(k)
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        k,
        b"one",
        r1,
        r1,
        1,
        0,
    )
    r2 = await store.put(k, b"two")
    assert r2 > r1
    kv2 = await store.get(k)
    assert kv2 is not None
    assert (kv2.value, kv2.create_revision, kv2.mod_revision, kv2.version) == (b"two", r1, r2, 2)


async def test_delete_reports_existence_and_recreate_resets_version(
    store: Store, key_prefix: str
) -> None:
    k = key_prefix + "d"
    assert await store.delete(k) is False
    await store.put(k, b"x")
    await store.put(k, b"y")
    assert await store.delete(k) is True
    assert await store.get(k) is None
    r = await store.put(k, b"z")
    kv = await store.get(k)
    assert kv is not None and kv.version == 1 and kv.create_revision == r


async def test_get_prefix_sorted_scoped_with_revision(store: Store, key_prefix: str) -> None:
    for name in ["c", "a", "b/2", "b/1"]:
        await store.put(key_prefix + "in/" + name, name.encode())
    last = await store.put(key_prefix + "inx", b"outside")  # shares the string prefix "in" only
    kvs, rev = await store.get_prefix(key_prefix + "in/")
    assert [kv.key for kv in kvs] == [key_prefix + "in/" + n for n in ["a", "b/1", "b/2", "c"]]
    assert [kv.value for kv in kvs] == [b"a", b"b/1", b"b/2", b"c"]
    assert rev >= last


async def test_no_op_delete_does_not_bump_revision(store: Store, key_prefix: str) -> None:
    r = await store.put(key_prefix + "k", b"v")
    await store.delete(key_prefix + "absent")
    ok, rev = await store.txn([], [Delete(key_prefix + "absent2")])
    assert ok
    _, now = await store.get_prefix(key_prefix)
    assert rev == now
    # etcd's revision is store-wide; on a shared server other writers may move it, but the
    # no-op calls above did not: nothing under our prefix changed since r
    kv = await store.get(key_prefix + "k")
    assert kv is not None and kv.mod_revision == r


async def test_cas_create_only_and_conflicts(store: Store, key_prefix: str) -> None:
    k = key_prefix + "cas"
    r1 = await store.cas(k, b"v1", 0)
    assert r1 is not None
    assert await store.cas(k, b"again", 0) is None  # exists already
    assert await store.cas(k, b"stale", r1 - 1) is None  # wrong revision
    r2 = await store.cas(k, b"v2", r1)
    assert r2 is not None and r2 > r1
    assert await store.cas(k, b"v3", r1) is None  # r1 is stale now
    kv = await store.get(k)
    assert kv is not None and kv.value == b"v2" and kv.mod_revision == r2


async def test_delete_if(store: Store, key_prefix: str) -> None:
    k = key_prefix + "del"
    r = await store.put(k, b"v")
    assert await store.delete_if(k, r + 100) is False
    assert await store.get(k) is not None
    assert await store.delete_if(k, r) is True
    assert await store.get(k) is None


async def test_txn_success_is_atomic_at_one_revision(store: Store, key_prefix: str) -> None:
    a, b, c = (key_prefix + x for x in "abc")
    ra = await store.put(a, b"a0")
    await store.put(c, b"c0")
    ok, rev = await store.txn(
        [Compare(a, ra), Compare(b, 0)],
        [Put(a, b"a1"), Put(b, b"b1"), Delete(c)],
        [Put(a, b"failed")],
    )
    assert ok
    kva, kvb = await store.get(a), await store.get(b)
    assert kva is not None and kvb is not None
    assert (kva.value, kvb.value) == (b"a1", b"b1")
    assert kva.mod_revision == kvb.mod_revision == rev
    assert await store.get(c) is None


async def test_txn_failure_applies_nothing_of_success(store: Store, key_prefix: str) -> None:
    a, b = key_prefix + "a", key_prefix + "b"
    ra = await store.put(a, b"a0")
    ok, rev = await store.txn(
        [Compare(a, ra), Compare(b, 12345)],  # second compare fails
        [Put(a, b"a1"), Put(b, b"b1")],
        [Put(key_prefix + "failed", b"yes")],
    )
    assert not ok
    kva = await store.get(a)
    assert kva is not None and kva.value == b"a0"
    assert await store.get(b) is None
    kvf = await store.get(key_prefix + "failed")
    assert kvf is not None and kvf.mod_revision == rev


async def test_txn_rejects_a_key_twice(store: Store, key_prefix: str) -> None:
    k = key_prefix + "dup"
    with pytest.raises(StoreInvalidArgument, match="dup"):
        await store.txn([], [Put(k, b"1"), Delete(k)])
    assert await store.get(k) is None


async def test_a_transaction_holds_at_most_etcds_max_txn_ops(store: Store, key_prefix: str) -> None:
    """Every store takes etcd's default 128 operations a transaction and refuses one more, with
    nothing written; so what the embedded stores take, a cluster on etcd takes too."""
    from mesh._store import StoreError
    from mesh._store._etcd import EtcdStore

    limit = store.max_txn_ops
    assert limit == 128
    keys = [f"{key_prefix}t{i:03d}" for i in range(limit + 1)]
    with pytest.raises(StoreInvalidArgument, match="at most 128"):
        await store.txn([], [Put(k, b"x") for k in keys])
    with pytest.raises(StoreInvalidArgument, match="at most 128"):
        await store.txn([Compare(k, 0) for k in keys], [Put(keys[0], b"x")])
    assert (await store.get_prefix(key_prefix + "t"))[0] == []
    ok, _ = await store.txn([Compare(k, 0) for k in keys[:limit]], [Put(k, b"x") for k in keys[:limit]])
    assert ok and len((await store.get_prefix(key_prefix + "t"))[0]) == limit
    if isinstance(store, EtcdStore):  # the limit is etcd's own: past our check, etcd refuses the same
        store.max_txn_ops = 1000
        with pytest.raises(StoreError, match="too many operations"):
            await store.txn([], [Delete(k) for k in keys])
        assert len((await store.get_prefix(key_prefix + "t"))[0]) == limit


async def test_concurrent_cas_increments_lose_nothing(store: Store, key_prefix: str) -> None:
    k = key_prefix + "counter"
    n_tasks, n_incs = 5, 20
    conflicts = 0

    async def worker() -> None:
        nonlocal conflicts
        for _ in range(n_incs):
            while True:
                kv = await store.get(k)
                cur, rev = (int(kv.value), kv.mod_revision) if kv else (0, 0)
                if await store.cas(k, str(cur + 1).encode(), rev) is not None:
                    break
                conflicts += 1

    await asyncio.gather(*(worker() for _ in range(n_tasks)))
    kv = await store.get(k)
    assert kv is not None and int(kv.value) == n_tasks * n_incs
    assert kv.version == n_tasks * n_incs
    assert conflicts > 0  # the workers really did contend
