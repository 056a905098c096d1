"""Direct routing: answers name their holder (``mm-holder``) and :class:`mesh.client.DirectRouter`
sends the next requests straight to it, falling back to any instance when the holder moves
or dies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.client import DirectRouter
from tests.mesh.cluster import MemoryCluster
from tests.mesh.models import WIDTH, answer, loaded, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    c = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"forward_retry_backoff_s": 0.1})
    await c.start()
    yield c
    await c.close()


def _x(k: float) -> np.ndarray:
    return np.full((1, WIDTH), k, dtype=np.float32)


async def test_answers_carry_the_holder_and_the_router_goes_there(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert holder.endpoints is not None and other.endpoints is not None
    # a plain client asking the other instance: forwarded, and the answer names the holder
    async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch:
        call = ch.unary_unary(INFER)(request_bytes("m", _x(1)), timeout=30)
        np.testing.assert_array_equal(answer(await call), _x(1) + 3)
        assert ("mm-holder", holder.endpoints.grpc) in list(await call.trailing_metadata())
    assert other.router.counters.forwarded == 1

    async with DirectRouter([other.endpoints.grpc]) as router:
        np.testing.assert_array_equal(answer(await router.infer("m", request_bytes("m", _x(2)), timeout=30)), _x(2) + 3)
        assert router.holder("m") == holder.endpoints.grpc
        assert other.router.counters.forwarded == 2  # the first request still went through the entry
        local_before = holder.router.counters.local
        for k in range(5):
            raw = await router.infer("m", request_bytes("m", _x(k)), timeout=30)
            np.testing.assert_array_equal(answer(raw), _x(k) + 3)
        # all five went straight to the holder: no more forwards, five more local hits there
        assert other.router.counters.forwarded == 2
        assert holder.router.counters.local == local_before + 5
        assert router.direct == 5 and router.fallbacks == 0


async def test_a_stale_holder_still_answers_and_names_the_new_one(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert holder.endpoints is not None and other.endpoints is not None
    async with DirectRouter([other.endpoints.grpc]) as router:
        # the copy "moved": the router believes the other instance holds it
        router.learn("m", other.endpoints.grpc)
        raw = await router.infer("m", request_bytes("m", _x(7)), timeout=30)
        np.testing.assert_array_equal(answer(raw), _x(7) + 3)
        assert router.holder("m") == holder.endpoints.grpc  # learnt from the answer
        forwarded = other.router.counters.forwarded
        await router.infer("m", request_bytes("m", _x(8)), timeout=30)
        assert other.router.counters.forwarded == forwarded


async def test_a_dead_holder_falls_back_to_an_entry(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert holder.endpoints is not None and other.endpoints is not None
    dead = holder.endpoints.grpc
    async with DirectRouter([dead, other.endpoints.grpc]) as router:
        await router.infer("m", request_bytes("m", _x(1)), timeout=30)
        assert router.holder("m") == dead
        await holder.stop(graceful=False)
        raw = await router.infer("m", request_bytes("m", _x(4)), timeout=30)
        np.testing.assert_array_equal(answer(raw), _x(4) + 3)  # served after the fallback
        assert router.fallbacks == 1
        assert router.holder("m") == other.endpoints.grpc  # the survivor loaded it and said so
        assert "m" in other.loaded
        # errors that are the request's own are not retried elsewhere
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.infer("nope", request_bytes("nope"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rejected_addresses_are_never_learnt(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert holder.endpoints is not None and other.endpoints is not None
    async with DirectRouter([other.endpoints.grpc], accept=lambda a: a == other.endpoints.grpc) as router:  # type: ignore[union-attr]
        for k in range(3):
            await router.infer("m", request_bytes("m", _x(k)), timeout=30)
        assert router.holder("m") is None and router.direct == 0
        assert other.router.counters.forwarded == 3
