"""Property tests (hypothesis): the policies' safety invariants on arbitrary cluster views."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement import (
    Action,
    BasePolicy,
    ClusterView,
    CopyView,
    LruPolicy,
    ModelView,
    PlacementError,
    PlacementIndex,
    Policy,
    PolicySettings,
    TenantQuota,
)
from tests.placement.placement_views import GB, model, view

NOW = 100_000.0
SETTINGS = PolicySettings(min_residency_s=30, scale_out_rpm_per_copy=50, scale_in_rpm_per_copy=10, max_actions_per_tick=500)
POLICIES: list[BasePolicy] = [Policy(SETTINGS, seed=3), LruPolicy(SETTINGS)]


@st.composite
def clusters(draw: st.DrawFn) -> ClusterView:
    n_inst = draw(st.integers(1, 5))
    caps = {f"i{k}": draw(st.integers(1, 10)) * GB for k in range(n_inst)}
    states = {i: draw(st.sampled_from(["live", "live", "live", "shutting_down", "dead"])) for i in caps}
    zones = {i: draw(st.sampled_from(["z1", "z2"])) for i in caps}
    free = dict(caps)
    models: list[ModelView] = []
    for k in range(draw(st.integers(0, 14))):
        size = draw(st.integers(1, 4)) * GB // 2
        on = [i for i in caps if draw(st.booleans()) and free[i] >= size][: draw(st.integers(0, 3))]
        for i in on:
            free[i] -= size
        copies = tuple(
            CopyView(i, draw(st.sampled_from(["loaded", "loaded", "loading", "failed"])), NOW - draw(st.integers(0, 5000)))
            for i in on
            if draw(st.integers(0, 9)) > 0  # sometimes not reported yet
        )
        failures = {i: NOW + 100 for i in caps if draw(st.integers(0, 7)) == 0}
        m = model(
            f"m{k}",
            size,
            on,
            tenant=draw(st.sampled_from(["", "t1", "t2"])),
            last_used=NOW - draw(st.integers(0, 20_000)),
            rate_rpm=draw(st.sampled_from([0.0, 0.5, 5.0, 80.0, 500.0])),
            inflight=draw(st.integers(0, 3)),
            load_time_s=draw(st.floats(0.1, 30)),
            min_copies=draw(st.integers(0, 2)),
            max_copies=draw(st.integers(0, 3)),
            pinned=draw(st.integers(0, 5)) == 0,
            failures=failures,
        )
        models.append(replace(m, copies=copies))
    quotas = [TenantQuota("t1", draw(st.integers(1, 20)) * GB)] if draw(st.booleans()) else []
    return view(NOW, caps, models, quotas=quotas, zones=zones, states=states)


def _live_count(v: ClusterView, assigned: set[str]) -> int:
    return sum(1 for i in assigned if i in v.instances and v.instances[i].state == "live")


def check_actions(v: ClusterView, actions: list[Action]) -> None:
    """Apply in order; no prefix exceeds a capacity; no unload breaks pinning or min copies."""
    used = {i: inst.used_bytes for i, inst in v.instances.items()}
    assigned = {mid: set(m.assigned) for mid, m in v.models.items()}
    for a in actions:
        word, sep, detail = a.reason.partition(":")
        assert sep and word.strip() and detail.strip(), f"action without a reason: {a}"
        m = v.models[a.model_id]
        if a.kind == "load":
            inst = v.instances[a.instance_id]
            assert inst.state == "live", a
            assert a.instance_id not in assigned[a.model_id], a
            assert m.failures.get(a.instance_id, 0) <= v.now, f"load on an instance it failed on: {a}"
            used[a.instance_id] += m.size_bytes
            assert used[a.instance_id] <= inst.capacity_bytes, f"capacity exceeded by {a}"
            assigned[a.model_id].add(a.instance_id)
        else:
            assert a.instance_id in assigned[a.model_id], a
            inst_v = v.instances.get(a.instance_id)
            on_live = inst_v is not None and inst_v.state == "live"
            copy = m.copy_on(a.instance_id)
            forced = not on_live or (copy is not None and copy.state == "failed")
            if not forced:
                # evictions, scale-in, quotas: never a pinned model's last copy, never below min copies
                before = _live_count(v, assigned[a.model_id])
                assert before - 1 >= BasePolicy.min_copies(m), f"{a} leaves {before - 1} < min copies of {m}"
                if m.pinned:
                    assert a.reason_word not in ("evict", "quota"), f"pinned model evicted: {a}"
                assert copy is not None and copy.state != "loading", f"loading copy unloaded: {a}"
            if a.instance_id in used:
                used[a.instance_id] -= m.size_bytes
            assigned[a.model_id].discard(a.instance_id)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=clusters(), pick=st.integers(0, 20), which=st.integers(0, 1))
def test_on_miss_is_safe(v: ClusterView, pick: int, which: int) -> None:
    policy = POLICIES[which]
    if not v.models:
        return
    unheld = sorted(mid for mid, m in v.models.items() if not m.assigned)
    pool = unheld if unheld and pick % 4 else sorted(v.models)  # mostly a real miss
    mid = pool[pick % len(pool)]
    try:
        actions = policy.on_miss(v, mid)
    except PlacementError as exc:
        assert exc.code in ("resource_exhausted", "unavailable", "load_failed") and mid in str(exc)
        return
    check_actions(v, actions)
    held = any(i in v.instances and v.instances[i].state != "dead" for i in v.models[mid].assigned)
    if held:
        assert actions == []
    else:
        assert [a for a in actions if a.kind == "load"] == [actions[-1]] and actions[-1].model_id == mid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=clusters(), which=st.integers(0, 1))
def test_on_tick_is_safe(v: ClusterView, which: int) -> None:
    check_actions(v, POLICIES[which].on_tick(v))


@settings(max_examples=80, deadline=None)
@given(v=clusters(), seed=st.integers(0, 3))
def test_deterministic_for_view_and_seed(v: ClusterView, seed: int) -> None:
    def decide(p: BasePolicy) -> list[object]:
        out: list[object] = [p.on_tick(v)]
        for mid in sorted(v.models):
            try:
                out.append(p.on_miss(v, mid))
            except PlacementError as exc:
                out.append(type(exc))
        return out

    first = decide(Policy(SETTINGS, seed=seed))
    assert decide(Policy(SETTINGS, seed=seed)) == first  # same view object (its cached index reused)
    fresh = ClusterView(now=v.now, instances=dict(v.instances), models=dict(v.models), quotas=v.quotas)
    p = Policy(SETTINGS, seed=seed)
    again: list[object] = [p.on_tick(fresh)]
    for mid in sorted(fresh.models):
        try:
            again.append(p.on_miss(fresh, mid))
        except PlacementError as exc:
            again.append(type(exc))
    assert again == first


@settings(max_examples=60, deadline=None)
@given(
    n_inst=st.integers(1, 4),
    mins=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=10),
)
def test_min_copies_restored_when_room(n_inst: int, mins: list[tuple[int, bool]]) -> None:
    caps = {f"i{k}": 40 * GB for k in range(n_inst)}
    ms = [model(f"m{k}", GB, min_copies=mc, pinned=pin) for k, (mc, pin) in enumerate(mins)]
    v = view(NOW, caps, ms, slots=100)
    actions = Policy(SETTINGS).on_tick(v)
    check_actions(v, actions)
    got: dict[str, int] = {}
    for a in actions:
        got[a.model_id] = got.get(a.model_id, 0) + (1 if a.kind == "load" else -1)
    for m in ms:
        assert got.get(m.model_id, 0) == min(BasePolicy.min_copies(m), n_inst), m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=clusters(), order=st.randoms(use_true_random=False))
def test_tick_reads_only_watched_models_yet_decides_as_a_full_pass(v: ClusterView, order: object) -> None:
    """on_tick through the index's watched models (kept incrementally, in any update order) equals a
    tick that reads every model (an index whose watch holds for all)."""
    for policy in POLICIES:
        full = PlacementIndex.build(policy.evict_key, policy.key_id, v.models.values(), watch=lambda m: True)
        expected = policy.on_tick(replace(v, index=full))
        inc = policy.new_index()
        ms = list(v.models.values())
        order.shuffle(ms)  # type: ignore[attr-defined]
        for m in ms:  # first seen unassigned and idle, then as it is: updates move it in and out of the sets
            idle = replace(m, assigned=frozenset(), copies=(), rate_rpm=0.0, inflight=0, min_copies=0, pinned=False)
            inc.update(idle)
            inc.update(m)
        assert inc.tick_candidates({i for i, x in v.instances.items() if x.state == "live"}) <= set(v.models)
        assert policy.on_tick(replace(v, index=inc)) == expected
        assert policy.on_tick(v) == expected  # no index in the view: the policy builds one with its watch
