"""Unit tests of the placement policies: misses, evictions, ticks, tenants, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from placement import (
    LruPolicy,
    ModelNotFound,
    ModelNotPlaceable,
    ModelTooLarge,
    NoCapacity,
    NoInstances,
    Policy,
    PolicySettings,
    QuotaExceeded,
    TenantQuota,
)
from tests.placement.placement_views import GB, apply, check_capacity, model, view


@pytest.fixture
def policy() -> Policy:
    return Policy(PolicySettings(min_residency_s=60))


def loads(actions):  # type: ignore[no-untyped-def]
    return [(a.model_id, a.instance_id) for a in actions if a.kind == "load"]


def unloads(actions):  # type: ignore[no-untyped-def]
    return [(a.model_id, a.instance_id) for a in actions if a.kind == "unload"]


# ---------------------------------------------------------------- on_miss: placing


def test_miss_goes_where_most_free(policy: Policy) -> None:
    v = view(1000, {"a": 10 * GB, "b": 10 * GB}, [model("x", 3 * GB, ["a"]), model("new")])
    acts = policy.on_miss(v, "new")
    assert loads(acts) == [("new", "b")]
    assert not unloads(acts)
    assert acts[0].reason.startswith("miss: ") and acts[0].reason_word == "miss"


def test_miss_for_assigned_model_is_empty(policy: Policy) -> None:
    v = view(1000, {"a": 10 * GB}, [model("x", GB, ["a"], state="loading")])
    assert policy.on_miss(v, "x") == []


def test_miss_replaces_copy_on_dead_instance(policy: Policy) -> None:
    v = view(1000, {"a": 10 * GB, "b": 10 * GB}, [model("x", GB, ["a"])], states={"a": "dead"})
    assert loads(policy.on_miss(v, "x")) == [("x", "b")]


def test_miss_prefers_free_loading_slot_over_more_free_bytes(policy: Policy) -> None:
    ms = [model("l1", GB, ["a"], state="loading"), model("l2", GB, ["a"], state="loading"), model("new")]
    v = view(1000, {"a": 20 * GB, "b": 10 * GB}, ms)
    assert loads(policy.on_miss(v, "new")) == [("new", "b")]


def test_miss_queues_on_full_slots_rather_than_evicting(policy: Policy) -> None:
    ms = [
        model("l1", GB, ["a"], state="loading"),
        model("l2", GB, ["a"], state="loading"),
        model("old", 9 * GB, ["b"], last_used=1.0),
        model("new"),
    ]
    v = view(1000, {"a": 10 * GB, "b": 9 * GB}, ms)
    acts = policy.on_miss(v, "new")
    assert loads(acts) == [("new", "a")] and not unloads(acts)


def test_miss_spreads_zones() -> None:
    p = Policy(PolicySettings())
    ms = [model("x", GB, ["a"], rate_rpm=10_000, last_used=999)]
    v = view(1000, {"a": 10 * GB, "b": 10 * GB, "c": 8 * GB}, ms, zones={"a": "z1", "b": "z1", "c": "z2"})
    # a second copy (scale out) goes to the other zone even though b has more free bytes
    acts = p.on_tick(v)
    assert ("x", "c") in loads(acts)


def test_failures_exclude_instances(policy: Policy) -> None:
    v = view(1000, {"a": 10 * GB, "b": 10 * GB}, [model("x", GB, failures={"b": 2000.0}), model("y", 3 * GB, ["a"])])
    assert loads(policy.on_miss(v, "x")) == [("x", "a")]
    v2 = view(1000, {"a": 10 * GB, "b": 10 * GB}, [model("x", GB, failures={"a": 2000.0, "b": 1500.0})])
    with pytest.raises(ModelNotPlaceable) as ei:
        policy.on_miss(v2, "x")
    assert ei.value.code == "load_failed" and "'x'" in str(ei.value)
    # expired failures no longer count
    v3 = view(1000, {"a": 10 * GB}, [model("x", GB, failures={"a": 999.0})])
    assert loads(policy.on_miss(v3, "x")) == [("x", "a")]


def test_errors_name_the_model(policy: Policy) -> None:
    with pytest.raises(ModelNotFound, match="'nope'") as nf:
        policy.on_miss(view(0, {"a": GB}, []), "nope")
    assert nf.value.code == "not_found"
    with pytest.raises(ModelTooLarge, match="'big'") as tl:
        policy.on_miss(view(0, {"a": GB}, [model("big", 2 * GB)]), "big")
    assert tl.value.code == "resource_exhausted"
    with pytest.raises(NoInstances) as ni:
        policy.on_miss(view(0, {"a": GB}, [model("x")], states={"a": "shutting_down"}), "x")
    assert ni.value.code == "unavailable"


# ---------------------------------------------------------------- on_miss: evicting


def test_evicts_cheapest_by_value(policy: Policy) -> None:
    now = 100_000.0
    ms = [
        model("hot", 2 * GB, ["a"], last_used=now - 10, rate_rpm=30),
        model("cold", 2 * GB, ["a"], last_used=now - 5000, rate_rpm=0.1),
        model("warm", 2 * GB, ["b"], last_used=now - 100, rate_rpm=5),
        model("warm2", 2 * GB, ["b"], last_used=now - 50, rate_rpm=5),
        model("new", 2 * GB),
    ]
    v = view(now, {"a": 4 * GB, "b": 4 * GB}, ms)
    acts = policy.on_miss(v, "new")
    assert unloads(acts) == [("cold", "a")]
    assert loads(acts) == [("new", "a")]
    assert acts[0].reason_word == "evict" and "new" in acts[0].reason
    check_capacity(apply(v, acts))


def test_reload_cost_matters(policy: Policy) -> None:
    """Same traffic and size: the model that reloads fast goes before the slow one."""
    now = 10_000.0
    ms = [
        model("slow", GB, ["a"], last_used=now - 100, rate_rpm=1, load_time_s=60),
        model("fast", GB, ["a"], last_used=now - 100, rate_rpm=1, load_time_s=0.5),
        model("new", GB),
    ]
    acts = policy.on_miss(view(now, {"a": 2 * GB}, ms), "new")
    assert unloads(acts) == [("fast", "a")]


def test_lru_evicts_least_recent() -> None:
    now = 10_000.0
    ms = [
        model("old_hot", GB, ["a"], last_used=now - 100, rate_rpm=100),
        model("recent_cold", GB, ["a"], last_used=now - 10, rate_rpm=0.01),
        model("new", GB),
    ]
    v = view(now, {"a": 2 * GB}, ms)
    assert unloads(LruPolicy(PolicySettings()).on_miss(v, "new")) == [("old_hot", "a")]
    assert unloads(Policy(PolicySettings()).on_miss(v, "new")) == [("recent_cold", "a")]


def test_never_evicts_pinned_min_copies_or_loading(policy: Policy) -> None:
    now = 10_000.0
    ms = [
        model("pinned", GB, ["a"], pinned=True),
        model("min1", GB, ["a"], min_copies=1),
        model("loading", GB, ["a"], state="loading"),
        model("new", GB),
    ]
    v = view(now, {"a": 3 * GB}, ms)
    with pytest.raises(NoCapacity, match="'new'"):
        policy.on_miss(v, "new")
    # with a second copy elsewhere, one copy of min1 may go
    ms[1] = model("min1", GB, ["a", "b"], min_copies=1)
    v = view(now, {"a": 3 * GB, "b": GB}, ms)
    acts = policy.on_miss(v, "new")
    assert unloads(acts) == [("min1", "a")] and loads(acts) == [("new", "a")]


def test_young_copies_go_last(policy: Policy) -> None:
    """min_residency_s=60, young_eviction_penalty=4 (default)."""
    now = 10_000.0
    young = model("young", GB, ["a"], since=now - 5, last_used=now - 5, rate_rpm=5)
    old = model("old", GB, ["b"], since=0, last_used=now - 60, rate_rpm=10)
    v = view(now, {"a": GB, "b": GB}, [young, old, model("new", GB)])
    # the young copy is worth about half the old one: protected, the old one goes
    assert unloads(policy.on_miss(v, "new")) == [("old", "b")]
    # a young copy worth far less (one request, not since) than the old one still goes
    young_cold = model("young", GB, ["a"], since=now - 5, last_used=now - 5, rate_rpm=0)
    v = view(now, {"a": GB, "b": GB}, [young_cold, old, model("new", GB)])
    assert unloads(policy.on_miss(v, "new")) == [("young", "a")]
    # when only young copies are left, one is evicted: a request is never refused for it
    v2 = view(now, {"a": GB}, [young, model("new", GB)])
    assert unloads(policy.on_miss(v2, "new")) == [("young", "a")]
    # the baseline has no residency rule: the least recent use goes, young or not
    lru = LruPolicy(PolicySettings(min_residency_s=60))
    young_lru = model("young", GB, ["a"], since=now - 5, last_used=now - 5000)
    v3 = view(now, {"a": GB, "b": GB}, [young_lru, old, model("new", GB)])
    assert unloads(lru.on_miss(v3, "new")) == [("young", "a")]


def test_evicts_several_small_on_one_instance(policy: Policy) -> None:
    now = 10_000.0
    ms = [model(f"s{i}", GB, ["a"], last_used=now - 5000 + i) for i in range(4)]
    ms += [model("b1", 4 * GB, ["b"], last_used=now - 1, rate_rpm=100), model("big", 3 * GB)]
    v = view(now, {"a": 4 * GB, "b": 4 * GB}, ms)
    acts = policy.on_miss(v, "big")
    assert sorted(unloads(acts)) == [("s0", "a"), ("s1", "a"), ("s2", "a")]
    check_capacity(apply(v, acts))


# ---------------------------------------------------------------- tenants


def test_quota_evicts_own_copies_first(policy: Policy) -> None:
    now = 10_000.0
    ms = [
        model("t1a", GB, ["a"], tenant="t1", last_used=now - 10, rate_rpm=5),
        model("t2a", GB, ["b"], tenant="t2", last_used=now - 9000),
        model("t1new", GB, tenant="t1"),
    ]
    v = view(now, {"a": 4 * GB, "b": 4 * GB}, ms, quotas=[TenantQuota("t1", GB)])
    acts = policy.on_miss(v, "t1new")
    assert unloads(acts) == [("t1a", "a")]
    assert acts[0].reason_word == "quota"
    with pytest.raises(QuotaExceeded, match="'t1'"):
        policy.on_miss(view(now, {"a": 4 * GB}, ms, quotas=[TenantQuota("t1", GB // 2)]), "t1new")


def test_fair_eviction_protects_other_tenants_hot_set(policy: Policy) -> None:
    """A tenant over its share evicts its own (even valuable) copies, not another tenant's hot ones."""
    now = 10_000.0
    hot = [model(f"h{i}", GB, ["a"], tenant="good", last_used=now - 100, rate_rpm=1) for i in range(2)]
    scan = [model(f"s{i}", GB, ["a" if i < 1 else "b"], tenant="scan", last_used=now - 50, rate_rpm=3) for i in range(3)]
    ms = [*hot, *scan, model("snew", GB, tenant="scan")]
    v = view(now, {"a": 3 * GB, "b": 2 * GB}, ms)
    acts = policy.on_miss(v, "snew")
    assert all(m.startswith("s") for m, _ in unloads(acts)), acts
    off = Policy(PolicySettings(fair_eviction=False, min_residency_s=60))
    assert any(m.startswith("h") for m, _ in unloads(off.on_miss(v, "snew")))


