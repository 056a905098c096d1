"""``modelmux demo``: example models, skewed traffic against a local mesh, and a summary.

The models are made here, from seeded random weights (no downloads): ONNX
(MatMul + Add), TorchScript (Linear + ReLU) and XGBoost (small boosted trees), a
few hundred variants in all, with different sizes, so that the mesh has to
evict and reload under skewed (Zipf) traffic.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from protos import grpc_predict_v2_pb2 as pb

from ._local import LocalMesh
from ._management import ModelInfoSpec

FEATURES = 16


@dataclass(frozen=True)
class DemoModel:
    model_id: str
    model_type: str
    path: Path
    datatype: str = "FP32"


def make_onnx(path: Path, hidden: int, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((FEATURES, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "w2"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["output"]),
        ],
        "demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [w1, w2, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_torchscript(path: Path, hidden: int, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))
    net.eval()
    scripted = torch.jit.trace(net, torch.zeros(1, FEATURES))
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path


def make_xgboost(path: Path, trees: int, seed: int) -> Path:
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "seed": seed},
        xgb.DMatrix(x, label=y),
        num_boost_round=trees,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def available_frameworks() -> list[str]:
    out = []
    for name, mod in (("onnx", "onnxruntime"), ("pytorch", "torch"), ("xgboost", "xgboost")):
        try:
            __import__(mod)
            if name == "onnx":
                __import__("onnx")
            out.append(name)
        except ImportError:
            pass
    return out


def make_demo_models(root: Path, count: int, *, progress: Callable[[int], None] | None = None) -> list[DemoModel]:
    """``count`` models split over the installed frameworks (ONNX gets most: it is the cheapest)."""
    frameworks = available_frameworks()
    if not frameworks:
        raise RuntimeError("no runtime installed: install modelmux[onnx] (or torch / xgboost)")
    models: list[DemoModel] = []
    share = {"onnx": 0.8, "pytorch": 0.1, "xgboost": 0.1}
    total = sum(share[f] for f in frameworks)
    quotas = {f: max(1, round(count * share[f] / total)) for f in frameworks}
    n = 0
    for fw in frameworks:
        for i in range(quotas[fw]):
            hidden = [256, 1024, 2048, 4096][i % 4]
            if fw == "onnx":
                p = root / f"onnx-{i:04d}" / "model.onnx"
                if not p.exists():
                    make_onnx(p, hidden, seed=i)
                models.append(DemoModel(f"onnx-{i:04d}", "onnx", p))
            elif fw == "pytorch":
                p = root / f"torch-{i:04d}" / "model.pt"
                if not p.exists():
                    make_torchscript(p, hidden, seed=i)
                models.append(DemoModel(f"torch-{i:04d}", "pytorch", p))
            else:
                p = root / f"xgb-{i:04d}" / "model.json"
                if not p.exists():
                    make_xgboost(p, trees=10 + (i % 4) * 20, seed=i)
                models.append(DemoModel(f"xgb-{i:04d}", "xgboost", p))
            n += 1
            if progress:
                progress(n)
    return models


@dataclass
class TrafficResult:
    requests: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    per_model: Counter[str] = field(default_factory=Counter)


def zipf_weights(n: int, alpha: float) -> list[float]:
    return [1.0 / (k**alpha) for k in range(1, n + 1)]


def _request(model: DemoModel, rng: np.random.Generator, batch: int = 1) -> bytes:
    x = rng.standard_normal((batch, FEATURES)).astype(np.float32)
    msg = pb.ModelInferRequest(model_name=model.model_id)
    msg.inputs.add(name="input", datatype="FP32", shape=[batch, FEATURES])
    msg.raw_input_contents.append(x.tobytes())
    return msg.SerializeToString()


async def drive_traffic(
    endpoints: list[str],
    models: list[DemoModel],
    *,
    duration_s: float,
    concurrency: int = 8,
    alpha: float = 1.1,
    seed: int = 7,
    timeout_s: float = 30.0,
    on_tick: Callable[[TrafficResult], None] | None = None,
    input_names: dict[str, str] | None = None,
) -> TrafficResult:
    rnd = random.Random(seed)
    order = models[:]
    rnd.shuffle(order)
    weights = zipf_weights(len(order), alpha)
    channels = [grpc.aio.insecure_channel(e) for e in endpoints]
    calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer") for ch in channels]
    result = TrafficResult()
    stop_at = time.monotonic() + duration_s
    names = input_names or {}

    async def worker(w: int) -> None:
        rng = np.random.default_rng(seed + w)
        local = random.Random(seed * 1000 + w)
        while time.monotonic() < stop_at:
            model = local.choices(order, weights)[0]
            payload = _request(model, rng)
            if model.model_id in names:
                msg = pb.ModelInferRequest.FromString(payload)
                msg.inputs[0].name = names[model.model_id]
                payload = msg.SerializeToString()
            call = calls[local.randrange(len(calls))]
            t0 = time.perf_counter()
            try:
                await call(payload, timeout=timeout_s)
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            except grpc.aio.AioRpcError as exc:
                result.errors += 1
                result.error_kinds[f"{exc.code().name}: {(exc.details() or '')[:80]}"] += 1
            result.requests += 1
            result.per_model[model.model_id] += 1
            if on_tick and result.requests % 50 == 0:
                on_tick(result)

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        result.elapsed_s = time.monotonic() - t0
        for ch in channels:
            await ch.close()
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[idx]


async def register_models(mesh: LocalMesh, models: list[DemoModel], progress: Callable[[int], None] | None = None) -> None:
    mgmt = mesh.instances[0].management
    for n, m in enumerate(models, 1):
        await mgmt.register_model(m.model_id, ModelInfoSpec(type=m.model_type, path=str(m.path.resolve())))
        if progress:
            progress(n)


def summary(mesh: LocalMesh, result: TrafficResult) -> dict[str, Any]:
    loads = sum(i.agent.counters.loads for i in mesh.instances)
    unloads = sum(i.agent.counters.unloads for i in mesh.instances)
    failures = sum(i.agent.counters.load_failures for i in mesh.instances)
    misses = sum(i.router.counters.misses for i in mesh.instances)
    local = sum(i.router.counters.local for i in mesh.instances)
    forwarded = sum(i.router.counters.forwarded for i in mesh.instances)
    ok = result.requests - result.errors
    state = mesh.instances[0].state
    instances = []
    for inst in mesh.instances:
        rec = state.instances.items.get(inst.instance_id)
        agent = inst.agent
        instances.append(
            {
                "instance": inst.instance_id,
                "loaded": len(inst.loaded),
                "used_bytes": agent.used_bytes,
                "capacity_bytes": inst.settings.capacity_bytes,
                "rpm": rec.rpm if rec else 0.0,
            }
        )
    hottest = [
        {"model": mid, "requests": n, "where": list(state.holders(mid))}
        for mid, n in result.per_model.most_common(8)
    ]
    return {
        "requests": result.requests,
        "errors": result.errors,
        "error_kinds": dict(result.error_kinds.most_common(5)),
        "throughput_rps": round(ok / result.elapsed_s, 1) if result.elapsed_s else 0.0,
        "p50_ms": round(percentile(result.latencies_ms, 50), 2),
        "p99_ms": round(percentile(result.latencies_ms, 99), 2),
        "hit_ratio": round(1 - misses / max(result.requests, 1), 4),
        "misses": misses,
        "served_locally": local,
        "forwarded": forwarded,
        "loads": loads,
        "evictions": unloads,
        "load_failures": failures,
        "instances": instances,
        "hottest": hottest,
    }
