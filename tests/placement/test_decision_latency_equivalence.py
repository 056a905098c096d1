"""The cheaper miss path decides exactly as the one it replaced (tests/placement/reference_engine.py).

Two virtual clusters replay the same trace in lockstep, one driven by a policy, the other by
the same policy with the reference miss path; every ``on_miss`` and ``on_tick`` must return
the same actions (reasons included) or raise the same error. The traces are built to reach
every branch of the miss path: a full cluster (evicting misses), more instances than the
eviction shortlist and a shortlist of 1 (so the read over all instances runs too), three
tenants with a quota and fair eviction, zones, loading slots taken, recent load failures,
min copies and pinned models, young copies, and instances that drain and die mid-trace.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from placement import (
    AdaptivePolicy,
    BasePolicy,
    InstanceView,
    LruPolicy,
    ModelView,
    PlacementError,
    Policy,
    PolicySettings,
    TenantQuota,
    TraceSpec,
    VirtualCluster,
    generate,
)
from tests.placement.reference_engine import reference

N_INST = 12


def _clusters(make: type[BasePolicy], settings: PolicySettings, seed: int) -> tuple[list[VirtualCluster], list[str], list[float]]:
    tr = generate(TraceSpec(models=500, requests=2500, tenants=3, rate_per_s=5.0, scan_every_s=300.0, scan_length=60, seed=seed))
    per = int(tr.total_bytes * 0.08) // N_INST
    names, sizes, loads = tr.names, tr.sizes.tolist(), tr.load_times.tolist()
    quota = TenantQuota("t1", int(tr.total_bytes * 0.02))
    out = []
    for cls in (make, reference(make)):
        insts = [
            InstanceView(f"i{k:02d}", per, 0, loading=k % 3, loading_slots=2, zone=f"z{k % 3}") for k in range(N_INST)
        ]
        models = [
            ModelView(
                names[i], sizes[i], True, tr.tenants[i], load_time_s=loads[i],
                min_copies=2 if i % 97 == 5 else 0, pinned=i % 211 == 7,
                failures={f"i{i % N_INST:02d}": 1e12} if i % 13 == 0 else {},
            )
            for i in range(len(names))
        ]
        out.append(VirtualCluster(cls(settings, seed), insts, models, quotas={"t1": quota}, rate_window_s=600.0))
    return out, [names[i] for i in tr.models.tolist()], tr.times.tolist()


def _decide(c: VirtualCluster, call: str, now: float, mid: str = "") -> object:
    view = c.view(now)
    try:
        actions = c.policy.on_tick(view) if call == "tick" else c.policy.on_miss(view, mid)
    except PlacementError as e:
        return (type(e).__name__, str(e))
    c.apply(actions, now)
    if c.index.key_id != c.policy.key_id:  # the adaptive policy retuned: the producer rebuilds its index
        c.index = c.policy.build_index(c.models.values())
    return actions


@pytest.mark.parametrize("make", [Policy, LruPolicy, AdaptivePolicy], ids=lambda c: c.__name__)
@pytest.mark.parametrize("shortlist", [8, 1])
def test_miss_path_decides_as_the_reference(make: type[BasePolicy], shortlist: int) -> None:
    settings = PolicySettings(eviction_shortlist=shortlist, min_residency_s=60, adapt_retune_min_s=120)
    (new, ref), reqs, times = _clusters(make, settings, seed=shortlist)
    evicting = errors = 0
    next_tick = times[0] + 5.0
    for k, (mid, t) in enumerate(zip(reqs, times, strict=True)):
        if k == len(reqs) // 3 or k == 2 * len(reqs) // 3:  # drain an instance, later it dies
            state = "shutting_down" if k == len(reqs) // 3 else "dead"
            for c in (new, ref):
                c.instances["i03"] = replace(c.instances["i03"], state=state)
        if t >= next_tick:
            next_tick = t + 5.0
            assert _decide(new, "tick", t) == _decide(ref, "tick", t), f"tick at {t}"
        if not new.models[mid].assigned:
            got, want = _decide(new, "miss", t, mid), _decide(ref, "miss", t, mid)
            assert got == want, f"miss of {mid} at {t}"
            if isinstance(got, tuple):
                errors += 1
            elif any(a.kind == "unload" for a in got):
                evicting += 1
        for c in (new, ref):
            c.touch(mid, t)
    assert new.models == ref.models
    assert evicting > 150, evicting  # the eviction path was exercised, not only misses that fit
    assert errors < evicting