# ---------------------------------------------------------------- on_tick


def test_tick_moves_off_dead_and_restores_min_copies(policy: Policy) -> None:
    now = 10_000.0
    ms = [
        model("m2", GB, ["a", "b"], min_copies=2, last_used=now - 9000),
        model("warm", GB, ["a"], last_used=now - 10),
        model("cold", GB, ["a"], last_used=now - 90_000),
    ]
    v = view(now, {"a": 4 * GB, "b": 4 * GB, "c": 4 * GB}, ms, states={"a": "dead"})
    acts = policy.on_tick(v)
    assert sorted(unloads(acts)) == [("cold", "a"), ("m2", "a"), ("warm", "a")]
    assert sorted(loads(acts)) == [("m2", "c"), ("warm", "b")] or sorted(loads(acts)) == [("m2", "c"), ("warm", "c")]
    assert {a.reason_word for a in acts if a.kind == "unload"} == {"instance_dead"}


def test_tick_min_copies_may_evict(policy: Policy) -> None:
    now = 10_000.0
    ms = [model("m", GB, ["a"], min_copies=2), model("x", GB, ["b"], last_used=now - 5000)]
    acts = policy.on_tick(view(now, {"a": GB, "b": GB}, ms))
    assert unloads(acts) == [("x", "b")] and loads(acts) == [("m", "b")]
    assert [a.reason_word for a in acts] == ["evict", "min_copies"]


