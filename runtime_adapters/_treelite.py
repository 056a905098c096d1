"""Small-batch forward for XGBoost tree ensembles: Treelite's GTIL, one C call per batch.

``Booster.inplace_predict`` costs ~170-260 us whatever the batch on this machine, most of it
fixed: argument JSON, array-interface dicts, a proxy DMatrix, the output's shape handling,
about half of it Python holding the GIL beside the event loop. Treelite's General Tree
Inference Library walks the same trees in ~10-80 us for one row (20-500 trees), but it
scales worse with rows: its cost grows by ~0.07 us per row and tree against xgboost's ~0.01.
So a call takes this path when ``rows x trees <= AdapterSettings.xgboost_treelite_max_work``
(2,048 by default, under the crossover measured at 20, 200 and 500 trees: ~2,500-3,200) and
xgboost's otherwise. The tiny models a mesh serves most answer every batch here.

Treelite's Python ``gtil.predict`` spends ~50 us rebuilding a config and reading model
properties per call; this module calls the three documented C API functions
(``TreeliteGTILParseConfig``, ``TreeliteGTILGetOutputShape``, ``TreeliteGTILPredict``)
through ctypes with the config parsed once per thread count, the output shape read once
per model, and one ``np.empty`` per call. ctypes drops the GIL for the call.

Answers. Treelite sums the trees in float32 too, in another order, so an answer can differ
from xgboost's in the last bit (measured: <= 1.2e-7 absolute on probabilities). Objectives whose answer is
discrete (``multi:softmax``'s class index, ``binary:hinge``'s 0/1) stay on xgboost, where
such a difference could change the answer rather than round it. Boosters other than
``gbtree``/``dart`` (``gblinear``), a failed conversion, or a load-time self-check whose
answers differ from xgboost's beyond float32 rounding (probe rows with NaNs and several
scales, one row and a batch) leave the model on xgboost, and the load says why.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# answers' objectives that are a class index or a 0/1 decision: a last-bit difference in the
# margin could change them, so they stay on xgboost
DISCRETE_OBJECTIVES = frozenset({"multi:softmax", "binary:hinge"})
TREE_BOOSTERS = frozenset({"gbtree", "dart"})
PROBE_ROWS = 64
RTOL = 1e-5
ATOL = 1e-6


class _Lib:
    """The three GTIL entry points of ``libtreelite`` (found by the treelite package)."""

    _instance: _Lib | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        from treelite.libpath import find_lib_path

        self.cdll = ctypes.CDLL(str(find_lib_path()[0]))
        u64p = ctypes.POINTER(ctypes.c_uint64)
        lib = self.cdll
        lib.TreeliteGetLastError.restype = ctypes.c_char_p
        lib.TreeliteGetLastError.argtypes = []
        lib.TreeliteGTILParseConfig.restype = ctypes.c_int
        lib.TreeliteGTILParseConfig.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.TreeliteGTILGetOutputShape.restype = ctypes.c_int
        lib.TreeliteGTILGetOutputShape.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint64,
            ctypes.c_void_p,
            ctypes.POINTER(u64p),
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.TreeliteGTILPredict.restype = ctypes.c_int
        lib.TreeliteGTILPredict.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint64,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.predict_fn = lib.TreeliteGTILPredict
        # parsed configs, one per thread count, kept for the process's life (a few bytes each)
        self._configs: dict[int, ctypes.c_void_p] = {}

    @classmethod
    def get(cls) -> _Lib:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def check(self, ret: int) -> None:
        if ret != 0:
            raise RuntimeError(
                (self.cdll.TreeliteGetLastError() or b"unknown treelite error").decode()
            )

    def config(self, nthread: int) -> ctypes.c_void_p:
        with self._lock:
            handle = self._configs.get(nthread)
            if handle is None:
                handle = ctypes.c_void_p()
                spec = json.dumps({"predict_type": "default", "nthread": nthread}).encode()
                self.check(self.cdll.TreeliteGTILParseConfig(spec, ctypes.byref(handle)))
                self._configs[nthread] = handle
            return handle

    def values_per_row(self, model_handle: ctypes.c_void_p, config: ctypes.c_void_p) -> int:
        shape_ptr = ctypes.POINTER(ctypes.c_uint64)()
        ndim = ctypes.c_uint64()
        self.check(
            self.cdll.TreeliteGTILGetOutputShape(
                model_handle, 1, config, ctypes.byref(shape_ptr), ctypes.byref(ndim)
            )
        )
        shape = [int(shape_ptr[i]) for i in range(ndim.value)]
        return int(np.prod(shape[1:])) if len(shape) > 1 else 1


@dataclass(frozen=True)
class TreeliteForward:
    """A booster's trees converted for GTIL; ``predict`` answers as ``inplace_predict`` does."""

    model: Any  # treelite.Model: owns the handle below
    handle: ctypes.c_void_p
    config: ctypes.c_void_p
    predict_fn: Any
    num_feature: int
    per_row: int
    max_rows: int  # rows up to which a call comes here (rows x trees <= max work)
    nbytes: int  # the converted trees' serialized size: part of the model's size floor

    def takes(self, x: np.ndarray) -> bool:
        return 0 < x.shape[0] <= self.max_rows and x.ndim == 2 and x.shape[1] == self.num_feature

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = x.shape[0]
        out = np.empty((rows, self.per_row), dtype=np.float32)
        ret = self.predict_fn(
            self.handle, x.ctypes.data, b"float32", rows, out.ctypes.data, self.config
        )
        if ret != 0:
            _Lib.get().check(ret)
        return out.reshape(rows) if self.per_row == 1 else out


