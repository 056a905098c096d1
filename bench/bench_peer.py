"""Peer: the same tiny XGBoost model served by MLServer and by modelmux, same load generator, same run.

Run: ``python -m bench.bench_peer [--duration 5]``. MLServer (``mlserver`` + ``mlserver-xgboost``
from PyPI) lives in its own virtual environment, ``var/mlserver-venv`` (made on first use; never
the project's), and serves the booster with its own XGBoost runtime and default settings
(``parallel_workers`` 1: inference in a worker process) on free loopback ports written to its
``settings.json`` and read back from it. modelmux serves the same file as a local hit. Both get
the same request bytes (gRPC: one FP32 [1, 8] row in raw contents; REST: the same as JSON) from
h2load / wrk, measured in turn over ``rounds`` rounds (median). Target: modelmux >= 1.5x MLServer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import _tools
from bench.bench_routing import drive, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "var" / "mlserver-venv"
NAME = "xgb"
# one XGBoost/OpenMP thread per predict in both servers (modelmux's default, xgboost_threads=1): with
# xgboost's default (all cores) 16 concurrent predicts on 2 cores spin against each other
ENV = {"OMP_NUM_THREADS": "1"}


def ensure_mlserver() -> Path:
    """The mlserver executable of the separate venv, installed there on first use."""
    exe = VENV / "bin" / "mlserver"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        # uvloop 0.22 made MLServer 1.7.1's inference workers die at start (asyncio.get_event_loop() in a
        # process with no loop raises): its default parallel_workers=1 then serves nothing
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "mlserver", "mlserver-xgboost", "uvloop<0.22"], check=True)
    return exe


def mlserver_version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", "import mlserver, mlserver_xgboost; print(mlserver.__version__)"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def start_mlserver(model: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    exe = ensure_mlserver()
    mdir = workdir / "models" / NAME
    mdir.mkdir(parents=True)
    (mdir / "model.json").write_bytes(model.read_bytes())
    (mdir / "model-settings.json").write_text(json.dumps({
        "name": NAME, "implementation": "mlserver_xgboost.XGBoostModel", "parameters": {"uri": "./model.json"},
    }))
    (workdir / "models" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": _tools.free_port(), "grpc_port": _tools.free_port(),
        "metrics_port": _tools.free_port(), "debug": False,
    }))
    settings = json.loads((workdir / "models" / "settings.json").read_text())  # the ports it will use
    log = open(workdir / "mlserver.log", "wb")
    proc = subprocess.Popen([str(exe), "start", str(workdir / "models")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir, env=ENV | {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    deadline = time.monotonic() + 180
    url = f"http://127.0.0.1:{settings['http_port']}/v2/models/{NAME}/ready"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlserver exited: {(workdir / 'mlserver.log').read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("mlserver did not become ready in 180 s")
        time.sleep(0.2)
    return proc, {"grpc": [f"127.0.0.1:{settings['grpc_port']}"], "rest": [f"127.0.0.1:{settings['http_port']}"],
                  "settings": settings}


def requests() -> tuple[bytes, bytes]:
    from protos import grpc_predict_v2_pb2 as pb

    x = np.linspace(0.05, 0.95, 8, dtype=np.float32).reshape(1, 8)
    msg = pb.ModelInferRequest(model_name=NAME)
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 8])
    msg.raw_input_contents.append(x.tobytes())
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return msg.SerializeToString(), json.dumps(body).encode()


def run(duration: float = 5.0, rounds: int = 3, streams: int = 4, connections: int = 4) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from model_factory import make_xgboost_model

    message, body = requests()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_xgboost_model(Path(tmp) / "xgb", kind="classifier")
        ml, ml_eps = start_mlserver(model, Path(tmp) / "mlserver")
        try:
            mm, mm_eps = start_server(["mesh", "--type", "xgboost", "--model", str(model), "--instances", "1", "--name", NAME],
                                      Path(tmp) / "mesh.json")
            try:
                targets = {"MLServer": ml_eps, "modelmux (local hit)": mm_eps}
                for _ in range(rounds):
                    for setup, eps in targets.items():
                        got = drive(eps["grpc"][0], eps["rest"][0], NAME, message, body, duration=duration,
                                    streams=streams, connections=connections)
                        for proto, res in got.items():
                            runs.setdefault(setup, {}).setdefault(proto, []).append(res)
            finally:
                stop_server(mm)
        finally:
            stop_server(ml)
    results = {setup: {proto: _tools.median_of(rs) for proto, rs in by.items()} for setup, by in runs.items()}
    return {"results": results, "mlserver": mlserver_version(), "settings": ml_eps["settings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    out = run(a.duration, a.rounds)
    res = out["results"]
    print(f"MLServer {out['mlserver']}")
    for proto in ("grpc", "rest"):
        base = res["MLServer"][proto]["rps"]
        for setup, by in res.items():
            r = by[proto]
            print(f"{proto:<5}{setup:<22}{r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                  f"x{r['rps'] / base:.2f} vs MLServer")


if __name__ == "__main__":
    main()
