"""etcd specifics: fail fast while etcd is down, timeouts, endpoint failover, real lease time,
watch resume across a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from mesh._store import Compare, EtcdStore, Put, StoreUnavailable, WatchEvent
from tests.etcd_server import EtcdServer

OP_TIMEOUT_S = 1.0
MARGIN_S = 1.0


def _ops(store: EtcdStore, key: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def first_watch_batch() -> Any:
        async with contextlib.aclosing(store.watch_prefix(key, 0)) as watch:
            return await anext(watch)

    return {
        "get": lambda: store.get(key),
        "get_prefix": lambda: store.get_prefix(key),
        "put": lambda: store.put(key, b"v"),
        "delete": lambda: store.delete(key),
        "cas": lambda: store.cas(key, b"v", 0),
        "delete_if": lambda: store.delete_if(key, 1),
        "txn": lambda: store.txn([Compare(key, 0)], [Put(key, b"v")]),
        "grant_lease": lambda: store.grant_lease(5),
        "keepalive": lambda: store.keepalive(1234),
        "revoke_lease": lambda: store.revoke_lease(1234),
        "compact": lambda: store.compact(1),
        "watch": first_watch_batch,
    }


async def _assert_all_fail_fast(store: EtcdStore, key: str, bound_s: float) -> None:
    loop = asyncio.get_running_loop()
    for name, op in _ops(store, key).items():
        t0 = loop.time()
        with pytest.raises(StoreUnavailable) as info:
            await op()
        elapsed = loop.time() - t0
        assert elapsed < bound_s, f"{name} took {elapsed:.2f} s"
        assert "127.0.0.1:" in info.value.message, name  # names the endpoint


@pytest.mark.etcd
async def test_ops_fail_fast_while_etcd_is_stopped(
    etcd_factory: Callable[[], EtcdServer], key_prefix: str
) -> None:
    server = etcd_factory()
    store = EtcdStore([("127.0.0.1", server.client_port)], op_timeout_s=OP_TIMEOUT_S)
    try:
        await store.put(key_prefix + "k", b"before")
        server.stop()
        await _assert_all_fail_fast(store, key_prefix + "k", OP_TIMEOUT_S + MARGIN_S)
        server.restart()
        async with asyncio.timeout(15):  # the channel reconnects by itself
            while True:
                try:
                    kv = await store.get(key_prefix + "k")
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
        assert kv is not None and kv.value == b"before"  # data survives a restart
    finally:
        await store.close()


class _Hang(grpc.GenericRpcHandler):
    """Accepts every etcd call and never answers (a hung or partitioned etcd)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.calls.append(details.method)

        async def hang_unary(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.Event().wait()
            return b""

        async def hang_stream(
            _requests: Any, _context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            await asyncio.Event().wait()
            yield b""

        if details.method in ("/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive"):
            return grpc.stream_stream_rpc_method_handler(hang_stream)
        return grpc.unary_unary_rpc_method_handler(hang_unary)


async def test_ops_time_out_against_a_hung_endpoint(key_prefix: str) -> None:
    """A gRPC peer that takes every call and never answers: each op ends at op_timeout_s."""
    handler = _Hang()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    timeout_s = 0.2
    store = EtcdStore([("127.0.0.1", port)], op_timeout_s=timeout_s)
    loop = asyncio.get_running_loop()
    try:
        for name, op in _ops(store, key_prefix + "k").items():
            t0 = loop.time()
            with pytest.raises(StoreUnavailable, match=r"did not answer|Deadline"):
                await op()
            elapsed = loop.time() - t0
            assert timeout_s * 0.9 <= elapsed < timeout_s + MARGIN_S, f"{name} took {elapsed:.2f} s"
        assert len(handler.calls) >= len(_ops(store, ""))  # every op really reached the peer
    finally:
        await store.close()
        await server.stop(None)


@pytest.mark.etcd
async def test_next_endpoint_is_used_after_a_failure(
    etcd_server: EtcdServer, key_prefix: str
) -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = silent.sockets[0].getsockname()[1]
    silent.close()
    await silent.wait_closed()  # nothing listens there any more
    store = EtcdStore(
        [("127.0.0.1", dead_port), ("127.0.0.1", etcd_server.client_port)],
        op_timeout_s=OP_TIMEOUT_S,
    )
    try:
        with pytest.raises(StoreUnavailable, match=str(dead_port)):
            await store.put(key_prefix + "k", b"v")
        assert await store.put(key_prefix + "k", b"v") > 1
    finally:
        await store.close()


@pytest.fixture
async def etcd_store(etcd_server: EtcdServer) -> AsyncIterator[EtcdStore]:
    store = EtcdStore([("127.0.0.1", etcd_server.client_port)], op_timeout_s=2.0)
    yield store
    await store.close()


@pytest.mark.etcd
async def test_keepalive_keeps_a_lease_beyond_its_ttl(
    etcd_store: EtcdStore, key_prefix: str
) -> None:
    lease = await etcd_store.grant_lease(2)
    rev = await etcd_store.put(key_prefix + "inst", b"alive", lease=lease)
    deleted = asyncio.Event()

    async def follow() -> None:
        async with contextlib.aclosing(etcd_store.watch_prefix(key_prefix, rev + 1)) as watch:
            async for batch in watch:
                if any(e.kind == "delete" for e in batch):
                    deleted.set()

    follower = asyncio.create_task(follow())
    try:
        for _ in range(5):  # 3.5 s in all, well past the 2 s TTL
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(deleted.wait(), 0.7)  # the key must NOT go away
            assert await etcd_store.keepalive(lease) >= 1
        assert await etcd_store.get(key_prefix + "inst") is not None
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    await etcd_store.revoke_lease(lease)


@pytest.mark.etcd
async def test_raw_watch_breaks_on_stop_and_resumes_after_restart(
    etcd_factory: Callable[[], EtcdServer], key_prefix: str
) -> None:
    server = etcd_factory()
    store = EtcdStore([("127.0.0.1", server.client_port)], op_timeout_s=OP_TIMEOUT_S)
    seen: list[WatchEvent] = []
    try:
        _, rev = await store.get_prefix(key_prefix)
        watch = store.watch_prefix(key_prefix, rev + 1)
        assert await anext(watch) == []
        await store.put(key_prefix + "a", b"1")
        seen += await anext(watch)
        server.stop()
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(10):
                await anext(watch)
        await watch.aclose()
        server.restart()
        async with asyncio.timeout(15):
            while True:
                try:
                    await store.put(key_prefix + "b", b"2")  # written right after the restart
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
        async with contextlib.aclosing(
            store.watch_prefix(key_prefix, seen[-1].mod_revision + 1)
        ) as watch2:
            assert await anext(watch2) == []
            seen += await anext(watch2)
        assert [(e.key, e.value) for e in seen] == [
            (key_prefix + "a", b"1"),
            (key_prefix + "b", b"2"),
        ]
    finally:
        await store.close()


@pytest.mark.etcd
async def test_listing_is_paginated_at_one_revision(
    etcd_server: EtcdServer, key_prefix: str
) -> None:
    store = EtcdStore([("127.0.0.1", etcd_server.client_port)], page_size=2)
    try:
        for i in range(7):
            last = await store.put(key_prefix + f"k{i}", str(i).encode())
        await store.put(key_prefix[:-1] + "0", b"after the prefix range")
        kvs, rev = await store.get_prefix(key_prefix)
        assert [kv.key for kv in kvs] == [key_prefix + f"k{i}" for i in range(7)]
        assert rev > last
        everything, _ = await store.get_prefix("")
        assert {kv.key for kv in kvs} <= {kv.key for kv in everything}
    finally:
        await store.close()
