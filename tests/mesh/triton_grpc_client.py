"""Runs tritonclient.grpc in a process of its own (``python -m tests.mesh.triton_grpc_client URL MODEL ROWS``).

tritonclient.grpc and the kserve SDK both register ``inference.*`` messages in protobuf's default
descriptor pool, so they cannot be imported by one process; the test suite imports the kserve
SDK, and talks to tritonclient.grpc through this script. Prints the answer as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tg


def main() -> None:
    url, model, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = tg.InferenceServerClient(url=url)
    try:
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7.0
        inp = tg.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = client.infer(model, [inp])
        meta = client.get_model_metadata(model, as_json=True)
        out = {"ready": client.is_model_ready(model), "y": r.as_numpy("y").tolist(), "inputs": [t["name"] for t in meta["inputs"]]}
    finally:
        client.close()
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
