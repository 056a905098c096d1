"""One pull in flight (shared by every caller staging its key, with its progress reports),
and the per-source limit on pulls holding download slots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from ._cache import Entry
from ._provider import Meter
from ._resolve import Source
from ._types import PullProgress

log = logging.getLogger(__name__)

ProgressCallback = Callable[[PullProgress], None]


class Flight:
    """One in-flight pull of one key, shared by every caller staging that key."""

    def __init__(
        self,
        key: str,
        source: str,
        clock: Callable[[], float],
        interval_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.key = key
        self.source = source
        self.task: asyncio.Task[Entry] | None = None
        self.waiters = 0
        self.callbacks: list[ProgressCallback] = []
        self.meter: Meter | None = None
        self.started: float = 0.0
        self._clock = clock
        self._interval = interval_s
        self._loop = loop
        self._lock = threading.Lock()
        self._last_emit = -math.inf
        self._pending = False

    def begin(self, meter: Meter) -> None:
        self.meter = meter
        self.started = self._clock()

    def tick(self) -> None:
        """Called by writers (any thread): schedule a report if the interval has passed."""
        now = self._clock()
        with self._lock:
            if self._pending or now - self._last_emit < self._interval:
                return
            self._pending = True
            self._last_emit = now
        with contextlib.suppress(RuntimeError):  # loop closed: nobody to tell
            self._loop.call_soon_threadsafe(self.emit)

    def snapshot(self) -> PullProgress:
        done = self.meter.bytes_done if self.meter else 0
        total = self.meter.bytes_total if self.meter else None
        elapsed = max(self._clock() - self.started, 1e-9) if self.meter else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = max(total - done, 0) / rate if total is not None and rate > 0 else None
        return PullProgress(
            key=self.key,
            source=self.source,
            bytes_done=done,
            bytes_total=total,
            bytes_per_s=rate,
            eta_s=eta,
        )

    def emit(self) -> None:
        with self._lock:
            self._pending = False
        if not self.callbacks or self.meter is None:
            return
        progress = self.snapshot()
        for callback in list(self.callbacks):
            try:
                callback(progress)
            except Exception:
                log.exception("progress callback for %s failed", self.key)


class SourceSlots:
    """At most ``per_source`` pulls of one source host at once (a slow host cannot hold every
    download slot: a pull takes its source's slot before the puller's)."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str | None) -> AsyncIterator[None]:
        if host is None:
            yield
            return
        slot = self._slots.get(host)
        if slot is None:
            slot = self._slots[host] = (asyncio.Semaphore(self.per_source), [0])
        semaphore, users = slot
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0 and self._slots.get(host) is slot:
                del self._slots[host]


def source_host(source: Source) -> str | None:
    """What ``max_pulls_per_source`` counts by: an HTTP origin, an object store's endpoint and
    bucket; None for local sources."""
    if source.type == "local":
        return None
    if source.type == "http":
        parts = urlsplit(source.url)
        return f"http:{(parts.hostname or '').lower()}:{parts.port or ''}"
    return f"{source.type}:{source.spec.endpoint_url or ''}:{source.bucket}"
