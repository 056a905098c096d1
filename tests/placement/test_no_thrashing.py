"""Hits unharmed by misses (issue 16): a copy used seconds ago is not evicted for a model on its
first request while another instance has room or colder bytes, with either policy; and a
stream of first requests does not make the same pair of models evict each other.

(By design ours still evicts a copy used seconds ago when the only alternative is a copy with
several times its request rate: value per byte, within ``young_eviction_penalty``; the
policy is unchanged here.)"""

from __future__ import annotations

from dataclasses import replace

import pytest

from placement import (
    Action,
    AdaptivePolicy,
    ClusterView,
    LruPolicy,
    Policy,
    PolicySettings,
    TraceSpec,
    generate,
    simulate,
)
from tests.placement.placement_views import GB, apply, model, view

POLICIES = [pytest.param(Policy(PolicySettings(min_residency_s=60)), id="ours"), pytest.param(LruPolicy(PolicySettings(min_residency_s=60)), id="lru")]


def _kinds(acts):  # type: ignore[no-untyped-def]
    return sorted((a.kind, a.model_id, a.instance_id) for a in acts)


@pytest.mark.parametrize("policy", POLICIES)
def test_room_elsewhere_beats_evicting_a_recently_used_copy(policy: Policy) -> None:
    now = 50_000.0
    ms = [model("hot", 4 * GB, ["a"], last_used=now - 2, rate_rpm=60, since=now - 3600), model("first", GB)]
    acts = policy.on_miss(view(now, {"a": 4 * GB, "b": 2 * GB}, ms), "first")
    assert _kinds(acts) == [("load", "first", "b")]


@pytest.mark.parametrize("policy", POLICIES)
def test_colder_bytes_elsewhere_go_before_a_recently_used_copy(policy: Policy) -> None:
    now = 50_000.0
    ms = [
        model("hot", 2 * GB, ["a"], last_used=now - 2, rate_rpm=1, since=now - 3600),
        model("cold", 2 * GB, ["b"], last_used=now - 600, rate_rpm=1, since=now - 3600),
        model("first", 2 * GB),
    ]
    acts = policy.on_miss(view(now, {"a": 2 * GB, "b": 2 * GB}, ms), "first")
    assert _kinds(acts) == [("load", "first", "b"), ("unload", "cold", "b")]


def test_first_requests_do_not_ping_pong_a_pair() -> None:
    """A burst of one-off models evicts the idle copies in turn; the hot pair, used every second,
    stays loaded throughout, and no model is loaded and evicted twice within a minute."""
    policy = Policy(PolicySettings(min_residency_s=60))
    now = 100_000.0
    ms = {m.model_id: m for m in [
        model("hot1", GB, ["a"], last_used=now, rate_rpm=60, since=now - 3600),
        model("hot2", GB, ["b"], last_used=now, rate_rpm=60, since=now - 3600),
        *(model(f"idle{k}", GB, ["a" if k % 2 else "b"], last_used=now - 900 - k, rate_rpm=0.01, since=now - 3600)
          for k in range(4)),
    ]}
    events: list[tuple[float, str, str]] = []
    v = view(now, {"a": 3 * GB, "b": 3 * GB}, ms.values())
    for k in range(12):
        now += 5.0
        v = view(now, {"a": 3 * GB, "b": 3 * GB}, [
            *(m for m in v.models.values()),
            model(f"once{k}", GB),
        ])
        # the hot pair keeps being used
        v = view(now, {"a": 3 * GB, "b": 3 * GB}, [
            replace(m, last_used=now) if m.model_id.startswith("hot") else m for m in v.models.values()
        ])
        acts = policy.on_miss(v, f"once{k}")
        assert acts, f"once{k} was not placed"
        for a in acts:
            events.append((now, a.kind, a.model_id))
            assert not a.model_id.startswith("hot"), f"{a.kind} of a hot copy for a first request: {a.reason}"
        v = apply(v, acts)
    # no model loaded then evicted then loaded again within 60 s
    seen: dict[str, list[tuple[float, str]]] = {}
    for t, kind, mid in events:
        seen.setdefault(mid, []).append((t, kind))
    for mid, evs in seen.items():
        loads = [t for t, kind in evs if kind == "load"]
        assert len(loads) <= 1 or loads[-1] - loads[0] >= 60, f"{mid} ping-pongs: {evs}"


@pytest.mark.parametrize("policy", POLICIES)
def test_a_copy_a_request_awaits_goes_last(policy: Policy) -> None:
    """A copy just loaded for a waiting request (``awaiting``) is the cheapest by value, yet a
    miss evicts a dearer, older copy instead; only when nothing else anywhere makes room does
    the awaited copy go (the miss is still placed)."""
    now = 50_000.0
    fresh = model("fresh", 2 * GB, ["a"], last_used=now - 30, rate_rpm=0.01, since=now - 0.1, awaiting=True)
    older = model("older", 2 * GB, ["b"], last_used=now - 5, rate_rpm=2, since=now - 3600)
    acts = policy.on_miss(view(now, {"a": 2 * GB, "b": 2 * GB}, [fresh, older, model("new", 2 * GB)]), "new")
    assert _kinds(acts) == [("load", "new", "b"), ("unload", "older", "b")]
    # the same copy not awaited any more is the victim again
    acts = policy.on_miss(view(now, {"a": 2 * GB, "b": 2 * GB}, [replace(fresh, awaiting=False), older, model("new", 2 * GB)]), "new")
    assert _kinds(acts) == [("load", "new", "a"), ("unload", "fresh", "a")]
    # nothing else can make room (the other copy is pinned): the awaited copy goes, the miss is placed
    acts = policy.on_miss(view(now, {"a": 2 * GB, "b": 2 * GB}, [fresh, replace(older, pinned=True), model("new", 2 * GB)]), "new")
    assert _kinds(acts) == [("load", "new", "a"), ("unload", "fresh", "a")]