def test_tick_drains_make_before_break(policy: Policy) -> None:
    now = 10_000.0
    v = view(now, {"a": 4 * GB, "b": 4 * GB}, [model("x", GB, ["a"], last_used=now - 5)], states={"a": "shutting_down"})
    acts = policy.on_tick(v)
    assert loads(acts) == [("x", "b")] and not unloads(acts)
    v2 = apply(v, acts)  # copy on b loaded
    v2 = view(now, [*v.instances.values()], v2.models.values())
    acts2 = policy.on_tick(v2)
    assert unloads(acts2) == [("x", "a")] and acts2[0].reason_word == "drain"
    # a cold model on a draining instance is just dropped
    v3 = view(now, {"a": 4 * GB, "b": 4 * GB}, [model("c", GB, ["a"], last_used=1)], states={"a": "shutting_down"})
    assert unloads(policy.on_tick(v3)) == [("c", "a")]


def test_tick_scale_out_and_in() -> None:
    p = Policy(PolicySettings(min_residency_s=60, scale_out_rpm_per_copy=100, scale_in_rpm_per_copy=20))
    now = 10_000.0
    insts = {"a": 8 * GB, "b": 8 * GB, "c": 8 * GB}
    v = view(now, insts, [model("hot", GB, ["a"], last_used=now, rate_rpm=250)])
    acts = p.on_tick(v)
    assert len(loads(acts)) == 1 and acts[0].reason_word == "scale_out"
    v = apply(v, acts)
    # a copy still loading blocks further scale-out
    v_loading = apply(view(now, insts, [model("hot", GB, ["a"], last_used=now, rate_rpm=250)]), acts, loaded=False)
    assert p.on_tick(v_loading) == []
    acts = p.on_tick(v)
    assert len(loads(acts)) == 1  # 250 rpm over 2 copies is still > 100 per copy
    v = apply(v, acts)
    assert p.on_tick(v) == []  # 3 copies on 3 instances: nowhere left
    # traffic drops: young copies stay (min residency), old ones go one per tick
    idle = view(now + 30, insts, [model("hot", GB, sorted(v.models["hot"].assigned), since=now, last_used=now + 30, rate_rpm=10)])
    assert p.on_tick(idle) == []
    idle = view(now + 120, insts, [model("hot", GB, sorted(v.models["hot"].assigned), since=now, last_used=now + 100, rate_rpm=10)])
    acts = p.on_tick(idle)
    assert len(unloads(acts)) == 1 and acts[0].reason_word == "scale_in"
    # at two copies, regular use keeps the second
    two = view(now + 200, insts, [model("hot", GB, ["a", "b"], since=now, last_used=now + 200, rate_rpm=10)])
    assert p.on_tick(two) == []
    # cold: down to one copy
    cold = view(now + 99_999, insts, [model("hot", GB, ["a", "b"], since=now, last_used=now, rate_rpm=10)])
    acts = p.on_tick(cold)
    assert len(unloads(acts)) == 1 and acts[0].reason_word == "cold"


