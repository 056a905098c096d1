"""Torch adapter: TorchScript (script, trace, schema file) and torch.export programs, against torch itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime_adapters import (
    AdapterRegistry,
    InferenceFailed,
    InferInput,
    InferRequest,
    InvalidInput,
    ModelLoadError,
    ModelNotLoaded,
    ModelSpec,
    ModelState,
    RequestedOutput,
    UnsupportedModelType,
    list_to_raw,
)
from runtime_adapters._torch import TorchModel
from tests import model_factory as mf

Built = Callable[..., Path]


def spec(mtype: str = "pytorch", mid: str = "m", **kw: Any) -> ModelSpec:
    return ModelSpec(model_id=mid, model_type=mtype, **kw)


def req(*inputs: InferInput, outputs: tuple[str, ...] = ()) -> InferRequest:
    return InferRequest(model_name="m", inputs=inputs, outputs=tuple(RequestedOutput(o) for o in outputs))


X = np.random.RandomState(5).rand(3, 4).astype(np.float32)


@pytest.mark.parametrize("method", ["script", "trace"])
async def test_torchscript_linear(registry: AdapterRegistry, built: Built, method: str) -> None:
    path = built("make_torchscript_model", kind="linear", method=method)
    model = await registry.for_type("pytorch").load(spec(), path)
    meta = model.metadata
    assert meta.platform == "pytorch_libtorch"
    # no schema: names from forward, FP32 / [-1] as a hint
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("x", "FP32", (-1,))]
    assert [t.name for t in meta.outputs] == ["OUTPUT__0"]
    (expected,) = mf.torch_reference(path, X)
    for typed in (False, True):
        resp = await model.infer(req(mf.v2_input("x", X, typed=typed)))
        (out,) = resp.outputs
        assert (out.name, out.datatype, out.shape) == ("OUTPUT__0", "FP32", (3, 3))
        np.testing.assert_allclose(mf.output_array(out), expected, rtol=1e-6)


async def test_torchscript_multi_optional_input_and_int_output(registry: AdapterRegistry, built: Built) -> None:
    path = built("make_torchscript_model", kind="multi")
    model = await registry.for_type("torchscript").load(spec("torchscript"), path)
    assert [t.name for t in model.metadata.inputs] == ["x", "idx", "bias"]
    assert [t.name for t in model.metadata.outputs] == ["OUTPUT__0", "OUTPUT__1"]
    idx = np.array([1, -2, 3], dtype=np.int64)
    bias = np.full((3,), 10.0, dtype=np.float32)
    resp = await model.infer(req(mf.v2_input("x", X), mf.v2_input("idx", idx)))
    ref = mf.torch_reference(path, X, idx)
    assert [o.datatype for o in resp.outputs] == ["FP32", "INT64"]
    np.testing.assert_allclose(mf.output_array(resp.outputs[0]), ref[0], rtol=1e-6)
    np.testing.assert_array_equal(mf.output_array(resp.outputs[1]), idx * 2)
    # the optional input is passed by name when given
    resp = await model.infer(req(mf.v2_input("x", X), mf.v2_input("idx", idx), mf.v2_input("bias", bias)))
    np.testing.assert_allclose(mf.output_array(resp.outputs[0]), ref[0] + 10.0, rtol=1e-6)
    with pytest.raises(InvalidInput, match="input 'idx' of model 'm' is missing"):
        await model.infer(req(mf.v2_input("x", X)))


async def test_torchscript_dict_outputs_are_named_by_key_and_bf16_comes_back(
    registry: AdapterRegistry, built: Built
) -> None:
    path = built("make_torchscript_model", kind="dict")
    model = await registry.for_type("pytorch").load(spec(), path)
    assert model.metadata.outputs == ()  # only known after running
    resp = await model.infer(req(mf.v2_input("x", X)))
    by_name = {o.name: o for o in resp.outputs}
    assert set(by_name) == {"double", "bf16"}
    assert by_name["bf16"].datatype == "BF16"
    ref = mf.torch_reference(path, X)
    assert isinstance(ref, dict)
    np.testing.assert_array_equal(mf.output_array(by_name["double"]), ref["double"])
    np.testing.assert_array_equal(mf.output_array(by_name["bf16"]), ref["bf16"])
    resp = await model.infer(req(mf.v2_input("x", X), outputs=("double",)))
    assert [o.name for o in resp.outputs] == ["double"]
    with pytest.raises(InvalidInput, match="requested output 'nope'"):
        await model.infer(req(mf.v2_input("x", X), outputs=("nope",)))


async def test_torchscript_with_schema_is_strict(registry: AdapterRegistry, built: Built, tmp_path: Path) -> None:
    path = mf.make_torchscript_model(tmp_path, kind="multi")
    mf.write_schema(
        tmp_path,
        [("x", "FP32", [-1, 4]), ("idx", "INT64", [-1])],
        [("scores", "FP32", [-1, 3]), ("twice", "INT64", [-1])],
    )
    model = await registry.for_type("torchscript").load(spec("torchscript"), tmp_path)
    assert [(t.name, t.datatype, t.shape) for t in model.metadata.inputs] == [
        ("x", "FP32", (-1, 4)),
        ("idx", "INT64", (-1,)),
    ]
    idx = np.array([4, 5, 6], dtype=np.int64)
    resp = await model.infer(req(mf.v2_input("idx", idx), mf.v2_input("x", X)))
    assert [o.name for o in resp.outputs] == ["scores", "twice"]
    np.testing.assert_allclose(mf.output_array(resp.outputs[0]), mf.torch_reference(path, X, idx)[0], rtol=1e-6)
    with pytest.raises(InvalidInput, match="input 'idx': datatype FP32 does not match the model's INT64"):
        await model.infer(req(mf.v2_input("x", X), mf.v2_input("idx", idx.astype(np.float32))))
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[3, 5\]"):
        await model.infer(req(mf.v2_input("x", np.zeros((3, 5), np.float32)), mf.v2_input("idx", idx)))
    assert path.exists()


async def test_schema_path_option_and_bad_schema(registry: AdapterRegistry, built: Built, tmp_path: Path) -> None:
    mf.make_torchscript_model(tmp_path, kind="linear")
    mf.write_schema(tmp_path / "meta", [("features", "FP32", None)], [("logits", "FP32", [-1, 3])], filename="s.json")
    model = await registry.for_type("pytorch").load(spec(schema_path="meta/s.json"), tmp_path)
    assert [t.name for t in model.metadata.inputs] == ["features"]
    # shape absent from the schema: not checked
    resp = await model.infer(req(mf.v2_input("features", X)))
    assert resp.outputs[0].name == "logits"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read schema"):
        await registry.for_type("pytorch").load(spec(schema_path="broken.json"), tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        await registry.for_type("pytorch").load(spec(schema_path="nope.json"), tmp_path)


async def test_torch_export_metadata_is_exact(registry: AdapterRegistry, built: Built) -> None:
    path = built("make_torch_export_model", kind="multi")
    model = await registry.for_type("pytorch").load(spec(), path)
    meta = model.metadata
    assert meta.platform == "pytorch_torch_export"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("x", "FP32", (-1, 4)), ("idx", "INT64", (-1,))]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [
        ("OUTPUT__0", "FP32", (-1, 3)),
        ("OUTPUT__1", "INT64", (-1,)),
    ]
    idx = np.array([7, 8, 9], dtype=np.int64)
    ref = mf.torch_reference(path, X, idx)
    for typed in (False, True):
        resp = await model.infer(req(mf.v2_input("x", X, typed=typed), mf.v2_input("idx", idx, typed=typed)))
        np.testing.assert_allclose(mf.output_array(resp.outputs[0]), ref[0], rtol=1e-6)
        np.testing.assert_array_equal(mf.output_array(resp.outputs[1]), ref[1])


async def test_torch_export_validates_before_running(
    registry: AdapterRegistry, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = await registry.for_type("torch_export").load(spec("torch_export"), built("make_torch_export_model"))
    calls: list[int] = []
    original = TorchModel._run

    def spy(self: TorchModel, *args: Any) -> Any:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(TorchModel, "_run", spy)
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[2, 5\] does not match the model's \[-1, 4\]"):
        await model.infer(req(mf.v2_input("x", np.zeros((2, 5), np.float32))))
    with pytest.raises(InvalidInput, match="input 'x': datatype INT64"):
        await model.infer(req(mf.v2_input("x", np.zeros((2, 4), np.int64))))
    assert calls == []
    resp = await model.infer(req(mf.v2_input("x", X)))
    assert calls == [1] and resp.outputs[0].shape == (3, 3)


async def test_torch_export_bf16_input_and_output(registry: AdapterRegistry, built: Built) -> None:
    model = await registry.for_type("pytorch").load(spec(), built("make_torch_export_model", kind="bf16"))
    assert model.metadata.inputs[0].datatype == "BF16"
    values = [1.0, -2.5, 0.15625, 3.0] * 2
    for inp in (
        InferInput("x", "BF16", (2, 4), contents=values),
        InferInput("x", "BF16", (2, 4), raw=list_to_raw("BF16", values)),
    ):
        resp = await model.infer(req(inp))
        (out,) = resp.outputs
        assert (out.datatype, out.shape) == ("BF16", (2, 4))
        np.testing.assert_array_equal(mf.output_array(out).reshape(-1), np.array(values, np.float32) * 2)


async def test_framework_errors_are_reported_as_inference_failures(registry: AdapterRegistry, built: Built) -> None:
    # schema-less TorchScript cannot check shapes: torch itself rejects the call
    model = await registry.for_type("pytorch").load(spec(), built("make_torchscript_model"))
    with pytest.raises(InferenceFailed) as err:
        await model.infer(req(mf.v2_input("x", np.zeros((2, 9), np.float32))))
    assert err.value.code == "internal" and "'m'" in err.value.message
    resp = await model.infer(req(mf.v2_input("x", X)))
    assert resp.outputs[0].shape == (3, 3)


async def test_type_and_extension_selection(registry: AdapterRegistry, built: Built, tmp_path: Path) -> None:
    adapter = registry.for_type("pytorch")
    mf.make_torch_export_model(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no \.pt/\.pth file"):
        await adapter.load(spec("torchscript"), tmp_path)
    model = await adapter.load(spec("PyTorch"), tmp_path)
    assert model.metadata.platform == "pytorch_torch_export"
    with pytest.raises(UnsupportedModelType) as err:
        await adapter.load(spec("onnx"), tmp_path)
    assert err.value.code == "invalid_argument" and "'onnx'" in err.value.message


@pytest.mark.parametrize(("mtype", "filename"), [("torchscript", "model.pt"), ("torch_export", "model.pt2")])
async def test_corrupt_files_then_healthy(
    registry: AdapterRegistry, built: Built, tmp_path: Path, mtype: str, filename: str
) -> None:
    bad = tmp_path / filename
    bad.write_bytes(b"PK\x03\x04 this is not a real archive" * 20)
    with pytest.raises(ModelLoadError) as err:
        await registry.for_type(mtype).load(spec(mtype, "broken"), bad)
    assert err.value.code == "load_failed" and "broken" in err.value.message and filename in err.value.message
    model = await registry.for_type(mtype).load(
        spec(mtype), built("make_torchscript_model" if mtype == "torchscript" else "make_torch_export_model")
    )
    resp = await model.infer(req(mf.v2_input("x", X)))
    assert resp.outputs[0].shape == (3, 3)


async def test_cuda_request_without_cuda(registry: AdapterRegistry, built: Built) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(Exception) as err:
        await registry.for_type("pytorch").load(spec(options={"device": "cuda"}), built("make_torchscript_model"))
    assert getattr(err.value, "code", None) == "failed_precondition" and "'cuda'" in str(err.value)
    with pytest.raises(Exception) as err:
        await registry.for_type("pytorch").load(spec(options={"device": "tpu"}), built("make_torchscript_model"))
    assert getattr(err.value, "code", None) == "failed_precondition" and "'tpu'" in str(err.value)


async def test_concurrent_infers_and_unload(registry: AdapterRegistry, built: Built) -> None:
    path = built("make_torch_export_model")
    model = await registry.for_type("pytorch").load(spec(), path)
    rs = np.random.RandomState(6)
    xs = [rs.rand(i % 4 + 1, 4).astype(np.float32) for i in range(40)]
    resps = await asyncio.gather(*(model.infer(req(mf.v2_input("x", x))) for x in xs))
    # the model is row-wise: one reference run over all rows, split back per request
    ref = mf.torch_reference(path, np.vstack(xs))[0]
    got = np.vstack([mf.output_array(r.outputs[0]) for r in resps])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    await model.unload()
    assert model.status is ModelState.UNLOADED
    with pytest.raises(ModelNotLoaded):
        await model.infer(req(mf.v2_input("x", X)))
    assert (await registry.for_type("pytorch").status()).loaded_models == 0
