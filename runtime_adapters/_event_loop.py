"""The event loop a modelmux process runs on: uvloop where it is installed, else asyncio's own.

``MODELMUX_EVENT_LOOP``: ``auto`` (the default: uvloop if it imports), ``uvloop`` (required:
a process that cannot have it does not start) or ``asyncio`` (the standard library's loop).

Why: grpc.aio and uvicorn both run on any asyncio loop, and on uvloop the loop's own work per
request is smaller. A gRPC local hit at 16 in flight served 1,759 against 1,540 requests/s
(median of 4 interleaved runs each, tiny XGBoost model, h2load; REST was the same either
way). MLServer, the peer the benchmarks compare with, runs its servers on uvloop too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._heap import LongLivedHeap
from ._heap import from_environment as heap_policy

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopChoiceError(ValueError):
    """``MODELMUX_EVENT_LOOP`` names no loop, or names uvloop where it is not installed; or the
    loop's garbage-collection policy (``MODELMUX_GC_REFRESH_S``) is not a period."""


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``choice`` (default: ``MODELMUX_EVENT_LOOP``) names; None = asyncio's."""
    choice = (choice if choice is not None else os.environ.get("MODELMUX_EVENT_LOOP", "auto")).strip().lower() or "auto"
    if choice not in CHOICES:
        raise EventLoopChoiceError(f"MODELMUX_EVENT_LOOP must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopChoiceError("MODELMUX_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def _with_heap_policy(main: Coroutine[Any, Any, T], heap: LongLivedHeap | None) -> T:
    if heap is None:
        return await main
    heap.start()
    try:
        return await main
    finally:
        await heap.stop()


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None) -> T:
    """``asyncio.run(main)`` on the chosen loop (see the module docstring), with the process's
    garbage-collection policy (:mod:`runtime_adapters._heap`, ``MODELMUX_GC_REFRESH_S``)."""
    try:
        factory = loop_factory(loop)
        try:
            heap = heap_policy()
        except ValueError as exc:
            raise EventLoopChoiceError(str(exc)) from None
    except EventLoopChoiceError:
        main.close()  # never awaited: say so quietly instead of a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_with_heap_policy(main, heap))
