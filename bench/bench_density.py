"""Density: 10,000 registered models on 3 instances under skewed (Zipf) traffic.

Run: ``python -m bench.bench_density [--models 10000] [--duration 40] [--capacity-mib 80] [--processes]``.
``--processes``: each instance is its own process (``bench._servers density --instances 1``)
over a local etcd, as pods are; the first registers the models. Without it one process holds a
local mesh of 3 instances over the memory store (the in-process embedded mode): their three
control planes share one event loop and one GIL. Each instance has ``--capacity-mib`` of model
capacity; ``--models`` models are registered over 200 distinct ONNX files (16 -> 3072 -> 4 MLP,
~200 KB of weights each; model i uses file i mod 200, each model is its own copy when loaded).
Three wrk processes, one per instance, send V2 REST requests whose model is drawn per request from
a Zipf(s) distribution over all models (a Lua script), for ``--duration`` seconds.

Reported: requests, hit ratio (requests that needed no load: 1 - misses / requests), loads/s,
latency p50/p99 (wrk, all requests, misses included), and per loaded copy the RSS growth of
the mesh process (after registration -> end, divided by the copies loaded at the end) vs the
copy's measured size (the adapter's ``size_bytes``). Baseline for the latency: a hit-only run
(the 20 hottest models, loaded) in the same process.

Memory: each server process settles (gc, malloc_trim) and reads its RSS and C heap (bytes in use, free
bytes kept) after registration, after the hits-only phase and at the end. The target (RSS <=
1.3x used capacity + a fixed base) is read from the hits-only phase on: (RSS end - RSS then) /
(used end - used then), so the base holds the frameworks' one-time start-up and the serving
state; the whole-run ratio (base: after registration, before any framework ran) is reported too.
The C heap's in-use growth against the used growth says how far the measured sizes are from what
the copies really hold; the rest of the RSS growth is outside the heap or free heap kept resident.

Hits under misses: a fourth wrk (the probe, 2 connections) asks only for the 5 hottest models
(loaded before it starts and requested often enough to stay) during both phases, on the placement
leader's instance (it makes every placement decision besides serving its share); its p99
while the Zipf traffic loads and evicts all the time vs its p99 in the hits-only phase
(``--hot-duration`` seconds, 15 by default, after a warm-up pass) is the "hits unharmed by misses"
ratio (target <= 2). Requested bytes: the expected number of distinct
models the Zipf traffic asked for (from the distribution and the request count) times the mean
measured size; capacity / requested bytes is reported. Ping-pong: the leader's decision log
(``/api/v1/decisions``, polled during the run) is searched for a model evicted to make room for
another and that other evicted for it within 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import _tools
from bench.bench_routing import stop_server

ROOT = Path(__file__).resolve().parents[1]

_ZIPF_LUA = """
local n, s = {n}, {s}
local cdf = {{}}
local total = 0
for k = 1, n do total = total + 1 / (k ^ s); cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
math.randomseed({seed})
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
request = function()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format(nil, "/v2/models/m" .. (lo - 1) .. "/infer")
end
done = function(summary, latency, requests)
  io.write(string.format("JSON{{\\"p50\\": %d, \\"p99\\": %d, \\"requests\\": %d, \\"non2xx\\": %d, \\"errors\\": %d}}\\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def expected_distinct(n: int, s: float, draws: int) -> float:
    """Expected number of distinct models among ``draws`` Zipf(s) draws over ``n`` models."""
    weights = [1 / (k**s) for k in range(1, n + 1)]
    total = sum(weights)
    return sum(1 - (1 - w / total) ** draws for w in weights)


def ping_pongs(decisions: list[dict[str, Any]], window_s: float = 60.0) -> list[tuple[str, str]]:
    """Pairs (a, b): a evicted for b and b evicted for a within ``window_s``."""
    evicted_for: dict[tuple[str, str], list[float]] = {}
    for d in decisions:
        m = re.match(r"evict: room for (\S+) on ", d.get("reason", ""))
        if d.get("kind") == "unload" and m:
            evicted_for.setdefault((d["model_id"], m.group(1)), []).append(float(d["at"]))
    out = []
    for (a, b), times in evicted_for.items():
        if a < b and any(abs(t - u) <= window_s for t in times for u in evicted_for.get((b, a), ())):
            out.append((a, b))
    return out


def memory_reading(server: psutil.Process, path: Path, timeout_s: float = 60.0) -> dict[str, int]:
    """Ask the density server where its memory is (SIGUSR1: it settles, then appends a JSON line to
    ``path``: rss, heap_in_use, heap_free; see bench._servers) and wait for the answer."""
    seen = len(path.read_text().splitlines()) if path.exists() else 0
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > seen:
            return {k: int(v) for k, v in json.loads(lines[seen]).items()}
        if time.monotonic() > deadline or not server.is_running():
            raise RuntimeError("the density server did not answer a memory reading")
        time.sleep(0.05)


def leader_index(rest: list[str], timeout_s: float = 60.0) -> int:
    """Which of the instances at ``rest`` is the placement leader (the probe's instance: it carries
    every placement decision besides its share of the traffic, the worst place for a hit)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for k, r in enumerate(rest):
            if httpx.get(f"http://{r}/api/v1/cluster", timeout=30).json().get("leader", {}).get("leader"):
                return k
        if time.monotonic() > deadline:
            raise RuntimeError("no instance became the placement leader")
        time.sleep(0.1)


def store_writes(etcd: Any) -> float:
    """Keys etcd has written and deleted so far (its own counters; 0 without an etcd)."""
    if etcd is None:
        return 0.0
    text = httpx.get(f"http://{etcd.endpoint}/metrics", timeout=30).text
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(("etcd_mvcc_put_total ", "etcd_mvcc_delete_total ")))


def _counters(rest: list[str]) -> list[dict[str, Any]]:
    return [httpx.get(f"http://{r}/api/v1/cluster", timeout=30).json()["self"] for r in rest]


def pair_detail(decisions: list[dict[str, Any]], a: str, b: str) -> str:
    """The decisions that evicted ``a`` for ``b`` and ``b`` for ``a``, with their reasons, in time order."""
    rows = [d for d in decisions if d.get("kind") == "unload" and (
        (d["model_id"] == a and f"room for {b} " in d.get("reason", "")) or (d["model_id"] == b and f"room for {a} " in d.get("reason", "")))]
    rows.sort(key=lambda d: float(d["at"]))
    t0 = float(rows[0]["at"]) if rows else 0.0
    return "; ".join(f"+{float(d['at']) - t0:.1f}s {d['model_id']}: {d.get('reason', '')}" for d in rows)


def run(models: int = 10_000, duration: float = 40.0, zipf_s: float = 1.0, capacity_mib: int = 80,
        connections: int = 4, dump: Path | None = None, processes: bool = False, hot_duration: float = 15.0) -> dict[str, Any]:
    from mesh._demo import make_onnx

    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    with tempfile.TemporaryDirectory() as tmp:
        arts = Path(tmp) / "arts"
        for i in range(200):
            make_onnx(arts / f"a{i}" / "model.onnx", 3072, seed=i)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        base = [sys.executable, "-m", "bench._servers", "density", "--model", str(arts), "--models", str(models),
                "--capacity-bytes", str(capacity_mib << 20)]
        procs: list[subprocess.Popen[bytes]] = []
        etcd = None
        try:
            if processes:  # one process an instance over a real etcd, as pods are
                from mesh._launcher import LocalEtcd

                etcd = LocalEtcd(Path(tmp) / "etcd").start()
                cmds = [[*base, "--ready", str(Path(tmp) / f"ready-{k}.json"), "--instances", "1", "--etcd", etcd.endpoint,
                         "--id-prefix", f"density{k}", *([] if k == 0 else ["--no-register"])] for k in range(3)]
            else:
                cmds = [[*base, "--ready", str(Path(tmp) / "ready-0.json"), "--instances", "3"]]
            procs = [subprocess.Popen(cmd, env=env, cwd=ROOT) for cmd in cmds]
            infos = []
            for k, p in enumerate(procs):
                ready = Path(tmp) / f"ready-{k}.json"
                _tools.wait_file(ready, p, 600, "density mesh")
                infos.append(json.loads(ready.read_text()))
            rest = [r for info in infos for r in info["rest"]]
            servers = [(psutil.Process(info["pid"]), Path(info["memory"])) for info in infos]

            def memory() -> dict[str, int]:  # summed over the processes
                readings = [memory_reading(srv, f) for srv, f in servers]
                return {k: sum(r[k] for r in readings) for k in readings[0]}

            mem0 = memory()
            rss0 = mem0["rss"]
            lead = leader_index(rest)

            def lua(seed: int, n: int) -> str:
                return _ZIPF_LUA.format(n=n, s=zipf_s, seed=seed, body=json.dumps(body))

            def wrk_all(script: Any, secs: float, probe: bool = False) -> list[dict[str, float]]:
                """One wrk per instance (and the probe on the leader's instance, last in the list)."""
                with ThreadPoolExecutor(len(rest) + 1) as pool:
                    futs = [pool.submit(_tools.wrk, f"http://{r}/v2/models/m0/infer", None, connections=connections,
                                        duration_s=secs, script=script(k), warmup_s=0) for k, r in enumerate(rest)]
                    if probe:
                        futs.append(pool.submit(_tools.wrk, f"http://{rest[lead]}/v2/models/m0/infer", None, connections=2,
                                                duration_s=secs, script=lua(999, 5), warmup_s=0))
                    return [f.result() for f in futs]

            decisions: dict[int, dict[str, Any]] = {}
            polling = threading.Event()

            def poll_decisions() -> None:  # the leader's log keeps the newest 2,000 records: read it as it grows
                after = 0
                while True:
                    for r in rest:
                        try:
                            got = httpx.get(f"http://{r}/api/v1/decisions", params={"after": after, "limit": 5000}, timeout=10).json()
                        except httpx.HTTPError:
                            continue
                        for d in got["decisions"]:
                            decisions[hash((d["seq"], d["kind"], d["model_id"], d["instance_id"]))] = d
                        after = max(after, got.get("last_seq", 0) - 1)
                        break
                    if polling.wait(1.0):
                        return

            # baseline: hits only (the 20 hottest models), after one warm-up pass (the probe's too)
            # loads them. 15 s, so that its p99 rests on thousands of probe requests: 5 s, with the
            # probe's first requests in it, gave 8.9-12.4 ms over session 18's runs, 15 s 7.1-8.7 ms over 19's
            wrk_all(lambda k: lua(100 + k, 20), 3, probe=True)
            *hot, hot_probe = wrk_all(lambda k: lua(200 + k, 20), hot_duration, probe=True)
            before = _counters(rest)
            mem_hot = memory()  # frameworks warmed, the 20 hottest copies loaded
            rss_hot = mem_hot["rss"]
            poller = threading.Thread(target=poll_decisions, daemon=True)
            poller.start()
            writes0 = store_writes(etcd)
            t0 = time.monotonic()
            *runs, probe = wrk_all(lambda k: lua(k + 1, models), duration, probe=True)
            elapsed = time.monotonic() - t0
            writes = store_writes(etcd) - writes0
            polling.set()
            poller.join(15)
            after = _counters(rest)
            mem1 = memory()
            rss1 = mem1["rss"]
        finally:
            for p in procs:
                stop_server(p)
            if etcd is not None:
                etcd.stop()
    requests = sum(r["n"] for r in runs)
    misses = sum(a["misses"] - b["misses"] for a, b in zip(after, before, strict=True))
    loads = sum(a["loads"] - b["loads"] for a, b in zip(after, before, strict=True))
    copies = sum(sum(1 for st in a["copies"].values() if st == "loaded") for a in after)
    used = sum(a["used_bytes"] for a in after)
    used_hot = sum(b["used_bytes"] for b in before)
    size = used / copies if copies else 0.0
    requested = expected_distinct(models, zipf_s, int(requests)) * size
    pairs = ping_pongs(list(decisions.values()))
    if dump is not None:
        dump.write_text(json.dumps(sorted(decisions.values(), key=lambda d: float(d.get("at", 0))), indent=1))
    return {
        "processes": float(len(servers)), "probe_instance": float(lead), "models": float(models), "zipf_s": zipf_s, "capacity_mib": float(capacity_mib), "duration_s": elapsed,
        "requests": requests, "rps": requests / elapsed,
        "errors": sum(r["errors"] for r in runs),
        "hit_ratio": 1.0 - misses / requests if requests else 0.0,
        "loads_per_s": loads / elapsed,
        "store_writes_per_s": writes / elapsed,  # etcd keys put and deleted (process mesh only)
        "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
        "hot_p50_ms": max(r["p50_ms"] for r in hot), "hot_p99_ms": max(r["p99_ms"] for r in hot),
        "hot_rps": sum(r["rps"] for r in hot),
        "copies": float(copies),
        "size_per_copy": used / copies if copies else 0.0,
        "rss_per_copy": (rss1 - rss0) / copies if copies else 0.0,
        "rss_base": float(rss0), "rss_end": float(rss1), "used_bytes": float(used),
        # the growth during the Zipf run against the growth of what the instances account for: the
        # fixed base then includes the frameworks' one-time start-up and the serving state
        "rss_hot": float(rss_hot), "used_hot": float(used_hot),
        "rss_marginal_ratio": (rss1 - rss_hot) / (used - used_hot) if used > used_hot else 0.0,
        # where it goes: the C heap's bytes in use (models' framework memory, large Python objects)
        # and its free bytes kept in arenas; the rest of RSS is outside the C heap
        "heap_in_use_base": float(mem0["heap_in_use"]), "heap_in_use_hot": float(mem_hot["heap_in_use"]),
        "heap_in_use_end": float(mem1["heap_in_use"]), "heap_free_hot": float(mem_hot["heap_free"]),
        "heap_free_end": float(mem1["heap_free"]),
        "probe_p99_ms": probe["p99_ms"], "probe_hot_p99_ms": hot_probe["p99_ms"],
        "probe_p50_ms": probe["p50_ms"], "probe_hot_p50_ms": hot_probe["p50_ms"], "probe_errors": probe["errors"],
        "requested_bytes": requested, "capacity_share": (3 * (capacity_mib << 20)) / requested if requested else 0.0,
        "decisions_seen": float(len(decisions)), "ping_pongs": float(len(pairs)),
        "ping_pong_examples": ", ".join(f"{a}<->{b}" for a, b in pairs[:5]),
        "ping_pong_detail": " | ".join(pair_detail(list(decisions.values()), a, b) for a, b in pairs[:3]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--capacity-mib", type=int, default=80, help="model capacity of each instance")
    ap.add_argument("--processes", action="store_true", help="each instance in its own process over a local etcd")
    ap.add_argument("--hot-duration", type=float, default=15.0, help="seconds of the hits-only phase (the probe's baseline)")
    ap.add_argument("--decisions", type=Path, default=None, help="write every decision the leader logged (JSON) here")
    a = ap.parse_args()
    r = run(a.models, a.duration, a.zipf, a.capacity_mib, dump=a.decisions, processes=a.processes, hot_duration=a.hot_duration)
    for k, v in r.items():
        print(f"{k:<20}{v:,.3f}" if isinstance(v, float) else f"{k:<20}{v}")


if __name__ == "__main__":
    main()