def test_tick_second_copy_for_regular_use_only_in_free_room(policy: Policy) -> None:
    now = 10_000.0
    v = view(now, {"a": 2 * GB, "b": 2 * GB}, [model("reg", GB, ["a"], last_used=now - 10, rate_rpm=10)])
    acts = policy.on_tick(v)
    assert loads(acts) == [("reg", "b")] and acts[0].reason_word == "second_copy"
    full = view(now, {"a": 2 * GB, "b": GB}, [model("reg", GB, ["a"], last_used=now - 10, rate_rpm=10), model("o", GB, ["b"])])
    assert policy.on_tick(full) == []


def test_tick_max_copies_and_quota(policy: Policy) -> None:
    now = 10_000.0
    ms = [
        model("m", GB, ["a", "b", "c"], max_copies=2, last_used=now, rate_rpm=5000),
        model("q1", GB, ["a"], tenant="t", last_used=now - 100),
        model("q2", GB, ["b"], tenant="t", last_used=now - 10),
    ]
    v = view(now, {"a": 4 * GB, "b": 4 * GB, "c": 4 * GB}, ms, quotas=[TenantQuota("t", GB)])
    acts = policy.on_tick(v)
    assert len([a for a in acts if a.model_id == "m" and a.kind == "unload"]) == 1
    assert ("q1", "a") in unloads(acts) and ("q2", "b") not in unloads(acts)
    assert {a.reason_word for a in acts} == {"max_copies", "quota"}


