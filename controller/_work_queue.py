"""A work queue keyed by object (client-go's semantics, asyncio).

- A key is queued at most once (adds while it is queued collapse).
- A key is processed by at most one worker: an add while it is being processed marks it
  dirty, and ``done`` queues it again, so the latest state is always reconciled once more.
- ``retry`` re-adds a failed key after a per-key exponential backoff; ``forget`` resets it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, retry_initial_s: float = 0.5, retry_max_s: float = 60.0) -> None:
        self._items: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._closed = False
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in progress, no retry pending."""
        return not self._items and not self._processing and not self._timers

    def add(self, key: K) -> None:
        if self._closed or key in self._queued:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        self._queued.add(key)
        self._items.append(key)
        self._ready.set()

    def add_after(self, key: K, delay_s: float) -> None:
        if self._closed:
            return
        if delay_s <= 0:
            self.add(key)
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: K) -> float:
        """Queue ``key`` again after its next backoff delay; returns the delay."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        delay = min(self.retry_initial_s * (2 ** (n - 1)), self.retry_max_s)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        """The next key (marked in progress until :meth:`done`). Raises CancelledError when closed."""
        while True:
            if self._closed:
                raise asyncio.CancelledError
            if self._items:
                key = self._items.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                if not self._items:
                    self._ready.clear()
                return key
            self._ready.clear()
            await self._ready.wait()

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        self._closed = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._ready.set()
