"""Placement policies on generated traces (ours vs ModelMesh-style LRU vs furthest-next-use oracle vs per-phase rates).

Run: ``python -m bench.placement_sim [--requests 1000000] [--jobs 4] [--out out/placement] [--write-results]``.

* Comparison: Zipf alpha 0.8 / 1.0 / 1.2 over ``--models`` models (log-normal sizes, hot-set
  shifts, one-off scans), each policy replayed on the same trace at several capacities
  (a fraction of the bytes the trace requests) on ``--instances`` instances. Targets
  (shared/DESIGN.md): total load time <= 0.8x LRU's and <= 1.2x the oracle's.
* References: ``oracle`` (furthest next use, knows the order of future requests) and
  ``wrates`` (knows each model's request count within the current 4 h window, i.e. each
  hot-set phase's true popularity, not the order): the best a rate-based policy could know.
* Tenants: 4 tenants, one of which scans; hit ratio per tenant, fair eviction on and off.
* Decision latency at 100 instances x 100k models is ``bench/placement_latency.py``.

``--write-results`` replaces the "## Placement" section of bench/RESULTS.md up to its
"### Decision latency" part (written by the latency bench). Runs are
spread over ``--jobs`` processes (each replays one policy on one trace at one capacity).
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

from placement import (  # noqa: E402
    PolicySettings,
    Row,
    SimResult,
    TraceSpec,
    generate,
    markdown_table,
    plot_comparison,
    simulate,
)

_TRACES: dict[str, Any] = {}


def _trace(spec: dict[str, Any]) -> Any:
    key = json.dumps(spec, sort_keys=True)
    if key not in _TRACES:
        _TRACES.clear()
        _TRACES[key] = generate(TraceSpec(**spec))
    return _TRACES[key]


def _run(job: dict[str, Any]) -> dict[str, Any]:
    tr = _trace(job["spec"])
    r = simulate(
        tr, job["policy"], instances=job["instances"], capacity_bytes=int(tr.total_bytes * job["capacity"]),
        settings=PolicySettings(**job["settings"]), time_decisions=False,
    )
    return {**job, "result": {k: v for k, v in r.__dict__.items() if k != "decision_us"}}


BASELINES = ("lru", "wrates", "oracle")
SHOWN = ("lru", "ours", "wrates", "oracle")
FAIR_SPEC = {"alpha": 1.0, "tenants": 4, "scan_tenant": 0, "scan_length": 2000, "scan_every_s": 1800.0}
FAIR_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (("lru", {}), ("ours", {}), ("ours", {"fair_eviction": False}))


def run_all(args: argparse.Namespace) -> tuple[list[Row], list[dict[str, Any]]]:
    variants: list[dict[str, Any]] = json.loads(args.variants) if args.variants else [{}]
    base = {"models": args.models, "requests": args.requests, "seed": args.seed}
    jobs: list[dict[str, Any]] = []
    for alpha in args.alphas:
        for cap in args.capacities:
            common = {"alpha": alpha, "capacity": cap, "instances": args.instances, "spec": {**base, "alpha": alpha}}
            jobs += [{**common, "kind": "cmp", "policy": p, "variant": -1, "settings": {}} for p in BASELINES]
            jobs += [{**common, "kind": "cmp", "policy": "ours", "variant": vi, "settings": v} for vi, v in enumerate(variants)]
    if args.fairness:
        for p, kw in FAIR_RUNS:
            jobs.append({"kind": "fair", "policy": p, "settings": kw, "capacity": 0.1, "instances": args.instances,
                         "spec": {**base, **FAIR_SPEC}})
    # longest first (ours), grouped by trace so that workers reuse the trace they generated
    jobs.sort(key=lambda j: (json.dumps(j["spec"], sort_keys=True), j["policy"] != "ours"))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(_run, jobs, chunksize=1))
    print(f"{len(jobs)} replays in {time.perf_counter() - t0:.0f}s on {args.jobs} processes", flush=True)
    rows: list[Row] = []
    cmp = [d for d in done if d["kind"] == "cmp"]
    for vi in range(len(variants)):
        for alpha in args.alphas:
            for cap in args.capacities:
                sel = {d["policy"]: d for d in cmp if d["alpha"] == alpha and d["capacity"] == cap and d["variant"] in (-1, vi)}
                res = {p: SimResult(**d["result"]) for p, d in sel.items()}
                name = f"zipf {alpha:g}" + (f" [{json.dumps(variants[vi])}]" if len(variants) > 1 else "")
                for p in SHOWN:
                    r = res[p]
                    rows.append(Row(name, cap, r, r.load_time_s / res["lru"].load_time_s, r.load_time_s / res["oracle"].load_time_s))
    fair = [d for d in done if d["kind"] == "fair"]
    fair.sort(key=lambda d: [json.dumps([p, kw]) for p, kw in FAIR_RUNS].index(json.dumps([d["policy"], d["settings"]])))
    return rows, fair


def section(args: argparse.Namespace, rows: list[Row], fair: list[dict[str, Any]], png: str) -> str:
    ours = [r for r in rows if r.result.policy == "ours"]
    lines = [
        "## Placement",
        "",
        f"`python -m bench.placement_sim --requests {args.requests} --models {args.models} --instances {args.instances}` "
        f"on {platform.machine()} ({os.cpu_count()} CPUs, Python {platform.python_version()}); "
        f"{time.strftime('%Y-%m-%d')}.",
        "Generated traces: Zipf popularity over the models, log-normal sizes (median 200 MiB, sigma 1), load time "
        "0.3 s + size / 200 MB/s x a per-model log-normal factor (sigma 0.5), 10% of popularity ranks swapped every 4 h, "
        "a one-off scan of 500 models every hour, 20 requests/s. Capacity is a fraction of the bytes the trace requests, "
        "split over the instances. Loads complete at once on the virtual clock; ticks off (no extra copies). "
        "References, not contenders: `oracle` evicts the copy whose model is requested furthest in the future "
        "(Belady; see `placement.OraclePolicy` for exactly what it does with sizes and instances); `wrates` knows "
        "each model's request count within the current 4 h window (the hot-set phase), i.e. its true popularity, "
        "but not the order of requests: the most a rate-based policy could know. `x wrates` is ours / wrates.",
        "",
        markdown_table(rows),
        "",
    ]
    if ours:
        ok_lru = sum(1 for r in ours if r.lru_ratio is not None and r.lru_ratio <= 0.8)
        ok_or = sum(1 for r in ours if r.oracle_ratio is not None and r.oracle_ratio <= 1.2)
        worst_lru = max(ours, key=lambda r: r.lru_ratio or 0)
        worst_or = max(ours, key=lambda r: r.oracle_ratio or 0)
        by = {(r.trace, r.capacity_fraction, r.result.policy): r.result for r in rows}
        wr = [
            (r, r.result.load_time_s / by[(r.trace, r.capacity_fraction, "wrates")].load_time_s)
            for r in ours
            if (r.trace, r.capacity_fraction, "wrates") in by
        ]
        wr_or = [r for r in rows if r.result.policy == "wrates" and r.oracle_ratio is not None]
        if wr and wr_or:
            lines += [
                "| trace | capacity | ours x oracle | wrates x oracle | ours x wrates |",
                "|---|---|---|---|---|",
            ]
            for r, x in wr:
                w = by[(r.trace, r.capacity_fraction, "wrates")]
                o = by[(r.trace, r.capacity_fraction, "oracle")]
                lines.append(
                    f"| {r.trace} | {r.capacity_fraction:.0%} | {r.oracle_ratio:.3f} | "
                    f"{w.load_time_s / o.load_time_s:.3f} | {x:.3f} |"
                )
            ok_w = sum(1 for r in wr_or if (r.oracle_ratio or 0) <= 1.2)
            lines += [
                "",
                f"`wrates` itself is within 1.2x of the oracle in {ok_w}/{len(wr_or)} rows "
                f"({min(r.oracle_ratio or 0 for r in wr_or):.3f}-{max(r.oracle_ratio or 0 for r in wr_or):.3f}); "
                f"ours is {min(x for _, x in wr):.3f}-{max(x for _, x in wr):.3f}x wrates.",
                "",
            ]
        lines += [
            f"Targets: load time <= 0.8x LRU met in {ok_lru}/{len(ours)} rows (worst {worst_lru.lru_ratio:.3f}: "
            f"{worst_lru.trace} at {worst_lru.capacity_fraction:.0%}); <= 1.2x oracle met in {ok_or}/{len(ours)} "
            f"(worst {worst_or.oracle_ratio:.3f}: {worst_or.trace} at {worst_or.capacity_fraction:.0%}).",
            "",
        ]
    if fair:
        tenants = sorted(fair[0]["result"]["tenant_requests"])
        lines += [
            "Tenants: 4 tenants, Zipf 1.0, tenant t0 also scans 2,000 of its models every 30 min; capacity 10%. "
            "Hit ratio per tenant:",
            "",
            "| policy | " + " | ".join(tenants) + " | all | total load time |",
            "|---|" + "---|" * (len(tenants) + 2),
        ]
        for d in fair:
            res = d["result"]
            name = d["policy"] + (" (fair eviction off)" if d["settings"].get("fair_eviction") is False else "")
            ratios = [res["tenant_hits"].get(t, 0) / max(res["tenant_requests"][t], 1) for t in tenants]
            lines.append(
                f"| {name} | " + " | ".join(f"{x:.3f}" for x in ratios)
                + f" | {res['hits'] / res['requests']:.3f} | {res['load_time_s'] / 3600:.1f} h |"
            )
        lines.append("")
    lines += [f"Curves over capacity: `{png}` (written by the same run).", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pat = re.compile(r"^## Placement\n.*?(?=^### Decision latency|^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _m: text, old) if pat.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--tenants", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alphas", type=lambda s: [float(x) for x in s.split(",")], default=[0.8, 1.0, 1.2])
    ap.add_argument("--capacities", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--no-fairness", dest="fairness", action="store_false", help="skip the tenant run")
    ap.add_argument("--variants", default="", help="JSON list of PolicySettings overrides to compare (tuning)")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--png", type=Path, default=ROOT / "bench" / "placement.png", help="curves over capacity")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "placement")
    ap.add_argument("--write-results", action="store_true", help="replace the Placement section of bench/RESULTS.md")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, fair = run_all(args)
    png = args.png
    plot_comparison(rows, png)
    (args.out / "placement.json").write_text(
        json.dumps(
            {"rows": [{"trace": r.trace, "capacity": r.capacity_fraction, "x_lru": r.lru_ratio, "x_oracle": r.oracle_ratio,
                       **r.result.summary()} for r in rows], "fairness": fair},
            indent=1,
        )
    )
    shown = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    text = section(args, rows, fair, str(shown))
    (args.out / "section.md").write_text(text)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
