"""Runtime processes: the cost of isolation and the scaling of several runtimes (one run, ratios).

Run: ``python -m bench.bench_runtimes [--seconds 3] [--rounds 3]``.

Every variant is set up first, then measured in turn for ``--seconds`` per round over ``--rounds``
rounds (A B C A B C ...), and each rate is the median of its rounds: a busy host's swings hit
all variants alike instead of whichever ran during a burst.

1. Local hit, tiny TorchScript model, 1 in flight: a serialized V2 request served by the
   in-process adapter (parse, infer, serialize: the router's local path) vs the same bytes
   forwarded unparsed to an isolated runtime process over its frame socket (the default), and
   over V2 gRPC on its Unix socket (``frames=False``, the path external runtimes use).
   Target >= 0.75x for the default.
2. Local hit through an instance, end to end: a V2 gRPC client (the Python load generator, 1 and
   16 in flight) calls a one-instance mesh in its own process serving the same TorchScript model
   in process (``MODELMUX_RUNTIMES_ISOLATED_TYPES=[]``) vs in its runtime process (the default):
   what a caller sees, edge and routing included. Same target, >= 0.75x.
3. CPU-heavy ONNX models (1 framework thread, 1 inference worker per runtime), the same offered
   load (4 in flight) on 1 runtime process vs 2 (a copy on each, round robin). Target >= 1.6x.
   Two models: ``heavy`` is compute-bound with its weights in each core's L2 cache (64 layers of
   tanh(x @ W), one 384 x 384 W, x 32 x 384: ~300M multiply-adds, ~8 ms, 48 KiB each way);
   ``heavy_membound`` is 8 x 4096 @ 4096 x 4096 (~10 ms, 64 MiB of weights streamed from memory
   on every call, 128 KiB each way), where two cores also share the memory bandwidth.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Call = Callable[[], Awaitable[Any]]
ROOT = Path(__file__).resolve().parents[1]


def deep_onnx(path: Path, width: int = 384, layers: int = 64) -> Path:
    """An MLP of ``layers`` x tanh(x @ W) sharing one ``width`` x ``width`` W (input ``x``)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [prev, "W"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], [numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path / "model.onnx")
    return path / "model.onnx"


async def _rate(call: Call, seconds: float, concurrency: int) -> float:
    for _ in range(20):
        await call()
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


def _cpu_s(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


async def _interleaved(
    calls: dict[str, Call], seconds: float, rounds: int, concurrency: int, pids: dict[str, list[int]] | None = None
) -> dict[str, float]:
    """Median rate of each call; with ``pids``, also the cores those processes got (CPU s per s)."""
    rates: dict[str, list[float]] = {k: [] for k in calls}
    cores: dict[str, list[float]] = {k: [] for k in calls}
    mine: dict[str, list[float]] = {k: [] for k in calls}  # this process: the instance's side of the calls
    for _ in range(rounds):
        for key, call in calls.items():
            watched = (pids or {}).get(key, [])
            c0, m0, t0 = _cpu_s(watched), _cpu_s([os.getpid()]), time.perf_counter()
            rates[key].append(await _rate(call, seconds, concurrency))
            elapsed = time.perf_counter() - t0
            cores[key].append((_cpu_s(watched) - c0) / elapsed)
            mine[key].append((_cpu_s([os.getpid()]) - m0) / elapsed)
    out = {k: statistics.median(v) for k, v in rates.items()}
    out |= {k.replace("_rps", "_cores_used"): statistics.median(cores[k]) for k in (pids or {})}
    out |= {k.replace("_rps", "_caller_cores"): statistics.median(mine[k]) for k in (pids or {})}
    return out


def _serve_torch(model: Path, isolated: bool, tmp: Path) -> tuple[Any, str]:
    import subprocess
    import sys

    from bench import _tools

    ready = tmp / f"ready-{isolated}-{time.time_ns()}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMUX_RUNTIMES_")}
    env |= {"PYTHONPATH": str(ROOT), "MODELMUX_RUNTIMES_COUNT": "1"}
    if not isolated:
        env["MODELMUX_RUNTIMES_ISOLATED_TYPES"] = "[]"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", "mesh", "--type", "pytorch", "--model", str(model),
         "--instances", "1", "--ready", str(ready), "--name", "ts"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    _tools.wait_file(ready, proc, 120, "mesh serving a TorchScript model")
    return proc, json.loads(ready.read_text())["grpc"][0]


async def edge_local_hit(model: Path, payload: bytes, seconds: float, rounds: int) -> dict[str, float]:
    """Section 2: the local hit through a real instance, in process vs isolated, 1 and 16 in flight."""
    from bench._load import run_load
    from bench.bench_routing import stop_server

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-rt-edge-"))
    servers = {}
    try:
        for isolated in (False, True):
            servers[isolated] = _serve_torch(model, isolated, tmp)
        rates: dict[str, list[float]] = {}
        for _ in range(rounds):
            for conc in (1, 16):
                for isolated in (False, True):
                    r = await run_load(servers[isolated][1], payload, concurrency=conc, duration_s=seconds, warmup_s=0.5)
                    assert r["errors"] == 0, r
                    key = f"edge_{'isolated' if isolated else 'in_process'}_{conc}_rps"
                    rates.setdefault(key, []).append(r["rps"])
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    out = {k: statistics.median(v) for k, v in rates.items()}
    for conc in (1, 16):
        out[f"edge_isolated_vs_in_process_{conc}"] = out[f"edge_isolated_{conc}_rps"] / out[f"edge_in_process_{conc}_rps"]
    return out


