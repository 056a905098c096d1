"""XGBoost's small-batch forward on Treelite's GTIL (runtime_adapters._treelite): which calls take
it, that its answers are xgboost's to float32 rounding, and every case that must stay on xgboost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from runtime_adapters import (
    AdapterRegistry,
    AdapterSettings,
    InferenceFailed,
    InferRequest,
    ModelSpec,
    _treelite,
    build_registry,
)
from runtime_adapters._xgboost import XGBoostModel
from tests import model_factory as mf

N_FEATURES = 6


def train(tmp_path: Path, objective: str, *, rounds: int = 10, **params: Any) -> Path:
    rs = np.random.RandomState(3)
    x = rs.standard_normal((400, N_FEATURES)).astype(np.float32)
    x[rs.rand(*x.shape) < 0.1] = np.nan
    if objective.startswith("multi:"):
        y = rs.randint(0, 3, 400).astype(np.float32)
        params["num_class"] = 3
    elif objective.startswith("binary:"):
        y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) > 0).astype(np.float32)
    elif objective.startswith("count:"):
        y = rs.poisson(2.0, 400).astype(np.float32)
    else:
        y = (np.nan_to_num(x[:, 0]) * 2 + rs.standard_normal(400)).astype(np.float32)
    if params.get("booster") != "gblinear":
        params.setdefault("max_depth", 4)
    booster = xgb.train(
        {"objective": objective, "nthread": 1, "seed": 1, **params},
        xgb.DMatrix(x, label=y),
        num_boost_round=rounds,
    )
    path = tmp_path / f"{objective.replace(':', '_')}-{params.get('booster', 'gbtree')}.json"
    booster.save_model(str(path))
    return path


def rows(n: int, seed: int = 11) -> np.ndarray:
    rs = np.random.RandomState(seed)
    x = (rs.standard_normal((n, N_FEATURES)) * rs.choice([0.1, 1.0, 30.0], (n, N_FEATURES))).astype(
        np.float32
    )
    x[rs.rand(n, N_FEATURES) < 0.15] = np.nan
    return x


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    booster = xgb.Booster(model_file=str(path))
    return np.asarray(booster.inplace_predict(x), dtype=np.float32)


async def answer(model: XGBoostModel, x: np.ndarray) -> np.ndarray:
    resp = await model.infer(InferRequest(model_name="m", inputs=(mf.v2_input("input", x),)))
    return mf.output_array(resp.outputs[0])


async def load(registry: AdapterRegistry, path: Path) -> XGBoostModel:
    model = await registry.for_type("xgboost").load(
        ModelSpec(model_id="m", model_type="xgboost"), path
    )
    assert isinstance(model, XGBoostModel)
    return model


def refuse_xgboost(model: XGBoostModel) -> None:
    """From now on a call that reaches xgboost's predict fails (to see which path answered)."""

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("inplace_predict called")

    model._handle.inplace_predict = boom


@pytest.mark.parametrize(
    ("objective", "params"),
    [
        ("binary:logistic", {}),
        ("multi:softprob", {}),
        ("reg:squarederror", {}),
        ("count:poisson", {}),
        ("binary:logistic", {"booster": "dart", "rate_drop": 0.3}),
    ],
)
async def test_small_batches_answer_on_treelite_as_xgboost_does(
    registry: AdapterRegistry, tmp_path: Path, objective: str, params: dict[str, Any]
) -> None:
    path = train(tmp_path, objective, **params)
    model = await load(registry, path)
    trees = 10 * (3 if objective.startswith("multi:") else 1)
    assert model.treelite_rows == 2048 // trees, model.treelite_note
    x = rows(300)
    small, large = x[: model.treelite_rows], x[: model.treelite_rows + 1]
    want_large = reference(path, large)
    # a batch over the limit is xgboost's own answer, to the bit
    np.testing.assert_array_equal(await answer(model, large), want_large)
    refuse_xgboost(model)
    for batch in (small[:1], small[:7], small, small.astype(np.float64)):
        got = await answer(model, batch)
        want = reference(path, batch.astype(np.float32))
        assert got.shape == want.shape
        # float32 rounding: the trees are summed in another order
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-7)
    with pytest.raises(InferenceFailed, match="inplace_predict called"):
        await answer(model, large)


@pytest.mark.parametrize("objective", ["multi:softmax", "binary:hinge"])
async def test_discrete_answers_stay_on_xgboost(
    registry: AdapterRegistry, tmp_path: Path, objective: str
) -> None:
    path = train(tmp_path, objective)
    model = await load(registry, path)
    assert model.treelite_rows == 0 and "discrete" in model.treelite_note
    x = rows(5)
    np.testing.assert_array_equal(await answer(model, x), reference(path, x))


