"""The agent built directly (memory store, its mirror, a fake adapter and puller, a manual clock): it is
the only writer of the loaded-copies registry the router reads, and publishes each copy's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from mesh._agent import Agent
from mesh._loaded_copies import LoadedCopies
from mesh._router import Router
from mesh._settings import InstanceSettings
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    CopyState,
    InstanceRecord,
    decode,
    encode,
)
from placement import PolicySettings, Usage
from runtime_adapters import AdapterRegistry, AdapterSettings
from tests.mesh.fakes import FakeAdapter, FakePuller, World, request, world

ME = "me"


@dataclass
class Rig:
    w: World
    agent: Agent
    router: Router
    loaded: LoadedCopies
    adapter: FakeAdapter
    puller: FakePuller

    async def load_all(self, mids: list[str]) -> None:
        """Register ``mids``, assign each to this instance, and wait until every copy is loaded."""
        w = self.w
        for mid in mids:
            await w.model(mid)
        await w.settle(lambda: all(m in w.mirror.models.items for m in mids))
        for mid in mids:
            await w.assign(mid, ME)
        await w.settle(lambda: all(w.mirror.holders(m) == (ME,) for m in mids), f"{len(mids)} loaded copies")

    async def copy_record(self, mid: str) -> CopyRecord | None:
        kv = await self.w.store.get(self.w.keys.copy(mid, ME))
        return decode(CopyRecord, kv.value) if kv is not None else None


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with world() as w:
        settings = InstanceSettings(
            instance_id=ME, capacity_bytes=1 << 20, publish_interval_s=3600, lease_ttl_s=30, failure_ttl_s=60
        )
        loaded = LoadedCopies()
        router = Router(ME, w.mirror, w.store, loaded, clock=w.clock)
        adapter = FakeAdapter()
        puller = FakePuller()
        registry = AdapterRegistry(AdapterSettings(), adapters=[adapter])
        agent = Agent(settings, ME, "127.0.0.1:1", w.store, w.mirror, router, registry, puller, loaded=loaded, clock=w.clock)  # type: ignore[arg-type]
        await agent.start()
        try:
            yield Rig(w, agent, router, loaded, adapter, puller)
        finally:
            await agent.stop()
            await router.close()


async def test_start_publishes_the_instance_under_its_lease(rig: Rig) -> None:
    kv = await rig.w.store.get(rig.w.keys.instance(ME))
    assert kv is not None and kv.lease == rig.agent.lease != 0
    rec = decode(InstanceRecord, kv.value)
    assert (rec.instance_id, rec.address, rec.capacity_bytes) == (ME, "127.0.0.1:1", 1 << 20)


async def test_assigned_model_is_loaded_registered_and_published_then_unloaded(rig: Rig) -> None:
    w = rig.w
    await w.model("m", tenant="team-a")
    await w.settle(lambda: "m" in w.mirror.models.items)
    gate = rig.adapter.gate = asyncio.Event()
    await w.assign("m", ME)

    await w.settle(lambda: rig.agent.copies.get("m") is not None and rig.agent.copies["m"].state == CopyState.LOADING)
    assert "m" not in rig.loaded  # nothing to serve while the load runs
    gate.set()
    await w.settle(lambda: w.mirror.holders("m") == (ME,), "the copy published as loaded")

    model = rig.loaded.get("m")
    assert model is rig.adapter.loaded["m"]
    rec = await rig.copy_record("m")
    assert rec is not None and rec.state == CopyState.LOADED and rec.size_bytes == 2000 and rec.size_measured
    assert rec.since == w.clock()
    kv = await w.store.get(w.keys.copy("m", ME))
    assert kv is not None and b'"state":"loaded"' in kv.value  # the wire value is the plain string
    # the router serves it from the registry, and counts its use
    assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    assert "m" in rig.router.usage
    # published with the copy's traffic as placement meters it (placement.Usage, the simulator's estimator);
    # requests between two publishes count at the last one's time
    t1 = w.clock()
    await rig.agent._publish_copy(rig.agent.copies["m"])
    w.clock.advance(30.0)
    for _ in range(2):
        assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    await rig.agent._publish_copy(rig.agent.copies["m"])
    rec = await rig.copy_record("m")
    # usage_rpm over the placement meter's window (the policy's horizon, hours), recent_rpm over the
    # short rate window (a minute) that copies by rate read
    window, short = rig.agent.usage_window_s, rig.agent.settings.rate_window_s
    assert window == PolicySettings().rate_tau_s and short == 60.0
    assert rec is not None and rec.last_used == w.clock()
    assert rec.usage_rpm == Usage().record(t1, window).record(w.clock(), window, requests=2).rate_rpm
    assert rec.recent_rpm == Usage().record(t1, short).record(w.clock(), short, requests=2).rate_rpm

    await w.store.delete(w.keys.assignment("m"))
    await w.settle(lambda: ME not in w.mirror.holders("m") and "m" not in rig.agent.copies, "the unload")
    assert "m" not in rig.loaded and model is not None and model.status.value == "UNLOADED"
    assert await rig.copy_record("m") is None
    assert "m" not in rig.router.usage  # forgotten with the copy
    assert rig.puller.released == rig.puller.staged == ["/m/m"]
    assert rig.puller.tenants == ["team-a"]  # staged as the model's tenant (tenant-bound storage keys)
    assert (rig.agent.counters.loads, rig.agent.counters.unloads) == (1, 1)


async def test_failed_load_is_published_with_its_error_and_never_registered(rig: Rig) -> None:
    w = rig.w
    await w.model("bad")
    await w.settle(lambda: "bad" in w.mirror.models.items)
    rig.adapter.fail["bad"] = "corrupt artifact"
    await w.assign("bad", ME)

    await w.settle(lambda: w.mirror.failure("bad") is not None, "the failure")
    assert w.mirror.failure("bad") == "corrupt artifact"
    rec = await rig.copy_record("bad")
    assert rec is not None and rec.state == CopyState.FAILED and rec.size_bytes == 0
    assert rec.failed_until == w.clock() + 60
    assert "bad" not in rig.loaded
    assert rig.agent.counters.load_failures == 1 and rig.puller.released == ["/m/bad"]


async def test_a_burst_of_loads_and_unloads_writes_the_instance_record_once_with_all_of_them(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loads and unloads that finish together are one write of the instance record, not one each
    (under churn: an etcd write and a watch message in every mirror each), and the record that
    lands counts all of them."""
    w = rig.w
    written: list[InstanceRecord] = []
    real_put = rig.agent.store.put

    async def counting_put(key: str, value: bytes, **kw: object) -> object:
        if key == w.keys.instance(ME):
            written.append(decode(InstanceRecord, value))
        return await real_put(key, value, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.agent.store, "put", counting_put)
    mids = ["a", "b", "c", "d"]
    await rig.load_all(mids)
    await w.settle(lambda: w.mirror.instances.items[ME].model_count == 4, "the instance record after the loads")
    assert w.mirror.instances.items[ME].used_bytes == 4 * 2000
    assert 1 <= len(written) < len(mids), [r.model_count for r in written]

    written.clear()
    for mid in mids[:3]:
        await w.store.delete(w.keys.assignment(mid))
    await w.settle(lambda: w.mirror.instances.items[ME].model_count == 1, "the instance record after the unloads")
    assert w.mirror.instances.items[ME].used_bytes == 2000
    assert 1 <= len(written) < 3, [r.model_count for r in written]