def build(
    booster: Any, objective: str, kind: str, nthread: int, max_work: int, model_id: str
) -> tuple[TreeliteForward | None, str]:
    """The small-batch forward for ``booster`` (``kind``: its ``gradient_booster`` name), or None
    and why the model stays on xgboost."""
    if max_work <= 0:
        return None, "off (xgboost_treelite_max_work is 0)"
    if objective in DISCRETE_OBJECTIVES:
        return None, f"objective {objective} answers a discrete value"
    if kind not in TREE_BOOSTERS:
        return None, f"booster {kind or 'unknown'} is not a tree ensemble"
    try:
        import treelite
    except ImportError:
        return None, "treelite is not installed"
    try:
        model = treelite.frontend.from_xgboost(booster)
    except Exception as exc:  # an XGBoost feature treelite does not read
        return None, f"treelite cannot read it: {str(exc).strip().splitlines()[-1][:200]}"
    trees = int(model.num_tree)
    max_rows = max_work // max(trees, 1)
    if max_rows < 1:
        return None, f"{trees} trees: even one row is over xgboost_treelite_max_work ({max_work})"
    if model.input_type != "float32" or model.output_type != "float32":
        return None, f"treelite model types {model.input_type}/{model.output_type}, not float32"
    lib = _Lib.get()
    cfg = lib.config(nthread)
    handle = model.handle
    forward = TreeliteForward(
        model=model,
        handle=handle,
        config=cfg,
        predict_fn=lib.predict_fn,
        num_feature=int(model.num_feature),
        per_row=lib.values_per_row(handle, cfg),
        max_rows=max_rows,
        nbytes=len(model.serialize_bytes()),
    )
    why = self_check(forward, booster)
    if why:
        log.warning("model '%s' stays on xgboost: treelite's answers differ (%s)", model_id, why)
        return None, f"self-check failed: {why}"
    return forward, f"batches up to {max_rows} rows on treelite ({trees} trees)"


def probe_rows(num_feature: int, rows: int = PROBE_ROWS) -> np.ndarray:
    """Rows that reach many leaves: features at scales 0.01-1000, small whole numbers (category
    codes, for categorical splits), some NaN, some zero."""
    rng = np.random.default_rng(20261204)
    scales = np.array([0.01, 1.0, 10.0, 1000.0], dtype=np.float64)
    x = (
        rng.standard_normal((rows, num_feature))
        * scales[rng.integers(0, len(scales), (rows, num_feature))]
    )
    codes = rng.random((rows, num_feature)) < 0.25
    x[codes] = rng.integers(0, 10, int(codes.sum()))
    x[rng.random((rows, num_feature)) < 0.1] = np.nan
    x[rng.random((rows, num_feature)) < 0.05] = 0.0
    return np.ascontiguousarray(x, dtype=np.float32)


def self_check(forward: TreeliteForward, booster: Any) -> str:
    """'' when treelite answers the probe rows as xgboost does (to float32 rounding), else why not."""
    x = probe_rows(forward.num_feature, max(1, min(PROBE_ROWS, forward.max_rows)))
    for batch in (x[:1], x):
        want = np.asarray(booster.inplace_predict(batch, validate_features=False), dtype=np.float32)
        got = forward.predict(batch)
        if got.shape != want.shape:
            return f"shape {got.shape} against xgboost's {want.shape}"
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            worst = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
            return f"{batch.shape[0]} probe rows differ by up to {worst:.3g}"
    return ""
