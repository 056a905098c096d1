"""The eviction index's cached heads and the miss's victim read agree with brute force on random clusters.

A seeded random walk changes models (requests, copies added and removed, tenants, pinning,
deletions), reads partial scans (which drop dead heap entries and so move heads), and
compacts; after every step the cached heads must equal the minimum of the heaps' tops
read directly, and a full scan must read exactly the live copies in key order. The
victim read of a miss (``_scan_victims``, with its inline evictability test) must pick
what a plain read of the sorted live copies, judging each with ``_victim_tier``, picks.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from placement import (
    AdaptivePolicy,
    BasePolicy,
    ClusterView,
    CopyView,
    LruPolicy,
    ModelView,
    Policy,
    PolicySettings,
)
from placement._index import PlacementIndex
from placement._plan import Plan
from placement._victims import _smallest

INSTANCES = [f"i{k}" for k in range(7)]
TENANTS = ["t0", "t1", "t2"]
MB = 1 << 20


def _model(rng: random.Random, mid: str, now: float) -> ModelView:
    on = frozenset(rng.sample(INSTANCES, rng.choice([0, 1, 1, 1, 2, 3])))
    copies = tuple(
        CopyView(i, rng.choice(["loaded", "loaded", "loaded", "loading"]), now - rng.uniform(0, 200)) for i in sorted(on)
    )
    return ModelView(
        mid, rng.randint(1, 40) * MB, True, rng.choice(TENANTS), copies=copies, assigned=on,
        last_used=now - rng.uniform(0, 5000), rate_rpm=rng.choice([0.0, 0.5, 3.0, 40.0]),
        inflight=rng.choice([0, 0, 0, 1]), load_time_s=rng.uniform(0.5, 20),
        min_copies=rng.choice([0, 0, 0, 1]), pinned=rng.random() < 0.03,
    )


def _brute_heads(idx: PlacementIndex, iid: str) -> float:
    return min((h[0].key for (i, _), h in idx._heaps.items() if i == iid and h), default=float("inf"))


def _live_rows(
    policy: BasePolicy, models: dict[str, ModelView], instances: list[str] | None, offsets: dict[str, float]
) -> list[tuple[float, float, str, str, str]]:
    rows = []
    for m in models.values():
        k = policy.evict_key(m)
        if k is None:
            continue
        for iid in m.assigned:
            if instances is None or iid in instances:
                rows.append((k + offsets.get(m.tenant, 0.0), k, m.model_id, iid, m.tenant))
    return sorted(rows)


def _walk(policy: BasePolicy, seed: int, steps: int):  # type: ignore[no-untyped-def]
    """Yield (models, index, now) after each random change."""
    rng = random.Random(seed)
    now = 10_000.0
    models = {f"m{k}": _model(rng, f"m{k}", now) for k in range(60)}
    idx = policy.build_index(models.values()) if seed % 2 else policy.new_index()
    if not seed % 2:
        for m in models.values():
            idx.update(m)
    for step in range(steps):
        now += rng.uniform(0, 30)
        mid = f"m{rng.randrange(80)}"
        r = rng.random()
        if r < 0.45 and mid in models:  # a request: the key moves, old heap entries go dead
            models[mid] = replace(models[mid], last_used=now, rate_rpm=models[mid].rate_rpm + 1)
            idx.update(models[mid])
        elif r < 0.7:  # a model is (re)placed, its copies change, or it is new
            models[mid] = _model(rng, mid, now)
            idx.update(models[mid])
        elif r < 0.78 and mid in models:
            del models[mid]
            idx.remove(mid)
        elif r < 0.95:  # a partial read: drops the dead entries it passes
            inst = rng.sample(INSTANCES, rng.randint(1, len(INSTANCES))) if rng.random() < 0.7 else None
            with idx.scan(None, inst) as scan:
                for _ in zip(range(rng.randint(0, 12)), scan.rows(), strict=False):
                    pass
        else:
            idx._compact()
        yield step, models, idx, now


@pytest.mark.parametrize("seed", range(6))
def test_cached_heads_and_scans_match_brute_force(seed: int) -> None:
    policy = Policy(PolicySettings())
    checked_dead_tops = 0
    for step, models, idx, _ in _walk(policy, seed, 400):
        ids = [*INSTANCES, "nowhere"]
        want = [_brute_heads(idx, i) for i in ids]
        assert idx.head_values(ids) == want, step
        assert idx.heads(ids) == list(zip(want, ids, strict=True)), step
        assert [idx.head(i) for i in ids] == want, step
        live_min = [min((r[1] for r in _live_rows(policy, models, [i], {})), default=float("inf")) for i in INSTANCES]
        checked_dead_tops += sum(h < lm for h, lm in zip(want, live_min, strict=False))
        if step % 5 == 0:
            offsets = {"t1": 1.5} if step % 10 else {}
            with idx.scan(None, None, offsets) as scan:
                assert list(scan.rows()) == _live_rows(policy, models, None, offsets), step
    assert checked_dead_tops > 0  # the walk reached heads that a dead entry lowers (what the cache must keep)


def _reference_read(
    policy: BasePolicy, view: ClusterView, plan: Plan, needs: dict[str, int], offsets: dict[str, float],
    instances: list[str] | None, key_limit: float, allow_young: bool,
) -> tuple[str, list[str]] | None:
    """The victim read from first principles: the live copies in order, each judged by ``_victim_tier``."""
    rows = _live_rows(policy, dict(view.models), instances, offsets)
    stop = key_limit + max(offsets.values(), default=0.0)
    acc0: dict[str, list[ModelView]] = {}
    acc1: dict[str, list[ModelView]] = {}
    fallback = None
    read, budget = 0, -1
    for order, key, mid, iid, _tenant in rows:
        if order >= stop or budget == 0:
            break
        read += 1
        budget -= 1
        if key >= key_limit or iid not in needs:
            continue
        vm = view.models[mid]
        tier = policy._victim_tier(view, plan, vm, iid)
        if tier is None:
            continue
        if tier == 0:
            acc0.setdefault(iid, []).append(vm)
            if sum(v.size_bytes for v in acc0[iid]) >= needs[iid]:
                return iid, [v.model_id for v in acc0[iid]]
        if allow_young and fallback is None:
            acc1.setdefault(iid, []).append(vm)
            if sum(v.size_bytes for v in acc1[iid]) >= needs[iid]:
                fallback = iid, [v.model_id for v in acc1[iid]]
                stop = min(stop, order + policy.young_margin())
                budget = max(read, 16)
    return fallback


def _restate(rng: random.Random, m: ModelView, now: float) -> ModelView:
    """``m`` as a view may hold it while the index was last told otherwise: its copies' states and ages
    changed (not its key, tenant, assignment or size), or the same fields in a new object."""
    if rng.random() < 0.5:
        return replace(m)
    copies = tuple(
        CopyView(c.instance_id, rng.choice(["loaded", "loading", "failed"]), now - rng.uniform(0, 200)) for c in m.copies
    )
    return replace(m, copies=copies, inflight=rng.choice([0, 0, 1]))


@pytest.mark.parametrize("make", [Policy, LruPolicy, AdaptivePolicy], ids=lambda c: c.__name__)
@pytest.mark.parametrize("stale", [False, True], ids=["same-views", "views-differ-from-index"])
def test_victim_read_matches_brute_force(make: type[BasePolicy], stale: bool) -> None:
    """The read judges each copy by the view: through the index's record only when the view holds
    the very object the record was made from (``stale``: a third of the views are other objects)."""
    policy = make(PolicySettings(min_residency_s=100.0), 0)
    rng = random.Random(7)
    found = young = 0
    for step, models, idx, now in _walk(policy, 11, 300):
        in_view = dict(models)
        if stale:
            for mid in rng.sample(sorted(in_view), len(in_view) // 3):
                in_view[mid] = _restate(rng, in_view[mid], now)
        view = ClusterView(now, {}, in_view, index=idx)
        plan = Plan(view)
        if step % 3 == 0 and models:  # a plan with earlier actions: assignments seen through it
            m = models[rng.choice(sorted(models))]
            for iid in list(m.assigned)[:1]:
                plan.unload(m, iid, "test")
        needs = {i: rng.randint(1, 80) * MB for i in rng.sample(INSTANCES, rng.randint(1, len(INSTANCES)))}
        offsets = {"t2": 2.0} if step % 4 == 0 else {}
        instances = sorted(needs)[:3] if step % 2 else None
        key_limit = float("inf") if step % 5 else rng.uniform(-10, 10)
        for allow_young in (True, False):
            got = policy._scan_victims(view, plan, idx, needs, offsets or None, instances, key_limit, allow_young)
            want = _reference_read(policy, view, plan, needs, offsets, instances, key_limit, allow_young)
            assert (None if got is None else (got[0], [v.model_id for v in got[1]])) == want, step
            found += got is not None
            young += got is not None and any(
                now - c.since < 100.0 for v in got[1] for c in v.copies if c.instance_id == got[0]
            )
    assert found > 100 and young > 0  # reads that found victims, young ones among them


def test_smallest_is_the_sorted_prefix() -> None:
    rng = random.Random(3)
    for _ in range(500):
        n = rng.randint(0, 30)
        pool = [rng.randint(0, 5) for _ in range(4)] + [float("inf"), -1.5]
        values = [rng.choice(pool) for _ in range(n)]
        ids = [f"i{k:02d}" for k in rng.sample(range(60), n)]
        k = rng.randint(0, 10)
        assert _smallest(k, values, ids) == [i for _, i in sorted(zip(values, ids, strict=True))[:k]]
