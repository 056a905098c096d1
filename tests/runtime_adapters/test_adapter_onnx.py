"""ONNX Runtime adapter against real tiny models: metadata, every datatype, validation, unload, concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime_adapters import (
    AdapterRegistry,
    AdapterSettings,
    InferInput,
    InferRequest,
    InvalidInput,
    ModelLoadError,
    ModelNotLoaded,
    ModelSpec,
    ModelState,
    OnnxAdapter,
    RequestedOutput,
    RequestTooLarge,
    build_registry,
)
from runtime_adapters._onnx import OnnxModel
from tests import model_factory as mf

Built = Callable[..., Path]


def spec(mid: str = "m", **kw: Any) -> ModelSpec:
    return ModelSpec(model_id=mid, model_type="onnx", **kw)


def req(*inputs: InferInput, outputs: tuple[str, ...] = ()) -> InferRequest:
    return InferRequest(model_name="m", inputs=inputs, outputs=tuple(RequestedOutput(o) for o in outputs))


async def test_linear_metadata_and_outputs_match_onnxruntime(registry: AdapterRegistry, built: Built) -> None:
    path = built("make_onnx_model", kind="linear")
    model = await registry.for_type("onnx").load(spec("lin"), path)
    assert model.status is ModelState.LOADED
    meta = model.metadata
    assert (meta.name, meta.platform) == ("lin", "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("x", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [("y", "FP32", (-1, 3))]
    x = np.random.RandomState(1).rand(5, 4).astype(np.float32)
    expected = mf.onnx_reference(path, {"x": x})["y"]
    for typed in (False, True):
        resp = await model.infer(
            InferRequest(model_name="lin", id="r1", inputs=(mf.v2_input("x", x, typed=typed),))
        )
        assert (resp.model_name, resp.id) == ("lin", "r1")
        (out,) = resp.outputs
        assert (out.name, out.datatype, out.shape) == ("y", "FP32", (5, 3))
        np.testing.assert_array_equal(mf.output_array(out), expected)


async def test_multi_io_int_and_bool_and_requested_outputs(registry: AdapterRegistry, built: Built) -> None:
    path = built("make_onnx_model", kind="multi")
    model = await registry.for_type("onnx").load(spec(), path)
    rs = np.random.RandomState(2)
    a = rs.rand(3, 4).astype(np.float32)
    b = rs.randint(-50, 50, size=(3, 4)).astype(np.int64)
    m = rs.rand(3, 4) > 0.5
    ref = mf.onnx_reference(path, {"a": a, "b": b, "m": m})
    for typed in (False, True):
        inputs = (mf.v2_input("a", a, typed=typed), mf.v2_input("b", b, typed=typed), mf.v2_input("m", m, typed=typed))
        resp = await model.infer(req(*inputs))
        assert [o.name for o in resp.outputs] == ["sum", "doubled", "inverted"]
        assert [o.datatype for o in resp.outputs] == ["FP32", "INT64", "BOOL"]
        for o in resp.outputs:
            np.testing.assert_array_equal(mf.output_array(o), ref[o.name])
    # a subset, in the requested order
    resp = await model.infer(req(*inputs, outputs=("inverted", "sum")))
    assert [o.name for o in resp.outputs] == ["inverted", "sum"]
    np.testing.assert_array_equal(mf.output_array(resp.outputs[0]), ~m)


async def test_string_tensors_as_bytes(registry: AdapterRegistry, built: Built) -> None:
    model = await registry.for_type("onnx").load(spec(), built("make_onnx_model", kind="strings"))
    assert model.metadata.inputs[0].datatype == "BYTES"
    words = np.array(["héllo", "", "x y"], dtype=object)
    for typed in (False, True):
        resp = await model.infer(req(mf.v2_input("s", words, typed=typed)))
        same, length = resp.outputs
        assert (same.datatype, same.shape) == ("BYTES", (3,))
        assert list(mf.output_array(same)) == [w.encode() for w in words]
        assert mf.output_array(length).tolist() == [3]
    with pytest.raises(InvalidInput, match="input 's': element 1 is not UTF-8"):
        await model.infer(req(InferInput("s", "BYTES", (2,), contents=[b"ok", b"\xff\xfe"])))


@pytest.mark.parametrize("typed", [False, True])
async def test_every_numeric_datatype(registry: AdapterRegistry, built: Built, typed: bool) -> None:
    model = await registry.for_type("onnx").load(spec(), built("make_onnx_model", kind="dtypes"))
    rs = np.random.RandomState(3)
    inputs = []
    arrays = {}
    for v2, (np_dtype, _) in mf.ONNX_DTYPES.items():
        if v2 == "BOOL":
            arr = rs.rand(6) > 0.5
        elif np.dtype(np_dtype).kind == "f":
            arr = (rs.rand(6) * 100 - 50).astype(np_dtype)
        else:
            info = np.iinfo(np_dtype)
            arr = np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1], dtype=np_dtype)
        arrays[v2] = arr
        inputs.append(mf.v2_input(f"in_{v2.lower()}", arr, typed=typed))
    resp = await model.infer(req(*inputs))
    got = {o.name: o for o in resp.outputs}
    for v2, arr in arrays.items():
        out = got[f"out_{v2.lower()}"]
        assert out.datatype == v2
        np.testing.assert_array_equal(mf.output_array(out), arr)


async def test_non_tensor_outputs_are_not_served(registry: AdapterRegistry, built: Built) -> None:
    model = await registry.for_type("onnx").load(spec(), built("make_onnx_model", kind="seq"))
    assert [t.name for t in model.metadata.outputs] == ["y"]
    x = np.ones((1, 4), np.float32)
    resp = await model.infer(req(mf.v2_input("x", x)))
    assert [o.name for o in resp.outputs] == ["y"]
    with pytest.raises(InvalidInput, match="requested output 'seq'"):
        await model.infer(req(mf.v2_input("x", x), outputs=("seq",)))


X = np.zeros((2, 4), np.float32).tobytes()

BAD_REQUESTS: list[tuple[str, InferRequest, str, str]] = [
    ("unknown input", req(InferInput("x", "FP32", (2, 4), raw=X), InferInput("z", "FP32", (1,), raw=b"\0" * 4)), "'z'", "not an input"),
    ("missing input", req(), "'x'", "missing"),
    ("duplicate input", req(InferInput("x", "FP32", (2, 4), raw=X), InferInput("x", "FP32", (2, 4), raw=X)), "'x'", "more than once"),
    ("datatype", req(InferInput("x", "FP64", (1, 4), raw=b"\0" * 32)), "'x'", "datatype FP64 does not match"),
    ("unknown datatype", req(InferInput("x", "FLOAT", (2, 4), raw=X)), "'x'", "unknown datatype"),
    ("rank", req(InferInput("x", "FP32", (8,), raw=X)), "'x'", "shape [8] does not match"),
    ("dim", req(InferInput("x", "FP32", (1, 8), raw=X)), "'x'", "shape [1, 8]"),
    ("negative dim", req(InferInput("x", "FP32", (-2, 4), raw=X)), "'x'", "negative"),
    ("raw length", req(InferInput("x", "FP32", (2, 4), raw=X[:-1])), "'x'", "31 raw bytes"),
    ("count", req(InferInput("x", "FP32", (2, 4), contents=[1.0] * 7)), "'x'", "7 values"),
    ("contents type", req(InferInput("x", "FP32", (1, 4), contents=["a", "b", "c", "d"])), "'x'", "must be numbers"),
    ("bool contents", req(InferInput("x", "FP32", (1, 4), contents=[True] * 4)), "'x'", "must be numbers"),
    ("no data", req(InferInput("x", "FP32", (2, 4))), "'x'", "no data"),
    ("raw and typed", req(InferInput("x", "FP32", (1, 4), raw=X[:16], contents=[1.0] * 4)), "'x'", "both"),
    ("unknown output", req(InferInput("x", "FP32", (2, 4), raw=X), outputs=("nope",)), "'nope'", "not an output"),
    ("repeated output", req(InferInput("x", "FP32", (2, 4), raw=X), outputs=("y", "y")), "'y'", "more than once"),
]


@pytest.mark.parametrize(("case", "request_", "name", "needle"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_invalid_requests_are_rejected_before_the_framework_runs(
    registry: AdapterRegistry,
    built: Built,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    request_: InferRequest,
    name: str,
    needle: str,
) -> None:
    model = await registry.for_type("onnx").load(spec(), built("make_onnx_model", kind="linear"))
    calls: list[int] = []
    original = OnnxModel._run

    def spy(self: OnnxModel, *args: Any) -> Any:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(OnnxModel, "_run", spy)
    with pytest.raises(InvalidInput) as err:
        await model.infer(request_)
    assert err.value.code == "invalid_argument"
    assert name in err.value.message and needle in err.value.message, err.value.message
    assert calls == []
    # and the model still answers a good request
    resp = await model.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
    assert calls == [1] and resp.outputs[0].shape == (2, 3)


async def test_inference_runs_in_the_bounded_pool(registry: AdapterRegistry, built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    model = await registry.for_type("onnx").load(spec(), built("make_onnx_model", kind="linear"))
    threads: list[str] = []
    original = OnnxModel._run

    def spy(self: OnnxModel, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(OnnxModel, "_run", spy)
    await model.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
    assert threads and threads[0].startswith("mm-infer")
    assert threads[0] != threading.current_thread().name


async def test_many_concurrent_infers_on_two_models(registry: AdapterRegistry, built: Built) -> None:
    adapter = registry.for_type("onnx")
    p1 = built("make_onnx_model", kind="linear", seed=0)
    p2 = built("make_onnx_model", kind="linear", seed=7)
    m1, m2 = await asyncio.gather(adapter.load(spec("a"), p1), adapter.load(spec("b"), p2))
    rs = np.random.RandomState(4)
    xs = [rs.rand(i % 5 + 1, 4).astype(np.float32) for i in range(80)]
    jobs = [(m1 if i % 2 else m2, x) for i, x in enumerate(xs)]
    resps = await asyncio.gather(*(m.infer(req(mf.v2_input("x", x))) for m, x in jobs))
    for (m, x), resp in zip(jobs, resps, strict=True):
        ref = mf.onnx_reference(p1 if m is m1 else p2, {"x": x})["y"]
        np.testing.assert_array_equal(mf.output_array(resp.outputs[0]), ref)


async def test_unload_frees_and_later_infers_fail(registry: AdapterRegistry, built: Built) -> None:
    adapter = registry.for_type("onnx")
    model = await adapter.load(spec("gone"), built("make_onnx_model", kind="linear"))
    st = await adapter.status()
    assert (st.name, st.ready, st.loaded_models, st.used_bytes) == ("onnx", True, 1, model.size_bytes)
    # an infer in flight during the unload completes; later ones are refused
    pending = asyncio.ensure_future(model.infer(req(InferInput("x", "FP32", (2, 4), raw=X))))
    await model.unload()
    assert model.status is ModelState.UNLOADED
    with pytest.raises(ModelNotLoaded) as err:
        await model.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
    assert err.value.code == "not_found" and "gone" in err.value.message
    try:
        resp = await pending
        assert resp.outputs[0].shape == (2, 3)
    except ModelNotLoaded:
        pass  # it had not started yet: refused like any later call
    await model.unload()  # idempotent
    st = await adapter.status()
    assert (st.loaded_models, st.used_bytes) == (0, 0)


async def test_directory_resolution(registry: AdapterRegistry, tmp_path: Path) -> None:
    adapter = registry.for_type("onnx")
    assert isinstance(adapter, OnnxAdapter)
    # model.onnx at the top wins over other files
    mf.make_onnx_model(tmp_path / "a", filename="model.onnx")
    mf.make_onnx_model(tmp_path / "a" / "old", filename="other.onnx")
    assert adapter.resolve(spec(), tmp_path / "a") == tmp_path / "a" / "model.onnx"
    # else the single .onnx anywhere below
    mf.make_onnx_model(tmp_path / "b" / "1", filename="net.onnx")
    model = await adapter.load(spec(), tmp_path / "b")
    assert model.metadata.inputs[0].name == "x"
    # two candidates: ambiguous
    mf.make_onnx_model(tmp_path / "c", filename="one.onnx")
    mf.make_onnx_model(tmp_path / "c", filename="two.onnx")
    with pytest.raises(ModelLoadError, match="several model files"):
        await adapter.load(spec(), tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(ModelLoadError, match=r"no \.onnx file"):
        await adapter.load(spec(), tmp_path / "d")
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        await adapter.load(spec(), tmp_path / "missing")
    assert err.value.code == "load_failed"


async def test_corrupt_model_fails_with_the_framework_reason_and_process_stays_healthy(
    registry: AdapterRegistry, built: Built, tmp_path: Path
) -> None:
    adapter = registry.for_type("onnx")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ModelLoadError) as err:
        await adapter.load(spec("bad"), bad)
    assert err.value.code == "load_failed"
    assert "bad" in err.value.message and str(bad) in err.value.message
    assert "protobuf" in err.value.message.lower()  # onnxruntime's own words
    good = await adapter.load(spec("good"), built("make_onnx_model", kind="linear"))
    resp = await good.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
    assert resp.outputs[0].shape == (2, 3)
    assert (await adapter.status()).ready


async def test_cuda_request_without_cuda_provider(registry: AdapterRegistry, built: Built) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(Exception) as err:
        await registry.for_type("onnx").load(spec(options={"device": "cuda"}), built("make_onnx_model"))
    assert getattr(err.value, "code", None) == "failed_precondition"
    assert "cuda" in str(err.value)


async def test_request_size_limit(built: Built) -> None:
    registry = build_registry(AdapterSettings(max_request_bytes=16))
    try:
        model = await registry.for_type("onnx").load(spec(), built("make_onnx_model"))
        with pytest.raises(RequestTooLarge) as err:
            await model.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
        assert err.value.code == "resource_exhausted" and "32 bytes" in err.value.message
        resp = await model.infer(req(InferInput("x", "FP32", (1, 4), raw=X[:16])))
        assert resp.outputs[0].shape == (1, 3)
    finally:
        await registry.close()


async def test_standalone_adapter_owns_its_pools(built: Built) -> None:
    adapter = OnnxAdapter(AdapterSettings(infer_workers=1, load_workers=1))
    model = await adapter.load(spec(), built("make_onnx_model"))
    resp = await model.infer(req(InferInput("x", "FP32", (2, 4), raw=X)))
    assert resp.outputs[0].shape == (2, 3)
    await adapter.close()
    assert adapter.pools.closed
    with pytest.raises(ModelLoadError, match="closed"):
        await adapter.load(spec(), built("make_onnx_model"))
