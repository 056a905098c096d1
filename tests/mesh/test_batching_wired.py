"""Adaptive batching as the mesh wires it: on by default for a model with a batch dimension,
off per model by its ``batching`` option, bad options fail the load, answers exact under
concurrency, batch sizes and queue times in the instance's Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from runtime_adapters import BatchingModel
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import WIDTH, add_model, answer, request_bytes
from tests.mesh.test_metrics import scrape

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    c = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20, overrides={"metrics_port": 0})
    await c.start()
    yield c
    await c.close()


async def _register(stub: Any, model_id: str, path: Path, options: dict[str, str] | None = None) -> mm.ModelStatusInfo:
    key = json.dumps({"options": options}) if options else ""
    info = mm.ModelInfo(type="onnx", path=str(path), key=key)
    return await stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True), timeout=30)


async def test_batching_on_by_default_off_by_option_and_bad_options_fail(cluster: MemoryCluster, tmp_path: Path) -> None:
    assert cluster.mesh is not None
    [inst] = cluster.mesh.instances
    path = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=16 << 10)
    async with grpc.aio.insecure_channel(cluster.grpc[0]) as ch:
        stub = mm_grpc.ModelMeshStub(ch)
        await _register(stub, "batched", path)
        await _register(stub, "solo", path, {"batching": "false"})
        bad = await _register(stub, "bad", path, {"max_batch_size": "0"})
        assert bad.status == mm.ModelStatusInfo.LOADING_FAILED
        assert "max_batch_size" in (inst.agent.copies["bad"].error or "")
        assert "bad" not in inst.loaded
        assert isinstance(inst.loaded.get("batched"), BatchingModel)
        solo = inst.loaded.get("solo")
        assert solo is not None and not isinstance(solo, BatchingModel)

        infer = ch.unary_unary(INFER)
        xs = [np.full((1, WIDTH), k, dtype=np.float32) for k in range(24)]
        sent = 0
        merged = False
        deadline = asyncio.get_running_loop().time() + 30
        while not merged:  # concurrency on a loaded box: repeat rounds until one batch merged requests
            assert asyncio.get_running_loop().time() < deadline, "no batch ever merged two requests"
            outs = await asyncio.gather(*(infer(request_bytes("batched", x), timeout=30) for x in xs))
            sent += len(xs)
            for x, raw in zip(xs, outs, strict=True):
                np.testing.assert_array_equal(answer(raw), x + 1.0)  # each answer is its own request's
            m = await scrape(inst)
            # every request is in exactly one batch and has one queue time
            assert m.value("modelmux_batch_size_sum") == sent
            assert m.value("modelmux_batch_queue_milliseconds_count") == sent
            merged = m.value("modelmux_batch_size_count") < sent
        # the model with batching off never reaches the batcher's metrics
        outs = await asyncio.gather(*(infer(request_bytes("solo", x), timeout=30) for x in xs[:4]))
        for x, raw in zip(xs[:4], outs, strict=True):
            np.testing.assert_array_equal(answer(raw), x + 1.0)
        m = await scrape(inst)
        assert m.value("modelmux_batch_size_sum") == sent
        await wait_until(lambda: inst.router.counters.local >= sent + 4)
