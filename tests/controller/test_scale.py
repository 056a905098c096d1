"""500 Predictors through the stand-in API server, the controller and a real local mesh: all Loaded."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tests.controller.k8s_env import ControllerEnv
from tests.mesh.models import add_model, answer, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"
N = 500

log = logging.getLogger(__name__)


def _predictor(name: str, path: Path) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"modelType": {"name": "onnx"}, "path": str(path)},
    }


async def test_500_predictors_all_loaded(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    paths = [add_model(tmp_path / "models" / f"m{k:03d}" / "model.onnx", float(k), table_bytes=4 << 10) for k in range(N)]
    ctl = await env.start_controller(workers=16)
    t0 = time.monotonic()
    for k, p in enumerate(paths):
        env.api.create(_predictor(f"p{k:03d}", p))

    def all_loaded() -> bool:
        for k in range(N):
            st = env.status("predictors", f"p{k:03d}")
            if st.get("activeModelState") != "Loaded" or not st.get("available") or not st.get("holders"):
                return False
        return True

    await env.wait(all_loaded, timeout_s=150, what=f"{N} predictors Loaded")
    elapsed = time.monotonic() - t0
    log.warning("%d predictors Loaded in %.1fs (%d status writes, %d reconciles)", N, elapsed, ctl.status_writes, ctl.reconciles)
    for obj in env.api.items("predictors"):
        assert obj["metadata"]["finalizers"] == ["modelmux.io/finalizer"]
        assert obj["status"]["transitionStatus"] == "UpToDate" and obj["status"]["observedGeneration"] == 1
    assert len(ctl.state.vmodels.items) == N
    # spot checks: each vModel answers with its own model
    async with grpc.aio.insecure_channel(env.cluster.grpc[0]) as channel:
        call = channel.unary_unary(INFER)
        for k in (0, 137, 499):
            out = answer(await call(request_bytes(f"p{k:03d}", np.zeros((1, 4), np.float32)), timeout=20))
            assert float(out[0, 0]) == float(k)
