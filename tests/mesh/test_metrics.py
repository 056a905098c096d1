"""Prometheus metrics after known traffic: exact counts and histogram counts, scraped from the
metrics port (ModelMesh's names and labels), and the per-model labels when switched on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh import Instance
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import WIDTH, add_model, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"
TABLE = 256 << 10
MODEL_BYTES = TABLE + (16 << 10)  # a test model's measured footprint, about


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # keep placement to one copy per model (no second copy for a model used a few times), so
    # which instance holds what follows from the requests alone
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


class Scrape:
    """One scrape of an instance's metrics port."""

    def __init__(self, text: str) -> None:
        self.samples: list[Any] = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
        self.names = {s.name for s in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


async def scrape(inst: Instance) -> Scrape:
    assert inst.endpoints is not None and inst.endpoints.metrics, "metrics port not serving"
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(f"http://{inst.endpoints.metrics}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


async def _register(stub: Any, model_id: str, path: Path) -> None:
    await stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path))), timeout=30)


@pytest.fixture
async def one_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # room for one test model, not two: loading a second one evicts the first (sized by its
    # file: an RSS delta taken in this shared process can double a small model)
    monkeypatch.setenv("MODELMUX_ADAPTER_MEASURE_LOAD_RSS", "false")
    c = MemoryCluster(1, tmp_path, capacity_bytes=int(MODEL_BYTES * 1.6), overrides={"metrics_port": 0})
    await c.start()
    yield c
    await c.close()


