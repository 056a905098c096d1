"""The data plane built directly over a router (memory store, fake peers): one implementation of ready,
metadata and infer for both edges, timing each client request once and never a peer's forwarded one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh import _codec
from mesh._dataplane import DataPlane, RequestContext
from mesh._errors import ModelNotFound
from mesh._loaded_copies import LoadedCopies
from mesh._metrics import Metrics
from mesh._router import Router
from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import InferRequest, InferResponse, InvalidInput
from tests.mesh.fakes import FakeModel, FakePeer, World, request, request_bytes, world

ME = "me"


def count(metrics: Metrics, name: str, **labels: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


API = "modelmesh_api_request_milliseconds_count"
INVOKE = "modelmesh_invoke_model_milliseconds_count"


async def serving(w: World, model: FakeModel) -> tuple[Router, Metrics]:
    """A router on this instance holding ``model`` (registered first), with its own metrics."""
    await w.model(model.spec.model_id)
    await w.settle(lambda: model.spec.model_id in w.mirror.models.items)
    metrics = Metrics()
    loaded = LoadedCopies()
    loaded.add(model.spec.model_id, model)
    return Router(ME, w.mirror, w.store, loaded, metrics=metrics), metrics


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as w:
        await w.instance(ME, "127.0.0.1:1")
        yield w


async def test_client_requests_are_timed_once_and_forwarded_ones_not_again(w: World) -> None:
    router, metrics = await serving(w, FakeModel("m"))
    dp = DataPlane(router, version="9")

    out = await dp.infer_bytes("m", request_bytes("m"), RequestContext(timeout_s=5))
    assert pb.ModelInferResponse.FromString(out).outputs[0].name == "m"
    assert count(metrics, API, code="OK") == 1 and count(metrics, INVOKE, code="OK") == 1

    await dp.infer_bytes("m", request_bytes("m"), RequestContext(timeout_s=5, forwarded=True))
    assert count(metrics, API) == 1  # counted by the peer it entered at
    assert count(metrics, INVOKE) == 2  # but it did run here

    with pytest.raises(ModelNotFound), dp.measure("nope", RequestContext()):
        await dp.infer("nope", request("nope"), RequestContext(timeout_s=1))
    assert count(metrics, API, code="NOT_FOUND") == 1
    assert dp.server_info(RequestContext()).version == "9" and dp.server_ready(RequestContext())
    await router.close()


async def test_a_local_call_that_fails_is_timed_with_its_status_in_both_histograms(w: World) -> None:
    """The local hit records its two timings from clock readings, not timer blocks: a failing
    call must still land in both histograms under its own code, with no response size."""

    class Refuses(FakeModel):
        async def infer(self, request: InferRequest) -> InferResponse:
            self.calls += 1
            raise InvalidInput("input 'x' has the wrong shape")

    router, metrics = await serving(w, Refuses("m"))
    dp = DataPlane(router)
    payload = request_bytes("m")

    with pytest.raises(InvalidInput):
        await dp.infer_bytes("m", payload, RequestContext(timeout_s=5))
    assert count(metrics, API, code="INVALID_ARGUMENT") == 1 and count(metrics, API, code="OK") == 0
    assert count(metrics, INVOKE, code="INVALID_ARGUMENT") == 1 and count(metrics, INVOKE, code="OK") == 0
    assert count(metrics, "modelmesh_request_size_bytes_sum", code="INVALID_ARGUMENT") == len(payload)
    assert count(metrics, "modelmesh_response_size_bytes_count") == 0
    assert count(metrics, "modelmux_local_hits_total") == 1  # it was served here, and failed here
    await router.close()


async def test_remote_answer_and_metadata_are_the_same_for_both_edges(w: World) -> None:
    answer = pb.ModelInferResponse(model_name="m", id="r1")
    answer.outputs.add(name="y", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.5, -2.0])
    answer.outputs.add(name="b", datatype="BYTES", shape=[1]).contents.bytes_contents.extend([b"hi"])
    peer = await FakePeer(reply=answer.SerializeToString()).start()
    try:
        await w.model("m")
        await w.instance("p0", peer.address)
        await w.copy("m", "p0")
        await w.settle(lambda: w.mirror.holders("m") == ("p0",))
        router = Router(ME, w.mirror, w.store, LoadedCopies())
        dp = DataPlane(router)

        decoded = await dp.infer("m", request("m"), RequestContext(timeout_s=5))
        # REST renders the decoded answer exactly as it rendered the forwarded message before
        assert _codec.infer_response_to_json(decoded) == _codec.pb_response_to_json(answer)
        assert await dp.model_ready("m", RequestContext())
        await router.close()
    finally:
        await peer.stop()


async def test_local_metadata_is_named_as_asked(w: World) -> None:
    await w.model("m")
    await w.vmodel("v", "m")
    await w.settle(lambda: w.mirror.resolve("v") == "m")
    loaded = LoadedCopies()
    loaded.add("m", FakeModel("m"))
    router = Router(ME, w.mirror, w.store, loaded)
    dp = DataPlane(router)
    meta = await dp.model_metadata("v", RequestContext())
    assert meta.name == "v" and meta.platform == "fake"
    assert _codec.metadata_to_json(meta) == _codec.metadata_from_pb(_codec.metadata_to_pb(meta))
    assert _codec.metadata_from_pb_bytes(_codec.metadata_to_pb(meta).SerializeToString()) == meta
    await router.close()
