"""Memory vs accounting: RSS growth of loading N ONNX models in one process vs the sum of their measured sizes.

Run: ``python -m bench.bench_memory [--models 60] [--cycles 3]``. Each setting runs in a fresh
child process of this same run (so that one setting's leftovers do not land on the next): it
loads ``--models`` distinct ONNX MLPs (the density bench's 16 -> 3072 -> 4 shape), runs one
request on each (as traffic would: ONNX Runtime grows its arena and plans its memory pattern
on the first run, not at load), and reports the RSS growth over the process's RSS after the
adapter's warm-up against the sum of the models' measured ``size_bytes``; then unloads them
all and reports what stays behind, and repeats load/unload ``--cycles`` times (allocator slack
that accumulates shows up as growth across cycles).

Settings compared (``AdapterSettings`` fields, toggled per child):

* ``before`` -- ONNX Runtime's defaults as modelmux used them before (CPU memory arena and
  memory pattern on, size measured across session creation only);
* ``after`` -- the current defaults: a load that overlapped another (its RSS delta cannot be
  trusted) reports its floor scaled by what trusted loads of the format cost per floor byte
  (``size_calibration``; before, the floor alone: ONNX Runtime's pre-packed weights make an
  MLP cost about twice its file), one RSS meter per process, ONNX Runtime's CPU arena and
  memory pattern off, and a first run at load so its allocations are part of the size;
* ``after, ORT arena on`` -- the same with ONNX Runtime's arena and memory pattern on (what the
  arena keeps per session).

The figure of merit is RSS growth / sum of measured sizes: 1.0 means the accounting matches
what the process really pays; the issue's target is <= 1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SETTINGS: dict[str, dict[str, Any]] = {
    "before": {"onnx_cpu_mem_arena": True, "onnx_mem_pattern": True, "onnx_first_run_at_load": False,
               "size_calibration": False},
    "after, ORT arena on": {"onnx_cpu_mem_arena": True, "onnx_mem_pattern": True},
    "after": {},  # the defaults
}


async def _child(models: int, cycles: int, parallel: int, overrides: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import psutil

    from mesh._demo import make_onnx
    from runtime_adapters import (
        AdapterSettings,
        InferInput,
        InferRequest,
        ModelSpec,
        build_registry,
    )

    files = [make_onnx(workdir / f"m{i}" / "model.onnx", 3072, seed=i) for i in range(models)]
    registry = build_registry(AdapterSettings(**overrides))
    adapter = registry.for_type("onnx")
    proc = psutil.Process()
    meter = adapter.pools.meter  # type: ignore[attr-defined]
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16).tobytes()
    request = InferRequest(model_name="m", inputs=(InferInput("input", "FP32", (1, 16), raw=x),))
    # warm-up load (one-time runtime start-up), then the baseline
    warm = await adapter.load(ModelSpec("warm", "onnx"), files[0])
    await warm.infer(request)
    await warm.unload()
    base = meter.settle(full=True)
    rounds = []
    for _ in range(cycles):
        loaded: list[Any] = []

        async def one(i: int, into: list[Any]) -> None:
            m = await adapter.load(ModelSpec(f"m{i}", "onnx"), files[i])
            await m.infer(request)
            into.append(m)

        for start in range(0, len(files), parallel):  # loads overlap as in a busy instance
            await asyncio.gather(*(one(i, loaded) for i in range(start, min(start + parallel, len(files)))))
        rss_loaded = meter.settle()
        sizes = sum(m.size_bytes for m in loaded)
        for m in loaded:
            await m.unload()
        rss_unloaded = meter.settle(full=True)
        rounds.append({"rss_growth": rss_loaded - base, "sizes": sizes, "left_after_unload": rss_unloaded - base})
    await registry.close()
    return {"base_rss": base, "rounds": rounds, "peak_rss": int(proc.memory_info().rss)}


def run(models: int = 60, cycles: int = 3, parallel: int = 2) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SETTINGS.items():
            cmd = [sys.executable, "-m", "bench.bench_memory", "--child", json.dumps(overrides), "--models", str(models),
                   "--cycles", str(cycles), "--parallel", str(parallel), "--workdir", str(Path(tmp) / name)]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=60)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2, help="loads in flight at once (2: the default load_workers)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        wd = Path(a.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        print(json.dumps(asyncio.run(_child(a.models, a.cycles, a.parallel, json.loads(a.child), wd))))
        return
    res = run(a.models, a.cycles, a.parallel)
    print(f"{a.models} ONNX models (16 -> 3072 -> 4 MLP), one request each, {a.parallel} loads at a time, "
          f"{a.cycles} load/unload cycles")
    print(f"{'setting':<18}{'cycle':>6}{'sum sizes MiB':>15}{'RSS growth MiB':>16}{'RSS/size':>10}{'left after unload MiB':>23}")
    for name, r in res.items():
        for i, c in enumerate(r["rounds"]):
            ratio = c["rss_growth"] / c["sizes"] if c["sizes"] else 0.0
            print(f"{name:<18}{i:>6}{c['sizes'] / 2**20:>15.1f}{c['rss_growth'] / 2**20:>16.1f}{ratio:>10.2f}"
                  f"{c['left_after_unload'] / 2**20:>23.1f}")


if __name__ == "__main__":
    main()
