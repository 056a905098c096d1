"""Adaptive batching: merged answers equal unbatched ones (ONNX, XGBoost), requests that cannot
merge run alone, an invalid request fails alone, concurrent requests really merge, the policy.

A gate in front of the real model holds the first call until the test releases it, so that the
next requests queue behind it deterministically (no sleeps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime_adapters import (
    AdapterRegistry,
    BatchingModel,
    BatchingSettings,
    BatchPolicy,
    InferRequest,
    InferResponse,
    InvalidInput,
    LoadedModel,
    ModelLoadError,
    ModelNotLoaded,
    ModelSpec,
    ModelState,
    RequestedOutput,
    batch_policy,
    with_batching,
)
from tests import model_factory as mf
from tests.mesh.cluster import wait_until

Built = Callable[..., Path]


class Gated(LoadedModel):
    """A real loaded model behind a gate: records the rows of every call, holds calls until opened."""

    def __init__(self, inner: LoadedModel) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.size_bytes = inner.size_bytes
        self.metadata = inner.metadata
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[int] = []

    @property
    def status(self) -> ModelState:
        return self.inner.status

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls.append(request.inputs[0].shape[0])
        self.entered.set()
        await self.gate.wait()
        return await self.inner.infer(request)

    async def unload(self) -> None:
        await self.inner.unload()


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waits: list[float] = []

    def batch_ran(self, model_id: str, size: int, queue_times_s: Sequence[float]) -> None:
        assert len(queue_times_s) == size
        self.sizes.append(size)
        self.waits.extend(queue_times_s)


async def held_behind_first(
    model: BatchingModel, gated: Gated, first: InferRequest, rest: Sequence[InferRequest], queued: int | None = None
) -> list[Any]:
    """Run ``first``; while the gate holds it, send ``rest``; open the gate once they queued."""
    t0 = asyncio.create_task(model.infer(first))
    await gated.entered.wait()
    tasks = [asyncio.create_task(model.infer(r)) for r in rest]
    want = len(rest) if queued is None else queued
    await wait_until(lambda: model.queued == want, what=f"{want} queued requests")
    gated.gate.set()
    return await asyncio.gather(t0, *tasks, return_exceptions=True)


def request(name: str, x: np.ndarray, **kw: Any) -> InferRequest:
    return InferRequest(model_name="m", inputs=(mf.v2_input(name, x, **kw),))


def rows(seed: int, n: int, features: int) -> np.ndarray:
    return np.random.RandomState(seed).rand(n, features).astype(np.float32)


CASES = [
    ("onnx", "make_onnx_model", {"in_features": 4, "out_features": 3}, "x", 4),
    ("xgboost", "make_xgboost_model", {"kind": "classifier"}, "input", 8),
]


@pytest.mark.parametrize(("mtype", "maker", "kw", "input_name", "features"), CASES, ids=[c[0] for c in CASES])
async def test_merged_answers_equal_unbatched_answers(
    registry: AdapterRegistry, built: Built, mtype: str, maker: str, kw: dict[str, Any], input_name: str, features: int
) -> None:
    inner = await registry.for_type(mtype).load(ModelSpec("m", mtype), built(maker, **kw))
    gated = Gated(inner)
    seen = Recorder()
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0), seen)
    reqs = [
        InferRequest(model_name=f"name{i}", id=f"id{i}", inputs=(mf.v2_input(input_name, rows(i, 1 + i % 3, features)),))
        for i in range(6)
    ]
    got = await held_behind_first(model, gated, reqs[0], reqs[1:])
    # the first ran alone; the five that queued meanwhile ran as one framework call
    assert gated.calls == [1, sum(r.inputs[0].shape[0] for r in reqs[1:])]
    assert seen.sizes == [1, 5]
    assert all(w >= 0 for w in seen.waits)
    for req, resp in zip(reqs, got, strict=True):
        assert isinstance(resp, InferResponse), resp
        alone = await inner.infer(req)
        assert (resp.model_name, resp.id) == (req.model_name, req.id)
        assert [(o.name, o.datatype, o.shape) for o in resp.outputs] == [(o.name, o.datatype, o.shape) for o in alone.outputs]
        for a, b in zip(resp.outputs, alone.outputs, strict=True):
            np.testing.assert_allclose(mf.output_array(a), mf.output_array(b), rtol=1e-6, atol=1e-7)
    await model.unload()
    assert model.status is ModelState.UNLOADED
    with pytest.raises(ModelNotLoaded):
        await model.infer(reqs[1])


async def test_requests_that_cannot_merge_run_alone(registry: AdapterRegistry, built: Built) -> None:
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="classifier"))
    gated = Gated(inner)
    seen = Recorder()
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0), seen)
    a1 = request("input", rows(1, 1, 8))
    a2 = request("input", rows(2, 2, 8))
    other_dtype = request("input", rows(3, 1, 8).astype(np.float64))
    a3 = request("input", rows(4, 1, 8))
    bad_shape = request("input", rows(5, 1, 5))
    typed = request("input", rows(6, 1, 8), typed=True)
    with_params = InferRequest(model_name="m", inputs=a1.inputs, parameters={"priority": 1})
    # typed contents and parameters bypass the queue (they run alone at once, here held by the gate too)
    queue = [a2, other_dtype, a3, bad_shape, typed, with_params]
    got = await held_behind_first(model, gated, a1, queue, queued=4)
    # a1 alone, the two bypassing requests alone, then the FP32 rows merged (2 + 1), FP64 alone, the bad shape alone
    assert gated.calls == [1, 1, 1, 3, 1, 1]
    assert sorted(seen.sizes) == [1, 1, 1, 1, 1, 2]
    for req, resp in zip([a1, *queue], got, strict=True):
        if req is bad_shape:
            assert isinstance(resp, InvalidInput) and "shape" in str(resp)
            continue
        assert isinstance(resp, InferResponse), resp
        alone = await inner.infer(req)
        assert [(o.shape, o.raw) for o in resp.outputs] == [(o.shape, o.raw) for o in alone.outputs]


async def test_a_request_that_finds_the_model_idle_runs_at_once_and_holds_its_call(registry: AdapterRegistry, built: Built) -> None:
    """An idle model runs a request at once without asking whether it could merge (the 1-in-flight
    path). Even one that could not merge counts as the call running: what arrives meanwhile queues
    and merges after it, as behind any other call of a fast model."""
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="classifier"))
    gated = Gated(inner)
    seen = Recorder()
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0), seen)
    b1, b2 = request("input", rows(1, 1, 8)), request("input", rows(2, 2, 8))
    with_params = InferRequest(model_name="m", inputs=request("input", rows(3, 1, 8)).inputs, parameters={"priority": 1})
    got = await held_behind_first(model, gated, with_params, [b1, b2], queued=2)
    assert gated.calls == [1, 3]  # alone, then the two that queued behind it as one call
    assert seen.sizes == [1, 2]
    for req, resp in zip([with_params, b1, b2], got, strict=True):
        assert isinstance(resp, InferResponse), resp
        alone = await inner.infer(req)
        assert [(o.shape, o.raw) for o in resp.outputs] == [(o.shape, o.raw) for o in alone.outputs]
    assert model.queued == 0 and model.concurrent_limit == 1


def gather_model(path: Path) -> Path:
    """idx INT64 [batch] -> y = T[idx] FP32 [batch], T = 0, 10, .., 40: an index out of range fails that call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["T", "idx"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.arange(5, dtype=np.float32) * 10, "T")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    return path / "model.onnx"


