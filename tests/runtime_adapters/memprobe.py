"""``python -m tests.runtime_adapters.memprobe DIR``: load ONNX models in a fresh process, some one
at a time, as many again while another load is in flight, one request each; print JSON {sizes, growth, each} (bytes).

Used by test_adapter_sizes (a fresh process: no memory freed by earlier tests to hide the growth).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from runtime_adapters import AdapterSettings, InferInput, InferRequest, ModelSpec, build_registry
from tests import model_factory as mf

ALONE = 12  # models loaded one at a time; as many again while another load is in flight


async def probe(tmp: Path) -> dict[str, object]:
    # W is 16 x 3072 FP32 (192 KiB), the density bench's first layer: many small models, as an
    # instance holds them (one load's delta is noisy, many loads' sum is not)
    files = [mf.make_onnx_model(tmp / f"m{i}", in_features=16, out_features=3072, seed=i) for i in range(1 + 2 * ALONE)]
    # one inference thread: what a framework keeps per thread (scratch buffers) is paid once, by
    # the first model, and is the process's fixed base rather than any model's
    registry = build_registry(AdapterSettings(load_workers=2, infer_workers=1))
    try:
        adapter = registry.for_type("onnx")
        meter = adapter.pools.meter  # type: ignore[attr-defined]
        request = InferRequest(model_name="m", inputs=(InferInput("x", "FP32", (1, 16), raw=bytes(4 * 16)),))
        first = await adapter.load(ModelSpec("first", "onnx"), files[0])  # pays the one-time costs
        await first.infer(request)
        base = meter.settle()
        loaded = []
        for i, f in enumerate(files[1 : 1 + ALONE]):  # alone: trusted deltas
            loaded.append(await adapter.load(ModelSpec(f"alone{i}", "onnx"), f))
            await loaded[-1].infer(request)
        # the rest while another load is in flight (a token held open here stands for it, so the
        # overlap is certain, not a matter of thread timing): their RSS deltas are not trusted
        other = meter.begin()
        try:
            for i, f in enumerate(files[1 + ALONE :]):
                loaded.append(await adapter.load(ModelSpec(f"overlapped{i}", "onnx"), f))
                await loaded[-1].infer(request)
        finally:
            meter.end(other, measure=False)
        growth = meter.settle() - base
        return {"sizes": sum(m.size_bytes for m in loaded), "growth": growth, "each": [m.size_bytes for m in loaded],
                "files": sum(f.stat().st_size for f in files[1:])}
    finally:
        await registry.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(Path(sys.argv[1])))))
