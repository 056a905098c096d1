"""Peer: the same tiny model served by MLServer (in three settings) and by modelmux, same load, same run.

Run: ``python -m bench.bench_peer [--model xgboost|onnx] [--duration 5] [--rounds 3] [--concurrency 1 16]``.

Models: ``xgboost`` (default), a tiny XGBoost classifier (8 features), served by MLServer's XGBoost
runtime; ``onnx``, the tiny ONNX MLP of the routing bench (16 -> 64 -> 4). MLServer ships no ONNX
runtime: it serves ONNX through its MLflow runtime (``mlserver-mlflow``), as an MLflow model of the
ONNX flavour saved with a tensor signature (onnxruntime inside), from a second venv,
``var/mlserver-onnx-venv`` (made on first use; MLflow is a large install, so ``make test`` does not
build it). Every server's answer to the request is checked against the model run directly
(onnxruntime / xgboost in this process) before the load starts.

MLServer
(``mlserver`` + ``mlserver-xgboost`` from PyPI) lives in its own virtual environment,
``var/mlserver-venv`` (made on first use; never the project's), and serves the booster with its
own XGBoost runtime in each of these settings, all started side by side on free loopback ports
written to their ``settings.json`` and read back:

* ``MLServer default`` -- its defaults (``parallel_workers`` 1: inference in a worker process);
* ``MLServer parallel_workers 0`` -- inference in the server process (faster on a small box);
* ``MLServer batching`` -- adaptive batching on (``max_batch_size`` 16, ``max_batch_time``
  0.002 s) with ``parallel_workers`` 0.

modelmux serves the same file as a local hit; the bare servicer (bench._servers bare: the adapter
behind a bare grpc.aio handler / FastAPI route) serves it without and with modelmux's adaptive
batcher (``runtime_adapters.with_batching``, max 16 rows, no delay), which shows what batching
gives before the mesh wires it in. Every server gets the same request bytes (gRPC:
one FP32 [1, 8] row in raw contents; REST: the same as JSON) from h2load / wrk (the Python
gRPC load generator when they are missing), at each concurrency (requests in flight), measured
in turn over ``rounds`` rounds (median). Ratios are against the fastest MLServer setting at that
concurrency and protocol (a peer is measured in its best setting). Target: modelmux >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import _tools
from bench.bench_routing import drive, start_server, stop_server
from tests import peer_venv

ROOT = Path(__file__).resolve().parents[1]
VENV = peer_venv.VENV
NAME = "xgb"
# one XGBoost/OpenMP thread per predict in both servers (modelmux's default, xgboost_threads=1): with
# xgboost's default (all cores) 16 concurrent predicts on 2 cores spin against each other
ENV = {"OMP_NUM_THREADS": "1"}


def ensure_mlserver(model_type: str = "xgboost") -> Path:
    """The mlserver executable of the model type's separate venv (tests/peer_venv.py), installed there on first use."""
    python = peer_venv.ensure_onnx() if model_type == "onnx" else peer_venv.ensure()
    return python.parent / "mlserver"


def mlserver_version(model_type: str = "xgboost") -> str:
    venv = peer_venv.ONNX_VENV if model_type == "onnx" else VENV
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


# saves an ONNX file as an MLflow model (ONNX flavour) with a tensor signature: MLServer's MLflow
# runtime then decodes V2 inputs by name into numpy arrays for onnxruntime
_SAVE_MLFLOW_ONNX = """
import sys
import numpy as np, onnx, onnxruntime as ort, mlflow.onnx
from mlflow.models import infer_signature
src, dst = sys.argv[1], sys.argv[2]
sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in sess.get_inputs()}
outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
mlflow.onnx.save_model(onnx.load(src), dst, signature=infer_signature(feeds, outs))
"""


