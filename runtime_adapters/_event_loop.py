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
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from ._heap import LongLivedHeap
from ._heap import from_environment as heap_policy

T = TypeVar("T")

DEFAULT_SWITCH_INTERVAL_S = 0.001
"""How long a thread running Python keeps the GIL while the event loop waits for it (CPython's
default is 5 ms). See :func:`switch_interval_from_environment`."""

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopChoiceError(ValueError):
    """``MODELMUX_EVENT_LOOP`` names no loop, or names uvloop where it is not installed; or the
    loop's garbage-collection policy (``MODELMUX_GC_REFRESH_S``) is not a period, or its GIL
    switch interval (``MODELMUX_GIL_SWITCH_INTERVAL_S``) not a number of seconds in (0, 1]."""


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


def switch_interval_from_environment() -> float:
    """The GIL switch interval ``MODELMUX_GIL_SWITCH_INTERVAL_S`` asks for (default 1 ms, at most 1 s).

    The event loop shares the GIL with the process's worker threads: loads, the puller, the
    framework calls' Python around them. A thread running Python keeps the GIL until the loop has
    waited a switch interval for it, so each wake-up of the loop that meets such a thread waits up
    to CPython's 5 ms, and a request wakes the loop more than once. Measured on the density bench's
    process mesh (3 instances under Zipf traffic loading ~50 models a second, hits probed on the
    leader's instance), the hits' p99 under misses: 23-27 ms at 5 ms, 20.0 / 20.5 ms at 1 ms,
    19.1-20.3 ms at 0.5 ms. The price is more hand-overs where threads contend: a tiny model at 16
    in flight took ~12% more CPU a request at 1 ms (17% at 0.5 ms) and served ~4% fewer requests a
    second (bench/RESULTS.md, session 16).
    """
    raw = os.environ.get("MODELMUX_GIL_SWITCH_INTERVAL_S", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_SWITCH_INTERVAL_S
    except ValueError:
        raise ValueError(f"MODELMUX_GIL_SWITCH_INTERVAL_S must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= 1.0:
        raise ValueError(f"MODELMUX_GIL_SWITCH_INTERVAL_S must be a number of seconds in (0, 1], not {raw!r}")
    return value


@contextlib.contextmanager
def _switch_interval(value: float) -> Iterator[None]:
    """The process's GIL switch interval set to ``value`` while the loop runs, then put back."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(value)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


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
    garbage-collection policy (:mod:`runtime_adapters._heap`, ``MODELMUX_GC_REFRESH_S``) and
    GIL switch interval (:func:`switch_interval_from_environment`)."""
    try:
        factory = loop_factory(loop)
        try:
            heap = heap_policy()
            interval = switch_interval_from_environment()
        except ValueError as exc:
            raise EventLoopChoiceError(str(exc)) from None
    except EventLoopChoiceError:
        main.close()  # never awaited: say so quietly instead of a RuntimeWarning
        raise
    with _switch_interval(interval), asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_with_heap_policy(main, heap))
