"""The leader's incremental view equals a view built from scratch, after any sequence of store changes."""

from __future__ import annotations

import random
import time

import pytest

from mesh._cluster_mirror import ClusterMirror
from mesh._placement_view import PlacementViewBuilder
from mesh._store import MemoryStore
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    InstanceRecord,
    Keys,
    ModelRecord,
    encode,
)
from placement import AdaptivePolicy, Policy, PolicySettings

MiB = 1 << 20


def _fresh(state: ClusterMirror, policy: Policy, now: float) -> PlacementViewBuilder:
    b = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=lambda: now)
    b.view()  # built from every record
    return b


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_view_matches_full_rebuild(seed: int) -> None:
    rnd = random.Random(seed)
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    instances = [f"i{k}" for k in range(4)]
    for iid in instances:
        await store.put(keys.instance(iid), encode(InstanceRecord(instance_id=iid, address="x", capacity_bytes=64 * MiB)))
    state = ClusterMirror(store, keys)
    await state.start()
    policy = Policy(PolicySettings())
    inc = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=lambda: now)
    inc.start()
    inc.view()
    try:
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
                            rpm=rnd.random() * 10,
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
                want = _fresh(state, policy, now).view()
                # sizes of unmeasured models depend on the learned ratio, which the incremental
                # builder updates in steps: compare everything else exactly
                assert set(got.models) == set(want.models)
                for m in want.models:
                    g, w = got.models[m], want.models[m]
                    if not any(c.state == "loaded" for c in state.copies_of(m).values()):
                        # traffic history outlives a model's loaded copies in the incremental view only
                        assert g.last_used >= w.last_used, m
                        g = g.__class__(**{**g.__dict__, "last_used": w.last_used, "rate_rpm": w.rate_rpm})
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
    finally:
        inc.stop()
        await state.stop()


async def test_only_changed_models_are_recomputed() -> None:
    store = MemoryStore()
    keys = Keys(prefix="/t")
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    for k in range(500):
        await store.put(keys.model(f"m{k}"), encode(ModelRecord(model_id=f"m{k}", model_type="onnx", predicted_size_bytes=MiB)))
    state = ClusterMirror(store, keys)
    await state.start()
    b = PlacementViewBuilder(state, Policy(PolicySettings()), default_model_size_bytes=MiB, clock=time.time)
    b.start()
    try:
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
    finally:
        b.stop()
        await state.stop()


async def test_traffic_history_outlives_eviction() -> None:
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    await store.put(keys.model("m"), encode(ModelRecord(model_id="m", model_type="onnx", predicted_size_bytes=MiB, last_used=1.0)))
    state = ClusterMirror(store, keys)
    await state.start()
    b = PlacementViewBuilder(state, Policy(PolicySettings()), default_model_size_bytes=MiB, clock=time.time)
    b.start()
    try:
        rev = await store.put(
            keys.copy("m", "i0"),
            encode(CopyRecord(model_id="m", instance_id="i0", state="loaded", since=now, size_bytes=MiB, size_measured=True, last_used=now, rpm=42.0)),
        )
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        assert (b.view().models["m"].last_used, b.view().models["m"].rate_rpm) == (now, 42.0)
        await store.delete(keys.copy("m", "i0"))  # evicted
        rev = store.revision
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        mv = b.view().models["m"]
        assert (mv.last_used, mv.rate_rpm, mv.copies) == (now, 42.0, ())
        # a new leader has no history: it values the model from the store alone
        fresh = PlacementViewBuilder(state, Policy(PolicySettings()), default_model_size_bytes=MiB, clock=time.time)
        assert (fresh.view().models["m"].last_used, fresh.view().models["m"].rate_rpm) == (1.0, 0.0)
        # unregistering forgets it
        await store.delete(keys.model("m"))
        rev = store.revision
        assert await state.wait_for(lambda: state.models.revision >= rev, 2.0)
        assert "m" not in b.view().models and "m" not in b._history
    finally:
        b.stop()
        await state.stop()


async def test_rate_falls_to_what_the_copies_report() -> None:
    """Copies whose traffic stopped report a rate decayed to 0: the view says 0, not the last rate
    it saw above 0 (that stale rate kept an idle model's extra copies from ever scaling in)."""
    store = MemoryStore()
    keys = Keys(prefix="/t")
    now = time.time()
    await store.put(keys.instance("i0"), encode(InstanceRecord(instance_id="i0", address="x", capacity_bytes=1 << 40)))
    await store.put(keys.model("m"), encode(ModelRecord(model_id="m", model_type="onnx", predicted_size_bytes=MiB)))
    state = ClusterMirror(store, keys)
    await state.start()
    b = PlacementViewBuilder(state, Policy(PolicySettings()), default_model_size_bytes=MiB, clock=time.time)
    b.start()

    async def report(rpm: float) -> None:
        rev = await store.put(
            keys.copy("m", "i0"),
            encode(CopyRecord(model_id="m", instance_id="i0", state="loaded", since=now, size_bytes=MiB, size_measured=True, last_used=now, rpm=rpm)),
        )
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)

    try:
        await report(45.0)
        assert b.view().models["m"].rate_rpm == 45.0
        await report(0.0)  # traffic stopped two rate windows ago
        assert (b.view().models["m"].rate_rpm, b.view().models["m"].last_used) == (0.0, now)
        await store.delete(keys.copy("m", "i0"))  # evicted: the last reported traffic is remembered
        rev = store.revision
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        assert b.view().models["m"].rate_rpm == 0.0
        # hot again, evicted, and coming back: a copy still loading reports no traffic yet, so the
        # returning model keeps the rate it had (it is not valued as a cold one while it loads)
        await report(45.0)
        assert b.view().models["m"].rate_rpm == 45.0  # the leader looks while the copy lives
        await store.delete(keys.copy("m", "i0"))
        rev = await store.put(
            keys.copy("m", "i0"),
            encode(CopyRecord(model_id="m", instance_id="i0", state="loading", since=now, size_bytes=MiB, last_used=now, rpm=0.0)),
        )
        assert await state.wait_for(lambda: state.copies.revision >= rev, 2.0)
        assert b.view().models["m"].rate_rpm == 45.0
    finally:
        b.stop()
        await state.stop()


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
                                  size_measured=True, load_time_s=0.5 + k / 10, last_used=now - 30 * k, rpm=k / 5)),
            )
    state = ClusterMirror(store, keys)
    await state.start()
    policy = AdaptivePolicy(PolicySettings())
    b = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=lambda: now)
    b.start()
    try:
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
    finally:
        b.stop()
        await state.stop()