async def test_a_linear_booster_stays_on_xgboost(registry: AdapterRegistry, tmp_path: Path) -> None:
    """gblinear: no trees for treelite, and no inplace predict in xgboost either (a DMatrix)."""
    path = train(tmp_path, "reg:squarederror", booster="gblinear")
    model = await load(registry, path)
    assert model.treelite_rows == 0 and "gblinear" in model.treelite_note
    x = np.nan_to_num(rows(5))
    want = xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(x))
    np.testing.assert_allclose(await answer(model, x), want, rtol=1e-6)


async def test_a_failed_self_check_keeps_xgboost_answers(
    registry: AdapterRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = train(tmp_path, "binary:logistic")
    real = _treelite.TreeliteForward.predict

    def off_by_a_little(self: _treelite.TreeliteForward, x: np.ndarray) -> np.ndarray:
        return real(self, x) + np.float32(1e-4)

    monkeypatch.setattr(_treelite.TreeliteForward, "predict", off_by_a_little)
    model = await load(registry, path)
    assert model.treelite_rows == 0 and "self-check failed" in model.treelite_note
    x = rows(3)
    np.testing.assert_array_equal(await answer(model, x), reference(path, x))


@pytest.mark.parametrize(("max_work", "expected_rows"), [(0, 0), (9, 0), (35, 3)])
async def test_the_work_limit_sets_the_rows(
    tmp_path: Path, max_work: int, expected_rows: int
) -> None:
    path = train(tmp_path, "reg:squarederror")  # 10 trees
    registry = build_registry(
        AdapterSettings(infer_workers=2, load_workers=1, xgboost_treelite_max_work=max_work)
    )
    try:
        model = await load(registry, path)
        assert model.treelite_rows == expected_rows, model.treelite_note
        x = rows(4)
        np.testing.assert_allclose(await answer(model, x), reference(path, x), rtol=1e-6, atol=2e-7)
        if expected_rows:
            refuse_xgboost(model)
            await answer(model, x[:expected_rows])
            with pytest.raises(InferenceFailed):
                await answer(model, x[: expected_rows + 1])
    finally:
        await registry.close()


async def test_many_threads_answer_the_same(registry: AdapterRegistry, tmp_path: Path) -> None:
    """Concurrent small calls through the infer pool (GTIL runs without the GIL)."""
    import asyncio

    path = train(tmp_path, "multi:softprob")
    model = await load(registry, path)
    x = rows(200)
    batches = [x[i : i + 5] for i in range(0, 200, 5)]
    got = await asyncio.gather(*(answer(model, b) for b in batches))
    for b, g in zip(batches, got, strict=True):
        np.testing.assert_allclose(g, reference(path, b), rtol=1e-6, atol=2e-7)


async def test_the_treelite_copy_counts_in_the_size(tmp_path: Path) -> None:
    """The converted trees are memory too: the size floor holds them (measured deltas off)."""
    path = train(tmp_path, "binary:logistic", rounds=60)
    sizes = {}
    for work in (0, 100_000):
        registry = build_registry(
            AdapterSettings(infer_workers=1, load_workers=1, measure_load_rss=False, xgboost_treelite_max_work=work)
        )
        try:
            model = await load(registry, path)
            sizes[work] = (model.size_bytes, model.treelite_rows)
        finally:
            await registry.close()
    booster_bytes = len(xgb.Booster(model_file=str(path)).save_raw("ubj"))
    assert sizes[0] == (booster_bytes, 0)
    assert sizes[100_000][1] > 0 and booster_bytes * 1.2 < sizes[100_000][0] < booster_bytes * 2


async def test_a_categorical_split_answers_as_xgboost_does(registry: AdapterRegistry, tmp_path: Path) -> None:
    rs = np.random.RandomState(5)
    x = rs.standard_normal((400, N_FEATURES)).astype(np.float32)
    x[:, 0] = rs.randint(0, 8, 400)
    y = np.isin(x[:, 0], (1, 4, 6)).astype(np.float32)
    types = ["c"] + ["q"] * (N_FEATURES - 1)
    dm = xgb.DMatrix(x, label=y, feature_types=types, enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "tree_method": "hist", "nthread": 1}, dm, 10)
    path = tmp_path / "categorical.json"
    booster.save_model(str(path))
    model = await load(registry, path)
    assert model.treelite_rows > 0, model.treelite_note
    probe = rows(40)
    probe[:, 0] = rs.randint(0, 10, 40)  # codes seen in training and unseen ones
    probe[::7, 0] = np.nan
    refuse_xgboost(model)
    got = await answer(model, probe)
    np.testing.assert_allclose(got, reference(path, probe), rtol=1e-6, atol=2e-7)
