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
2. CPU-heavy ONNX model (a few ms per inference, 1 framework thread, 1 inference worker per
   runtime), the same offered load (4 in flight) on 1 runtime process vs 2 (a copy on each,
   round robin). Target >= 1.6x.
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
    for _ in range(rounds):
        for key, call in calls.items():
            watched = (pids or {}).get(key, [])
            c0, t0 = _cpu_s(watched), time.perf_counter()
            rates[key].append(await _rate(call, seconds, concurrency))
            cores[key].append((_cpu_s(watched) - c0) / (time.perf_counter() - t0))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out |= {k.replace("_rps", "_cores_used"): statistics.median(cores[k]) for k in (pids or {})}
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

        heavy = open_up(mf.make_onnx_model(root / "heavy", in_features=1024, out_features=1024))
        heavy_payload = fp32_request("heavy", "x", [0.5] * (64 * 1024), [64, 1024])
        env = adapter_env(AdapterSettings(infer_workers=1, onnx_intra_op_threads=1, onnx_inter_op_threads=1))
        scaling: dict[str, Call] = {}
        pids: dict[str, list[int]] = {}
        for n in (1, 2):
            sup = RuntimeSupervisor(RuntimeSettings(count=n, isolated_types=("onnx",), start_workers="at_start"), worker_env=env)
            sups.append(sup)
            await sup.start()
            copies = [await sup.load(ModelSpec("heavy", "onnx"), heavy.parent) for _ in range(n)]
            assert len({c.runtime_name for c in copies}) == n

            def round_robin(rr: Any = itertools.cycle(copies)) -> Awaitable[bytes]:
                return next(rr).infer_bytes(heavy_payload)  # type: ignore[no-any-return]

            scaling[f"heavy_{n}_runtimes_rps"] = round_robin
            pids[f"heavy_{n}_runtimes_rps"] = [r.pid for r in sup.runtimes if r.pid is not None]
        # the cores the runtimes got: on a shared host a ratio is only as good as the CPU on offer
        out |= await _interleaved(scaling, seconds, rounds, 4, pids)
        out["heavy_2_vs_1_runtimes"] = out["heavy_2_runtimes_rps"] / out["heavy_1_runtimes_rps"]
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
