"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None], *, retry_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if it goes on.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just as the
    awaited future completes (fixed in 3.12), so a loop built on it may outlive one
    ``cancel()``; awaiting such a task after a single cancel can hang forever (a stopping
    instance did, until the test harness killed it).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
