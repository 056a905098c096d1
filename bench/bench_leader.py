"""Live leader decision cost at scale: the incremental view vs building the view from scratch.

Run: ``python -m bench.bench_leader [--models 100000 --instances 100 --loaded 0.05 --misses 300]``.

A memory store is filled with N registered models over I instances, a fraction of them
assigned and loaded; the leader's :class:`~mesh._placement_view.PlacementViewBuilder` follows the store
through the same mirrors a live instance uses. Each round changes one copy record (as a
traffic report would) and then answers a miss for an unassigned model: time of view +
``Policy.on_miss``. The baseline, measured in the same run, is a view built from every record
(what the leader did per decision before the builder existed), with its eviction index.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import time

from mesh._cluster_mirror import ClusterMirror
from mesh._placement_view import PlacementViewBuilder
from mesh._store import MemoryStore
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    InstanceRecord,
    Keys,
    ModelRecord,
    encode,
)
from placement import Policy, PolicySettings

MiB = 1 << 20


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(n_models: int, n_inst: int, loaded: float, misses: int) -> dict[str, float]:
    store = MemoryStore()
    keys = Keys(prefix="/bench")
    rnd = random.Random(1)
    n_loaded = int(n_models * loaded)
    capacity = (n_loaded // n_inst) * MiB  # full: every miss needs an eviction
    for i in range(n_inst):
        await store.put(keys.instance(f"i{i}"), encode(InstanceRecord(instance_id=f"i{i}", address="-", capacity_bytes=capacity)))
    now = time.time()
    for m in range(n_models):
        mid = f"m{m}"
        await store.put(keys.model(mid), encode(ModelRecord(model_id=mid, model_type="onnx", predicted_size_bytes=MiB, tenant=f"t{m % 5}")))
        if m < n_loaded:
            iid = f"i{m % n_inst}"
            await store.put(keys.assignment(mid), encode(AssignmentRecord(model_id=mid, instances=(iid,))))
            await store.put(
                keys.copy(mid, iid),
                encode(CopyRecord(model_id=mid, instance_id=iid, state="loaded", since=now - 3600, size_bytes=MiB, size_measured=True, last_used=now - rnd.random() * 3000)),
            )
    state = ClusterMirror(store, keys)
    await state.start()
    policy = Policy(PolicySettings())
    builder = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=time.time)
    builder.start()
    t0 = time.perf_counter()
    builder.view()
    first_s = time.perf_counter() - t0

    full: list[float] = []
    inc: list[float] = []
    for k in range(misses):
        iid = f"i{k % n_inst}"
        mid = f"m{k % n_loaded}"
        rev = await store.put(
            keys.copy(mid, iid),
            encode(CopyRecord(model_id=mid, instance_id=iid, state="loaded", since=now - 3600, size_bytes=MiB, size_measured=True, last_used=time.time(), rpm=3.0)),
        )
        await state.wait_for(lambda r=rev: state.copies.revision >= r, 5.0)
        target = f"m{n_models - 1 - k}"
        t0 = time.perf_counter()
        actions = policy.on_miss(builder.view(), target)
        inc.append(time.perf_counter() - t0)
        assert any(a.kind == "load" and a.model_id == target for a in actions)
        if k < 10:  # the baseline is slow: a few rounds suffice
            t0 = time.perf_counter()
            fresh = PlacementViewBuilder(state, policy, default_model_size_bytes=MiB, clock=time.time)
            policy.on_miss(fresh.view(), target)
            full.append(time.perf_counter() - t0)
    builder.stop()
    await state.stop()
    return {
        "first_view_ms": first_s * 1e3,
        "full_p50_ms": statistics.median(full) * 1e3,
        "inc_p50_ms": statistics.median(inc) * 1e3,
        "inc_p99_ms": _pct(inc, 0.99) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=100_000)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--loaded", type=float, default=0.05)
    ap.add_argument("--misses", type=int, default=300)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    for n in sorted({10_000, args.models}):
        r = asyncio.run(run(n, args.instances, args.loaded, args.misses))
        print(
            f"{n:>7} models x {args.instances} instances: full view+on_miss p50 {r['full_p50_ms']:.1f} ms | "
            f"incremental p50 {r['inc_p50_ms']:.2f} ms p99 {r['inc_p99_ms']:.2f} ms | "
            f"ratio (p50) {r['full_p50_ms'] / r['inc_p50_ms']:.0f}x | first build {r['first_view_ms']:.0f} ms"
        )


if __name__ == "__main__":
    main()
