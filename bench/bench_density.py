"""Density: 10,000 registered models on 3 instances under skewed (Zipf) traffic.

Run: ``python -m bench.bench_density [--models 10000] [--duration 40]``. One process holds a local
mesh of 3 instances over the memory store (``bench._servers density``: the in-process embedded
mode, not a process mesh), each with ``--capacity-mib`` of model capacity; ``--models`` models
are registered over 200 distinct ONNX files (16 -> 3072 -> 4 MLP, ~200 KB of weights each;
model i uses file i mod 200, each model is its own copy when loaded). Three wrk processes,
one per instance, send V2 REST requests whose model is drawn per request from a Zipf(s)
distribution over all models (a Lua script), for ``--duration`` seconds.

Reported: requests, hit ratio (requests that needed no load: 1 - misses / requests), loads/s,
latency p50/p99 (wrk, all requests, misses included), and per loaded copy the RSS growth of
the mesh process (after registration -> end, divided by the copies loaded at the end) vs the
copy's measured size (the adapter's ``size_bytes``). Baseline for the latency: a hit-only run
(the 20 hottest models, loaded) in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def _counters(rest: list[str]) -> list[dict[str, Any]]:
    return [httpx.get(f"http://{r}/api/v1/cluster", timeout=30).json()["self"] for r in rest]


def run(models: int = 10_000, duration: float = 40.0, zipf_s: float = 1.0, capacity_mib: int = 24,
        connections: int = 4) -> dict[str, float]:
    from mesh._demo import make_onnx

    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    with tempfile.TemporaryDirectory() as tmp:
        arts = Path(tmp) / "arts"
        for i in range(200):
            make_onnx(arts / f"a{i}" / "model.onnx", 3072, seed=i)
        ready = Path(tmp) / "ready.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "bench._servers", "density", "--model", str(arts), "--ready", str(ready),
                                 "--instances", "3", "--models", str(models), "--capacity-bytes", str(capacity_mib << 20)],
                                env=env, cwd=ROOT)
        try:
            _tools.wait_file(ready, proc, 300, "density mesh")
            info = json.loads(ready.read_text())
            rest = info["rest"]
            server = psutil.Process(info["pid"])
            rss0 = server.memory_info().rss

            def lua(seed: int, n: int) -> str:
                return _ZIPF_LUA.format(n=n, s=zipf_s, seed=seed, body=json.dumps(body))

            def wrk_all(script: Any, secs: float) -> list[dict[str, float]]:
                with ThreadPoolExecutor(len(rest)) as pool:
                    futs = [pool.submit(_tools.wrk, f"http://{r}/v2/models/m0/infer", None, connections=connections,
                                        duration_s=secs, script=script(k), warmup_s=0) for k, r in enumerate(rest)]
                    return [f.result() for f in futs]

            # baseline: hits only (the 20 hottest models), after one warm-up pass loads them
            wrk_all(lambda k: lua(100 + k, 20), 3)
            hot = wrk_all(lambda k: lua(200 + k, 20), 5)
            before = _counters(rest)
            t0 = time.monotonic()
            runs = wrk_all(lambda k: lua(k + 1, models), duration)
            elapsed = time.monotonic() - t0
            after = _counters(rest)
            rss1 = server.memory_info().rss
        finally:
            stop_server(proc)
    requests = sum(r["n"] for r in runs)
    misses = sum(a["misses"] - b["misses"] for a, b in zip(after, before, strict=True))
    loads = sum(a["loads"] - b["loads"] for a, b in zip(after, before, strict=True))
    copies = sum(sum(1 for st in a["copies"].values() if st == "loaded") for a in after)
    used = sum(a["used_bytes"] for a in after)
    return {
        "models": float(models), "zipf_s": zipf_s, "capacity_mib": float(capacity_mib), "duration_s": elapsed,
        "requests": requests, "rps": requests / elapsed,
        "errors": sum(r["errors"] for r in runs),
        "hit_ratio": 1.0 - misses / requests if requests else 0.0,
        "loads_per_s": loads / elapsed,
        "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
        "hot_p50_ms": max(r["p50_ms"] for r in hot), "hot_p99_ms": max(r["p99_ms"] for r in hot),
        "hot_rps": sum(r["rps"] for r in hot),
        "copies": float(copies),
        "size_per_copy": used / copies if copies else 0.0,
        "rss_per_copy": (rss1 - rss0) / copies if copies else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--zipf", type=float, default=1.0)
    a = ap.parse_args()
    r = run(a.models, a.duration, a.zipf)
    for k, v in r.items():
        print(f"{k:<16}{v:,.3f}")


if __name__ == "__main__":
    main()