GUARDED = [
    pytest.param(Policy(PolicySettings(min_residency_s=60)), id="ours"),
    pytest.param(AdaptivePolicy(PolicySettings(min_residency_s=60)), id="adaptive"),
]


def _swap_view(now: float, other_rpm: float, *, swapped_at: float | None) -> ClusterView:
    """Instance a holds ``b`` (1 rpm) and ``c`` (``other_rpm``), both old and just used; ``a`` misses.
    ``swapped_at``: when ``a`` was evicted to make room for ``b`` (None: never)."""
    ms = [
        model("b", GB, ["a"], last_used=now - 1, rate_rpm=1, load_time_s=5, since=now - 3600),
        model("c", GB, ["a"], last_used=now - 1, rate_rpm=other_rpm, load_time_s=5, since=now - 3600),
        model("a", GB, last_used=now - 10, rate_rpm=1, load_time_s=5),
    ]
    v = view(now, {"a": 2 * GB}, ms)
    return v if swapped_at is None else replace(v, evicted_for={"a": {"b": swapped_at}})


@pytest.mark.parametrize("policy", GUARDED)
def test_a_miss_does_not_evict_the_model_it_was_just_evicted_for(policy: Policy) -> None:
    """``a`` was evicted for ``b`` 5 s ago; now ``a`` misses: ``b`` is the cheapest copy, yet ``c``
    (worth 2x ``b``, within the 4x guard) goes instead, so the pair does not take turns."""
    now = 50_000.0
    assert _kinds(policy.on_miss(_swap_view(now, 2, swapped_at=None), "a")) == [("load", "a", "a"), ("unload", "b", "a")]
    acts = policy.on_miss(_swap_view(now, 2, swapped_at=now - 5), "a")
    assert _kinds(acts) == [("load", "a", "a"), ("unload", "c", "a")]
    assert [a.room_for for a in acts if a.kind == "unload"] == ["a"]
    # the guard lasts swap_guard_s (60 s): a swap 61 s ago no longer counts
    assert _kinds(policy.on_miss(_swap_view(now, 2, swapped_at=now - 61), "a")) == [("load", "a", "a"), ("unload", "b", "a")]


@pytest.mark.parametrize("policy", GUARDED)
def test_the_guard_gives_way_to_a_much_more_valuable_copy(policy: Policy) -> None:
    """When the only other victim is worth more than swap_guard_penalty (4x) ``b``, ``b`` goes after
    all (a hot copy is not sacrificed to a cold pair), and the reason says why."""
    now = 50_000.0
    acts = policy.on_miss(_swap_view(now, 8, swapped_at=now - 5), "a")
    assert _kinds(acts) == [("load", "a", "a"), ("unload", "b", "a")]
    (unload,) = [a for a in acts if a.kind == "unload"]
    assert "a was evicted for it 5s ago, no other victim within 4x its value" in unload.reason


def test_lru_has_no_guard() -> None:
    """The baseline evicts the least recently used copy whatever it was evicted for (ModelMesh's way)."""
    now = 50_000.0
    lru = LruPolicy(PolicySettings())
    v = _swap_view(now, 2, swapped_at=now - 5)
    ms = dict(v.models)
    ms["b"] = replace(ms["b"], last_used=now - 2)  # b is the least recently used
    acts = lru.on_miss(replace(v, models=ms), "a")
    assert _kinds(acts) == [("load", "a", "a"), ("unload", "b", "a")]


def _pairs(decisions: list[tuple[float, str | None, list[Action]]], window_s: float = 60.0) -> list[tuple[str, str]]:
    """Pairs that evicted each other within ``window_s`` (as bench.bench_density counts them)."""
    times: dict[tuple[str, str], list[float]] = {}
    for t, _, acts in decisions:
        for a in acts:
            if a.kind == "unload" and a.room_for:
                times.setdefault((a.model_id, a.room_for), []).append(t)
    return [
        (a, b) for (a, b), ts in times.items()
        if a < b and any(abs(x - y) <= window_s for x in ts for y in times.get((b, a), ()))
    ]


def test_a_churning_cluster_has_fewer_ping_pong_pairs_with_the_guard() -> None:
    """Zipf traffic over 2,000 models at 20 requests/s, a tenth of the bytes fit: without the guard
    pairs of models evict each other within a minute; with it (same trace) fewer, at no cost in hits."""
    got: dict[float, list[int]] = {60.0: [], 0.0: []}
    hits: dict[float, int] = {60.0: 0, 0.0: 0}
    for seed in (2, 3):
        tr = generate(TraceSpec(models=2000, requests=6000, rate_per_s=20, alpha=1.0, seed=seed))
        for guard in got:
            res = simulate(
                tr, "ours", instances=3, capacity_bytes=int(tr.total_bytes * 0.1), rate_window_s=60,
                settings=PolicySettings(swap_guard_s=guard, min_residency_s=60), record_decisions=True, time_decisions=False,
            )
            got[guard].append(len(_pairs(res.decisions)))
            hits[guard] += res.hits
    assert sum(got[0.0]) >= 5, got  # the trace makes pairs without the guard
    assert got[60.0] == [0, 0], got
    assert hits[60.0] >= 0.99 * hits[0.0], hits
