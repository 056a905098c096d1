"""The leader's incremental view equals a view built from scratch, after any sequence of store changes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh._cluster_mirror import ClusterMirror
from mesh._placement_view import PlacementViewBuilder, RatioSamples
from mesh._store import MemoryStore
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    DecisionRecord,
    InstanceRecord,
    Keys,
    ModelRecord,
    encode,
)
from placement import AdaptivePolicy, Policy, PolicySettings, Remembered, Usage

MiB = 1 << 20


@contextlib.asynccontextmanager
async def _leader_view(
    store: MemoryStore, keys: Keys, policy: Policy, clock: Callable[[], float], **kw: Any
) -> AsyncIterator[tuple[ClusterMirror, PlacementViewBuilder]]:
    """A started mirror of ``store`` and a started view builder over it (as a leader has); both stopped after."""
    state = ClusterMirror(store, keys)
    await state.start()
    b = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=clock, **kw)
    b.start()
    try:
        yield state, b
    finally:
        b.stop()
        await state.stop()


def _fresh(state: ClusterMirror, policy: Policy, now: float, like: PlacementViewBuilder | None = None) -> PlacementViewBuilder:
    """A builder that builds its view from every record (with ``like``'s history of gone copies, which
    no record holds)."""
    b = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=lambda: now)
    if like is not None:
        for mid, entry in like._history.items():
            b._history.put(mid, entry)
    b.view()  # built from every record
    return b


@contextlib.asynccontextmanager
async def _recomputes_beside_other_work(b: PlacementViewBuilder) -> AsyncIterator[list[int]]:
    """While the block runs, another task takes turns on the loop (it stands for the requests the
    leader's instance serves meanwhile); yields a list that gets, for each model ``b`` recomputes,
    how many turns that task had had by then (``b`` stays patched after the block)."""
    ticks = 0
    done = False

    async def other_work() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    seen: list[int] = []
    real = b._recompute

    def counting(mid: str) -> None:
        seen.append(ticks)
        real(mid)

    b._recompute = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        done = True
        await other


async def _onnx_models(n: int) -> tuple[MemoryStore, Keys]:
    """A store with one roomy instance ``i0`` and ``n`` unmeasured ONNX models ``m0``.. predicted at 1 MiB."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    for k in range(n):
        await store.put(keys.model(f"m{k}"), encode(ModelRecord(model_id=f"m{k}", model_type="onnx", predicted_size_bytes=MiB)))
    return store, keys


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_view_matches_full_rebuild(seed: int) -> None:
    rnd = random.Random(seed)
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    instances = [f"i{k}" for k in range(4)]
    for iid in instances:
        await store.put(keys.instance(iid), encode(InstanceRecord(instance_id=iid, address="x", capacity_bytes=64 * MiB)))
    policy = Policy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (state, inc):
        inc.view()
        models = [f"m{k}" for k in range(30)]
        for step in range(300):
            mid = rnd.choice(models)
            iid = rnd.choice(instances)
            op = rnd.random()
            rev = 0
            if op < 0.25:
                rev = await store.put(
                    keys.model(mid),
                    encode(
                        ModelRecord(
                            model_id=mid,
                            model_type=rnd.choice(["onnx", "xgboost"]),
                            predicted_size_bytes=rnd.choice([0, MiB, 3 * MiB]),
                            tenant=rnd.choice(["a", "b"]),
                            min_copies=rnd.choice([0, 1, 2]),
                        )
                    ),
                )
            elif op < 0.35:
                rev = store.revision if await store.delete(keys.model(mid)) else 0
            elif op < 0.55:
                assigned = tuple(rnd.sample(instances, rnd.randint(0, 2)))
                if assigned:
                    rev = await store.put(keys.assignment(mid), encode(AssignmentRecord(model_id=mid, instances=assigned)))
                else:
                    rev = store.revision if await store.delete(keys.assignment(mid)) else 0
            elif op < 0.9:
                state_ = rnd.choice(["loading", "loaded", "failed", "unloading"])
                measured = state_ == "loaded" and rnd.random() < 0.7
                rev = await store.put(
                    keys.copy(mid, iid),
                    encode(
                        CopyRecord(
                            model_id=mid,
                            instance_id=iid,
                            state=state_,  # type: ignore[arg-type]
                            since=now - step,
                            size_bytes=rnd.randint(1, 8) * MiB if measured else 0,
                            size_measured=measured,
                            load_time_s=rnd.random(),
                            last_used=now - rnd.random() * 100,
                            usage_rpm=rnd.random() * 10,
                            failed_until=now + 10 if state_ == "failed" else 0.0,
                        )
                    ),
                )
            else:
                rev = store.revision if await store.delete(keys.copy(mid, iid)) else 0
            mirror = state.models if op < 0.35 else state.assignments if op < 0.55 else state.copies
            assert await state.wait_for(lambda m=mirror, r=rev: m.revision >= r, 2.0)
            if step % 10 == 0 or step == 299:
                got = inc.view()
                want = _fresh(state, policy, now, like=inc).view()
                # sizes of unmeasured models depend on the learned ratio, which the incremental
                # builder updates in steps: compare everything else exactly
                assert set(got.models) == set(want.models)
                for m in want.models:
                    g, w = got.models[m], want.models[m]
                    if w.size_measured:
                        assert g == w, m
                    else:
                        assert g.__class__(**{**g.__dict__, "size_bytes": w.size_bytes}) == w, m
                        assert abs(g.size_bytes - w.size_bytes) <= 0.06 * w.size_bytes + 1, m
                for i in want.instances:
                    assert got.instances[i].loading == want.instances[i].loading
                    if all(mv.size_measured for mv in want.models.values() if i in mv.assigned):
                        assert got.instances[i].used_bytes == want.instances[i].used_bytes
        # the eviction index holds exactly the assigned models
        view = inc.view()
        idx = view.index
        assert idx is not None
        assert sum(len(m.assigned) * m.size_bytes for m in view.models.values()) == sum(idx.tenant_usage().values())


async def test_only_changed_models_are_recomputed() -> None:
    store, keys = await _onnx_models(500)
    async with _leader_view(store, keys, Policy(PolicySettings()), time.time) as (state, b):
        b.view()
        before = b.recomputed
        assert before >= 500
        rev = await store.put(keys.assignment("m7"), encode(AssignmentRecord(model_id="m7", instances=("i0",))))
        assert await state.wait_for(lambda: state.assignments.revision >= rev, 2.0)
        view = b.view()
        assert b.recomputed - before == 1
        assert view.models["m7"].assigned == frozenset({"i0"})
        assert view.instances["i0"].used_bytes == MiB
        assert view.instances["i0"].loading == 1


async def test_traffic_history_outlives_eviction_and_a_new_leader_rebuilds_it_from_the_log() -> None:
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    await store.put(keys.model("m"), encode(ModelRecord(model_id="m", model_type="onnx", predicted_size_bytes=MiB, last_used=1.0)))
    async with _leader_view(store, keys, Policy(PolicySettings()), time.time) as (state, b):
        rev = await store.put(
            keys.copy("m", "i0"),
            encode(CopyRecord(model_id="m", instance_id="i0", state="loaded", since=now, size_bytes=3 * MiB, size_measured=True,
                              load_time_s=2.5, last_used=now, usage_rpm=42.0)),
        )
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        assert (b.view().models["m"].last_used, b.view().models["m"].rate_rpm) == (now, 42.0)
        logged = b.remembered_after("m", ["i0"])  # what the leader logs when it evicts that copy
        assert logged == Remembered(now, 42.0, 2.5, 3 * MiB)
        await store.delete(keys.copy("m", "i0"))  # evicted
        rev = store.revision
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        mv = b.view().models["m"]
        # its traffic, reload cost and measured size outlive the copy
        assert (mv.last_used, mv.rate_rpm, mv.load_time_s, mv.size_bytes, mv.size_measured, mv.copies) == (
            now, 42.0, 2.5, 3 * MiB, True, ()
        )
        assert b.remembered("m") == logged
        # a builder with no decision log values the model from its registration alone
        fresh = PlacementViewBuilder(state, Policy(PolicySettings()), default_model_size_bytes=MiB, clock=time.time)
        assert (fresh.view().models["m"].last_used, fresh.view().models["m"].rate_rpm) == (1.0, 0.0)
        # a new leader rebuilds the history from the log: the newest record that carries the model wins
        for seq, entry in ((1, [now - 50, 7.0, 1.0, MiB]), (2, list(logged))):
            await store.put(keys.decision(seq), encode(DecisionRecord(seq=seq, at=now, leader="old", usage={"m": entry})))
        rev = store.revision
        assert await state.wait_for(lambda: state.decisions.mirror.revision >= rev, 2.0)
        fresh.start()
        try:
            assert fresh.view().models["m"] == mv
        finally:
            fresh.stop()
        # unregistering forgets it
        await store.delete(keys.model("m"))
        rev = store.revision
        assert await state.wait_for(lambda: state.models.revision >= rev, 2.0)
        assert "m" not in b.view().models and "m" not in b._history


async def test_rate_is_the_merge_of_the_copies_and_of_gone_copies() -> None:
    """Each copy reports the rate of the requests it served, as of its last use (placement.Usage):
    the view merges them with the traffic of copies that are gone; a copy still loading reports
    nothing yet, so a returning model keeps the rate it had (it is not valued as a cold one)."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    w = 60.0
    for iid in ("i0", "i1"):
        await store.put(keys.instance(iid), encode(InstanceRecord(instance_id=iid, address="x", capacity_bytes=1 << 40)))
    await store.put(keys.model("m"), encode(ModelRecord(model_id="m", model_type="onnx", predicted_size_bytes=MiB)))
    async def report(iid: str, last_used: float, rate: float, copy_state: str = "loaded") -> None:
        rev = await store.put(
            keys.copy("m", iid),
            encode(CopyRecord(model_id="m", instance_id=iid, state=copy_state, since=now, size_bytes=MiB,  # type: ignore[arg-type]
                              size_measured=copy_state == "loaded", last_used=last_used, usage_rpm=rate)),
        )
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)

    async def gone(iid: str) -> None:
        await store.delete(keys.copy("m", iid))
        rev = store.revision
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)

    def traffic() -> tuple[float, float]:
        mv = b.view().models["m"]
        return mv.last_used, mv.rate_rpm

    # (report, gone and traffic read the mirror and the builder made here)
    async with _leader_view(store, keys, Policy(PolicySettings()), time.time, usage_window_s=w) as (state, b):
        await report("i0", now - w, 30.0)
        await report("i1", now, 15.0)
        assert traffic() == Usage(now - w, 30.0).merge(Usage(now, 15.0), w) == (now, pytest.approx(30.0 / math.e + 15.0))
        await gone("i0")  # evicted: its traffic stays counted
        assert traffic() == (now, pytest.approx(30.0 / math.e + 15.0))
        await gone("i1")
        assert traffic() == (now, pytest.approx(30.0 / math.e + 15.0))
        await report("i0", 0.0, 0.0, "loading")  # the model returns: no traffic reported yet
        assert traffic() == (now, pytest.approx(30.0 / math.e + 15.0))
        await report("i0", now + w, 1.0)  # its first request served
        assert traffic() == (now + w, pytest.approx((30.0 / math.e + 15.0) / math.e + 1.0))


async def test_adaptive_retune_rebuilds_the_leader_index_in_the_new_order() -> None:
    """When the adaptive policy learns a new horizon, the leader's next view carries an index in that order."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    for k in range(40):
        mid = f"m{k}"
        await store.put(keys.model(mid), encode(ModelRecord(model_id=mid, model_type="onnx", predicted_size_bytes=MiB, last_used=now - k)))
        if k < 20:  # half held, with traffic; half used and held nowhere (evicted earlier)
            await store.put(keys.assignment(mid), encode(AssignmentRecord(model_id=mid, instances=("i0",))))
            await store.put(
                keys.copy(mid, "i0"),
                encode(CopyRecord(model_id=mid, instance_id="i0", state="loaded", since=now - 600, size_bytes=MiB,
                                  size_measured=True, load_time_s=0.5 + k / 10, last_used=now - 30 * k, usage_rpm=k / 5)),
            )
    policy = AdaptivePolicy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (_, b):
        view = b.view()
        assert policy.seed_ghosts(view) == 20  # the models held nowhere, as a new leader rebuilds them
        key0 = policy.key_id
        for k in range(20, 40):  # misses on ghosts that were kept on recency alone: a shorter horizon
            policy.observe(view, f"m{k}", [])
        assert policy.key_id != key0 and policy.state().hits_recent == 20
        got = b.view().index
        assert got is not None and got.key_id == policy.key_id
        want = policy.build_index(b.view().models.values())
        with got.scan() as s1, want.scan() as s2:
            assert [(c.model_id, c.key) for c in s1] == [(c.model_id, c.key) for c in s2]


async def test_a_miss_counts_as_a_use_and_protects_the_copy_until_a_copy_reports_serving_it() -> None:
    """The request that missed is counted at once (as the simulator counts it) and marks the model
    ``awaiting``; a copy's report of traffic after the miss replaces it (counted once, not twice);
    a miss nobody reported serving stops protecting the model after AWAIT_MAX_S."""
    from mesh._placement_view import AWAIT_MAX_S

    store = MemoryStore()
    keys = Keys(prefix="/t")
    clock = [1_000_000.0]
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=64 * MiB)))
    for mid in ("m", "n"):
        await store.put(keys.model(mid), encode(ModelRecord(model_id=mid, model_type="onnx", predicted_size_bytes=MiB)))
    async with _leader_view(store, keys, Policy(PolicySettings()), lambda: clock[0]) as (state, b):
        assert await state.wait_for(lambda: len(state.models.items) == 2, 2.0)
        v = b.view()
        assert not v.models["m"].awaiting and v.models["m"].rate_rpm == 0.0
        miss_at = clock[0]
        b.note_miss("m", miss_at)
        m = b.view().models["m"]
        one = Usage().record(miss_at, b.usage_window_s)
        assert m.awaiting and m.last_used == miss_at and m.rate_rpm == pytest.approx(one.rate_rpm)
        assert not b.view().models["n"].awaiting

        # loaded, not yet reporting traffic: still awaited
        rev = await store.put(keys.assignment("m"), encode(AssignmentRecord(model_id="m", instances=("i0",))))
        rev = await store.put(keys.copy("m", "i0"), encode(CopyRecord(model_id="m", instance_id="i0", state="loaded", since=miss_at + 0.2,
                                                                  size_bytes=MiB, size_measured=True)))
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        assert b.view().models["m"].awaiting
        # the copy reports serving the request: one request counted, not protected any more
        served = Usage().record(miss_at + 0.3, b.usage_window_s)
        rev = await store.put(keys.copy("m", "i0"), encode(CopyRecord(model_id="m", instance_id="i0", state="loaded", since=miss_at + 0.2,
                                                                  size_bytes=MiB, size_measured=True, last_used=miss_at + 0.3,
                                                                  usage_rpm=served.rate_rpm)))
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        m = b.view().models["m"]
        assert not m.awaiting and m.rate_rpm == pytest.approx(served.rate_rpm)

        # a miss for n that nobody serves protects n for AWAIT_MAX_S, then no more
        b.note_miss("n", clock[0])
        assert b.view().models["n"].awaiting
        clock[0] += AWAIT_MAX_S + 1
        assert not b.view().models["n"].awaiting


