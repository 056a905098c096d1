"""``python -m bench`` (``make bench``): the serving benchmarks in one run, a table, RESULTS.md and plots.

Runs, in this order, each against a baseline measured in the same run: routing overhead (bare
adapter vs local and remote hit, gRPC via h2load and REST via wrk), the MLServer peer (same
XGBoost model, same load generator), density (10,000 models, 3 instances, Zipf traffic),
cold start (vs the adapter's own load time) and the control plane (registration rate, routing
memory per registered model at 100,000 models). Prints the machine and the load average at
start and end (the figures are ratios because the machine may be shared), writes the section
between the markers in bench/RESULTS.md (other sections, e.g. the placement simulator's, are
left alone) and bench/plots/*.png. ``--quick`` shortens every part (a smoke run, not recorded
unless ``--write``). About 8-10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

from bench import _tools

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:serving:begin -->", "<!-- bench:serving:end -->"
TARGETS = {"modelmux local hit": 0.9, "modelmux remote hit": 0.6}


def _fmt_rows(rows: list[list[str]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _probe_verdict(ratio: float) -> str:
    """The density probe's verdict: a hits-only p99 above the p99 under misses (a ratio below 1)
    means the baseline itself paused, and a ratio against it proves nothing either way."""
    if ratio < 1.0:
        return "not judged: the hits-only baseline paused (its p99 above the p99 under misses)"
    return "met" if ratio <= 2 else "missed"


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def routing_rows(results: dict[str, dict[str, dict[str, float]]], base_key: str, targets: dict[str, float]) -> list[list[str]]:
    rows = []
    for proto in ("grpc", "rest"):
        base = results.get(base_key, {}).get(proto)
        if not base:
            continue
        for setup, by in results.items():
            r = by[proto]
            ratio = r["rps"] / base["rps"] if base["rps"] else 0.0
            target = targets.get(setup)
            rows.append([proto, setup, f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{ratio:.2f}",
                         f">= {target}" + (" met" if ratio >= target else " missed") if target else "", str(int(r["errors"]))])
    return rows


def plot(routing: dict[str, Any] | None, peer: dict[str, Any] | None, density: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = HERE / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    panels = [(n, d, b) for n, d, b in (("routing vs bare adapter", routing, "bare adapter"), ("vs MLServer (XGBoost)", peer, "MLServer")) if d]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (title, res, base_key) in zip(axes[0], panels, strict=True):
            setups = list(res)
            for j, proto in enumerate(("grpc", "rest")):
                if proto not in res[base_key]:
                    continue
                base = res[base_key][proto]["rps"]
                ratios = [res[s][proto]["rps"] / base for s in setups]
                ax.bar([i + 0.38 * j for i in range(len(setups))], ratios, width=0.38, label=proto)
            ax.set_xticks([i + 0.19 for i in range(len(setups))], [s.replace("modelmux ", "") for s in setups], fontsize=8)
            ax.axhline(1.0, color="grey", lw=0.8)
            for setup, t in TARGETS.items():
                if setup in setups:
                    i = setups.index(setup)
                    ax.hlines(t, i - 0.2, i + 0.6, colors="red", linestyles="dashed", lw=1)
            if base_key == "MLServer":
                ax.axhline(1.5, color="red", ls="--", lw=1)
            ax.set_ylabel("throughput ratio")
            ax.set_title(title)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("bench/plots/throughput.png")
    if routing or peer:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels, p50, p99 = [], [], []
        for res in (routing or {}, peer or {}):
            for setup, by in res.items():
                for proto, r in by.items():
                    labels.append(f"{setup.replace('modelmux ', 'mm ')}\n{proto}")
                    p50.append(r["p50_ms"])
                    p99.append(r["p99_ms"])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
        ax.set_xticks(list(xs), labels, fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=110)
        plt.close(fig)
        written.append("bench/plots/latency.png")
    if density:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar(["measured size", "RSS growth"], [density["size_per_copy"] / 1024, density["rss_per_copy"] / 1024])
        ax.set_ylabel("KiB per loaded copy")
        ax.set_title(f"density: {int(density['models'])} models, {int(density['copies'])} copies")
        fig.tight_layout()
        fig.savefig(out_dir / "density.png", dpi=110)
        plt.close(fig)
        written.append("bench/plots/density.png")
    return written


def _peer_panel(peer: dict[int, Any] | None) -> dict[str, Any] | None:
    """The peer results at the highest concurrency, with the fastest MLServer setting as "MLServer" (the plot's base)."""
    if not peer:
        return None
    from bench.bench_peer import fastest_mlserver

    by_setup = peer[max(peer)]
    panel: dict[str, Any] = {"MLServer": {}}
    for proto in ("grpc", "rest"):
        best = fastest_mlserver(by_setup, proto)
        if best is not None:
            panel["MLServer"][proto] = best[1]
    panel.update({s: r for s, r in by_setup.items() if not s.startswith("MLServer")})
    return panel


def write_results(section: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", lambda _m: block, text, flags=re.S)
    else:
        # first run: the sections this suite re-measures go, replaced by the generated block
        for title in ("## Routing", "## Cold start"):
            text = re.sub(rf"\n{re.escape(title)}.*?(?=\n## |\Z)", "\n", text, flags=re.S)
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md and plots even with --quick")
    ap.add_argument("--only", nargs="*", default=["routing", "peer", "peer-onnx", "remote", "density", "memory", "coldstart", "control"])
    ap.add_argument("--duration", type=float, default=None, help="seconds per measurement (routing, peer, remote)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (routing, peer, remote)")
    a = ap.parse_args()
    q = a.quick
    dur = a.duration or (2 if q else 5)
    rounds = a.rounds or (1 if q else 3)
    info = _tools.machine()
    load_start = _tools.loadavg()
    started = time.monotonic()
    print("machine:")
    for k, v in info.items():
        print(f"  {k}: {v}")
    print(f"  load average at start: {load_start}")

    md: list[str] = []
    routing = density = density_inproc = cold = control = memory = None
    peer: dict[int, Any] | None = None
    peer_out: dict[str, Any] = {}
    if "routing" in a.only:
        from bench import bench_routing

        routing = bench_routing.run(duration=dur, rounds=rounds)
    if "peer" in a.only:
        from bench import bench_peer

        try:
            peer_out = bench_peer.run(duration=dur, rounds=rounds)
            peer = peer_out["results"]
        except Exception as exc:  # report why, keep the rest of the run
            peer_out = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            print(f"\npeer: MLServer could not be measured: {peer_out['error']}")
    peer_onnx_out: dict[str, Any] = {}
    if "peer-onnx" in a.only:
        from bench import bench_peer

        try:
            peer_onnx_out = bench_peer.run(duration=dur, rounds=rounds, model_type="onnx")
        except Exception as exc:  # report why, keep the rest of the run
            peer_onnx_out = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            print(f"\npeer-onnx: MLServer could not be measured: {peer_onnx_out['error']}")
    remote: dict[str, Any] | None = None
    if "remote" in a.only:
        from bench import bench_remote

        remote = bench_remote.run(duration=dur, rounds=rounds)
    if "density" in a.only:
        from bench import bench_density

        # the process mesh (an instance a process over etcd, as pods) first: the plots show it
        density = bench_density.run(models=2000 if q else 10_000, duration=8 if q else 40, processes=True, hot_duration=5 if q else 15)
        density_inproc = bench_density.run(models=2000 if q else 10_000, duration=8 if q else 40, processes=False, hot_duration=5 if q else 15)
    if "memory" in a.only:
        from bench import bench_memory

        memory = bench_memory.run(models=20 if q else 60, cycles=1 if q else 2)
    if "coldstart" in a.only:
        from bench import bench_coldstart

        cold = bench_coldstart.run(5 if q else 20)
    if "control" in a.only:
        from bench import bench_control

        control = bench_control.run(20_000 if q else 100_000)
    load_end = _tools.loadavg()
    elapsed = time.monotonic() - started

    today = dt.date.today().isoformat()
    md.append(f"## Serving benchmarks (`python -m bench`, {today})\n")
    md.append("Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + ".")
    md.append(f"Load average (1/5/15 min) at start {load_start}, at end {load_end}; the run took {elapsed / 60:.1f} min. "
              "The machine is shared with other jobs: the ratios, each against a baseline measured in the same run, "
              "are the result; absolute numbers are low and noisy.\n")
    if routing:
        header = ["protocol", "setup", "req/s", "p50 ms", "p99 ms", "x bare", "target", "errors"]
        rows = routing_rows(routing, "bare adapter", TARGETS)
        _print_table("routing overhead (median of rounds)", header, rows)
        md.append("### Routing overhead\n")
        md.append("Tiny ONNX MLP (16 -> 64 -> 4), one FP32 [1, 16] row. Load: h2load (gRPC: the same 5-byte-prefixed "
                  "ModelInferRequest POSTed on 4 connections x 4 streams, 16 in flight; every target checked first with "
                  "a real gRPC call, answers' bytes checked after) and wrk (REST JSON, 16 connections, keep-alive), one "
                  "thread each. Baseline: the same adapter and codec behind a bare grpc.aio handler / FastAPI route "
                  "(bench/_servers.py). Remote hit: the request enters the instance without the copy and is forwarded "
                  "as bytes; both instances share one process and event loop (a worse case than two pods). Setups "
                  f"measured in turn, {rounds} rounds of {dur:g} s, median.\n")
        md.append(_fmt_rows(rows, header) + "\n")
    if peer is not None or "peer" in a.only:
        md.append("### Peer: MLServer\n")
        if peer:
            from bench.bench_peer import HEADER as PEER_HEADER
            from bench.bench_peer import rows as peer_rows

            rows = peer_rows(peer)
            _print_table(f"peer: MLServer {peer_out['mlserver']}", PEER_HEADER, rows)
            md.append(f"MLServer {peer_out['mlserver']} with mlserver-xgboost from PyPI in its own venv (var/mlserver-venv; "
                      "uvloop < 0.22 there, see bench/bench_peer.py) in three settings side by side: its defaults "
                      "(parallel_workers 1), parallel_workers 0, and adaptive batching (max_batch_size 16, "
                      "max_batch_time 0.002, parallel_workers 0); ports picked at run time and read back from its "
                      "settings.json. Same XGBoost booster (multi:softprob, 8 features, 10 rounds; tests/model_factory.py), "
                      f"same request bytes (one FP32 [1, 8] row), load from {peer_out['load']} at 1 and 16 requests in "
                      "flight; OMP_NUM_THREADS=1 for all (modelmux's default xgboost_threads=1). MLServer predicts with "
                      "xgboost; modelmux and the bare servicer (the same adapter) with Treelite's GTIL for small batches "
                      "(runtime_adapters/_treelite.py; answers checked against xgboost's). modelmux: one instance, "
                      "local hit. Each ratio is against the fastest MLServer setting at that concurrency and protocol "
                      f"(target at 16 in flight: >= 1.5x). {rounds} interleaved rounds of {dur:g} s, median.\n")
            md.append(_fmt_rows(rows, PEER_HEADER) + "\n")
            one = peer.get(1, {})
            for proto in ("grpc", "rest"):
                mm, bare = one.get("modelmux (local hit)", {}).get(proto), one.get("bare servicer", {}).get(proto)
                if mm and bare and bare["rps"]:
                    ratio = mm["rps"] / bare["rps"]
                    line = (f"Local hit at 1 in flight, {proto}: {ratio:.2f}x the bare servicer "
                            f"(target >= 0.95: {'met' if ratio >= 0.95 else 'missed'}).")
                    print(line)
                    md.append(line + "\n")
        else:
            md.append(f"MLServer could not be measured in this run: {peer_out.get('error', 'not run')}\n")
    if "peer-onnx" in a.only:
        md.append("### Peer: MLServer, ONNX\n")
        if "results" in peer_onnx_out:
            from bench.bench_peer import HEADER as PEER_HEADER
            from bench.bench_peer import rows as peer_rows

            rows = peer_rows(peer_onnx_out["results"])
            _print_table(f"peer (ONNX): MLServer {peer_onnx_out['mlserver']}", PEER_HEADER, rows)
            md.append(f"The tiny ONNX MLP of the routing section. MLServer {peer_onnx_out['mlserver']} ships no ONNX runtime: "
                      "it serves ONNX through its MLflow runtime (mlserver-mlflow, an MLflow model of the ONNX flavour "
                      "with a tensor signature; onnxruntime inside), from its own venv (var/mlserver-onnx-venv). Same three "
                      "MLServer settings, same load and rounds as above; every answer checked against onnxruntime first. "
                      "Target at 16 in flight: >= 1.5x the fastest MLServer setting.\n")
            md.append(_fmt_rows(rows, PEER_HEADER) + "\n")
        else:
            md.append(f"MLServer could not be measured in this run: {peer_onnx_out.get('error', 'not run')}\n")
    if remote:
        from bench.bench_remote import HEADER as REMOTE_HEADER
        from bench.bench_remote import rows as remote_rows

        rows = remote_rows(remote["results"])
        _print_table("remote hit, two processes over etcd", REMOTE_HEADER, rows)
        md.append("### Remote hit across processes, direct routing\n")
        md.append("bench/bench_remote.py: a local etcd, two `python -m mesh serve` processes (store kind etcd) and the bare "
                  "adapter, the tiny ONNX MLP of the routing section registered with `max_copies: 1` (one holder). "
                  "Remote hit: requests enter the instance without the copy and are forwarded. Direct routing: requests "
                  "go to the address the first answer named in its `mm-holder` trailer, which is what "
                  "`mesh.client.DirectRouter` does (checked in the run: a DirectRouter given only the other instance "
                  f"learnt that address: {remote['holder_check']}). gRPC via h2load, {rounds} interleaved rounds of "
                  f"{dur:g} s, median. Targets at 16 in flight: remote >= 0.75x bare, direct >= 0.9x.\n")
        md.append(_fmt_rows(rows, REMOTE_HEADER) + "\n")
    if density and density_inproc:
        runs = [("process mesh", density), ("in-process", density_inproc)]
        header = ["mesh", "models", "zipf s", "requests", "req/s", "hit ratio", "loads/s", "store writes/s", "p50 ms", "p99 ms",
                  "p99 ms hits only", "copies at end", "measured size / copy", "RSS growth / copy", "RSS / size", "errors"]
        rows = [[name, f"{int(d['models']):,}", f"{d['zipf_s']:g}", f"{d['requests']:.0f}", f"{d['rps']:.0f}", f"{d['hit_ratio']:.3f}",
                 f"{d['loads_per_s']:.1f}", f"{d['store_writes_per_s']:.0f}" if d["store_writes_per_s"] else "-",
                 f"{d['p50_ms']:.1f}", f"{d['p99_ms']:.1f}", f"{d['hot_p99_ms']:.1f}",
                 f"{int(d['copies'])}", f"{d['size_per_copy'] / 1024:.0f} KiB", f"{d['rss_per_copy'] / 1024:.0f} KiB",
                 f"{d['rss_per_copy'] / d['size_per_copy']:.2f}" if d["size_per_copy"] else "-", str(int(d["errors"]))]
                for name, d in runs]
        _print_table("density", header, rows)
        t_rows = []
        for name, d in runs:
            probe = d["probe_p99_ms"] / d["probe_hot_p99_ms"] if d["probe_hot_p99_ms"] else 0.0
            rss = (d["rss_end"] - d["rss_base"]) / d["used_bytes"] if d["used_bytes"] else 0.0
            used_growth = d["used_bytes"] - d["used_hot"]
            marginal = (d["rss_end"] - d["rss_hot"]) / used_growth if used_growth > 0 else 0.0
            heap_growth = d.get("heap_in_use_end", 0.0) - d.get("heap_in_use_hot", 0.0)
            heap = heap_growth / used_growth if used_growth > 0 else 0.0
            t_rows += [[f"{name}: hits' p99 under misses / hits-only p99 (probe on the 5 hottest models, leader's instance)",
                        f"{d['probe_p99_ms']:.1f} / {d['probe_hot_p99_ms']:.1f} ms = {probe:.2f}", "<= 2", _probe_verdict(probe)],
                       [f"{name}: load/evict ping-pong pairs within 60 s (leader's decision log)",
                        f"{int(d['ping_pongs'])} of {int(d['decisions_seen'])} actions" + (f" (e.g. {d['ping_pong_examples']})" if d["ping_pongs"] else ""),
                        "0", "met" if not d["ping_pongs"] else "missed"],
                       [f"{name}: RSS growth / used capacity growth, from the hits-only phase on (base: RSS then)",
                        f"{marginal:.2f} ({(d['rss_end'] - d['rss_hot']) / 2**20:.0f} MiB / {used_growth / 2**20:.0f} MiB)", "<= 1.3",
                        "met" if marginal <= 1.3 else "missed"],
                       [f"{name}: the same over the whole run (base: RSS after registration, before any framework ran)",
                        f"{rss:.2f} ({(d['rss_end'] - d['rss_base']) / 2**20:.0f} MiB / {d['used_bytes'] / 2**20:.0f} MiB)", "", ""],
                       [f"{name}: C heap in use: growth / used capacity growth, from the hits-only phase on",
                        f"{heap:.2f} ({heap_growth / 2**20:.0f} MiB; heap free kept at the end {d.get('heap_free_end', 0) / 2**20:.0f} MiB)",
                        "", ""],
                       [f"{name}: capacity / requested bytes (expected distinct models x mean size)", f"{d['capacity_share']:.2f}",
                        "about 0.25", ""]]
        _print_table("density targets", ["", "measured", "target", ""], t_rows)
        d = density
        md.append("### Density\n")
        md.append(f"Two meshes of 3 instances, {int(d['capacity_mib'])} MiB of model capacity each (bench/bench_density.py): "
                  "the **process mesh**, an instance a process over a local etcd, as pods are (`--processes`; memory "
                  "and RSS summed over the three), and the **in-process** embedded mode, one process over the memory "
                  "store (three control planes on one event loop). 10,000 registered models over 200 distinct ONNX files "
                  "(16 -> 3072 -> 4 MLP), Zipf traffic over all models from 3 wrk processes (one per instance, 4 "
                  f"connections each, model drawn per request by a Lua script) for {d['duration_s']:.0f} s, plus a probe "
                  "(wrk, 2 connections) on the 5 hottest models in both phases, sent to the placement leader's instance. "
                  "Hit ratio = 1 - misses / requests (a miss: no copy anywhere when the request arrived). Latency "
                  "includes misses; baseline in the same run: the 20 hottest models only, loaded (\"hits only\"). "
                  "Store writes: etcd's put and delete counters over the Zipf phase (process mesh). RSS growth: after "
                  "the run minus after registration, per copy loaded at the end (it also holds what evicted copies "
                  "left behind).\n")
        md.append(_fmt_rows(rows, header) + "\n")
        md.append(_fmt_rows(t_rows, ["", "measured", "target", ""]) + "\n")
    if memory:
        header = ["setting", "cycle", "sum of measured sizes MiB", "RSS growth MiB", "RSS / size", "left after unload MiB"]
        rows = [[name, str(i), f"{c['sizes'] / 2**20:.1f}", f"{c['rss_growth'] / 2**20:.1f}",
                 f"{c['rss_growth'] / c['sizes']:.2f}" if c["sizes"] else "-", f"{c['left_after_unload'] / 2**20:.1f}"]
                for name, r in memory.items() for i, c in enumerate(r["rounds"])]
        _print_table("memory vs accounting", header, rows)
        md.append("### Memory vs accounting\n")
        md.append("bench/bench_memory.py: in one child process per setting, ONNX MLPs (16 -> 3072 -> 4) loaded two at a "
                  "time (as a busy instance's load pool does), one request each, then unloaded; RSS growth over the "
                  "process's RSS after the adapter's warm-up vs the sum of measured sizes. `before`: ONNX Runtime arena "
                  "and memory pattern on, no run at load, overlapping loads sized by their file bytes; `after`: the "
                  "defaults (overlapping loads sized by what trusted loads of the format cost per file byte, one RSS "
                  "meter per process, arena and memory pattern off, one run at load).\n")
        md.append(_fmt_rows(rows, header) + "\n")
    if cold:
        c = cold
        over = c["first_p50_ms"] - c["load_p50_ms"]
        rows = [["adapter.load (baseline, warm runtime)", f"{c['load_p50_ms']:.1f}", f"{c['load_max_ms']:.1f}"],
                ["first request through modelmux (miss, placement, stage, load, infer)", f"{c['first_p50_ms']:.1f}", f"{c['first_max_ms']:.1f}"]]
        _print_table("cold start", ["", "p50 ms", "max ms"], rows)
        print(f"overhead p50 {over:+.1f} ms (target <= +20 ms)")
        md.append("### Cold start\n")
        md.append(f"{int(c['models'])} fresh ONNX models (16x1024x4 MLP), artifacts on local disk, one instance, memory "
                  "store (bench/bench_coldstart.py).\n")
        md.append(_fmt_rows(rows, ["", "p50 ms", "max ms"]) + "\n")
        md.append(f"Overhead {over:+.1f} ms p50 (target <= +20 ms: {'met' if over <= 20 else 'missed'}).\n")
    if control:
        c = control
        rows = [[f"{int(c['models']):,}", f"{c['grpc_rate']:.0f}", f"{c['local_rate']:.0f}", f"{c['view_bytes_per_model']:.0f}",
                 "met" if c["view_bytes_per_model"] <= 2048 else "missed", f"{c['rss_bytes_per_model']:.0f}"]]
        header = ["registered models", "registrations/s (gRPC)", "registrations/s (in process)",
                  "routing view B / model", "target <= 2048 B", "process RSS B / model"]
        _print_table("control plane", header, rows)
        md.append("### Control plane\n")
        md.append("One instance over the memory store (bench/bench_control.py): 5,000 registerModel calls over gRPC "
                  "(32 in flight, client in the same process), the rest through the same management code in process. "
                  "Routing view: deep size of the instance's model / vModel / copy mirrors and indexes (what the router "
                  "resolves names with), after minus before. RSS growth also counts the memory store's copy of every "
                  "record and the placement leader's view.\n")
        md.append(_fmt_rows(rows, header) + "\n")
    if (routing or peer or density) and (not q or a.write):
        written = plot(routing, _peer_panel(peer), density)
        md.append("Plots: " + ", ".join(f"`{w}`" for w in written) + ".\n")
    print(f"\nload average at end: {load_end}; {elapsed / 60:.1f} min")
    if not q or a.write:
        write_results("\n".join(md))
        print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
