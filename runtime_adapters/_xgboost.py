"""XGBoost adapter: boosters saved as ``.json`` or ``.ubj`` (file, or a directory with
``model.json``/``model.ubj`` or exactly one such file besides ``schema.json``).

Input: one 2-D tensor ``[-1, num_features]`` (feature count from the booster), FP32 or
FP64 (both accepted; metadata says FP32), named ``input`` unless the schema file names it.
NaN means "missing", as in XGBoost.

Output: one tensor named ``predict`` (or the schema's first output name), FP32, the
booster's ``inplace_predict`` for the objective read from the booster's own config:

* regression (``reg:*``, ``count:*``, ``survival:*``, ``rank:*``): ``[-1]`` predicted values
  (``[-1, num_target]`` for multi-target models);
* ``binary:logistic``: ``[-1]`` probability of class 1 (``binary:logitraw``: the margin,
  ``binary:hinge``: 0/1);
* ``multi:softprob``: ``[-1, num_class]`` class probabilities;
* ``multi:softmax``: ``[-1]`` predicted class index (as a float).

``ModelMetadata.platform`` is ``xgboost``; whether the model is a classifier or a
regressor is recorded in ``XGBoostModel.kind``.

Inference uses ``Booster.inplace_predict`` (thread-safe; it releases the GIL) with
``nthread = AdapterSettings.xgboost_threads``, except for small batches of tree ensembles:
those run on Treelite's GTIL (``runtime_adapters._treelite``: ~10-30 us a call instead of
~200, answers equal to float32 rounding, checked at load), up to
``AdapterSettings.xgboost_treelite_max_work`` rows x trees. ``XGBoostModel.treelite_rows``
says up to how many rows a model's calls take that path (0: never, and ``treelite_note`` why).
A ``gblinear`` booster has no inplace predict: it predicts through a ``DMatrix``.

Size: floor = the booster's serialized UBJSON bytes (``save_raw("ubj")``, close to the
trees' in-memory form), plus treelite's serialized copy of the trees when the model has the
small-batch path; the measured RSS delta over it (see ``_memory``); models are
small, so page granularity makes deltas coarse and the floor usually decides.
``predict_size`` = file bytes x 1.5.

Device: ``{"device": "cuda[:N]"}`` works only with an XGBoost built with CUDA, else the
load fails with ``DeviceUnavailable``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._base import FrameworkAdapter, FrameworkModel, LoadResult, cuda_index, requested_device
from ._errors import DeviceUnavailable, InferenceFailed, ModelLoadError
from ._schema import load_schema
from ._tensors import Decoded, InputSpec, encode_output
from ._treelite import build as build_treelite
from ._types import InferOutput, ModelMetadata, ModelSpec, TensorMetadata

PLATFORM = "xgboost"
DEFAULT_INPUT = "input"
DEFAULT_OUTPUT = "predict"


class XGBoostModel(FrameworkModel):
    @property
    def kind(self) -> str:
        """``classifier`` or ``regressor`` (from the booster's objective)."""
        return str(self._kind)

    def __init__(self, adapter: FrameworkAdapter, spec: ModelSpec, result: LoadResult, size_bytes: int) -> None:
        super().__init__(adapter, spec, result, size_bytes)
        self._kind = result.extra["kind"]
        fast = result.extra["treelite"]
        self.treelite_rows = fast.max_rows if fast is not None else 0
        self.treelite_note = str(result.extra["treelite_note"])
        self._input_name = result.metadata.inputs[0].name
        self._output_name = result.metadata.outputs[0].name

    def _run(
        self, handle: Any, extra: Any, inputs: dict[str, Decoded], wanted: Sequence[str] | None
    ) -> list[InferOutput]:
        x = inputs[self._input_name].array
        fast = extra["treelite"]
        try:
            if fast is not None and fast.takes(x):
                pred = fast.predict(x)
            elif extra["linear"]:
                import xgboost  # loaded with the model

                pred = handle.predict(xgboost.DMatrix(x, nthread=self._adapter.settings.xgboost_threads))
            else:
                pred = handle.inplace_predict(x, validate_features=False)
        except Exception as exc:
            raise InferenceFailed(f"model '{self.spec.model_id}': xgboost failed: {exc}") from exc
        return [encode_output(self._output_name, np.asarray(pred, dtype=np.float32))]


def _objective_outputs(objective: str, num_class: int, num_target: int) -> tuple[str, tuple[int, ...]]:
    kind = "classifier" if objective.startswith(("binary:", "multi:")) else "regressor"
    if objective == "multi:softprob":
        return kind, (-1, max(num_class, 1))
    if kind == "regressor" and num_target > 1:
        return kind, (-1, num_target)
    return kind, (-1,)


class XGBoostAdapter(FrameworkAdapter):
    name = "xgboost"
    model_types = ("xgboost",)
    module: ClassVar[str] = "xgboost"
    extensions: ClassVar[tuple[str, ...]] = (".json", ".ubj")
    size_factor: ClassVar[float] = 1.5

    _xgb: Any = None

    def _model_class(self) -> type[FrameworkModel]:
        return XGBoostModel

    def _is_candidate(self, spec: ModelSpec, path: Path) -> bool:
        if not super()._is_candidate(spec, path):
            return False
        # a schema named by the spec is not a model file either
        return not (spec.schema_path and path.name == Path(spec.schema_path).name)

    def _initialise(self) -> None:
        import xgboost

        self._xgb = xgboost

    def _load_model(self, spec: ModelSpec, model_file: Path) -> LoadResult:
        xgb = self._xgb
        device = requested_device(spec)
        if device != "cpu":
            cuda_index(device)
            if not xgb.build_info().get("USE_CUDA"):
                raise DeviceUnavailable(
                    f"model '{spec.model_id}' asks for device '{device}' but this xgboost is built without CUDA"
                )
        booster = xgb.Booster(model_file=str(model_file))
        booster.set_param({"nthread": self.settings.xgboost_threads})
        if device != "cpu":
            # xgboost falls back to the CPU (with a logged warning) when it sees no GPU
            with xgb.config_context(verbosity=0):
                booster.set_param({"device": device})
                actual = json.loads(booster.save_config())["learner"]["generic_param"].get("device", "cpu")
            if not str(actual).startswith("cuda"):
                raise DeviceUnavailable(f"model '{spec.model_id}' asks for device '{device}' but xgboost sees no GPU")
        config = json.loads(booster.save_config())
        learner = config.get("learner", {})
        objective = str(learner.get("objective", {}).get("name", ""))
        mparams = learner.get("learner_model_param", {})
        num_class = int(mparams.get("num_class", "0") or 0)
        num_target = int(mparams.get("num_target", "1") or 1)
        n_features = int(booster.num_features())
        kind, out_shape = _objective_outputs(objective, num_class, num_target)

        in_name, out_name = DEFAULT_INPUT, DEFAULT_OUTPUT
        schema = load_schema(spec, model_file)
        if schema is not None:
            if len(schema.inputs) > 1:
                raise ModelLoadError(
                    f"model '{spec.model_id}': an XGBoost model takes one input, the schema lists {len(schema.inputs)}"
                )
            if schema.inputs:
                in_name = schema.inputs[0].name
            if schema.outputs:
                out_name = schema.outputs[0].name
        in_meta = TensorMetadata(in_name, "FP32", (-1, n_features))
        booster_kind = str(learner.get("gradient_booster", {}).get("name", ""))
        fast, note = None, "the model runs on a GPU"
        if device == "cpu":
            fast, note = build_treelite(
                booster,
                objective,
                booster_kind,
                self.settings.xgboost_threads,
                self.settings.xgboost_treelite_max_work,
                spec.model_id,
            )
        metadata = ModelMetadata(
            name=spec.model_id,
            platform=PLATFORM,
            versions=(),
            inputs=(in_meta,),
            outputs=(TensorMetadata(out_name, "FP32", out_shape),),
        )
        return LoadResult(
            handle=booster,
            metadata=metadata,
            inputs={in_name: InputSpec(meta=in_meta, accepted=frozenset({"FP32", "FP64"}))},
            # the trees treelite holds besides xgboost's (about half the booster's size)
            framework_bytes=len(booster.save_raw("ubj")) + (fast.nbytes if fast is not None else 0),
            extra={
                "kind": kind,
                "objective": objective,
                "treelite": fast,
                "treelite_note": note,
                "linear": booster_kind == "gblinear",
            },
        )
