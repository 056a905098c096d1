"""Placement policies on the trace families (placement/_families.py): one simulator run per family and capacity.

Run: ``python -m bench.placement_families [--scale 1.0] [--jobs 2] [--write-results]``.

Every family (diurnal, batch jobs, arrivals, tenant skew, size-popularity, hourly bursts,
drift, one-hit tail, many tenants, and the five traits combined) is replayed through LRU,
ours (``Policy``), the adaptive policy (``AdaptivePolicy``) and the furthest-next-use
oracle at 5/10/20% capacity on 8 instances. Targets (issue 18): total load time <= 0.75x
LRU on every family and capacity; no family worse than LRU; the gap to the oracle narrower
than today's policy's. Also reported: quick reloads (a model loaded again within 5 min of
its eviction: load/evict ping-pong) and, for the adaptive policy, how often it retuned.

``--write-results`` replaces the "## Placement: trace families" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from placement import FAMILIES, PolicySettings, family, simulate  # noqa: E402

POLICIES = ("lru", "ours", "adaptive", "oracle")
CAPACITIES = (0.05, 0.1, 0.2)
_CACHE: dict[tuple[str, float], Any] = {}


def _run(job: tuple[str, float, float, str, float, float]) -> dict[str, Any]:
    fam, scale, cap, policy, tau, window = job
    key = (fam, scale)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = family(fam, scale=scale)
    tr = _CACHE[key]
    settings = PolicySettings(rate_tau_s=tau) if tau else PolicySettings()
    r = simulate(tr, policy, instances=8, capacity_bytes=int(tr.total_bytes * cap), settings=settings,
                 rate_window_s=window or None, time_decisions=False)
    first = np.unique(tr.models)  # every policy loads each requested model at least once
    return {"family": fam, "capacity": cap, "policy": policy, "requests": len(tr),
            "compulsory_s": float(tr.load_times[first].sum()), **r.summary()}


def _knobs(args: argparse.Namespace) -> str:
    """The non-default policy knobs of a run, as its command line spells them."""
    out = f" --rate-tau-s {args.rate_tau_s:g}" if args.rate_tau_s else ""
    return out + (f" --meter-window-s {args.meter_window_s:g}" if args.meter_window_s else "")


def section(args: argparse.Namespace, done: list[dict[str, Any]], wall_s: float) -> str:
    by = {(d["family"], d["capacity"], d["policy"]): d for d in done}
    lines = [
        "## Placement: trace families",
        "",
        f"`python -m bench.placement_families --scale {args.scale:g}{_knobs(args)}` on {platform.machine()} ({os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}), {time.strftime('%Y-%m-%d')}, {wall_s:.0f} s on {args.jobs} processes "
        "(a shared, loaded machine). One simulator run per family, capacity and policy; 8 instances; capacity is a "
        "fraction of the bytes the trace requests; ticks off. Families: `placement.FAMILIES` "
        "(placement/_families.py), 3 virtual days each.",
        "",
        "| family | what it tests |",
        "|---|---|",
    ]
    lines += [f"| {name} | {FAMILIES[name][0]} |" for name in args.families]
    lines += [
        "",
        "Total load time in hours and x LRU (lower is better), x oracle (the gap to furthest-next-use); `first` = "
        "the load time of each model's first request, which every policy pays (the floor); `qr` = quick reloads "
        "(loaded again within 5 min of an eviction: ping-pong), `rt` = adaptive retunes (index rebuilds).",
        "",
        "| family | capacity | LRU | ours (x LRU) | adaptive (x LRU) | oracle (x LRU) | first | ours x oracle | "
        "adaptive x oracle | qr LRU / ours / adaptive / oracle | rt |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    met = worse = narrower = rows = 0
    worst_ad = (0.0, "")
    for fam in args.families:
        for cap in CAPACITIES:
            lru, ours, ad, orc = (by[(fam, cap, p)] for p in POLICIES)
            lt = lru["load_time_s"]
            xo, xa, xr = ours["load_time_s"] / lt, ad["load_time_s"] / lt, orc["load_time_s"] / lt
            go, ga = ours["load_time_s"] / orc["load_time_s"], ad["load_time_s"] / orc["load_time_s"]
            rows += 1
            met += xa <= 0.75
            worse += xa > 1.0
            narrower += ga < go
            if xa > worst_ad[0]:
                worst_ad = (xa, f"{fam} at {cap:.0%}")
            h = [d["load_time_s"] / 3600 for d in (ours, ad, orc)]
            lines.append(
                f"| {fam} | {cap:.0%} | {lt / 3600:.2f} h | {h[0]:.2f} h ({xo:.3f}) | {h[1]:.2f} h ({xa:.3f}) | "
                f"{h[2]:.2f} h ({xr:.3f}) | {lru['compulsory_s'] / 3600:.2f} h | {go:.3f} | {ga:.3f} | "
                f"{lru['quick_reloads']} / {ours['quick_reloads']} / {ad['quick_reloads']} / {orc['quick_reloads']} | "
                f"{ad['index_rebuilds']} |"
            )
    best_o = {fam: min(by[(fam, c, "ours")]["load_time_s"] / by[(fam, c, "lru")]["load_time_s"] for c in CAPACITIES)
              for fam in args.families}
    lines += [
        "",
        f"Targets (adaptive): <= 0.75x LRU in {met}/{rows} rows (worst {worst_ad[0]:.3f}, {worst_ad[1]}); worse than "
        f"LRU in {worse}/{rows} rows (margin to 1.0: {1.0 - worst_ad[0]:.3f}); oracle gap narrower than ours in "
        f"{narrower}/{rows} rows. Ours (today's policy) meets 0.75x in "
        f"{sum(1 for d in done if d['policy'] == 'ours' and d['load_time_s'] <= 0.75 * by[(d['family'], d['capacity'], 'lru')]['load_time_s'])}"
        f"/{rows} rows (best per family: " + ", ".join(f"{f} {x:.3f}" for f, x in best_o.items()) + ").",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pat = re.compile(r"^## Placement: trace families\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _m: text, old) if pat.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every family (models and requests) by this")
    ap.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "placement")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--rate-tau-s", type=float, default=0.0,
                    help="the policies' frequency horizon (PolicySettings.rate_tau_s; 0: the default)")
    ap.add_argument("--meter-window-s", type=float, default=0.0,
                    help="the window traffic is metered over (0: rate_tau_s, as a mesh instance meters by default; "
                         "60 is what instances metered with before usage_window_s)")
    args = ap.parse_args()
    if args.write_results and (args.rate_tau_s or args.meter_window_s):
        ap.error("--write-results records the defaults only")
    jobs = [(f, args.scale, c, p, args.rate_tau_s, args.meter_window_s)
            for f in args.families for c in CAPACITIES for p in POLICIES]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = []
        for d in pool.map(_run, jobs, chunksize=1):
            done.append(d)
            print(f"{d['family']} @ {d['capacity']:.0%} {d['policy']}: {d['load_time_s'] / 3600:.2f} h, "
                  f"{d['wall_s']:.0f}s", flush=True)
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "families.json").write_text(json.dumps(done, indent=1))
    text = section(args, done, wall)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
