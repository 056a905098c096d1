"""Routing overhead: ModelInfer on a tiny ONNX model through modelmux vs the same adapter behind a bare server.

Run: ``python -m bench.bench_routing [--duration 8]``. Each server runs in its own process,
started and measured in this same run, one after another, driven by the same external load
generator: h2load (gRPC, a prebuilt frame POSTed on HTTP/2) and wrk (REST JSON). Setups: the
bare adapter (grpc.aio handler / FastAPI route, same codec), a local hit through modelmux, a
remote hit (the request enters an instance without the copy and is forwarded as bytes).
Targets (shared/DESIGN.md): local hit >= 0.9x bare, remote hit >= 0.6x bare (throughput).
Without h2load / wrk the Python gRPC load generator (bench/_load.py) stands in (gRPC only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import _tools

ROOT = Path(__file__).resolve().parents[1]
INFER = "/inference.GRPCInferenceService/ModelInfer"


def start_server(args: list[str], ready: Path) -> tuple[subprocess.Popen[bytes], dict[str, list[str]]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "bench._servers", *args, "--ready", str(ready)], env=env, cwd=ROOT)
    _tools.wait_file(ready, proc, 120, f"server {args[0]}")
    return proc, json.loads(ready.read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def grpc_check(address: str, message: bytes) -> int:
    """One real gRPC call (h2load does not read grpc-status): the size of a good answer."""
    with grpc.insecure_channel(address) as ch:
        return len(ch.unary_unary(INFER)(message, timeout=30))


def rest_check(address: str, name: str, body: bytes) -> None:
    import httpx

    r = httpx.post(f"http://{address}/v2/models/{name}/infer", content=body, headers={"content-type": "application/json"}, timeout=30)
    r.raise_for_status()


def onnx_request(name: str = "bench") -> tuple[bytes, bytes]:
    from protos import grpc_predict_v2_pb2 as pb

    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    msg = pb.ModelInferRequest(model_name=name)
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    msg.raw_input_contents.append(x.tobytes())
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return msg.SerializeToString(), json.dumps(body).encode()


def drive(address_grpc: str, address_rest: str, name: str, message: bytes, body: bytes, *, duration: float,
          streams: int, connections: int) -> dict[str, dict[str, float]]:
    """gRPC and REST load against one entry point; external tools when present."""
    out: dict[str, dict[str, float]] = {}
    reply = grpc_check(address_grpc, message)
    if _tools.have("h2load"):
        out["grpc"] = _tools.h2load(address_grpc, INFER, message, connections=connections, streams=streams,
                                    duration_s=duration, reply_bytes=reply)
    else:
        from bench._load import run_load

        out["grpc"] = asyncio.run(run_load(address_grpc, message, concurrency=connections * streams, duration_s=duration))
    if _tools.have("wrk"):
        rest_check(address_rest, name, body)
        out["rest"] = _tools.wrk(f"http://{address_rest}/v2/models/{name}/infer", body,
                                 connections=connections * streams, duration_s=duration)
    return out


def run(duration: float = 5.0, rounds: int = 3, streams: int = 4, connections: int = 4) -> dict[str, dict[str, dict[str, float]]]:
    """{setup: {"grpc"|"rest": {rps, p50_ms, p99_ms, errors, n}}} for bare, local hit, remote hit.

    Both servers run side by side (idle when not measured); the setups are measured in turn,
    ``rounds`` times, and each figure is the median over the rounds, so that a slow patch of a
    shared machine does not land on one setup only.
    """
    from mesh._demo import make_onnx

    message, body = onnx_request()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_onnx(Path(tmp) / "m" / "model.onnx", 64, seed=1)
        bare, bare_eps = start_server(["bare", "--type", "onnx", "--model", str(model)], Path(tmp) / "bare.json")
        try:
            mesh, mesh_eps = start_server(["mesh", "--type", "onnx", "--model", str(model), "--instances", "2"], Path(tmp) / "mesh.json")
            try:
                targets = {
                    "bare adapter": (bare_eps["grpc"][0], bare_eps["rest"][0]),
                    "modelmux local hit": (mesh_eps["grpc"][0], mesh_eps["rest"][0]),
                    "modelmux remote hit": (mesh_eps["grpc"][1], mesh_eps["rest"][1]),
                }
                for _ in range(rounds):
                    for setup, (g, r) in targets.items():
                        got = drive(g, r, "bench", message, body, duration=duration, streams=streams, connections=connections)
                        for proto, res in got.items():
                            runs.setdefault(setup, {}).setdefault(proto, []).append(res)
            finally:
                stop_server(mesh)
        finally:
            stop_server(bare)
    return {setup: {proto: _tools.median_of(rs) for proto, rs in by.items()} for setup, by in runs.items()}


def table(results: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for proto in ("grpc", "rest"):
        base = results.get("bare adapter", {}).get(proto)
        if base is None:
            continue
        for setup, by in results.items():
            r = by[proto]
            rows.append({"protocol": proto, "setup": setup, **r, "ratio": r["rps"] / base["rps"] if base["rps"] else 0.0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for row in table(run(a.duration, a.rounds)):
        print(f"{row['protocol']:<5}{row['setup']:<22}{row['rps']:>9.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
              f"p99 {row['p99_ms']:.2f} ms  x{row['ratio']:.2f}  errors {int(row['errors'])}")


if __name__ == "__main__":
    main()
