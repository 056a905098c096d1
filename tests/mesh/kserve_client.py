"""Runs the kserve SDK's clients in a process of their own
(``python -m tests.mesh.kserve_client REST_ADDR GRPC_ADDR MODEL``).

The kserve SDK and tritonclient.grpc both register ``inference.*`` messages in protobuf's default
descriptor pool, so one process cannot import both; the suite imports tritonclient.grpc, and talks
to the kserve SDK through this script. Prints what each client answered as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def x_rows(rows: int) -> np.ndarray:
    return (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7.0).astype(np.float32)


async def main(rest: str, grpc_addr: str, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = f"http://{rest}"
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        out["v2_ready"] = await v2.is_model_ready(base, model)
        for binary in (True, False):
            x = x_rows(2)
            inp = InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            params = {"binary_data_output": True} if binary else None
            resp = await v2.infer(base, InferRequest(model, [inp], parameters=params), model_name=model)
            out[f"v2_binary_{binary}"] = {"y": resp.outputs[0].as_numpy().tolist(), "model_name": resp.model_name}
    finally:
        await v2.close()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    try:
        out["v1_ready"] = await v1.is_model_ready(base, model)
        out["v1"] = (await v1.infer(base, {"instances": x_rows(2).tolist()}, model_name=model))["predictions"]
    finally:
        await v1.close()
    g = InferenceGRPCClient(grpc_addr, timeout=60)
    try:
        out["grpc_ready"] = await g.is_model_ready(model)
        x = x_rows(4)
        inp = InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out["grpc"] = (await g.infer(InferRequest(model, [inp]))).outputs[0].as_numpy().tolist()
    finally:
        await g.close()
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))))
