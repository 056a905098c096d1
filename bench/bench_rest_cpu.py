"""CPU per V2 REST inference in the serving process, without sockets: modelmux's REST app vs the
bare FastAPI route of the routing bench, same model, same body, same process.

Run: ``python -m bench.bench_rest_cpu [--requests 1500] [--rounds 7]``. Each request is one ASGI
call (``app(scope, receive, send)``) on this event loop; the figure is the loop thread's CPU time
per request (``time.thread_time``), which other processes on a shared machine do not change much.
It leaves out what both servers share (uvicorn's HTTP parsing, the socket) and the model's own
work in the inference threads. Rounds alternate between the two apps; min and median per app.

Setups: ``bare`` is a one-route FastAPI app around the same adapter and codec
(``bench._servers.bare``'s REST route); ``modelmux`` is the REST app of a one-instance local mesh
with the model loaded (a local hit). Models: the tiny XGBoost classifier of the peer bench and the
tiny ONNX MLP of the routing bench, one FP32 row in JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

# at module level: FastAPI reads the bare route's annotations from this module's names
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }


async def cpu_per_request(app: App, path: str, body: bytes, n: int) -> float:
    """Microseconds of this thread's CPU per request; every answer must be a 200."""
    scope = _scope(path, body)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    t0 = time.thread_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
    spent = time.thread_time() - t0
    if set(statuses) != {200}:
        raise RuntimeError(f"{path}: answers other than 200: {sorted(set(statuses))}")
    return spent / n * 1e6


async def _measure(model_type: str, model: Path, body: bytes, requests: int, rounds: int) -> dict[str, list[float]]:
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec, _codec
    from runtime_adapters import (
        AdapterSettings,
        BatchingSettings,
        ModelSpec,
        build_registry,
        with_batching,
    )

    registry = build_registry(AdapterSettings())
    loaded = await registry.for_type(model_type).load(ModelSpec(model_id="m", model_type=model_type), model)
    loaded = with_batching(loaded, BatchingSettings(enabled=False))
    bare = FastAPI()

    @bare.post("/v2/models/{name}/infer")
    async def rest_infer(name: str, request: Request) -> JSONResponse:
        req = _codec.infer_request_from_json(name, json.loads(await request.body()))
        return JSONResponse(_codec.infer_response_to_json(await loaded.infer(req)))

    with tempfile.TemporaryDirectory() as tmp:
        local = LocalMesh(LocalMeshConfig(instances=1, data_dir=Path(tmp), allowed_roots=[model.parent]))
        await local.start()
        try:
            inst = local.instances[0]
            await inst.management.register_model("m", ModelInfoSpec(type=model_type, path=str(model)), load_now=True, sync=True)
            ours = inst.rest_app
            assert ours is not None
            path = "/v2/models/m/infer"
            for app in (bare, ours):  # warm both
                await cpu_per_request(app, path, body, max(50, requests // 10))
            got: dict[str, list[float]] = {"bare": [], "modelmux": []}
            for _ in range(rounds):
                got["bare"].append(await cpu_per_request(bare, path, body, requests))
                got["modelmux"].append(await cpu_per_request(ours, path, body, requests))
            return got
        finally:
            await local.stop()
            await registry.close()


def run(requests: int = 1500, rounds: int = 7) -> list[dict[str, Any]]:
    from mesh._demo import make_onnx
    from tests.model_factory import make_xgboost_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        xgb = make_xgboost_model(Path(tmp) / "xgb", kind="classifier")
        onnx = make_onnx(Path(tmp) / "onnx" / "model.onnx", 64, seed=1)
        cases = [
            ("xgboost", xgb, {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}]}),
            ("onnx", onnx, {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]}),
        ]
        for model_type, path, doc in cases:
            got = asyncio.run(_measure(model_type, path, json.dumps(doc).encode(), requests, rounds))
            for setup, values in got.items():
                rows.append({"model": model_type, "setup": setup, "min_us": min(values), "median_us": statistics.median(values)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500, help="requests per round and app")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows = run(args.requests, args.rounds)
    print("| model | setup | CPU us / request (min) | median | x bare (median) |")
    print("|---|---|---|---|---|")
    bare = {r["model"]: r["median_us"] for r in rows if r["setup"] == "bare"}
    for r in rows:
        print(f"| {r['model']} | {r['setup']} | {r['min_us']:.0f} | {r['median_us']:.0f} | {r['median_us'] / bare[r['model']]:.2f} |")


if __name__ == "__main__":
    main()