async def test_a_load_that_does_not_fit_fails_instead_of_overcommitting(rig: Rig) -> None:
    w = rig.w
    await w.model("huge", predicted_size_bytes=2 << 20)  # twice the capacity
    await w.settle(lambda: "huge" in w.mirror.models.items)
    await w.assign("huge", ME)
    await w.settle(lambda: w.mirror.failure("huge") is not None, "the failure")
    error = w.mirror.failure("huge")
    assert error is not None and "more than this instance's capacity" in error
    assert "huge" not in rig.adapter.loaded and "huge" not in rig.loaded


async def test_drain_waits_for_models_to_move_only_while_another_instance_can_take_them(rig: Rig) -> None:
    w = rig.w
    await w.model("m")
    await w.settle(lambda: "m" in w.mirror.models.items)
    await w.assign("m", ME)
    await w.settle(lambda: w.mirror.holders("m") == (ME,), "the copy loaded")
    # a lone instance: nowhere to move the copy, so the drain does not sit out its grace period
    assert await asyncio.wait_for(rig.agent.drain(3600), 10) is True
    # with a live peer the drain waits until the leader moves the assignment away
    await w.instance("peer", "127.0.0.1:2")
    await w.settle(lambda: "peer" in w.mirror.instances.items)
    drain = asyncio.create_task(rig.agent.drain(3600))
    # the drain re-checks on every mirror change; once its own announcement is mirrored it has
    # looked at least once more, and the assignment still names this instance
    await w.settle(lambda: w.mirror.instances.items[ME].shutting_down, "the drain announced")
    assert not drain.done()
    await w.assign("m", "peer")
    assert await asyncio.wait_for(drain, 10) is True