async def test_an_invalid_request_in_a_batch_fails_alone(registry: AdapterRegistry, tmp_path: Path) -> None:
    inner = await registry.for_type("onnx").load(ModelSpec("m", "onnx"), gather_model(tmp_path / "g"))
    gated = Gated(inner)
    seen = Recorder()
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0), seen)
    first = request("idx", np.array([0], dtype=np.int64))
    good1 = request("idx", np.array([1, 2], dtype=np.int64))
    bad = request("idx", np.array([7], dtype=np.int64))  # out of T's range: only this request is wrong
    good2 = request("idx", np.array([4], dtype=np.int64))
    got = await held_behind_first(model, gated, first, [good1, bad, good2])
    # the merged call (4 rows) failed, so each of its requests ran again alone
    assert gated.calls == [1, 4, 2, 1, 1]
    assert seen.sizes == [1, 3]
    assert mf.output_array(got[0].outputs[0]).tolist() == [0.0]
    assert mf.output_array(got[1].outputs[0]).tolist() == [10.0, 20.0]
    assert isinstance(got[2], InvalidInput) and "idx=7" in str(got[2])
    assert mf.output_array(got[3].outputs[0]).tolist() == [40.0]


async def test_requested_outputs_and_batch_limit(registry: AdapterRegistry, built: Built) -> None:
    inner = await registry.for_type("onnx").load(ModelSpec("m", "onnx"), built("make_onnx_model", kind="multi"))
    gated = Gated(inner)
    model = BatchingModel(gated, BatchPolicy(max_batch_size=3, max_batch_delay_s=0.0))

    def multi(seed: int, n: int, outputs: tuple[str, ...] = ()) -> InferRequest:
        rs = np.random.RandomState(seed)
        return InferRequest(
            model_name="m",
            inputs=(
                mf.v2_input("a", rs.rand(n, 4).astype(np.float32)),
                mf.v2_input("b", rs.randint(-5, 5, size=(n, 4)).astype(np.int64)),
                mf.v2_input("m", rs.rand(n, 4) > 0.5),
            ),
            outputs=tuple(RequestedOutput(o) for o in outputs),
        )

    reqs = [multi(1, 1), multi(2, 1, ("doubled",)), multi(3, 2), multi(4, 1, ("doubled",)), multi(5, 1), multi(6, 3)]
    got = await held_behind_first(model, gated, reqs[0], reqs[1:], queued=4)
    # at most 3 rows a call: the 3-row request runs alone at once; requests asking for other outputs
    # do not merge with the rest: doubled (1 + 1), then every output (2 + 1)
    assert gated.calls == [1, 3, 2, 3]
    for req, resp in zip(reqs, got, strict=True):
        assert isinstance(resp, InferResponse), resp
        alone = await inner.infer(req)
        assert [o.name for o in resp.outputs] == [o.name for o in alone.outputs]
        for a, b in zip(resp.outputs, alone.outputs, strict=True):
            assert (a.shape, a.raw) == (b.shape, b.raw)