async def test_a_copy_measured_larger_than_planned_is_an_overcommitment_the_leader_relieves() -> None:
    """The view gives placement the bytes the instance's assigned copies hold (``assigned_bytes``)
    besides the larger ``used_bytes``: a copy measured at 3.5 MiB where room was made for less,
    plus a load planned beside it, hold 4.5 MiB of 4; the load waits on the instance for room.
    The tick evicts for it. An instance reporting more while an unload finishes is not over."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = 1_000_000.0
    inst = InstanceRecord(instance_id="i0", address="x", capacity_bytes=4 * MiB, used_bytes=int(3.5 * MiB))
    await store.put(keys.instance("i0"), encode(inst))
    for mid, kind in (("grown", "onnx"), ("waiting", "xgboost")):  # (another type: no size ratio learnt from "grown")
        await store.put(keys.model(mid), encode(ModelRecord(model_id=mid, model_type=kind, predicted_size_bytes=MiB)))
        await store.put(keys.assignment(mid), encode(AssignmentRecord(model_id=mid, instances=("i0",))))
    rev = await store.put(keys.copy("grown", "i0"), encode(CopyRecord(
        model_id="grown", instance_id="i0", state="loaded", since=now - 600, size_bytes=int(3.5 * MiB), size_measured=True)))
    rev = await store.put(keys.copy("waiting", "i0"), encode(CopyRecord(
        model_id="waiting", instance_id="i0", state="loading", since=now - 1, size_bytes=MiB)))
    policy = Policy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (state, b):
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        v = b.view()
        assert v.instances["i0"].assigned_bytes == int(4.5 * MiB) and v.instances["i0"].used_bytes == int(4.5 * MiB)
        acts = policy.on_tick(v)
        assert [(a.kind, a.model_id) for a in acts] == [("unload", "grown")], acts
        assert acts[0].reason.startswith("over capacity: i0's copies hold 4.5 MiB of 4.0 MiB"), acts[0].reason

        # measured as planned; the instance still reports 5 MiB (an unload finishing): nothing to relieve
        rev = await store.put(keys.copy("grown", "i0"), encode(CopyRecord(
            model_id="grown", instance_id="i0", state="loaded", since=now - 600, size_bytes=3 * MiB, size_measured=True)))
        rev = max(rev, await store.put(keys.instance("i0"), encode(replace(inst, used_bytes=5 * MiB))))
        assert await state.wait_for(lambda: state.copies.revision >= rev or state.instances.revision >= rev, 2.0)
        assert await state.wait_for(lambda: b.view().instances["i0"].used_bytes == 5 * MiB, 2.0)
        v = b.view()
        assert v.instances["i0"].assigned_bytes == 4 * MiB
        assert [a for a in policy.on_tick(v) if a.kind == "unload"] == []


async def test_eviction_values_use_the_policy_horizon_and_copies_the_recent_rate() -> None:
    """By default the placement meter's window is the policy's frequency horizon (rate_tau_s, as the
    simulator meters): a one-minute meter would value models by their last minute only, and on the
    trace families that made ours worse than LRU. Ticks still add copies by the short-window rate
    (``recent_rpm``, the instances' rate_window_s): a model busy right now gets its extra copy at once."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    settings = PolicySettings(scale_out_rpm_per_copy=600, scale_in_rpm_per_copy=60, second_copy_rpm=300, second_copy_off_rpm=100)
    for iid in ("i0", "i1"):
        await store.put(keys.instance(iid), encode(InstanceRecord(instance_id=iid, address="x", capacity_bytes=1 << 40)))
    await store.put(keys.model("m"), encode(ModelRecord(model_id="m", model_type="onnx", predicted_size_bytes=MiB)))
    await store.put(keys.assignment("m"), encode(AssignmentRecord(model_id="m", instances=("i0",))))
    # 1,200 requests in the last minute: 1,200 rpm over a minute, 10 rpm over two hours
    long = Usage().record(now, settings.rate_tau_s, requests=1200)
    short = Usage().record(now, 60.0, requests=1200)
    rev = await store.put(keys.copy("m", "i0"), encode(CopyRecord(
        model_id="m", instance_id="i0", state="loaded", since=now - 3600, size_bytes=MiB, size_measured=True,  # type: ignore[arg-type]
        last_used=now, usage_rpm=long.rate_rpm, recent_rpm=short.rate_rpm)))
    policy = Policy(settings)
    async with _leader_view(store, keys, policy, lambda: now, rate_window_s=60.0) as (state, b):
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        v = b.view()
        assert (v.rate_window_s, v.recent_window_s) == (settings.rate_tau_s, 60.0)
        m = v.models["m"]
        assert m.rate_rpm == pytest.approx(10.0) and m.recent_rpm == pytest.approx(1200.0)
        acts = policy.on_tick(v)
        assert [(a.kind, a.instance_id) for a in acts] == [("load", "i1")] and acts[0].reason.startswith("scale_out: 1200 rpm")
        # it is the recent rate that asks for the copy: by the two-hour meter alone (10 rpm) none is added,
        assert policy.on_tick(replace(v, recent_window_s=0.0)) == []
        # nor five minutes later, once the minute's burst has decayed
        assert policy.on_tick(replace(v, now=now + 300)) == []


async def test_a_size_ratio_change_resizes_unmeasured_models_a_bounded_number_per_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """A type's measured/predicted ratio moves: its unmeasured models get the new size over several
    views, at most RESIZE_PER_VIEW each (one view re-sizing all of them held the event loop for
    ~100 ms at 10k models), each assigned one's bytes counted at its size as it goes, and the views
    end where a view built from scratch is."""
    monkeypatch.setattr("mesh._placement_view.RESIZE_PER_VIEW", 40)
    store, keys = await _onnx_models(100)
    now = 1_000_000.0
    await store.put(keys.assignment("m99"), encode(AssignmentRecord(model_id="m99", instances=("i0",))))
    await store.put(keys.model("x"), encode(ModelRecord(model_id="x", model_type="xgboost", predicted_size_bytes=MiB)))
    policy = Policy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (state, b):
        rev = await store.put(keys.model("probe"), encode(ModelRecord(model_id="probe", model_type="onnx", predicted_size_bytes=MiB)))
        assert await state.wait_for(lambda: state.models.revision >= rev, 2.0)
        assert {mv.size_bytes for mv in b.view().models.values()} == {MiB}
        # one copy measured at 3x its prediction: the onnx ratio moves from 1 to 3
        rev = await store.put(keys.copy("probe", "i0"), encode(CopyRecord(
            model_id="probe", instance_id="i0", state="loaded", since=now, size_bytes=3 * MiB, size_measured=True)))
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        resized = []
        for _ in range(4):
            before = b.recomputed
            v = b.view()
            assert b.recomputed - before <= 40 + 1  # the changed model, then at most 40 re-sized
            onnx = [mv for mid, mv in v.models.items() if mid.startswith("m")]
            resized.append(sum(mv.size_bytes == 3 * MiB for mv in onnx))
            assert all(mv.size_bytes in (MiB, 3 * MiB) for mv in onnx)
            assert v.instances["i0"].used_bytes == v.models["m99"].size_bytes  # counted at its size as it goes
        assert resized == [40, 80, 100, 100]
        assert v.models["x"].size_bytes == MiB  # another type keeps its ratio
        scratch = _fresh(state, policy, now)  # (it learns the ratio as it goes too)
        for _ in range(3):
            fresh = scratch.view()
        assert {m: mv.size_bytes for m, mv in v.models.items()} == {m: mv.size_bytes for m, mv in fresh.models.items()}
        assert v.instances["i0"].used_bytes == fresh.instances["i0"].used_bytes == 3 * MiB


async def test_a_new_leaders_first_view_is_built_in_chunks_that_let_the_loop_run() -> None:
    """warm() builds every model once, ``chunk`` at a time, and other tasks run between the chunks;
    a change made meanwhile is in the next view, which then equals one built from scratch. A
    stop() meanwhile (leadership lost) ends it."""
    store, keys = await _onnx_models(250)
    now = 1_000_000.0
    policy = Policy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (state, b):
        async with _recomputes_beside_other_work(b) as seen:
            await store.put(keys.assignment("m3"), encode(AssignmentRecord(model_id="m3", instances=("i0",))))  # arrives during warm
            await b.warm(chunk=100)
            assert len(seen) == 250 and len(set(seen)) == 3  # three chunks, the other task ran between them
        rev = store.revision
        assert await state.wait_for(lambda: state.assignments.revision >= rev, 2.0)
        seen.clear()
        v = b.view()
        assert len(seen) <= 1  # only what changed since (the assignment, if it landed after its chunk)
        fresh = _fresh(state, policy, now).view()
        assert dict(v.models) == dict(fresh.models)
        assert v.instances["i0"].used_bytes == fresh.instances["i0"].used_bytes == MiB

        b.stop()
        b.start()
        seen.clear()
        task = asyncio.create_task(b.warm(chunk=100))
        await asyncio.sleep(0)
        b.stop()  # leadership lost after the first chunk
        await task
        assert len(seen) == 100


async def test_a_backlog_of_changes_is_caught_up_in_chunks_and_the_view_equals_a_fresh_one() -> None:
    """Under churn many models change between two decisions: catch_up() recomputes them ``chunk`` at
    a time with other tasks running between chunks, leaves at most one chunk for the view, and the
    view then equals one built from scratch. Little changed: it recomputes nothing."""
    store, keys = await _onnx_models(300)
    now = 1_000_000.0
    policy = Policy(PolicySettings())
    async with _leader_view(store, keys, policy, lambda: now) as (state, b):
        await b.warm()
        b.view()
        for k in range(260):  # a backlog: 260 models assigned since the last view
            await store.put(keys.assignment(f"m{k}"), encode(AssignmentRecord(model_id=f"m{k}", instances=("i0",))))
        rev = store.revision
        assert await state.wait_for(lambda: state.assignments.revision >= rev, 2.0)

        async with _recomputes_beside_other_work(b) as seen:
            await b.catch_up(chunk=100)
            assert len(seen) == 200 and len(set(seen)) == 2  # two chunks, the other task ran between them
        seen.clear()
        v = b.view()
        assert len(seen) == 60  # the rest, at most a chunk, with the view
        fresh = _fresh(state, policy, now).view()
        assert dict(v.models) == dict(fresh.models)
        assert v.instances["i0"].used_bytes == fresh.instances["i0"].used_bytes == 260 * MiB

        seen.clear()
        await store.put(keys.assignment("m299"), encode(AssignmentRecord(model_id="m299", instances=("i0",))))
        rev = store.revision
        assert await state.wait_for(lambda: state.assignments.revision >= rev, 2.0)
        await b.catch_up(chunk=100)
        assert seen == []  # one change: left to the view


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.floats(0.5, 8.0))), max_size=60))
def test_ratio_samples_median_equals_the_median_of_the_current_samples(ops: list[tuple[str, float | None]]) -> None:
    """The sorted copy of the samples follows every put, replacement and pop: its median is the
    median of what the dict holds, as the sort at each view computed it."""
    samples, reference = RatioSamples(), {}
    for mid, value in ops:
        if value is None:
            assert samples.pop(mid) == (reference.pop(mid, None) is not None)
        else:
            samples.put(mid, value)
            reference[mid] = value
        values = sorted(reference.values())
        assert samples.median() == (values[len(values) // 2] if values else None)
        assert len(samples) == len(reference)
