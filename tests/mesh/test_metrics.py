"""Prometheus metrics after known traffic, scraped from the instance's own metrics port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from cluster import MemoryCluster, wait_until
from models import add_model
from prometheus_client.parser import text_string_to_metric_families
from test_cluster import Client

from protos import model_mesh_pb2 as mm

CAPACITY = 64 << 20


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Scraper:
    def __init__(self, address: str) -> None:
        self.url = f"http://{address}/metrics"

    async def get(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(self.url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return _samples(r.text)


def v(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metric_values_after_known_traffic(tmp_path: Path) -> None:
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=CAPACITY, overrides={"metrics_port": 0})
    await cluster.start()
    assert cluster.mesh is not None
    inst = cluster.mesh.instances[0]
    assert inst.endpoints is not None and inst.endpoints.metrics
    scrape = Scraper(inst.endpoints.metrics)
    client = Client(cluster.grpc)
    try:
        before = await scrape.get()
        assert v(before, "modelmesh_invoke_model_milliseconds_count") == 0
        await client.register("m", add_model(tmp_path / "m" / "model.onnx", 3.0))
        for _ in range(5):
            assert np.allclose(await client.infer(0, "m"), 3.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(0, "nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        s = await scrape.get()
        # inference: 5 served locally, the first after one miss and one load
        assert v(s, "modelmesh_invoke_model_milliseconds_count") == 5
        assert v(s, "modelmux_local_hits_total") == 5
        assert v(s, "modelmesh_request_size_bytes_count") == 6  # the unknown model's request too
        assert v(s, "modelmesh_response_size_bytes_count") == 5
        assert v(s, "modelmesh_response_size_bytes_sum") > 0
        assert v(s, "modelmux_misses_total") == 1
        assert v(s, "modelmesh_cache_miss_milliseconds_count") == 1
        assert v(s, "modelmesh_loadmodel_milliseconds_count") == 1
        assert v(s, "modelmesh_loaded_model_size_bytes_count") == 1
        assert v(s, "modelmesh_loaded_model_size_bytes_sum") >= 256 << 10  # the model's weight table
        assert v(s, "modelmux_placement_decisions_total", kind="load", reason="miss") == 1
        # every API call, by method and status code
        assert v(s, "modelmesh_api_request_milliseconds_count", method="ModelInfer", code="OK") == 5
        assert v(s, "modelmesh_api_request_milliseconds_count", method="ModelInfer", code="NOT_FOUND") == 1
        assert v(s, "modelmesh_api_request_milliseconds_count", method="registerModel", code="OK") == 1
        # a local path is served in place: nothing pulled, no cache hit
        assert v(s, "modelmux_puller_bytes_total") == 0 and v(s, "modelmux_puller_cache_hits_total") == 0

        # gauges follow the agent's publish loop
        async def gauges() -> bool:
            g = await scrape.get()
            return (
                v(g, "modelmesh_models_managed_total") == 1
                and v(g, "modelmesh_models_loaded_total") == 1
                and v(g, "modelmesh_instance_models_total") == 1
                and v(g, "modelmesh_instance_capacity_bytes") == CAPACITY
                and 0 < v(g, "modelmesh_instance_used_bytes") <= CAPACITY
            )

        await wait_until(gauges, 10, "gauges published")

        # unregistering unloads the copy: one unload, one eviction age
        await client.mgmt[0].unregisterModel(mm.UnregisterModelRequest(modelId="m"))

        async def unloaded() -> bool:
            g = await scrape.get()
            return v(g, "modelmesh_unloadmodel_milliseconds_count") == 1 and v(g, "modelmesh_instance_models_total") == 0

        await wait_until(unloaded, 10, "unload observed")
        s = await scrape.get()
        assert v(s, "modelmesh_age_at_eviction_milliseconds_count") == 1

        # a corrupt artifact: one load failure
        bad = tmp_path / "bad" / "model.onnx"
        bad.parent.mkdir()
        bad.write_bytes(b"this is not an onnx model")
        await client.register("bad", bad)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.infer(0, "bad", timeout=20)
        s = await scrape.get()
        assert v(s, "modelmesh_loadmodel_failure_total") == 1
        assert v(s, "modelmesh_loadmodel_milliseconds_count") == 1  # failures are not load times

        # the REST port serves the same registry
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=10) as c:
            rest = _samples((await c.get("/metrics/")).text)
        assert v(rest, "modelmesh_invoke_model_milliseconds_count") == 5
        # the metrics port answers only GET /metrics
        async with httpx.AsyncClient(timeout=10) as c:
            assert (await c.get(f"http://{inst.endpoints.metrics}/other")).status_code == 404
            assert (await c.post(scrape.url, content=b"x")).status_code == 405
    finally:
        await client.close()
        await cluster.close()
