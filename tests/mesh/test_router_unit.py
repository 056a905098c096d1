"""The router built directly (memory store, its mirror, fake peers, a manual clock): every branch of
routing - local, remote, miss, evicted mid-request, suspect holder, vModel moved - without a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh._errors import ModelNotFound
from mesh._loaded_copies import LoadedCopies
from mesh._router import FORWARDED_HEADER, MODEL_ID_HEADER, Router
from mesh._store_schema import MissRecord, decode
from runtime_adapters import InferRequest, InferResponse, ModelNotLoaded
from tests.mesh.fakes import FakeModel, FakePeer, World, abort_with, request, request_bytes, world

ME = "me"


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as w:
        await w.instance(ME, "127.0.0.1:1")  # our own address is never dialled
        yield w


@pytest.fixture
async def peers() -> AsyncIterator[list[FakePeer]]:
    made = [await FakePeer(reply=f"from-{i}".encode()).start() for i in range(2)]
    yield made
    for p in made:
        await p.stop()


def make_router(w: World, loaded: LoadedCopies | None = None, **kw: Any) -> Router:
    return Router(ME, w.mirror, w.store, loaded or LoadedCopies(), clock=w.clock, forward_retry_backoff_s=0.05, **kw)


async def test_local_copy_is_served_in_process_and_counted(w: World) -> None:
    await w.model("m")
    await w.settle(lambda: "m" in w.mirror.models.items)
    loaded = LoadedCopies()
    model = FakeModel("m")
    loaded.add("m", model)
    router = make_router(w, loaded)
    w.clock.advance(5)

    resp = await router.infer("m", request("m"), timeout_s=5)

    assert resp.model_name == "m" and resp.outputs[0].name == "m" and resp.id == "r1"
    assert model.calls == 1
    assert (router.counters.requests, router.counters.local, router.counters.forwarded) == (1, 1, 0)
    assert router.usage["m"].last_used == w.clock() and router.usage["m"].count == 1
    await router.close()


async def test_remote_copy_gets_the_bytes_forwarded_unparsed(w: World, peers: list[FakePeer]) -> None:
    await w.model("m")
    await w.instance("p0", peers[0].address)
    await w.copy("m", "p0")
    await w.settle(lambda: w.mirror.holders("m") == ("p0",))
    router = make_router(w)
    payload = b"\x0a\x01m not a message the router may parse \xff"

    out = await router.infer_bytes("m", payload, timeout_s=5)

    assert out == b"from-0"  # the peer's bytes, untouched
    assert [c.payload for c in peers[0].calls] == [payload]
    md = peers[0].calls[0].metadata
    assert md[MODEL_ID_HEADER] == "m" and md[FORWARDED_HEADER] == ME
    assert (router.counters.local, router.counters.forwarded, router.counters.misses) == (0, 1, 0)
    await router.close()


async def test_a_forwarded_request_is_not_forwarded_again(w: World, peers: list[FakePeer]) -> None:
    await w.model("m")
    await w.instance("p0", peers[0].address)
    await w.copy("m", "p0")
    await w.settle(lambda: w.mirror.holders("m") == ("p0",))
    router = make_router(w)
    with pytest.raises(ModelNotFound):
        await router.infer_bytes("m", request_bytes("m"), timeout_s=5, forwarded=True)
    assert peers[0].calls == [] and router.counters.requests == 0
    await router.close()


async def test_miss_asks_for_one_load_then_serves_from_the_new_holder(w: World, peers: list[FakePeer]) -> None:
    await w.model("m")
    await w.instance("p0", peers[0].address)
    await w.settle(lambda: "p0" in w.mirror.instances.items and "m" in w.mirror.models.items)
    router = make_router(w)

    requests = [asyncio.create_task(router.infer_bytes("m", request_bytes("m"), timeout_s=10)) for _ in range(3)]
    await w.settle(lambda: "m" in w.mirror.misses.items, "the miss record")
    kv = await w.store.get(w.keys.miss("m"))
    assert kv is not None
    miss = decode(MissRecord, kv.value)
    assert (miss.model_id, miss.instance_id, miss.at) == ("m", ME, w.clock())
    assert not any(t.done() for t in requests)
    # the leader's part, played by the test: assign, and the holder reports the copy loaded
    await w.store.delete(w.keys.miss("m"))
    await w.assign("m", "p0")
    await w.copy("m", "p0")

    assert await asyncio.gather(*requests) == [b"from-0"] * 3
    assert router.counters.misses == 1  # three requests, one miss
    await router.close()


async def test_evicted_between_look_up_and_call_routes_again(w: World, peers: list[FakePeer]) -> None:
    await w.model("m")
    await w.instance("p0", peers[0].address)
    await w.copy("m", "p0")
    await w.settle(lambda: w.mirror.holders("m") == ("p0",))
    loaded = LoadedCopies()

    class EvictedDuringCall(FakeModel):
        async def infer(self, request: InferRequest) -> InferResponse:
            loaded.remove("m")  # the agent starts unloading while the call is on its way
            self.evicted = True
            return await super().infer(request)

    model = EvictedDuringCall("m")
    loaded.add("m", model)
    router = make_router(w, loaded)

    assert await router.infer_bytes("m", request_bytes("m"), timeout_s=5) == b"from-0"
    assert model.calls == 1 and len(peers[0].calls) == 1

    assert "m" not in loaded

    # a peer's forwarded request that meets the same race is refused, never forwarded on
    loaded.add("m", model)
    with pytest.raises(ModelNotLoaded):
        await router.infer_bytes("m", request_bytes("m"), timeout_s=5, forwarded=True)
    assert len(peers[0].calls) == 1
    await router.close()


async def test_unavailable_holder_is_skipped_and_then_avoided(w: World, peers: list[FakePeer]) -> None:
    await w.model("m")
    for i, p in enumerate(peers):
        await w.instance(f"p{i}", p.address)
        await w.copy("m", f"p{i}")
    await w.settle(lambda: w.mirror.holders("m") == ("p0", "p1"))
    peers[0].behaviour = abort_with(grpc.StatusCode.UNAVAILABLE)
    router = make_router(w, suspect_holder_s=60)
    router._inflight["p1"] = 1  # p0 looks least busy: the first request tries it first

    assert await router.infer_bytes("m", request_bytes("m"), timeout_s=5) == b"from-1"
    assert len(peers[0].calls) == 1 and router.counters.forward_retries == 1
    # p0 is suspect now: the next request goes to p1 although p0 is still less busy
    assert await router.infer_bytes("m", request_bytes("m"), timeout_s=5) == b"from-1"
    assert len(peers[0].calls) == 1 and len(peers[1].calls) == 2
    await router.close()


async def test_vmodel_moved_while_routing_follows_the_new_target(w: World, peers: list[FakePeer]) -> None:
    await w.model("old")
    await w.model("new")
    await w.vmodel("v", "old")
    await w.instance("p0", peers[0].address)
    await w.instance("p1", peers[1].address)
    await w.copy("old", "p0")
    await w.copy("new", "p1")
    await w.settle(lambda: w.mirror.resolve("v") == "old" and w.mirror.holders("new") == ("p1",))

    async def moved(_call: Any, context: grpc.aio.ServicerContext) -> None:
        # p0 lost its copy of the old target, and the vModel moved on meanwhile
        await w.vmodel("v", "new")
        await w.store.delete(w.keys.copy("old", "p0"))
        await context.abort(grpc.StatusCode.NOT_FOUND, "not loaded here")

    peers[0].behaviour = moved
    router = make_router(w)

    assert await router.infer_bytes("v", request_bytes("v"), timeout_s=5) == b"from-1"
    assert peers[1].calls[0].metadata[MODEL_ID_HEADER] == "new"
    assert router.counters.misses == 0  # followed the move: no load asked for the old target
    assert await w.store.get(w.keys.miss("old")) is None
    await router.close()


async def test_unknown_name_is_not_found_without_touching_the_store_twice(w: World) -> None:
    router = make_router(w)
    reads = 0
    real_get = w.store.get

    async def counting_get(key: str) -> Any:
        nonlocal reads
        reads += 1
        return await real_get(key)

    w.store.get = counting_get  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(ModelNotFound):
            await router.infer_bytes("nope", request_bytes("nope"), timeout_s=1)
    assert reads == 2  # model key and vModel key, once: then the negative cache answers
    await router.close()



async def test_channels_to_addresses_no_instance_names_are_closed_after_a_grace(w: World, peers: list[FakePeer]) -> None:
    """Pods come back with new addresses: the channel to an address gone for ``peer_forget_s`` is
    closed and dropped; a live peer's channel stays, and an address that comes back gets a new one."""
    await w.model("m")
    for i, p in enumerate(peers):
        await w.instance(f"p{i}", p.address)
    await w.copy("m", "p0")
    await w.settle(lambda: w.mirror.holders("m") == ("p0",))
    router = make_router(w)
    router.peer_link = False
    assert await router.infer_bytes("m", b"x", timeout_s=5) == b"from-0"
    old = router.channel(peers[0].address)
    router.channel(peers[1].address)  # a live peer's channel (the metadata look-up opens these too)

    # p0's pod goes away; its copy moves to p1
    await w.store.delete(w.keys.instance("p0"))
    await w.store.delete(w.keys.copy("m", "p0"))
    await w.copy("m", "p1")
    await w.settle(lambda: "p0" not in w.mirror.instances.items and w.mirror.holders("m") == ("p1",))
    assert peers[0].address in router._channels  # within the grace: kept
    w.clock.advance(router.peer_forget_s + 1)
    await w.instance("p1", peers[1].address)  # any instance record change runs the check
    await w.settle(lambda: peers[0].address not in router._channels, "the gone peer's channel dropped")
    assert peers[1].address in router._channels
    await asyncio.gather(*router._closing)
    with pytest.raises(grpc.aio.UsageError):  # closed, not merely forgotten
        await old.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"x", timeout=1)
    assert await router.infer_bytes("m", b"y", timeout_s=5) == b"from-1"

    # the address comes back (a new pod that got it): a new channel
    await w.instance("p0", peers[0].address)
    await w.copy("m", "p0")
    await w.store.delete(w.keys.copy("m", "p1"))
    await w.settle(lambda: w.mirror.holders("m") == ("p0",))
    assert await router.infer_bytes("m", b"z", timeout_s=5) == b"from-0"
    assert router.channel(peers[0].address) is not old
    await router.close()