async def main_async(seconds: float, rounds: int = 3) -> dict[str, float]:
    from mesh import _codec
    from mesh._runtimes import RuntimeSettings, RuntimeSupervisor, adapter_env
    from runtime_adapters import AdapterSettings, ModelSpec, TorchAdapter
    from tests import model_factory as mf
    from tests.mesh.runtimes.rthelp import fp32_request, open_up

    root = Path(tempfile.mkdtemp(prefix="mm-bench-rt-"))
    os.chmod(root, 0o755)
    out: dict[str, float] = {}
    sups: list[RuntimeSupervisor] = []
    try:
        ts = open_up(mf.make_torchscript_model(root / "ts"))
        adapter = TorchAdapter(AdapterSettings())
        local = await adapter.load(ModelSpec("ts", "pytorch"), ts.parent)
        payload = fp32_request("ts", local.metadata.inputs[0].name, [1.0, 2.0, 3.0, 4.0])

        async def in_process() -> bytes:
            msg = _codec.parse_infer_request(payload)
            resp = await local.infer(_codec.infer_request_from_pb(msg))
            pbr = _codec.infer_response_to_pb(resp)
            pbr.id = msg.id
            return bytes(pbr.SerializeToString())

        tiny: dict[str, Call] = {"tiny_in_process_rps": in_process}
        for key, frames in (("tiny_isolated_rps", True), ("tiny_isolated_grpc_rps", False)):
            sup = RuntimeSupervisor(RuntimeSettings(count=1, frames=frames, start_workers="at_start"), worker_env=adapter_env(AdapterSettings()))
            sups.append(sup)
            await sup.start()
            copy = await sup.load(ModelSpec("ts", "pytorch"), ts.parent)
            tiny[key] = functools.partial(copy.infer_bytes, payload)
        out |= await _interleaved(tiny, seconds, rounds, 1)
        out["tiny_isolated_vs_in_process"] = out["tiny_isolated_rps"] / out["tiny_in_process_rps"]
        out["tiny_isolated_grpc_vs_in_process"] = out["tiny_isolated_grpc_rps"] / out["tiny_in_process_rps"]
        for sup in sups:
            await sup.close()
        sups.clear()
        await local.unload()
        await adapter.close()
        out |= await edge_local_hit(ts, payload, seconds, rounds)

        # Until session 5 the heavy model was 64 x 1024 @ 1024 x 1024 (256 KiB each way), heavy only
        # while typed contents cost ~4 ms to convert; once they cost 0.2 ms, moving its bytes weighed
        # as much as its compute and the bench measured the copies. Session 6 adds the cache-resident
        # model: the 4096 x 4096 one streams its 64 MiB of weights from memory on every call.
        models = {
            "heavy": (open_up(deep_onnx(root / "heavy")), fp32_request("heavy", "x", [0.5] * (32 * 384), [32, 384])),
            "heavy_membound": (
                open_up(mf.make_onnx_model(root / "heavy_membound", in_features=4096, out_features=4096)),
                fp32_request("heavy_membound", "x", [0.5] * (8 * 4096), [8, 4096]),
            ),
        }
        env = adapter_env(AdapterSettings(infer_workers=1, onnx_intra_op_threads=1, onnx_inter_op_threads=1))
        for name, (path, body) in models.items():
            scaling: dict[str, Call] = {}
            pids: dict[str, list[int]] = {}
            for n in (1, 2):
                sup = RuntimeSupervisor(RuntimeSettings(count=n, isolated_types=("onnx",), start_workers="at_start"), worker_env=env)
                sups.append(sup)
                await sup.start()
                copies = [await sup.load(ModelSpec(name, "onnx"), path.parent) for _ in range(n)]
                assert len({c.runtime_name for c in copies}) == n

                def round_robin(rr: Any = itertools.cycle(copies), body: bytes = body) -> Awaitable[bytes]:
                    return next(rr).infer_bytes(body)  # type: ignore[no-any-return]

                scaling[f"{name}_{n}_runtimes_rps"] = round_robin
                pids[f"{name}_{n}_runtimes_rps"] = [r.pid for r in sup.runtimes if r.pid is not None]
            # the cores the runtimes got: on a shared host a ratio is only as good as the CPU on offer
            out |= await _interleaved(scaling, seconds, rounds, 4, pids)
            out[f"{name}_2_vs_1_runtimes"] = out[f"{name}_2_runtimes_rps"] / out[f"{name}_1_runtimes_rps"]
            for sup in sups:
                await sup.close()
            sups.clear()
    finally:
        for sup in sups:
            await sup.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main_async(args.seconds, args.rounds))
    print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