def test_tick_extra_copies_stay_within_the_tenant_quota() -> None:
    # scale-out and second copies are optional: they never take a tenant past its quota
    p = Policy(PolicySettings(scale_out_rpm_per_copy=100, scale_in_rpm_per_copy=20))
    now = 10_000.0
    insts = {"a": 8 * GB, "b": 8 * GB, "c": 8 * GB}
    ms = [
        model("hot", GB, ["a"], tenant="t", last_used=now, rate_rpm=1000),
        model("reg", GB, ["b"], tenant="t", last_used=now, rate_rpm=10),
    ]
    assert {a.reason_word for a in p.on_tick(view(now, insts, ms))} == {"scale_out", "second_copy"}
    assert p.on_tick(view(now, insts, ms, quotas=[TenantQuota("t", 2 * GB)])) == []
    # room for one more copy: the hotter model gets it
    acts = p.on_tick(view(now, insts, ms, quotas=[TenantQuota("t", 3 * GB)]))
    assert [(a.model_id, a.reason_word) for a in acts] == [("hot", "scale_out")]


def test_tick_unassigns_failed_copies(policy: Policy) -> None:
    v = view(100, {"a": 4 * GB, "b": 4 * GB}, [model("f", GB, ["a"], state="failed", failures={"a": 200.0})])
    acts = policy.on_tick(v)
    assert unloads(acts) == [("f", "a")] and acts[0].reason_word == "failed"


def test_tick_bounded() -> None:
    p = Policy(PolicySettings(max_actions_per_tick=3))
    ms = [model(f"m{i}", GB, min_copies=1) for i in range(10)]
    acts = p.on_tick(view(0, {"a": 100 * GB}, ms))
    assert len(acts) == 3


# ---------------------------------------------------------------- index


def test_incremental_index_gives_same_decisions(policy: Policy) -> None:
    now = 50_000.0
    ms = [model(f"m{i}", (i % 3 + 1) * GB, ["a" if i % 2 else "b"], last_used=now - 37 * i, rate_rpm=i % 5) for i in range(12)]
    v = view(now, {"a": 13 * GB, "b": 12 * GB}, [*ms, model("new", 3 * GB)])
    idx = policy.new_index()
    for m in v.models.values():
        idx.update(m)
    v_idx = type(v)(now=v.now, instances=v.instances, models=v.models, index=idx)
    assert policy.on_miss(v_idx, "new") == policy.on_miss(v, "new")
    # an index made for another policy is ignored, not misused
    lru_idx = LruPolicy(PolicySettings()).new_index()
    v_other = type(v)(now=v.now, instances=v.instances, models=v.models, index=lru_idx)
    assert policy.on_miss(v_other, "new") == policy.on_miss(v, "new")


def test_tick_reads_watched_models_and_holders_of_instances_not_live() -> None:
    """A tick with an incrementally kept index reads only candidates, yet finds each kind of work."""
    s = PolicySettings(min_residency_s=0, scale_in_rpm_per_copy=10, scale_out_rpm_per_copy=50)
    p = Policy(s)
    now = 10_000.0
    quiet = [model(f"q{k}", GB, ["a"], last_used=now - 10, rate_rpm=0.5) for k in range(50)]
    twice = model("two", GB, ["a", "b"], last_used=now - 10, rate_rpm=0.5)  # scale in
    on_dead = model("orphan", GB, ["c"], last_used=now - 10, rate_rpm=0.5)  # its instance died: repair
    needs_min = model("min", GB, [], min_copies=1)  # unassigned, below min copies
    ms = [*quiet, twice, on_dead, needs_min]
    v = view(now, {"a": 80 * GB, "b": 80 * GB, "c": 80 * GB}, ms, states={"c": "dead"})
    idx = p.new_index()
    for m in ms:
        idx.update(m)
    assert idx.tick_candidates({"a", "b"}) == {"two", "orphan", "min"}
    got = {(a.kind, a.model_id, a.reason_word) for a in p.on_tick(replace(v, index=idx))}
    assert ("unload", "two", "scale_in") in got
    assert ("unload", "orphan", "instance_dead") in got
    assert ("load", "min", "min_copies") in got
    assert not any(mid.startswith("q") for _, mid, _ in got)
    # once the extra copy is gone and the rate drops, the model leaves the watched set
    idx.update(replace(twice, assigned=frozenset({"a"}), copies=twice.copies[:1]))
    assert "two" not in idx.tick_candidates({"a", "b", "c"})