async def test_a_restarted_instance_forgets_its_previous_incarnations_copies_before_it_is_reachable() -> None:
    """kill -9 and restart with the same id before the lease ran out: the old process's copy
    records say "loaded" on this id. The new process deletes them before it publishes its new
    address, so no peer forwards to the new address for a copy it does not hold (it would answer
    NOT_FOUND until the reload and requests would give up); the copy is published again only
    once this process has loaded it."""
    async with world() as w:
        await w.model("m")
        await w.instance(ME, "127.0.0.1:1")  # the killed process's records
        await w.copy("m", ME)
        await w.assign("m", ME)
        await w.settle(lambda: w.mirror.holders("m") == (ME,) and w.mirror.assigned("m") == (ME,))
        start_rev = w.store.revision + 1
        loaded = LoadedCopies()
        router = Router(ME, w.mirror, w.store, loaded, clock=w.clock)
        adapter = FakeAdapter()
        gate = adapter.gate = asyncio.Event()
        registry = AdapterRegistry(AdapterSettings(), adapters=[adapter])
        settings = InstanceSettings(instance_id=ME, capacity_bytes=1 << 20, publish_interval_s=3600, lease_ttl_s=30)
        agent = Agent(settings, ME, "127.0.0.1:2", w.store, w.mirror, router, registry, FakePuller(), loaded=loaded, clock=w.clock)  # type: ignore[arg-type]
        await agent.start()
        try:
            await w.settle(lambda: w.mirror.instances.items[ME].address == "127.0.0.1:2", "the new address")
            # the order a peer's watch sees: the stale copy goes before the new address appears
            events: list[tuple[str, str]] = []
            watch = w.store.watch_prefix(w.keys.prefix + "/", start_rev)
            while not any(k == w.keys.instance(ME) for _, k in events):
                events += [(e.kind, e.key) for e in await anext(watch)]
            await watch.aclose()
            copy_key = w.keys.copy("m", ME)
            assert ("delete", copy_key) in events
            assert events.index(("delete", copy_key)) < events.index(("put", w.keys.instance(ME)))
            assert ME not in w.mirror.holders("m")  # nobody is sent here while the reload runs
            await w.settle(lambda: agent.copies.get("m") is not None, "the reload started")
            gate.set()
            await w.settle(lambda: w.mirror.holders("m") == (ME,), "the reloaded copy published")
            assert loaded.get("m") is adapter.loaded["m"]
        finally:
            await agent.stop()
            await router.close()


async def _copy_history(w: World, mid: str, start_rev: int, until: str) -> list[str]:
    """The copy record's writes since ``start_rev`` as the store's watch replays them (a state for
    each put, "deleted" for a delete), read until one is ``until``."""
    out: list[str] = []
    watch = w.store.watch_prefix(w.keys.copy(mid, ME), start_rev)
    try:
        async with asyncio.timeout(10):
            while until not in out:
                out += [decode(CopyRecord, e.value).state.value if e.kind == "put" else "deleted" for e in await anext(watch)]
    finally:
        await watch.aclose()
    return out


