"""The long-lived heap policy (runtime_adapters._heap): what survives a full collection is frozen, so
the next full collection does not walk it; frozen reference cycles are freed at the next refresh
(and by the load meter's full settle); run_event_loop installs it from MODELMUX_GC_REFRESH_S."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime_adapters import EventLoopChoiceError, run_event_loop
from runtime_adapters._heap import LongLivedHeap, collect_for_freezing, from_environment
from runtime_adapters._memory import process_meter
from tests.mesh.cluster import wait_until


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _tracked(obj: object) -> bool:
    """Whether a collection would walk ``obj`` (it is in one of the three generations, not frozen)."""
    return any(o is obj for gen in range(3) for o in gc.get_objects(generation=gen))


@contextlib.asynccontextmanager
async def running(refresh_s: float) -> AsyncIterator[LongLivedHeap]:
    """The policy installed on the running loop (polling every 10 ms), stopped on the way out."""
    heap = LongLivedHeap(refresh_s=refresh_s, poll_s=0.01)
    heap.start()
    try:
        yield heap
    finally:
        await heap.stop()


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_survives_a_full_collection_is_frozen_and_a_later_object_is_not() -> None:
    async def main() -> None:
        async with running(refresh_s=3600) as heap:
            old = Node()
            assert _tracked(old)
            await asyncio.sleep(0.05)
            assert heap.freezes == 0  # no full collection yet: nothing frozen
            gc.collect(1)  # a young collection is no signal
            await asyncio.sleep(0.05)
            assert heap.freezes == 0 and gc.get_freeze_count() == 0
            gc.collect()
            await wait_until(lambda: heap.freezes == 1)
            assert gc.get_freeze_count() > 0 and not _tracked(old)  # the next full collection skips it
            young = Node()
            assert _tracked(young)
            assert old.other is None  # frozen objects are ordinary objects
        assert gc.get_freeze_count() == 0 and _tracked(old)  # stop gives everything back
        assert heap._on_gc not in gc.callbacks

    asyncio.run(main())


def test_a_frozen_cycle_is_freed_at_the_refresh_and_a_plain_object_at_once() -> None:
    async def main() -> None:
        async with running(refresh_s=3600) as heap:
            a, b, plain = Node(), Node(), Node()
            a.other, b.other = b, a
            gone_cycle, gone_plain = weakref.ref(a), weakref.ref(plain)
            gc.collect()
            await wait_until(lambda: heap.freezes == 1)
            del a, b, plain
            assert gone_plain() is None  # reference counting frees frozen objects as usual
            gc.collect()
            assert gone_cycle() is not None  # a cycle among frozen objects waits for the refresh
            heap.refresh()
            assert gone_cycle() is None and heap.refreshes == 1
            await wait_until(lambda: heap.freezes == 2)  # the refresh's survivors are frozen again

    asyncio.run(main())


def test_the_periodic_refresh_runs_on_its_own() -> None:
    async def main() -> None:
        async with running(refresh_s=0.05) as heap:
            a, b = Node(), Node()
            a.other, b.other = b, a
            gone = weakref.ref(a)
            gc.collect()
            await wait_until(lambda: heap.freezes >= 1)
            del a, b
            await wait_until(lambda: gone() is None)
            assert heap.refreshes >= 1

    asyncio.run(main())


def test_collect_for_freezing_collects_only_where_the_policy_runs() -> None:
    full: list[int] = []

    def seen(phase: str, info: dict[str, object]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    async def main() -> None:
        async with running(refresh_s=3600) as heap:
            before = len(full)
            assert collect_for_freezing() is True and len(full) == before + 1
            await wait_until(lambda: heap.freezes == 1)

    gc.callbacks.append(seen)
    try:
        before = len(full)
        assert collect_for_freezing() is False and len(full) == before  # no policy: no collection
        asyncio.run(main())
        before = len(full)
        assert collect_for_freezing() is False and len(full) == before  # stopped: gone again
    finally:
        gc.callbacks.remove(seen)


def test_the_load_meters_full_settle_frees_frozen_cycles() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect()
    gc.freeze()
    del a, b
    meter, _ = process_meter()
    meter.settle()
    assert gone() is not None  # a young settle leaves frozen objects alone
    meter.settle(full=True)
    assert gone() is None


def test_run_event_loop_installs_the_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def frozen_after_a_full_collection() -> bool:
        gc.collect()
        await wait_until(lambda: gc.get_freeze_count() > 0)
        return True

    monkeypatch.delenv("MODELMUX_GC_REFRESH_S", raising=False)
    assert run_event_loop(frozen_after_a_full_collection()) is True
    assert gc.get_freeze_count() == 0  # given back when the loop's main returns
    monkeypatch.setenv("MODELMUX_GC_REFRESH_S", "0")  # off: CPython's own schedule, nothing frozen
    assert from_environment() is None

    async def frozen_within(seconds: float) -> bool:
        gc.collect()
        await asyncio.sleep(seconds)
        return gc.get_freeze_count() > 0

    assert run_event_loop(frozen_within(1.5)) is False


@pytest.mark.parametrize("value", ["soon", "-5"])
def test_a_bad_period_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch, value: str, tmp_path: Path) -> None:
    ran: list[bool] = []

    async def main() -> None:
        ran.append(True)

    monkeypatch.setenv("MODELMUX_GC_REFRESH_S", value)
    with pytest.raises(EventLoopChoiceError, match="MODELMUX_GC_REFRESH_S"):
        run_event_loop(main())
    assert ran == []
    from mesh.cli import app

    argv = ["serve", "--grpc-port", "0", "--rest-port", "-1", "--store", "memory", "--data-dir", str(tmp_path)]
    res = CliRunner().invoke(app, argv, env={"MODELMUX_GC_REFRESH_S": value, "COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert "MODELMUX_GC_REFRESH_S" in res.output
