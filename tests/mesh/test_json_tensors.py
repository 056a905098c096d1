"""V2 JSON bodies: small ones are parsed whole by json.loads (faster), larger ones with their numeric
arrays cut out and read in windows (bounded memory). Both must give the same answer, or the same error."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import mesh._json_tensors as jt
from mesh._errors import status_for
from runtime_adapters._tensors import decode_input

BODIES: list[Any] = [
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]},
    {"inputs": [{"name": "x", "shape": [2, 20], "datatype": "INT64", "data": list(range(-20, 20))}]},
    {"inputs": [{"name": "x", "shape": [40], "datatype": "INT32", "data": [1.5] * 40}]},  # floats for an int type
    {"inputs": [{"name": "x", "shape": [40], "datatype": "FP32", "data": [1e39] * 40}]},  # out of range for FP32
    {"inputs": [{"name": "x", "shape": [40], "datatype": "INT8", "data": [300] * 40}]},  # out of range for INT8
    {"inputs": [{"name": "x", "shape": [4, 10], "datatype": "FP64", "data": [[0.25] * 10] * 4}]},  # nested
    {"inputs": [{"name": "x", "shape": [3, 20], "datatype": "FP32", "data": [0.5] * 40}]},  # shape mismatch
    {"inputs": [{"name": "a", "shape": [30], "datatype": "UINT8", "data": [7] * 30},
                {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
     "parameters": {"p": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]}},
    {"inputs": [{"name": "x", "shape": [40], "datatype": "BOOL", "data": [True, False] * 20}]},
]


def _decode(body: bytes, monkeypatch: pytest.MonkeyPatch, plain_max: int) -> Any:
    """What a model would be given for ``body``: each input decoded as the adapters decode it, or the
    error's status and message (the bounded path refuses some inputs while reading them, the adapter
    refuses the same inputs, with the same words, when the body took the plain path)."""
    monkeypatch.setattr(jt, "PLAIN_MAX_BYTES", plain_max)
    try:
        req = jt.loads_infer_request("m", body)
        inputs = [(t.name, t.datatype, list(t.shape), decode_input(t, None).array.tolist()) for t in req.inputs]
    except Exception as exc:
        status, message = status_for(exc)
        return status.http, message
    return inputs, req.parameters


@pytest.mark.parametrize("doc", BODIES, ids=range(len(BODIES)))
def test_small_bodies_decode_as_the_bounded_path_does(doc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(doc).encode()
    assert len(body) <= jt.PLAIN_MAX_BYTES
    plain = _decode(body, monkeypatch, jt.PLAIN_MAX_BYTES)
    cut = _decode(body, monkeypatch, 0)
    assert plain == cut


def test_a_small_body_over_an_explicit_cost_limit_takes_the_bounded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut never lets through what the bounded path refuses: with a cost limit the whole body
    exceeds but its arrays cut out do not, the body is still decoded (by the bounded path)."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 200], "datatype": "FP32", "data": [0.5] * 200}]}).encode()
    limit = jt._object_cost(body) - 1
    req = jt.loads_infer_request("m", body, max_object_cost=limit)
    assert np.asarray(req.inputs[0].contents).shape == (200,)