async def test_a_quick_load_writes_only_its_outcome_and_a_slow_one_reports_loading_first(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load that ends within LOADING_REPORT_S writes one copy record, its outcome; one that runs
    longer is reported LOADING first, then LOADED; and a slow load unassigned after its report
    leaves no record behind (the report is never written after the delete)."""
    w = rig.w
    for mid in ("quick", "slow", "dropped"):
        await w.model(mid)
    await w.settle(lambda: {"quick", "slow", "dropped"} <= set(w.mirror.models.items))

    monkeypatch.setattr("mesh._agent.LOADING_REPORT_S", 30.0)
    rev = w.store.revision + 1
    await w.assign("quick", ME)
    assert await _copy_history(w, "quick", rev, until="loaded") == ["loaded"]

    monkeypatch.setattr("mesh._agent.LOADING_REPORT_S", 0.05)
    gate = rig.adapter.gate = asyncio.Event()
    rev = w.store.revision + 1
    await w.assign("slow", ME)
    assert await _copy_history(w, "slow", rev, until="loading") == ["loading"]
    gate.set()
    assert await _copy_history(w, "slow", rev, until="loaded") == ["loading", "loaded"]

    rig.adapter.gate = asyncio.Event()
    rev = w.store.revision + 1
    await w.assign("dropped", ME)
    assert await _copy_history(w, "dropped", rev, until="loading") == ["loading"]
    await w.store.delete(w.keys.assignment("dropped"))
    assert await _copy_history(w, "dropped", rev, until="deleted") == ["loading", "deleted"]
    await w.settle(lambda: "dropped" not in rig.agent.copies, "the load given up")
    assert await rig.copy_record("dropped") is None
    assert rig.adapter.loaded.keys() >= {"quick", "slow"} and "dropped" not in rig.loaded


async def test_a_load_reserves_the_size_placement_planned_with(rig: Rig) -> None:
    """The leader packs by its own estimate (the prediction scaled by the measured/predicted ratio it
    learned); the agent reserves that estimate, not the raw prediction, so it never waits for room
    the leader believes is there (a stall no unload would ever end)."""
    w = rig.w
    await w.model("m", predicted_size_bytes=2 << 20)  # the raw prediction: twice the capacity
    await w.settle(lambda: "m" in w.mirror.models.items)
    gate = rig.adapter.gate = asyncio.Event()
    await w.store.put(w.keys.assignment("m"), encode(AssignmentRecord("m", (ME,), planned_bytes=300_000)))
    await w.settle(lambda: (c := w.mirror.copies_of("m").get(ME)) is not None and c.state == CopyState.LOADING, "loading")
    assert w.mirror.copies_of("m")[ME].size_bytes == 300_000
    gate.set()
    await w.settle(lambda: w.mirror.holders("m") == (ME,), "the copy loaded")
    assert w.mirror.failure("m") is None


async def test_loads_waiting_for_room_do_not_wait_on_each_other(rig: Rig) -> None:
    """Two loads that each fit alone but not together (sizes measured larger than planned, say):
    the first takes the room, the second waits for it rather than both waiting on each other."""
    w = rig.w
    for mid in ("a", "b"):
        await w.model(mid, predicted_size_bytes=600_000)
    await w.settle(lambda: {"a", "b"} <= set(w.mirror.models.items))
    gate = rig.adapter.gate = asyncio.Event()
    rig.adapter.sizes = {"a": 600_000, "b": 600_000}
    for mid in ("a", "b"):
        await w.assign(mid, ME)
    await w.settle(lambda: len(rig.adapter.calls) == 1, "one load started")
    started = rig.adapter.calls[0]
    assert len(rig.adapter.calls) == 1  # the other waits for room
    # ... and holds nothing while it waits: the instance reports only what fits
    assert rig.agent.used_bytes == 600_000 <= rig.agent.settings.capacity_bytes
    gate.set()
    await w.settle(lambda: w.mirror.holders(started) == (ME,), "the first copy loaded")
    other = "b" if started == "a" else "a"
    await w.store.delete(w.keys.assignment(started))  # placement moves it away: room for the other
    await w.settle(lambda: w.mirror.holders(other) == (ME,), "the waiting load went ahead")


async def test_a_copy_just_loaded_reports_its_first_requests_at_once(rig: Rig) -> None:
    """publish_interval_s is an hour here: the first request a new copy serves is still published
    within moments (the leader protects the copies of a model a request waits for until then)."""
    w = rig.w
    await w.model("m")
    await w.settle(lambda: "m" in w.mirror.models.items)
    await w.assign("m", ME)
    await w.settle(lambda: w.mirror.holders("m") == (ME,), "the copy published as loaded")
    rec = await rig.copy_record("m")
    assert rec is not None and rec.last_used == 0.0  # nothing served yet, nothing reported
    w.clock.advance(1.0)
    assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    served_at = w.clock()
    await w.settle(lambda: (c := w.mirror.copies_of("m").get(ME)) is not None and c.last_used == served_at, "the first use published")
    rec = await rig.copy_record("m")
    assert rec is not None and rec.usage_rpm == Usage().record(served_at, rig.agent.usage_window_s).rate_rpm
    # only the first: later requests wait for the regular publish
    w.clock.advance(1.0)
    assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    assert "m" not in rig.agent._fresh
    rec = await rig.copy_record("m")
    assert rec is not None and rec.last_used == served_at


async def test_a_copy_is_not_rewritten_for_a_small_drift_of_its_dashboard_rate(rig: Rig) -> None:
    """``rpm`` (the dashboards' sliding-window rate) falls a little at every publish while a copy is
    idle; the copy record is rewritten for it only when it moved by a quarter (and 1/min) or reached
    0, and at once for anything placement reads (new requests)."""
    w = rig.w
    await w.model("m")
    await w.settle(lambda: "m" in w.mirror.models.items)
    await w.assign("m", ME)
    await w.settle(lambda: w.mirror.holders("m") == (ME,), "the copy published as loaded")
    assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    copy, st = rig.agent.copies["m"], rig.router.usage["m"]

    async def publish_with(elapsed_s: float, prev: int = 40) -> tuple[float, int]:
        """Publish with the rate window ``elapsed_s`` old and ``prev`` requests in the previous one;
        returns the stored rpm and how many times the record was written."""
        st.prev_count, st.window_count, st.window_start = prev, 0, time.monotonic() - elapsed_s
        await rig.agent._publish_copy(copy)
        kv = await w.store.get(w.keys.copy("m", ME))
        assert kv is not None
        return decode(CopyRecord, kv.value).rpm, kv.version

    rpm, version = await publish_with(1.0)
    assert 39 <= rpm <= 40  # 40 * (1 - 1/60), up from the first window's 1/min: written
    assert await publish_with(5.0) == (rpm, version)  # 36.7: within a quarter, not written
    assert await publish_with(10.0) == (rpm, version)  # 33.3
    moved, v2 = await publish_with(20.0)  # 26.7: a third below what was published
    assert v2 == version + 1 and 26 <= moved <= 27
    assert (await publish_with(25.0))[1] == v2  # 23.3
    zero, v3 = await publish_with(130.0)  # two windows idle: 0, always written
    assert (zero, v3) == (0.0, v2 + 1)
    # a request changes what placement reads (last use, usage_rpm): written whatever rpm does
    assert (await rig.router.infer("m", request("m"), timeout_s=5)).model_name == "m"
    await rig.agent._publish_copy(copy)
    kv = await w.store.get(w.keys.copy("m", ME))
    assert kv is not None and kv.version == v3 + 1
    assert decode(CopyRecord, kv.value).last_used == st.last_used > 0


async def test_the_publish_loop_writes_changed_copies_a_transaction_at_a_time(rig: Rig) -> None:
    """Copies whose records changed go out together, up to the store's transaction limit each (one
    RPC and one watch message per transaction, not per copy); unchanged ones are not written, and
    the records are the ones a copy-by-copy publish writes."""
    w = rig.w
    mids = [f"m{k}" for k in range(5)]
    await rig.load_all(mids)
    w.clock.advance(1.0)
    for mid in mids:
        assert (await rig.router.infer(mid, request(mid), timeout_s=5)).model_name == mid
    rig.agent._fresh.clear()  # (the first-use loop would publish them one by one meanwhile)

    txns: list[int] = []
    real_txn = w.store.txn

    async def counting(compares: object, success: list[object], failure: object = ()) -> object:
        txns.append(len(success))
        return await real_txn(compares, success, failure)  # type: ignore[arg-type]

    w.store.txn = counting  # type: ignore[method-assign]
    w.store.max_txn_ops = 2
    expected = {mid: rig.agent._copy_record(rig.agent.copies[mid]) for mid in mids}  # what would be written
    for mid in mids:
        rig.agent.copies[mid].published = None  # (building the expected records fed the meters: write again)
    await rig.agent._publish_copies()
    assert txns == [2, 2, 1]
    for mid in mids:
        rec = await rig.copy_record(mid)
        assert rec is not None and expected[mid] is not None and rec.last_used == w.clock()
        assert replace(rec, rpm=0.0) == replace(expected[mid], rpm=0.0)  # (rpm: a sliding window of the real clock)
    txns.clear()
    await rig.agent._publish_copies()  # nothing changed since
    assert txns == []
