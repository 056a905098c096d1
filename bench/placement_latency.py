"""Placement decision latency at scale: 100 instances, 100,000 models, index kept incrementally.

Run: ``python -m bench.placement_latency [--requests 300000] [--tick-s 2] [--clock thread] [--write-results]``.

A virtual cluster of ``--instances`` instances sharing ``--capacity`` of the bytes a Zipf
trace over ``--models`` models requests replays that trace through the policy, the way the
live leader keeps its view: every model change (a request, a load, an eviction) updates the
model's view and the policy's :class:`~placement.PlacementIndex` in place, and nothing is
rebuilt per decision. After a warm-up (the first ``--warmup`` of the requests: the cluster
fills, so later misses must evict), each call is timed alone:

* ``on_miss`` for every miss, split into misses that evict and misses that fit;
* ``on_tick`` every ``--tick-s`` virtual seconds (repairs, copies by rate, quotas): it reads
  the models the index watches plus the holders of instances that are not live;
* baseline in the same run, on the same views: ``on_tick`` as a pass over every model (the
  index's watch switched off for that call; this is what a tick cost before the watch set),
  on every ``--full-every``-th tick.

``--against DIR`` times another checkout's ``placement`` package (``DIR/placement``, e.g. main's)
against this one in the same process: both replay the same trace in lockstep, each miss is
timed on both sides in alternating order (so the machine's load weighs on both alike), the
garbage collector is off while timing, and every decision (actions with reasons, errors,
ticks) is asserted equal; it prints p50/p99 of both sides per kind of miss.

Target (shared/DESIGN.md): a placement decision <= 1 ms p99 with 100 instances and 100k models.
``--write-results`` replaces the "### Decision latency" part of the Placement section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from placement import (  # noqa: E402
    AdaptivePolicy,
    BasePolicy,
    InstanceView,
    LruPolicy,
    ModelView,
    PlacementError,
    Policy,
    PolicySettings,
    TraceSpec,
    VirtualCluster,
    generate,
)


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else math.nan


def _stats(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_us": _pct(xs, 50), "p99_us": _pct(xs, 99), "max_us": max(xs, default=math.nan)}


def run(policy: BasePolicy, args: argparse.Namespace) -> dict[str, Any]:
    tr = generate(TraceSpec(models=args.models, requests=args.requests, alpha=args.alpha, seed=args.seed))
    per = int(tr.total_bytes * args.capacity) // args.instances
    insts = [InstanceView(f"i{k:03d}", per, 0, zone=f"z{k % 3}") for k in range(args.instances)]
    names, sizes, loads = tr.names, tr.sizes.tolist(), tr.load_times.tolist()
    models = [ModelView(names[i], sizes[i], True, tr.tenants[i], load_time_s=loads[i]) for i in range(len(names))]
    cluster = VirtualCluster(policy, insts, models, rate_window_s=policy.settings.rate_tau_s)
    idx = cluster.index
    watch = idx.watch
    miss_evict: list[float] = []
    miss_fit: list[float] = []
    tick: list[float] = []
    tick_full: list[float] = []
    rebuild: list[float] = []
    tick_actions = 0
    watched: list[int] = []
    warm_from = int(len(tr) * args.warmup)
    perf = time.thread_time if args.clock == "thread" else time.perf_counter
    cmodels = cluster.models
    next_tick = float(tr.times[0]) + args.tick_s
    n_ticks = 0
    t0 = perf()
    for k, (t, mi) in enumerate(zip(tr.times.tolist(), tr.models.tolist(), strict=True)):
        timed = k >= warm_from
        if k == warm_from and args.gc_freeze:
            gc.collect()
            gc.freeze()
        if t >= next_tick:
            next_tick = t + args.tick_s
            n_ticks += 1
            view = cluster.view(t)
            if timed and n_ticks % args.full_every == 0:
                idx.watch = None  # baseline: the tick reads every model
                s0 = perf()
                policy.on_tick(view)
                tick_full.append((perf() - s0) * 1e6)
                idx.watch = watch
            s0 = perf()
            actions = policy.on_tick(view)
            if timed:
                tick.append((perf() - s0) * 1e6)
                tick_actions += len(actions)
                live = {i for i, x in cluster.instances.items() if x.state == "live"}
                watched.append(len(idx.tick_candidates(live)))
            cluster.apply(actions, t)
        mid = names[mi]
        if not cmodels[mid].assigned:
            view = cluster.view(t)
            try:
                s0 = perf()
                actions = policy.on_miss(view, mid)
                us = (perf() - s0) * 1e6
            except PlacementError:
                actions = []
                us = math.nan
            if timed and not math.isnan(us):
                (miss_evict if any(a.kind == "unload" for a in actions) else miss_fit).append(us)
            cluster.apply(actions, t)
            if idx.key_id != policy.key_id:  # the adaptive policy retuned: the producer rebuilds its index
                s0 = perf()
                cluster.index = idx = policy.build_index(cmodels.values())
                if timed:
                    rebuild.append((perf() - s0) * 1e6)
        cluster.touch(mid, t)
    wall = perf() - t0
    if args.gc_freeze:
        gc.unfreeze()
    copies = sum(len(m.assigned) for m in cmodels.values())
    return {
        "policy": policy.name,
        "requests": len(tr),
        "timed_from": warm_from,
        "miss_evict": _stats(miss_evict),
        "miss_fit": _stats(miss_fit),
        "miss_all": _stats(miss_evict + miss_fit),
        "tick": _stats(tick),
        "tick_full_pass": _stats(tick_full),
        "index_rebuild": _stats(rebuild),
        "tick_actions": tick_actions,
        "watched_p50": _pct([float(w) for w in watched], 50),
        "copies_at_end": copies,
        "index_entries": len(idx),
        "replay_s": wall,
    }


def _load_package(root: Path, name: str) -> ModuleType:
    """``root/placement`` imported as the package ``name`` (its imports are relative)."""
    init = root / "placement" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"no placement package under {root}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_against(pkgs: list[tuple[str, ModuleType]], policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both packages replay one trace in lockstep; each miss timed on both sides, decisions asserted equal."""
    sides = []
    for label, pkg in pkgs:
        settings = pkg.PolicySettings()
        pol = {"ours": pkg.Policy, "adaptive": pkg.AdaptivePolicy, "lru": pkg.LruPolicy}[policy](settings, args.seed)
        tr = pkg.generate(pkg.TraceSpec(models=args.models, requests=args.requests, alpha=args.alpha, seed=args.seed))
        per = int(tr.total_bytes * args.capacity) // args.instances
        insts = [pkg.InstanceView(f"i{k:03d}", per, 0, zone=f"z{k % 3}") for k in range(args.instances)]
        names, sizes, loads = tr.names, tr.sizes.tolist(), tr.load_times.tolist()
        models = [pkg.ModelView(names[i], sizes[i], True, tr.tenants[i], load_time_s=loads[i]) for i in range(len(names))]
        cluster = pkg.VirtualCluster(pol, insts, models, rate_window_s=settings.rate_tau_s)
        sides.append((label, pkg, pol, cluster, {"miss_evict": [], "miss_fit": []}))
    perf = time.thread_time if args.clock == "thread" else time.perf_counter
    warm_from = int(len(tr) * args.warmup)
    next_tick = float(tr.times[0]) + args.tick_s

    def plain(actions: list[Any]) -> list[tuple[str, str, str, str]]:
        return [(a.kind, a.model_id, a.instance_id, a.reason) for a in actions]

    load = []
    for k, (t, mi) in enumerate(zip(tr.times.tolist(), tr.models.tolist(), strict=True)):
        timed = k >= warm_from
        if k == warm_from:
            gc.collect()
            gc.disable()
        if t >= next_tick:
            next_tick = t + args.tick_s
            ticks = []
            for _, _, pol, cluster, _ in sides:
                actions = pol.on_tick(cluster.view(t))
                cluster.apply(actions, t)
                ticks.append(plain(actions))
            assert all(x == ticks[0] for x in ticks), f"tick at {t}: decisions differ"
        mid = names[mi]
        if not sides[0][3].models[mid].assigned:
            got = []
            for label, pkg, pol, cluster, out in sides[:: 1 if k % 2 else -1]:
                view = cluster.view(t)
                try:
                    s0 = perf()
                    actions = pol.on_miss(view, mid)
                    us = (perf() - s0) * 1e6
                    got.append((label, plain(actions)))
                except pkg.PlacementError as e:
                    actions, us = [], math.nan
                    got.append((label, [("error", type(e).__name__, str(e), "")]))
                if timed and not math.isnan(us):
                    out["miss_evict" if any(a.kind == "unload" for a in actions) else "miss_fit"].append(us)
                cluster.apply(actions, t)
                if cluster.index.key_id != pol.key_id:
                    cluster.index = pol.build_index(cluster.models.values())
            assert all(g[1] == got[0][1] for g in got), f"miss of {mid} at {t}: decisions differ"
        for _, _, _, cluster, _ in sides:
            cluster.touch(mid, t)
        if timed and k % 1000 == 0:
            load.append(os.getloadavg()[0])
    gc.enable()
    return {
        "policy": policy,
        "requests": len(tr),
        "load_avg_1m": [min(load, default=math.nan), max(load, default=math.nan)],
        **{label: {key: _stats(xs) for key, xs in out.items()} for label, _, _, _, out in sides},
    }