def _mlserver_model(model_type: str, model: Path, mdir: Path) -> dict[str, Any]:
    """Put the model where MLServer reads it; its model-settings.json fields."""
    if model_type == "onnx":
        python = peer_venv.ONNX_VENV / "bin" / "python"
        subprocess.run([str(python), "-c", _SAVE_MLFLOW_ONNX, str(model), str(mdir / "model")], check=True,
                       capture_output=True, timeout=300)
        return {"implementation": "mlserver_mlflow.MLflowRuntime", "parameters": {"uri": "./model"}}
    (mdir / "model.json").write_bytes(model.read_bytes())
    return {"implementation": "mlserver_xgboost.XGBoostModel", "parameters": {"uri": "./model.json"}}


MLSERVER_SETUPS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (extra server settings.json fields, extra model-settings.json fields)
    "MLServer default": ({}, {}),
    "MLServer parallel_workers 0": ({"parallel_workers": 0}, {}),
    "MLServer batching": ({"parallel_workers": 0}, {"max_batch_size": 16, "max_batch_time": 0.002}),
}


def start_mlserver(model: Path, workdir: Path, server: dict[str, Any] | None = None,
                   model_settings: dict[str, Any] | None = None, model_type: str = "xgboost",
                   name: str = NAME) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    exe = ensure_mlserver(model_type)
    mdir = workdir / "models" / name
    mdir.mkdir(parents=True)
    (mdir / "model-settings.json").write_text(json.dumps({
        "name": name, **_mlserver_model(model_type, model, mdir), **(model_settings or {}),
    }))
    (workdir / "models" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": _tools.free_port(), "grpc_port": _tools.free_port(),
        "metrics_port": _tools.free_port(), "debug": False, **(server or {}),
    }))
    settings = json.loads((workdir / "models" / "settings.json").read_text())  # the ports it will use
    log = open(workdir / "mlserver.log", "wb")
    proc = subprocess.Popen([str(exe), "start", str(workdir / "models")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir, env=ENV | {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    deadline = time.monotonic() + 180
    url = f"http://127.0.0.1:{settings['http_port']}/v2/models/{name}/ready"
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
                  "settings": settings, "model_settings": model_settings or {}}


FEATURES = {"xgboost": 8, "onnx": 16}


def request_array(model_type: str = "xgboost") -> np.ndarray:
    n = FEATURES[model_type]
    return np.linspace(0.05, 0.95, n, dtype=np.float32).reshape(1, n)


def requests(model_type: str = "xgboost", name: str = NAME) -> tuple[bytes, bytes]:
    from protos import grpc_predict_v2_pb2 as pb

    x = request_array(model_type)
    msg = pb.ModelInferRequest(model_name=name)
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return msg.SerializeToString(), json.dumps(body).encode()


def reference(model_type: str, model: Path) -> np.ndarray:
    """The model's answer to the request, run directly (the first output)."""
    from tests.model_factory import onnx_reference, xgboost_reference

    x = request_array(model_type)
    if model_type == "onnx":
        return np.asarray(next(iter(onnx_reference(model, {"input": x}).values())), dtype=np.float32)
    return xgboost_reference(model, x)


def check_answer(address: str, message: bytes, expected: np.ndarray, setup: str) -> None:
    """One gRPC call; its first output must equal ``expected`` (float32 tolerance)."""
    import grpc

    from protos import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(address) as ch:
        raw = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=30)
    resp = pb.ModelInferResponse.FromString(raw)
    out = resp.outputs[0]
    if resp.raw_output_contents:
        got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
    else:
        got = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    got = got.reshape(tuple(out.shape))
    if got.shape != expected.reshape(got.shape).shape or not np.allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-5):
        raise RuntimeError(f"{setup}: wrong answer {got.tolist()} (expected {expected.tolist()})")


