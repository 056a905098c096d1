"""Fixtures of the bad-input fuzz tests: one in-process mesh per module, a canary (see fuzzhelp)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.fuzz.fuzzhelp import (
    CALL_TIMEOUT_S,
    GOOD_MODEL,
    LIMIT_BYTES,
    Canary,
    ErrorRecords,
    Mesh,
    good_request,
)
from tests.mesh.cluster import MemoryCluster
from tests.model_factory import make_onnx_model, onnx_reference


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("fuzz")
    model = make_onnx_model(tmp / "lin")
    _, x = good_request()
    expected = onnx_reference(model, {"x": x})["y"]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-mesh", daemon=True)
    thread.start()

    def run(coro: Any, timeout: float = 60.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        return fut.result(timeout)

    cluster = MemoryCluster(2, tmp, capacity_bytes=64 << 20, overrides={"max_message_bytes": LIMIT_BYTES})
    run(cluster.start())
    m = Mesh(grpc=list(cluster.grpc), rest=list(cluster.rest), expected=expected, loop=loop)
    handler = ErrorRecords(m.errors)
    loggers = [logging.getLogger(name) for name in ("mesh", "placement", "puller", "runtime_adapters", "uvicorn.error")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        stub = mm_grpc.ModelMeshStub(m.channel(m.grpc[0]))
        st = stub.registerModel(
            mm.RegisterModelRequest(
                modelId=GOOD_MODEL, modelInfo=mm.ModelInfo(type="onnx", path=str(model)), loadNow=True, sync=True
            ),
            timeout=60,
        )
        assert st.status == mm.ModelStatusInfo.LOADED, st
        for address in m.grpc:  # one local hit, one forwarded
            m.check_good(address)
        yield m
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        for ch in m.channels.values():
            ch.close()
        run(cluster.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()



@pytest.fixture
def canary(mesh: Mesh) -> Iterator[Canary]:
    """Good requests to both instances while the test runs; the test fails if any went wrong."""
    result = Canary()
    mesh.errors.clear()
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while True:  # at least one request, however short the test
            address = mesh.grpc[n % len(mesh.grpc)]
            n += 1
            t0 = time.perf_counter()
            try:
                mesh.check_good(address)
                result.ok += 1
            except Exception as exc:
                result.failures.append(f"{address}: {exc!r}"[:500])
            result.worst_s = max(result.worst_s, time.perf_counter() - t0)
            if stop.wait(0.01):  # pacing, not synchronisation
                return

    thread = threading.Thread(target=loop, name="canary", daemon=True)
    thread.start()
    yield result
    stop.set()
    thread.join(CALL_TIMEOUT_S + 5)
    assert not thread.is_alive(), "canary request hung"
    assert not result.failures, result.failures[:5]
    assert result.ok > 0
    assert not mesh.errors, mesh.errors[:3]  # no handler or background loop logged an unexpected error
    for address in mesh.grpc:  # and afterwards the good model still answers correctly everywhere
        mesh.check_good(address)