async def test_metric_values_after_known_traffic(one_instance: MemoryCluster, tmp_path: Path) -> None:
    c = one_instance
    assert c.mesh is not None
    [inst] = c.mesh.instances
    a = add_model(tmp_path / "a" / "model.onnx", 1.0, table_bytes=TABLE)
    b = add_model(tmp_path / "b" / "model.onnx", 2.0, table_bytes=TABLE)
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not an onnx model")
    async with grpc.aio.insecure_channel(c.grpc[0]) as ch:
        stub = mm_grpc.ModelMeshStub(ch)
        for mid, path in (("a", a), ("b", b), ("broken", broken)):
            await _register(stub, mid, path)
        infer = ch.unary_unary(INFER)
        payload = request_bytes("a")
        sizes_out = []
        for _ in range(5):  # 1 miss + load, then 4 hits
            sizes_out.append(len(await infer(payload, timeout=30)))
        with pytest.raises(grpc.aio.AioRpcError) as failed:  # a load failure
            await infer(request_bytes("broken"), timeout=30)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await infer(request_bytes("nope"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        sizes_out.append(len(await infer(request_bytes("b"), timeout=30)))  # miss, load b, evict a (room for one)
    async with httpx.AsyncClient(base_url=c.rest[0]) as rest:  # one more request, over REST
        body = {"inputs": [{"name": "input", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.0] * WIDTH}]}
        r = await rest.post("/v2/models/b/infer", json=body)
        assert r.status_code == 200 and np.allclose(r.json()["outputs"][0]["data"], 2.0)
        rest_in, rest_out = len(r.request.content), len(r.content)
    assert inst.agent is not None
    await wait_until(lambda: "a" not in inst.agent.copies, what="a evicted")  # type: ignore[union-attr]

    m = await scrape(inst)
    ok = {"method": "ModelInfer", "code": "OK"}
    # requests from clients: 5 (a) + 1 (b) over gRPC, 1 over REST; one failed load, one unknown model
    assert m.value("modelmesh_api_request_milliseconds_count", **ok) == 7
    assert m.value("modelmesh_api_request_milliseconds_count", method="ModelInfer", code="INTERNAL") == 1
    assert m.value("modelmesh_api_request_milliseconds_count", method="ModelInfer", code="NOT_FOUND") == 1
    assert m.value("modelmesh_api_request_milliseconds_count") == 9
    assert {"method", "code"} == set(m.labelsets("modelmesh_api_request_milliseconds_count")[0])
    # payload sizes: exact bytes of what crossed the API
    assert m.value("modelmesh_request_size_bytes_count", **ok) == 7
    assert m.value("modelmesh_request_size_bytes_sum", **ok) == 5 * len(payload) + len(request_bytes("b")) + rest_in
    assert m.value("modelmesh_response_size_bytes_sum", **ok) == sum(sizes_out) + rest_out
    assert m.value("modelmesh_response_size_bytes_count", **ok) == 7
    assert m.value("modelmesh_response_size_bytes_bucket", le="+Inf", **ok) == 7
    # the runtime was invoked for every served request (all local: one instance)
    assert m.value("modelmesh_invoke_model_milliseconds_count", **ok) == 7
    # loads: a, b (ok), broken (failed); misses: a, broken, b; the miss delay is observed for loads that served
    assert m.value("modelmesh_loadmodel_milliseconds_count") == 2
    assert m.value("modelmesh_loadmodel_failure_total") == 1
    assert m.value("modelmesh_cache_miss_milliseconds_count") == 2
    assert m.value("modelmux_misses_total") == 3
    assert m.value("modelmux_local_hits_total") == 7
    assert m.value("modelmesh_loading_queue_delay_milliseconds_count") == 3
    assert m.value("modelmesh_loaded_model_size_bytes_count") == 2
    assert m.value("modelmesh_loaded_model_size_bytes_sum") > 2 * TABLE
    # a was evicted (still registered): one unload, one age at eviction
    assert m.value("modelmesh_unloadmodel_milliseconds_count") == 1
    assert m.value("modelmesh_age_at_eviction_milliseconds_count") == 1
    assert m.value("modelmesh_age_at_eviction_milliseconds_bucket", le="30000.0") == 1
    # the leader's decisions, by kind and reason word
    assert m.value("modelmux_placement_decisions_total", kind="load") == 3
    assert m.value("modelmux_placement_decisions_total", kind="unload", reason="load_failed") == 1
    assert m.value("modelmux_placement_decisions_total", kind="unload") == 2
    # local artifacts are served in place: no downloads, no cache hits
    assert m.value("modelmux_puller_pulls_total") == 0 and m.value("modelmux_puller_bytes_total") == 0
    assert m.value("modelmux_forwards_total") == 0
    # gauges: this instance (after the next publish), and the cluster's (exported by the leader)
    async def settled() -> bool:
        g = await scrape(inst)
        return g.value("modelmesh_instance_models_total") == 1 and g.value("modelmesh_models_loaded_total") == 1

    await wait_until(settled, what="gauges published")
    g = await scrape(inst)
    assert g.value("modelmesh_instance_capacity_bytes") == int(MODEL_BYTES * 1.6)
    assert 0 < g.value("modelmesh_instance_used_bytes") <= int(MODEL_BYTES * 1.6)
    assert g.value("modelmesh_instance_used_bps") == int(g.value("modelmesh_instance_used_bytes") * 10_000 / int(MODEL_BYTES * 1.6))
    assert g.value("modelmesh_models_managed_total") == 3
    assert g.value("modelmesh_models_with_failure_total") == 1
    # the REST port serves the same registry
    async with httpx.AsyncClient(base_url=c.rest[0]) as rest:
        same = Scrape((await rest.get("/metrics/")).text)
    assert same.value("modelmesh_api_request_milliseconds_count") == 9


async def test_unregister_is_not_an_eviction_and_management_calls_are_not_inference(one_instance: MemoryCluster, tmp_path: Path) -> None:
    c = one_instance
    assert c.mesh is not None
    [inst] = c.mesh.instances
    assert (await scrape(inst)).value("modelmesh_invoke_model_milliseconds_count") == 0
    async with grpc.aio.insecure_channel(c.grpc[0]) as ch:
        stub = mm_grpc.ModelMeshStub(ch)
        await _register(stub, "m", add_model(tmp_path / "m" / "model.onnx", 3.0, table_bytes=TABLE))
        infer = ch.unary_unary(INFER)
        for _ in range(5):
            await infer(request_bytes("m"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(request_bytes("nope"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        s = await scrape(inst)
        assert s.value("modelmesh_api_request_milliseconds_count", method="ModelInfer", code="OK") == 5
        # ModelMesh counts inference calls only: management calls are no API requests
        assert s.value("modelmesh_api_request_milliseconds_count", method="registerModel") == 0
        assert s.value("modelmesh_api_request_milliseconds_count") == 6
        # a request's size is recorded whatever its outcome, a response's only when there is one
        assert s.value("modelmesh_request_size_bytes_count") == 6
        assert s.value("modelmesh_response_size_bytes_count") == 5
        assert s.value("modelmux_placement_decisions_total", kind="load", reason="miss") == 1

        await stub.unregisterModel(mm.UnregisterModelRequest(modelId="m"), timeout=30)

        async def unloaded() -> bool:
            g = await scrape(inst)
            return g.value("modelmesh_unloadmodel_milliseconds_count") == 1 and g.value("modelmesh_instance_models_total") == 0

        await wait_until(unloaded, 10, "unload observed")
    s = await scrape(inst)
    # unregistered, not evicted: no age at eviction
    assert s.value("modelmesh_age_at_eviction_milliseconds_count") == 0
    # the metrics port answers only GET /metrics
    async with httpx.AsyncClient(timeout=10) as h:
        assert inst.endpoints is not None
        assert (await h.get(f"http://{inst.endpoints.metrics}/other")).status_code == 404
        assert (await h.post(f"http://{inst.endpoints.metrics}/metrics", content=b"x")).status_code == 405


async def test_forwarded_requests_count_once_and_per_model_labels(tmp_path: Path) -> None:
    c = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"metrics_port": 0, "per_model_metrics": True})
    await c.start()
    try:
        assert c.mesh is not None
        a = add_model(tmp_path / "a" / "model.onnx", 1.0, table_bytes=TABLE)
        async with httpx.AsyncClient(base_url=c.rest[0]) as rest:
            r = await rest.post("/api/v1/models/a", json={"modelInfo": {"type": "onnx", "path": str(a)}, "loadNow": True, "sync": True})
            assert r.status_code == 200, r.text
            r = await rest.put("/api/v1/vmodels/v", json={"targetModelId": "a"})
            assert r.status_code == 200, r.text
        holder = next(i for i in c.mesh.instances if i.agent and "a" in i.agent.copies)
        other = next(i for i in c.mesh.instances if i is not holder)
        async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch:  # type: ignore[union-attr]
            infer = ch.unary_unary(INFER)
            for _ in range(3):
                await infer(request_bytes("v"), timeout=30)
        at_entry, at_holder = await scrape(other), await scrape(holder)
        # an API request is counted where it entered the mesh, the runtime call where it ran
        assert at_entry.value("modelmesh_api_request_milliseconds_count", code="OK") == 3
        assert at_holder.value("modelmesh_api_request_milliseconds_count") == 0
        assert at_entry.value("modelmux_forwards_total", result="ok") == 3
        assert at_holder.value("modelmesh_invoke_model_milliseconds_count", code="OK") == 3
        assert at_entry.value("modelmesh_invoke_model_milliseconds_count") == 0
        # per-model labels: the vModel and the model it resolves to
        [labels] = at_entry.labelsets("modelmesh_api_request_milliseconds_count")
        assert labels == {"method": "ModelInfer", "code": "OK", "modelId": "a", "vModelId": "v"}
        assert at_holder.value("modelmesh_loadmodel_milliseconds_count", modelId="a") == 1
        # counters and gauges never carry model labels (ModelMesh's rule)
        assert at_holder.labelsets("modelmesh_loadmodel_failure_total") == [{}]
        # the cluster-wide gauges come from exactly one instance
        reporting = [s for s in (at_entry, at_holder) if "modelmesh_models_managed_total" in s.names]
        assert len(reporting) <= 1
        await wait_until(
            lambda: sum(1 for i in c.mesh.instances if i.metrics.reports_cluster) == 1,  # type: ignore[union-attr]
            what="one leader",
        )
    finally:
        await c.close()


def test_grafana_dashboard_queries_only_metrics_we_export() -> None:
    import json
    import re

    from prometheus_client import generate_latest

    from mesh._metrics import ClusterCounts, Metrics

    m = Metrics()
    m.report_cluster(lambda: True)
    m.set_cluster(ClusterCounts(loaded=1, with_failure=0, managed=2))
    m.request(external=True, code="OK", elapsed_ms=1.0, request_bytes=1, response_bytes=1)
    m.request(external=False, code="OK", elapsed_ms=1.0)
    m.forwards.labels("ok").inc()
    m.decisions.labels("load", "miss").inc()
    exported = {s.name for fam in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in fam.samples}
    dash = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelmux-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"\b(model(?:mesh|mux)_[a-z_]+)", e)}
    assert len(used) >= 20
    assert used <= exported, used - exported
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