# ---------------------------------------------------------------- on_tick: sizes measured after placement


@pytest.mark.parametrize("make", [Policy, LruPolicy], ids=["ours", "lru"])
def test_an_instance_overcommitted_by_a_measured_size_is_relieved_on_tick(make: type[Policy]) -> None:
    """A copy measured at twice the size placement planned with leaves the instance's assigned
    copies over its capacity, and a load planned beside it would wait there for room no decision
    makes. The tick evicts the cheapest copies until they fit; the loading copy stays."""
    policy = make(PolicySettings(min_residency_s=60))
    now = 10_000.0
    ms = [
        model("cold", GB, ["a"], last_used=now - 3000, rate_rpm=0.1, since=now - 5000),
        model("warm", GB, ["a"], last_used=now - 5, rate_rpm=30, since=now - 5000),
        model("grown", 2 * GB, ["a"], last_used=now - 1, rate_rpm=30, since=now - 1),  # measured 2 GB, planned 1
        model("pending", GB, ["a"], state="loading", since=now - 1),
    ]
    v = view(now, {"a": 4 * GB}, ms)
    assert v.instances["a"].used_bytes == 5 * GB
    acts = policy.on_tick(v)
    assert unloads(acts) == [("cold", "a")] and not loads(acts), acts
    assert acts[0].reason.startswith("over capacity: a's copies hold 5.0 GiB of 4.0 GiB"), acts[0].reason
    after = apply(v, acts)
    check_capacity(after)
    assert after.models["pending"].assigned == {"a"}
    assert unloads(policy.on_tick(after)) == []  # relieved once, not again


@pytest.mark.parametrize("make", [Policy, LruPolicy], ids=["ours", "lru"])
def test_bytes_reported_while_an_unload_finishes_evict_nothing(make: type[Policy]) -> None:
    """An instance reports more than its assigned copies hold while an unload is in flight; that
    is not an overcommitment, and nothing more is evicted for it."""
    policy = make(PolicySettings(min_residency_s=60))
    now = 10_000.0
    ms = [model("x", GB, ["a"], last_used=now - 3000, rate_rpm=0.1, since=now - 5000), model("y", GB, ["a"], last_used=now - 1, rate_rpm=60, since=now - 5000)]
    v = view(now, {"a": 2 * GB}, ms)
    reporting = replace(v, instances={"a": replace(v.instances["a"], used_bytes=3 * GB, assigned_bytes=2 * GB)})
    assert unloads(policy.on_tick(reporting)) == []
    over = replace(v, instances={"a": replace(v.instances["a"], used_bytes=3 * GB, assigned_bytes=3 * GB)})
    assert unloads(policy.on_tick(over)) == [("x", "a")]


def test_an_overcommit_nothing_can_relieve_is_warned_once_per_excess(caplog: pytest.LogCaptureFixture) -> None:
    """Copies still loading never go: the tick says so once, not at every tick while it lasts."""
    policy = Policy(PolicySettings(min_residency_s=60))
    now = 10_000.0
    ms = [model("p", 3 * GB, ["a"], state="loading", since=now - 1), model("q", 2 * GB, ["a"], state="loading", since=now - 1)]
    v = view(now, {"a": 4 * GB}, ms)
    said = lambda: [r for r in caplog.records if "no copy on it may go" in r.getMessage()]  # noqa: E731
    with caplog.at_level("WARNING", logger="placement"):
        for _ in range(3):
            assert unloads(policy.on_tick(v)) == []
        assert len(said()) == 1
        grown = replace(v, instances={"a": replace(v.instances["a"], assigned_bytes=6 * GB)})
        policy.on_tick(grown)
        assert len(said()) == 2  # the excess changed
        fine = replace(v, instances={"a": replace(v.instances["a"], capacity_bytes=8 * GB)})
        policy.on_tick(fine)
        policy.on_tick(v)
        assert len(said()) == 3  # over again after it was relieved: said again
