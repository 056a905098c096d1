"""Choosing the frequency horizon online: follow the best of shadow caches (a design probe, simulator only).

Run: ``python -m bench.placement_experts [--scale 0.1] [--generator-requests 1000000] [--jobs 2]``.

No single frequency horizon of ours (``rate_tau_s``, with the meter window equal to it) wins
everywhere: 8 h beats 2 h on the trace families (mean 0.795 against 0.825 x LRU at
``--scale 0.1``) and loses on the built-in generator, whose popularity shifts every 4 h. This
probe measures what choosing between them online would give, before anything is built into
the mesh:

* two *shadow* virtual clusters replay the trace with ours at each horizon (2 h, 8 h), each
  with its own cache contents, and keep an exponentially discounted sum of the load time
  they paid (half-life ``--half-life-s``);
* the *meta* cluster evicts by the key of whichever shadow has paid less lately: a switch
  needs the other to be at least 5% cheaper and at most one switch per 600 s of trace
  time (each switch re-keys the eviction index, as an adaptive retune does). Its models
  carry both rates (the 2 h one as ``rate_rpm``, the 8 h one as ``recent_rpm``, through
  ``recent_window_s``; ticks are off, so no copy is added by rate).

Reported per family and capacity, and for the generator (Zipf 1.0, 10,000 models): load
time x LRU of each shadow, of the meta policy and of the better shadow in hindsight.
The meta policy is not a product policy: a live leader does not see every request (copies
report traffic at each publish), so its shadows would replay per-publish counts; that, and
the per-horizon meters in every copy record, are not built.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from placement import (  # noqa: E402
    FAMILIES,
    InstanceView,
    ModelView,
    PlacementError,
    Policy,
    PolicySettings,
    Trace,
    TraceSpec,
    VirtualCluster,
    family,
    generate,
    simulate,
)

HORIZONS = (7200.0, 28800.0)
SWITCH_MIN_S = 600.0
SWITCH_MARGIN = 0.95
INSTANCES = 8
CAPACITIES = (0.05, 0.1, 0.2)


class MetaPolicy(Policy):
    """Ours, keyed by horizon 0 (``rate_rpm``) or horizon 1 (``recent_rpm``), as :meth:`use` says."""

    name = "meta"

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.horizon = 0
        self._base_key = self.key_id
        self.key_id = f"{self._base_key}/h0"

    def use(self, horizon: int) -> None:
        self.horizon = horizon
        self.key_id = f"{self._base_key}/h{horizon}"

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        w = HORIZONS[self.horizon]
        rate = m.rate_rpm if self.horizon == 0 else m.recent_rpm
        f = max(rate * w / 60.0, 1.0)
        lt = m.load_time_s if m.load_time_s > 1e-3 else 1e-3
        k = math.log(f * lt / (m.size_bytes if m.size_bytes > 1 else 1)) + m.last_used / w
        return k + self._discount if len(m.assigned) > 1 else k


def _cluster(policy: Policy, trace: Trace, capacity: int, window_s: float, recent_s: float = 0.0) -> VirtualCluster:
    per = capacity // INSTANCES
    insts = [InstanceView(f"i{k:03d}", per, 0, zone="z0") for k in range(INSTANCES)]
    sizes, loads = trace.sizes.tolist(), trace.load_times.tolist()
    models = [
        ModelView(name, sizes[i], True, trace.tenants[i], load_time_s=loads[i]) for i, name in enumerate(trace.names)
    ]
    return VirtualCluster(policy, insts, models, rate_window_s=window_s, recent_window_s=recent_s)


def _request(c: VirtualCluster, mid: str, t: float) -> float:
    """Serve one request (a miss loads); the load time it cost."""
    before = c.load_time_s
    if not c.models[mid].assigned:
        try:
            actions = c.policy.on_miss(c.view(t), mid)
        except PlacementError:
            actions = []
        c.apply(actions, t)
        if c.index.key_id != c.policy.key_id:
            c.index = c.policy.build_index(c.models.values())
    c.touch(mid, t)
    return c.load_time_s - before


def replay(trace: Trace, capacity_frac: float, half_life_s: float) -> dict[str, Any]:
    capacity = int(trace.total_bytes * capacity_frac)
    shadows = [_cluster(Policy(PolicySettings(rate_tau_s=w)), trace, capacity, w) for w in HORIZONS]
    meta_policy = MetaPolicy(PolicySettings(rate_tau_s=HORIZONS[0]))
    meta = _cluster(meta_policy, trace, capacity, HORIZONS[0], HORIZONS[1])
    paid = [0.0] * len(HORIZONS)
    last_t: float | None = None
    switched_at = -math.inf
    switches = 0
    decay = math.log(2) / half_life_s
    names = trace.names
    for t, mi in zip(trace.times.tolist(), trace.models.tolist(), strict=True):
        mid = names[mi]
        if last_t is not None and t > last_t:
            d = math.exp(-(t - last_t) * decay)
            paid = [p * d for p in paid]
        last_t = t
        for k, c in enumerate(shadows):
            paid[k] += _request(c, mid, t)
        best = min(range(len(HORIZONS)), key=lambda k: paid[k])
        cur = meta_policy.horizon
        if best != cur and t - switched_at >= SWITCH_MIN_S and paid[best] < SWITCH_MARGIN * paid[cur]:
            meta_policy.use(best)
            switched_at = t
            switches += 1
        _request(meta, mid, t)
    lru = simulate(trace, "lru", instances=INSTANCES, capacity_bytes=capacity, time_decisions=False).load_time_s
    return {
        "shadows": [c.load_time_s / lru for c in shadows],
        "meta": meta.load_time_s / lru,
        "switches": switches,
    }


def _job(job: tuple[str, float, float, float, int]) -> dict[str, Any]:
    name, scale, cap, half_life_s, gen_requests = job
    if name == "generator":
        trace = generate(TraceSpec(models=10_000, requests=gen_requests, alpha=1.0, seed=0))
    else:
        trace = family(name, scale=scale)
    return {"trace": name, "capacity": cap, **replay(trace, cap, half_life_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="shrink every family by this")
    ap.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    ap.add_argument("--generator-requests", type=int, default=1_000_000, help="0: skip the generator")
    ap.add_argument("--half-life-s", type=float, default=6 * 3600.0, help="memory of the shadows' paid load time")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    args = ap.parse_args()
    jobs = [(f, args.scale, c, args.half_life_s, 0) for f in args.families for c in CAPACITIES]
    if args.generator_requests:
        jobs += [("generator", args.scale, c, args.half_life_s, args.generator_requests) for c in (0.05, 0.2)]
    print("| trace | capacity | ours 2 h | ours 8 h | better in hindsight | meta | switches |")
    print("|---|---|---|---|---|---|---|")
    fams: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(_job, jobs, chunksize=1):
            a, b = r["shadows"]
            print(f"| {r['trace']} | {r['capacity']:.0%} | {a:.3f} | {b:.3f} | {min(a, b):.3f} | {r['meta']:.3f} | "
                  f"{r['switches']} |", flush=True)
            if r["trace"] != "generator":
                fams.append(r)
    if fams:
        print(
            f"\nFamilies, mean x LRU over {len(fams)} rows: ours 2 h "
            f"{statistics.mean(r['shadows'][0] for r in fams):.3f}, ours 8 h {statistics.mean(r['shadows'][1] for r in fams):.3f}, "
            f"better in hindsight {statistics.mean(min(r['shadows']) for r in fams):.3f}, "
            f"meta {statistics.mean(r['meta'] for r in fams):.3f} (worst row {max(r['meta'] for r in fams):.3f})."
        )


if __name__ == "__main__":
    main()
