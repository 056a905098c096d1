"""Hits unharmed by misses (issue 16): a copy used seconds ago is not evicted for a model on its
first request while another instance has room or colder bytes, with either policy; and a
stream of first requests does not make the same pair of models evict each other.

(By design ours still evicts a copy used seconds ago when the only alternative is a copy with
several times its request rate: value per byte, within ``young_eviction_penalty``; the
policy is unchanged here.)"""

from __future__ import annotations

from dataclasses import replace

import pytest

from placement import LruPolicy, Policy, PolicySettings
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
