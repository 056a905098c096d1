"""Shared parts of the bad-input fuzz tests (the fixtures are in conftest.py).

The fuzzed mesh: two instances over the memory store, real grpc.aio and uvicorn servers on
127.0.0.1:0, on their own event loop in a background thread, so that the hypothesis tests are
plain synchronous functions talking to it over the network with per-call deadlines. Model
``lin`` (ONNX, x: FP32 [-1, 4] -> y: FP32 [-1, 3]) is loaded on one of the two, so a request
to the other is forwarded (the holder parses it). The request-size limit is ``LIMIT_BYTES``
(not the default 64 MiB) to prove that the setting is what is enforced.

The ``canary`` fixture sends a known-good request every few milliseconds from its own thread
while a test runs, and fails the test if any of them failed or answered wrongly: the instance
must keep serving others while it is fed garbage.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from protos import grpc_predict_v2_pb2 as pb

LIMIT_BYTES = 4 << 20  # MODELMUX_INSTANCE_MAX_MESSAGE_BYTES of the fuzzed mesh
CALL_TIMEOUT_S = 15.0  # any call still unanswered by then is a hang
GOOD_MODEL = "lin"
INFER = "/inference.GRPCInferenceService/ModelInfer"

# a few hundred examples in total by default; MODELMUX_FUZZ_SCALE=20 for a long local run
SCALE = float(os.environ.get("MODELMUX_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


def good_request() -> tuple[pb.ModelInferRequest, np.ndarray]:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 7.0
    req = pb.ModelInferRequest(model_name=GOOD_MODEL, id="canary")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    req.raw_input_contents.append(x.tobytes())
    return req, x


@dataclass
class Mesh:
    grpc: list[str]
    rest: list[str]
    expected: np.ndarray  # lin's answer to good_request()
    loop: asyncio.AbstractEventLoop
    limit_bytes: int = LIMIT_BYTES
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # ERROR log records of modelmux's own loggers

    def channel(self, address: str) -> grpc.Channel:
        ch = self.channels.get(address)
        if ch is None:
            ch = self.channels[address] = grpc.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 8 << 20)]
            )
        return ch

    def check_good(self, address: str) -> None:
        """A known-good request answers correctly through ``address``."""
        req, _ = good_request()
        call = self.channel(address).unary_unary(INFER)
        resp = pb.ModelInferResponse.FromString(call(req.SerializeToString(), timeout=CALL_TIMEOUT_S))
        got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(tuple(resp.outputs[0].shape))
        assert resp.id == "canary" and np.allclose(got, self.expected, rtol=1e-5, atol=1e-6), (resp, got)




@dataclass
class Canary:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    worst_s: float = 0.0


class ErrorRecords(logging.Handler):
    """Collects ERROR records (a background loop that crashed logs one, and no status shows it)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()} {record.exc_text or ''}"[:2000])


def hostile_key_fields() -> st.SearchStrategy[dict[str, Any]]:
    """modelInfo.key extras with values of the wrong type or out of range (NaN, Infinity, 1e308, 2**70)."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
    tree = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)), max_leaves=6)
    value = st.one_of(
        st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1, 1 << 70, 1 << 62, "1e999", "abc", [1], {"a": 1}]),
        leaf,
        tree,
    )
    keys = ("storage_key", "storage_params", "schema_path", "tenant", "min_copies", "max_copies", "pinned", "size_bytes", "options")
    return st.dictionaries(st.sampled_from(keys), value, min_size=1, max_size=4)


def valid_ids() -> st.SearchStrategy[str]:
    return st.from_regex(r"\Afz[A-Za-z0-9._:@+=\-]{0,20}\Z")