def section(args: argparse.Namespace, res: list[dict[str, Any]]) -> str:
    def us(x: float) -> str:
        return "-" if math.isnan(x) else (f"{x / 1000:.1f} ms" if x >= 10_000 else f"{x:.0f} us")

    lines = [
        "### Decision latency",
        "",
        f"`python -m bench.placement_latency --requests {args.requests} --tick-s {args.tick_s:g}"
        f"{' --clock thread' if args.clock == 'thread' else ''}` on "
        f"{platform.machine()} ({os.cpu_count()} CPUs, Python {platform.python_version()}); {time.strftime('%Y-%m-%d')}. "
        f"{args.instances} instances, {args.models:,} models, capacity {args.capacity:.0%} of the requested bytes, "
        f"Zipf {args.alpha:g}; the view and the eviction index are kept incrementally (as the leader's "
        f"`mesh/_placement_view.py` does); calls timed after the first {args.warmup:.0%} of the requests "
        f"(the cluster is full by then), ticks every {args.tick_s:g} virtual seconds"
        + ("; `gc.freeze()` after the warm-up" if args.gc_freeze else "; garbage collector as is")
        + ("; times are the thread's CPU time (`--clock thread`)." if args.clock == "thread" else ".")
        + " Baseline in the same run: `on_tick` reading every model (before the watch set), every "
        f"{args.full_every}th tick.",
        "",
        "| policy | call | calls | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for r in res:
        for label, key in (
            ("on_miss, evicting", "miss_evict"),
            ("on_miss, fits", "miss_fit"),
            ("on_miss, all", "miss_all"),
            ("on_tick (watched models)", "tick"),
            ("on_tick, pass over all models (baseline)", "tick_full_pass"),
            ("index rebuild after a retune (outside on_miss)", "index_rebuild"),
        ):
            s = r.get(key, {"n": 0})
            if s["n"]:
                lines.append(f"| {r['policy']} | {label} | {s['n']:,} | {us(s['p50_us'])} | {us(s['p99_us'])} | {us(s['max_us'])} |")
    ours = next((r for r in res if r["policy"] == "ours"), None)
    if ours is not None and ours["tick_full_pass"]["n"]:
        ratio = ours["tick_full_pass"]["p50_us"] / max(ours["tick"]["p50_us"], 1e-9)
        lines += [
            "",
            f"ours: a tick reads {ours['watched_p50']:.0f} watched models (median) instead of {args.models:,}: "
            f"p50 {ratio:.0f}x faster than the full pass; {ours['tick_actions']:,} tick actions over the timed part; "
            f"{ours['copies_at_end']:,} copies at the end; replay {ours['replay_s']:.0f} s.",
        ]
    lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text()
    pat = re.compile(r"^### Decision latency\n.*?(?=^##|\Z)", re.S | re.M)
    if pat.search(old):
        new = pat.sub(lambda _m: text, old)
    else:  # append at the end of the Placement section
        sec = re.compile(r"(^## Placement\n.*?)(?=^## |\Z)", re.S | re.M)
        new = sec.sub(lambda m: m.group(1).rstrip("\n") + "\n\n" + text + "\n", old, count=1)
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--models", type=int, default=100_000)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--capacity", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--tick-s", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.3, help="fraction of the requests replayed before timing")
    ap.add_argument("--full-every", type=int, default=25, help="time a full-pass tick on every n-th tick")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() the built cluster before timing")
    ap.add_argument(
        "--clock", choices=["wall", "thread"], default="wall",
        help="wall: perf_counter; thread: the thread's CPU time (leaves out time the process waited for a core "
        "on a loaded machine)",
    )
    ap.add_argument("--policies", default="ours,lru")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "placement")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument(
        "--against", type=Path, default=None,
        help="a checkout whose placement package is timed against this one in lockstep (decisions asserted equal)",
    )
    args = ap.parse_args()
    if args.against is not None:
        pkgs = [("against", _load_package(args.against.resolve(), "placement_against")), ("this", sys.modules["placement"])]
        print(f"{'policy':8} {'miss':8} {'n':>6} {'against p50':>12} {'p99':>8} {'this p50':>9} {'p99':>8}  load", flush=True)
        for name in args.policies.split(","):
            r = run_against(pkgs, name, args)
            for key in ("miss_evict", "miss_fit"):
                a, b = r["against"][key], r["this"][key]
                print(
                    f"{name:8} {key[5:]:8} {a['n']:>6} {a['p50_us']:>9.0f} us {a['p99_us']:>5.0f} us "
                    f"{b['p50_us']:>6.0f} us {b['p99_us']:>5.0f} us  {r['load_avg_1m'][0]:.1f}-{r['load_avg_1m'][1]:.1f}",
                    flush=True,
                )
        return
    settings = PolicySettings()
    make = {
        "ours": lambda: Policy(settings, args.seed),
        "adaptive": lambda: AdaptivePolicy(settings, args.seed),
        "lru": lambda: LruPolicy(settings, args.seed),
    }
    res = []
    for name in args.policies.split(","):
        r = run(make[name](), args)
        print(json.dumps(r), flush=True)
        res.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(res, indent=1))
    text = section(args, res)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
