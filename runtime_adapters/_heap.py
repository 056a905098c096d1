"""Full garbage collections on a server's long-lived heap: rare, and short.

A modelmux instance keeps a large heap for as long as it runs: the mirror's records of every
model, instance and copy, the decision log, the frameworks' modules. CPython walks all of it in
every full (generation 2) collection, and starts one whenever the objects promoted since the last
one reach a quarter of what that one left. Records are rewritten hundreds of times a second under
churn, and each load's young collection (the load meter's settle) promotes whatever is alive, so
on the density bench's leader (10,000 models, ~60 loads/s over three instances) a full collection
ran every 3-5 s and stopped the event loop for 65-133 ms each time: the hits' p99 under misses
was those pauses.

:class:`LongLivedHeap` freezes the heap within a poll (1 s) of each full collection (``gc.freeze``:
every tracked object moves to the permanent generation, which no collection walks): what survived
the collection, and what the poll's second created. The next full collection walks only what was
created since. Frozen objects are still freed by reference counting as usual; only reference
cycles among them wait, for the next refresh: every ``refresh_s`` everything is unfrozen and
collected once (one full pause per period), and what survives is frozen again.

``MODELMUX_GC_REFRESH_S`` (default 600): the period; 0 turns the policy off (CPython's own
collection schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from typing import Any

DEFAULT_REFRESH_S = 600.0
POLL_S = 1.0
"""how soon after a full collection its survivors are frozen (the collector's callback only sets a
flag: the freeze itself runs on the event loop, outside the collector)"""


_running: LongLivedHeap | None = None  # the policy installed in this process, if any


def collect_for_freezing() -> bool:
    """A full collection now, if a :class:`LongLivedHeap` runs in this process: what survives it is
    frozen at the policy's next poll. For a server that has just built its long-lived state (an
    instance before it reports SERVING), so the first full collection's pause falls there and not on
    the first requests. Without a policy it does nothing (a collection would leave nothing behind)."""
    if _running is None:
        return False
    gc.collect()
    return True


class LongLivedHeap:
    """Freeze the survivors of each full collection; unfreeze and collect everything every ``refresh_s``."""

    def __init__(self, refresh_s: float = DEFAULT_REFRESH_S, poll_s: float = POLL_S) -> None:
        if refresh_s <= 0 or poll_s <= 0:
            raise ValueError("refresh_s and poll_s must be positive")
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.freezes = 0  # freezes done (each after a full collection)
        self.refreshes = 0
        self._due = False
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self._due = True

    def freeze_if_due(self) -> bool:
        """Freeze now if a full collection ran since the last freeze (what survived it is long-lived)."""
        if not self._due:
            return False
        self._due = False
        gc.freeze()
        self.freezes += 1
        return True

    def refresh(self) -> None:
        """Unfreeze and collect everything (reference cycles among frozen objects are freed here);
        the survivors are frozen at the next poll."""
        gc.unfreeze()
        gc.collect()
        self.refreshes += 1

    async def _run(self) -> None:
        until_refresh = self.refresh_s
        while True:
            await asyncio.sleep(self.poll_s)
            until_refresh -= self.poll_s
            if until_refresh <= 0:
                until_refresh = self.refresh_s
                self.refresh()
            self.freeze_if_due()

    def start(self) -> None:
        """Install on the running loop: a full collection is the signal, the loop does the freezing."""
        global _running
        if self._task is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="long-lived-heap")
        _running = self

    async def stop(self) -> None:
        """Uninstall and give every frozen object back to the collector."""
        global _running
        if self._task is None:
            return
        if _running is self:
            _running = None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()


def from_environment() -> LongLivedHeap | None:
    """The policy ``MODELMUX_GC_REFRESH_S`` asks for (None: off)."""
    raw = os.environ.get("MODELMUX_GC_REFRESH_S", "").strip()
    try:
        refresh_s = float(raw) if raw else DEFAULT_REFRESH_S
    except ValueError:
        raise ValueError(f"MODELMUX_GC_REFRESH_S must be a number of seconds (0: off), not {raw!r}") from None
    if refresh_s < 0:
        raise ValueError(f"MODELMUX_GC_REFRESH_S must be >= 0 (0: off), not {raw!r}")
    return LongLivedHeap(refresh_s) if refresh_s > 0 else None
