"""XGBoost adapter: regressor, binary and multi-class boosters (json and ubj) against xgboost itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime_adapters import (
    AdapterRegistry,
    InferInput,
    InferRequest,
    InvalidInput,
    ModelLoadError,
    ModelSpec,
    XGBoostAdapter,
)
from runtime_adapters._xgboost import XGBoostModel
from tests import model_factory as mf

Built = Callable[..., Path]


def spec(mid: str = "m", **kw: Any) -> ModelSpec:
    return ModelSpec(model_id=mid, model_type="xgboost", **kw)


def req(*inputs: InferInput) -> InferRequest:
    return InferRequest(model_name="m", inputs=inputs)


X, _ = mf.xgboost_data(8, rows=25, seed=9)


@pytest.mark.parametrize("fmt", ["json", "ubj"])
@pytest.mark.parametrize(
    ("kind", "out_shape", "model_kind"),
    [("regressor", (-1,), "regressor"), ("binary", (-1,), "classifier"), ("classifier", (-1, 3), "classifier")],
)
async def test_predictions_match_xgboost(
    registry: AdapterRegistry, built: Built, fmt: str, kind: str, out_shape: tuple[int, ...], model_kind: str
) -> None:
    path = built("make_xgboost_model", kind=kind, fmt=fmt)
    model = await registry.for_type("xgboost").load(spec(), path)
    assert isinstance(model, XGBoostModel) and model.kind == model_kind
    meta = model.metadata
    assert meta.platform == "xgboost"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("input", "FP32", (-1, 8))]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [("predict", "FP32", out_shape)]
    expected = mf.xgboost_reference(path, X)
    for typed in (False, True):
        for arr in (X, X.astype(np.float64)):
            resp = await model.infer(req(mf.v2_input("input", arr, typed=typed)))
            (out,) = resp.outputs
            assert (out.name, out.datatype) == ("predict", "FP32")
            np.testing.assert_allclose(mf.output_array(out), expected, rtol=1e-6, atol=1e-7)
    if kind == "classifier":
        probs = mf.output_array(out)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


async def test_input_checks(registry: AdapterRegistry, built: Built) -> None:
    model = await registry.for_type("xgboost").load(spec(), built("make_xgboost_model", kind="regressor"))
    with pytest.raises(InvalidInput, match=r"input 'input': shape \[25, 7\] does not match the model's \[-1, 8\]"):
        await model.infer(req(mf.v2_input("input", X[:, :7])))
    with pytest.raises(InvalidInput, match="input 'input': datatype INT32 does not match the model's FP32 or FP64"):
        await model.infer(req(mf.v2_input("input", X.astype(np.int32))))
    with pytest.raises(InvalidInput, match=r"input 'input': shape \[8\]"):
        await model.infer(req(mf.v2_input("input", X[0])))
    with pytest.raises(InvalidInput, match="input 'features' is not an input"):
        await model.infer(req(mf.v2_input("features", X)))


async def test_schema_names_and_directory_with_schema(registry: AdapterRegistry, tmp_path: Path) -> None:
    path = mf.make_xgboost_model(tmp_path, "binary", filename="booster.ubj", fmt="ubj")
    mf.write_schema(tmp_path, [("features", "FP32", [-1, 8])], [("probability", "FP32", [-1])])
    model = await registry.for_type("xgboost").load(spec(), tmp_path)
    assert model.metadata.inputs[0].name == "features"
    resp = await model.infer(req(mf.v2_input("features", X)))
    assert resp.outputs[0].name == "probability"
    np.testing.assert_allclose(mf.output_array(resp.outputs[0]), mf.xgboost_reference(path, X), rtol=1e-6)
    # a schema named by the spec is not mistaken for a second model file
    other = tmp_path / "other"
    mf.make_xgboost_model(other, "regressor", filename="trees.json")
    mf.write_schema(other, [("rows", "FP32", None)], filename="my-schema.json")
    model = await registry.for_type("xgboost").load(spec(schema_path="my-schema.json"), other)
    assert model.metadata.inputs[0].name == "rows"
    mf.write_schema(other, [("a", "FP32", None), ("b", "FP32", None)], filename="two.json")
    with pytest.raises(ModelLoadError, match="takes one input"):
        await registry.for_type("xgboost").load(spec(schema_path="two.json"), other / "trees.json")


async def test_corrupt_booster_then_healthy(registry: AdapterRegistry, built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "model.json"
    bad.write_text('{"learner": "not a booster"}')
    with pytest.raises(ModelLoadError) as err:
        await registry.for_type("xgboost").load(spec("bad"), bad)
    assert err.value.code == "load_failed" and "'bad'" in err.value.message and "XGBoostError" in err.value.message
    model = await registry.for_type("xgboost").load(spec(), built("make_xgboost_model", kind="regressor"))
    assert (await model.infer(req(mf.v2_input("input", X)))).outputs[0].shape == (25,)


async def test_cuda_request_without_a_gpu(registry: AdapterRegistry, built: Built) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(Exception) as err:
        await registry.for_type("xgboost").load(spec(options={"device": "cuda:0"}), built("make_xgboost_model"))
    assert getattr(err.value, "code", None) == "failed_precondition" and "'cuda:0'" in str(err.value)


def test_predict_size_is_from_file_bytes(built: Built) -> None:
    from runtime_adapters import AdapterSettings

    adapter = XGBoostAdapter(AdapterSettings())
    small = built("make_xgboost_model", kind="regressor", n_rounds=5)
    big = built("make_xgboost_model", kind="regressor", n_rounds=100, max_depth=6)
    assert adapter.predict_size(spec(), small) == int(small.stat().st_size * XGBoostAdapter.size_factor)
    assert adapter.predict_size(spec(), big) > 10 * adapter.predict_size(spec(), small)