async def test_a_full_batch_does_not_wait_for_the_delay_and_a_lone_one_does_not_hang(
    registry: AdapterRegistry, built: Built
) -> None:
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="binary"))
    seen = Recorder()
    slow = BatchingModel(inner, BatchPolicy(max_batch_size=4, max_batch_delay_s=60.0), seen)
    reqs = [request("input", rows(i, 1, 8)) for i in range(4)]
    # four rows fill the batch: it runs at once, long before the 60 s delay
    got = await asyncio.wait_for(asyncio.gather(*(slow.infer(r) for r in reqs)), timeout=30)
    assert seen.sizes == [4] and len(got) == 4
    short = BatchingModel(inner, BatchPolicy(max_batch_size=4, max_batch_delay_s=0.005), seen)
    (resp,) = await asyncio.wait_for(asyncio.gather(short.infer(reqs[0])), timeout=30)
    assert seen.sizes == [4, 1]
    assert resp.outputs[0].raw == got[0].outputs[0].raw


async def test_a_caller_that_leaves_the_queue_is_not_run(registry: AdapterRegistry, built: Built) -> None:
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="binary"))
    gated = Gated(inner)
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0))
    t0 = asyncio.create_task(model.infer(request("input", rows(0, 1, 8))))
    await gated.entered.wait()
    leaving = asyncio.create_task(model.infer(request("input", rows(1, 5, 8))))
    staying = asyncio.create_task(model.infer(request("input", rows(2, 2, 8))))
    await wait_until(lambda: model.queued == 2)
    leaving.cancel()
    await wait_until(lambda: model.queued == 1)
    gated.gate.set()
    await asyncio.gather(t0, staying)
    assert gated.calls == [1, 2]


class Timed(Gated):
    """A gated model that reports ``took_s`` as its framework's time per call (as FrameworkModel does)."""

    def __init__(self, inner: LoadedModel, took_s: float) -> None:
        super().__init__(inner)
        self.last_infer_s = took_s


@pytest.mark.parametrize(("took_s", "parallel"), [(0.0002, False), (0.02, True)], ids=["fast", "slow"])
async def test_a_fast_model_runs_one_call_at_a_time_and_a_slow_one_several(
    registry: AdapterRegistry, built: Built, took_s: float, parallel: bool
) -> None:
    """Up to ``max_concurrent_batches`` calls run at once only for a model measured at least
    ``parallel_above_row_s`` a row; a faster model's requests queue behind its one call and merge."""
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="binary"))
    gated = Timed(inner, took_s)
    seen = Recorder()
    policy = BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0, max_concurrent_batches=2, parallel_above_row_s=0.001)
    model = BatchingModel(gated, policy, seen)
    assert model.concurrent_limit == 1  # not measured yet
    gated.gate.set()
    warm = request("input", rows(0, 2, 8))
    assert (await model.infer(warm)).outputs[0].raw == (await inner.infer(warm)).outputs[0].raw
    assert model.concurrent_limit == (2 if parallel else 1)  # 0.1 ms or 10 ms a row, against 1 ms
    gated.gate.clear()
    gated.entered.clear()
    gated.calls.clear()
    reqs = [request("input", rows(i, 1, 8)) for i in range(1, 5)]
    if parallel:
        # the second runs beside the first at once; the last two wait for a free call and merge
        first = asyncio.create_task(model.infer(reqs[0]))
        await gated.entered.wait()
        second = asyncio.create_task(model.infer(reqs[1]))
        await wait_until(lambda: gated.calls == [1, 1], what="a second call beside the first")
        rest = [asyncio.create_task(model.infer(r)) for r in reqs[2:]]
        await wait_until(lambda: model.queued == 2, what="two queued")
        gated.gate.set()
        got = await asyncio.gather(first, second, *rest)
        assert gated.calls == [1, 1, 2]
        # a call that fails says nothing of the model's speed, however fast it failed
        gated.last_infer_s = 1e-6
        with pytest.raises(InvalidInput, match="shape"):
            await model.infer(request("input", rows(9, 1, 5)))
        assert model.concurrent_limit == 2
    else:
        got = await held_behind_first(model, gated, reqs[0], reqs[1:])
        assert gated.calls == [1, 3]  # no second call while the first ran
    for req, resp in zip(reqs, got, strict=True):
        assert isinstance(resp, InferResponse), resp
        assert resp.outputs[0].raw == (await inner.infer(req)).outputs[0].raw


