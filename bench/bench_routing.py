"""Routing overhead: ModelInfer on a tiny ONNX model through modelmux vs the same adapter behind a bare server.

Run: ``python -m bench.bench_routing [--duration 10] [--concurrency 16]``. Every server runs
in its own process, started and measured in this same run, one after another, with the same
load generator (closed loop, C concurrent callers): the ratios compare like with like.
Targets (shared/DESIGN.md): local hit >= 0.9x bare, remote hit >= 0.6x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _model(path: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from mesh._demo import make_onnx

    return make_onnx(path, hidden=64, seed=1)


def _payload() -> bytes:
    from protos import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferRequest(model_name="bench")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    msg.raw_input_contents.append(np.ones((1, 16), dtype=np.float32).tobytes())
    return msg.SerializeToString()


async def _with_server(args: list[str], ready: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "bench._servers", *args, "--ready", str(ready)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server {args[0]} failed to start")
        await asyncio.sleep(0.05)
    return proc, json.loads(ready.read_text())["endpoints"]


async def main_async(duration: float, concurrency: int) -> dict[str, dict[str, float]]:
    from bench._load import run_load

    payload = _payload()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp) / "m" / "model.onnx")
        proc, eps = await _with_server(["bare", "--model", str(model)], Path(tmp) / "bare.json")
        try:
            results["bare adapter"] = await run_load(eps[0], payload, concurrency=concurrency, duration_s=duration)
        finally:
            proc.terminate()
            proc.wait(30)
        proc, eps = await _with_server(["mesh", "--model", str(model), "--instances", "2"], Path(tmp) / "mesh.json")
        try:
            results["modelmux local hit"] = await run_load(eps[0], payload, concurrency=concurrency, duration_s=duration)
            results["modelmux remote hit"] = await run_load(eps[1], payload, concurrency=concurrency, duration_s=duration)
        finally:
            proc.terminate()
            proc.wait(30)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    results = asyncio.run(main_async(a.duration, a.concurrency))
    base = results["bare adapter"]["rps"]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"{'setup':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}{'errors':>8}")
    for name, r in results.items():
        print(f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['rps'] / base:>8.2f}{int(r['errors']):>8}")


if __name__ == "__main__":
    main()