def shape(concurrency: int) -> tuple[int, int]:
    """(connections, streams per connection) for a number of requests in flight."""
    connections = min(4, concurrency)
    return connections, max(1, concurrency // connections)


def fastest_mlserver(by_setup: dict[str, dict[str, dict[str, float]]], proto: str) -> tuple[str, dict[str, float]] | None:
    best = [(s, r[proto]) for s, r in by_setup.items() if s.startswith("MLServer") and proto in r]
    return max(best, key=lambda t: t[1]["rps"]) if best else None


def _model(model_type: str, tmp: Path) -> Path:
    if model_type == "onnx":
        from mesh._demo import make_onnx

        return make_onnx(tmp / "onnx" / "model.onnx", 64, seed=1)  # the routing bench's MLP
    from tests.model_factory import make_xgboost_model

    return make_xgboost_model(tmp / "xgb", kind="classifier")


def run(duration: float = 5.0, rounds: int = 3, concurrency: tuple[int, ...] = (1, 16), model_type: str = "xgboost") -> dict[str, Any]:
    """{"results": {concurrency: {setup: {proto: {rps, p50_ms, p99_ms, errors, n}}}}, "mlserver", "settings"}."""
    name = NAME if model_type == "xgboost" else model_type
    message, body = requests(model_type, name)
    runs: dict[int, dict[str, dict[str, list[dict[str, float]]]]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(model_type, Path(tmp))
        expected = reference(model_type, model)
        try:
            targets: dict[str, dict[str, Any]] = {}
            for i, (setup, (server, model_settings)) in enumerate(MLSERVER_SETUPS.items()):
                proc, eps = start_mlserver(model, Path(tmp) / f"mlserver{i}", server, model_settings, model_type, name)
                procs.append(proc)
                targets[setup] = eps
                settings[setup] = {"server": server, "model": model_settings}
            for setup, extra in (("bare servicer", []), ("bare servicer + batching", ["--batching"])):
                proc, eps = start_server(["bare", "--type", model_type, "--model", str(model), "--name", name, *extra],
                                         Path(tmp) / f"{setup}.json")
                procs.append(proc)
                targets[setup] = eps
            mm, mm_eps = start_server(["mesh", "--type", model_type, "--model", str(model), "--instances", "1", "--name", name],
                                      Path(tmp) / "mesh.json")
            procs.append(mm)
            targets["modelmux (local hit)"] = mm_eps
            for setup, eps in targets.items():
                check_answer(eps["grpc"][0], message, expected, setup)
            for _ in range(rounds):
                for conc in concurrency:
                    connections, streams = shape(conc)
                    for setup, eps in targets.items():
                        got = drive(eps["grpc"][0], eps["rest"][0], name, message, body, duration=duration,
                                    streams=streams, connections=connections)
                        for proto, res in got.items():
                            runs.setdefault(conc, {}).setdefault(setup, {}).setdefault(proto, []).append(res)
        finally:
            for proc in reversed(procs):
                stop_server(proc)
    results = {conc: {setup: {proto: _tools.median_of(rs) for proto, rs in by.items()} for setup, by in per.items()}
               for conc, per in runs.items()}
    return {"results": results, "mlserver": mlserver_version(model_type), "settings": settings, "model": model_type,
            "load": "h2load/wrk" if _tools.have("h2load") else "python gRPC load generator (bench/_load.py)"}


def rows(results: dict[int, dict[str, dict[str, dict[str, float]]]]) -> list[list[str]]:
    """Table rows: concurrency, protocol, setup, req/s, p50, p99, ratio vs the fastest MLServer there, errors."""
    out = []
    for conc, by_setup in results.items():
        for proto in ("grpc", "rest"):
            best = fastest_mlserver(by_setup, proto)
            if best is None:
                continue
            for setup, by in by_setup.items():
                r = by[proto]
                ratio = r["rps"] / best[1]["rps"] if best[1]["rps"] else 0.0
                out.append([str(conc), proto, setup + (" (fastest)" if setup == best[0] else ""), f"{r['rps']:.0f}",
                            f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{ratio:.2f}", str(int(r["errors"]))])
    return out


HEADER = ["in flight", "protocol", "server", "req/s", "p50 ms", "p99 ms", "x fastest MLServer", "errors"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--model", choices=sorted(FEATURES), default="xgboost")
    a = ap.parse_args()
    out = run(a.duration, a.rounds, tuple(a.concurrency), a.model)
    print(f"model: {out['model']}; MLServer {out['mlserver']}; load: {out['load']}")
    print("  ".join(HEADER))
    for row in rows(out["results"]):
        print("  ".join(row))


if __name__ == "__main__":
    main()