async def test_without_a_speed_threshold_calls_run_side_by_side_at_once(registry: AdapterRegistry, built: Built) -> None:
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="binary"))
    gated = Gated(inner)
    policy = BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0, max_concurrent_batches=3, parallel_above_row_s=0.0)
    model = BatchingModel(gated, policy)
    assert model.concurrent_limit == 3
    reqs = [request("input", rows(i, 1, 8)) for i in range(3)]
    tasks = [asyncio.create_task(model.infer(r)) for r in reqs]
    await wait_until(lambda: gated.calls == [1, 1, 1], what="three calls at once")
    gated.gate.set()
    for req, resp in zip(reqs, await asyncio.gather(*tasks), strict=True):
        assert resp.outputs[0].raw == (await inner.infer(req)).outputs[0].raw


async def test_policy_from_settings_and_model_options(registry: AdapterRegistry, built: Built) -> None:
    onnx = registry.for_type("onnx")
    linear = await onnx.load(ModelSpec("m", "onnx"), built("make_onnx_model"))
    strings = await onnx.load(ModelSpec("s", "onnx"), built("make_onnx_model", kind="strings"))
    on = BatchingSettings(enabled=True, max_batch_size=8, max_batch_delay_s=0.001)
    off = BatchingSettings(enabled=False)
    assert BatchingSettings().enabled  # on by default for batchable models
    assert BatchingSettings().parallel_above_row_s > 0  # calls side by side only for slow models
    assert batch_policy(linear.spec, linear.metadata, on) == BatchPolicy(8, 0.001, 4, 64 << 20, 0.001)
    assert batch_policy(linear.spec, linear.metadata, off) is None
    # an output without a batch dimension ("length" [1]): never batched
    assert batch_policy(strings.spec, strings.metadata, on) is None
    forced = ModelSpec("m", "onnx", options={"batching": "true", "max_batch_size": "32", "max_batch_delay_s": "0"})
    assert batch_policy(forced, linear.metadata, off) == BatchPolicy(32, 0.0, 4, 64 << 20, 0.001)
    assert batch_policy(ModelSpec("m", "onnx", options={"batching": "off"}), linear.metadata, on) is None
    assert batch_policy(ModelSpec("m", "onnx", options={"max_batch_size": "1"}), linear.metadata, on) is None
    for bad in ({"batching": "maybe"}, {"max_batch_size": "0"}, {"max_batch_size": "x"}, {"max_batch_delay_s": "nan"}):
        with pytest.raises(ModelLoadError, match="option"):
            batch_policy(ModelSpec("m", "onnx", options=bad), linear.metadata, on)
    assert with_batching(linear, off) is linear
    wrapped = with_batching(linear, on)
    assert isinstance(wrapped, BatchingModel) and wrapped.inner is linear
    assert (wrapped.spec, wrapped.size_bytes, wrapped.metadata) == (linear.spec, linear.size_bytes, linear.metadata)


async def test_a_batch_stays_under_its_byte_limit(registry: AdapterRegistry, built: Built) -> None:
    inner = await registry.for_type("xgboost").load(ModelSpec("m", "xgboost"), built("make_xgboost_model", kind="binary"))
    gated = Gated(inner)
    # 4 rows x 8 FP32 = 128 bytes per request: two fit in 300 bytes, a third does not;
    # a request over half the limit (5 rows = 160 bytes) runs alone at once
    model = BatchingModel(gated, BatchPolicy(max_batch_size=16, max_batch_delay_s=0.0, max_batch_bytes=300))
    reqs = [request("input", rows(i, 4, 8)) for i in range(4)] + [request("input", rows(9, 5, 8))]
    got = await held_behind_first(model, gated, reqs[0], reqs[1:], queued=3)
    assert gated.calls == [4, 5, 8, 4]
    for req, resp in zip(reqs, got, strict=True):
        assert isinstance(resp, InferResponse), resp
        assert resp.outputs[0].raw == (await inner.infer(req)).outputs[0].raw
