"""Runtime processes: the cost of isolation and the scaling of several runtimes (one run, ratios).

Run: ``python -m bench.bench_runtimes [--seconds 5]``.

1. Local hit, tiny TorchScript model, 1 in flight: a serialized V2 request served by the
   in-process adapter (parse, infer, serialize: the router's local path) vs the same bytes
   forwarded unparsed to an isolated runtime process over its Unix socket. Target >= 0.75x.
2. CPU-heavy ONNX model (a few ms per inference, 1 framework thread, 1 inference worker per
   runtime), 4 in flight: 1 runtime process vs 2 (a copy on each, round robin). Target >= 1.6x.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def _rate(call: Callable[[], Awaitable[Any]], seconds: float, concurrency: int) -> float:
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


async def main_async(seconds: float) -> dict[str, float]:
    from mesh import _codec
    from mesh._runtimes import RuntimeSettings, RuntimeSupervisor, adapter_env
    from runtime_adapters import AdapterSettings, ModelSpec, TorchAdapter
    from tests import model_factory as mf
    from tests.mesh.runtimes.rthelp import fp32_request, open_up

    root = Path(tempfile.mkdtemp(prefix="mm-bench-rt-"))
    os.chmod(root, 0o755)
    out: dict[str, float] = {}
    try:
        ts = open_up(mf.make_torchscript_model(root / "ts"))
        payload = fp32_request("ts", "x", [1.0, 2.0, 3.0, 4.0])
        # in process
        adapter = TorchAdapter(AdapterSettings())
        local = await adapter.load(ModelSpec("ts", "pytorch"), ts.parent)
        payload = fp32_request("ts", local.metadata.inputs[0].name, [1.0, 2.0, 3.0, 4.0])

        async def in_process() -> bytes:
            msg = _codec.parse_infer_request(payload)
            resp = await local.infer(_codec.infer_request_from_pb(msg))
            pbr = _codec.infer_response_to_pb(resp)
            pbr.id = msg.id
            return bytes(pbr.SerializeToString())

        out["tiny_in_process_rps"] = await _rate(in_process, seconds, 1)
        await local.unload()
        await adapter.close()
        sup = RuntimeSupervisor(RuntimeSettings(count=1), worker_env=adapter_env(AdapterSettings()))
        await sup.start()
        try:
            copy = await sup.load(ModelSpec("ts", "pytorch"), ts.parent)
            out["tiny_isolated_rps"] = await _rate(lambda: copy.infer_bytes(payload), seconds, 1)
        finally:
            await sup.close()
        out["tiny_isolated_vs_in_process"] = out["tiny_isolated_rps"] / out["tiny_in_process_rps"]

        heavy = open_up(mf.make_onnx_model(root / "heavy", in_features=1024, out_features=1024))
        heavy_payload = fp32_request("heavy", "x", [0.5] * (64 * 1024), [64, 1024])
        env = adapter_env(AdapterSettings(infer_workers=1, onnx_intra_op_threads=1, onnx_inter_op_threads=1))
        for n in (1, 2):
            sup = RuntimeSupervisor(RuntimeSettings(count=n, isolated_types=("onnx",)), worker_env=env)
            await sup.start()
            try:
                copies = [await sup.load(ModelSpec("heavy", "onnx"), heavy.parent) for _ in range(n)]
                assert len({c.runtime_name for c in copies}) == n
                rr = itertools.cycle(copies)
                out[f"heavy_{n}_runtimes_rps"] = await _rate(lambda rr=rr: next(rr).infer_bytes(heavy_payload), seconds, 4)
            finally:
                await sup.close()
        out["heavy_2_vs_1_runtimes"] = out["heavy_2_runtimes_rps"] / out["heavy_1_runtimes_rps"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps({k: round(v, 3) for k, v in asyncio.run(main_async(args.seconds)).items()}, indent=2))


if __name__ == "__main__":
    main()
