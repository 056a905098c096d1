"""A ring of cluster-wide traffic samples (request rate, hit ratio) for the dashboard's charts."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._cluster_mirror import ClusterMirror
from .._store_schema import InstanceRecord
from .._tasks import cancel_and_wait


@dataclass(frozen=True)
class Sample:
    t: float
    rps: float
    hit_ratio: float | None  # None: no requests in the interval
    copies_loaded: int
    used_bytes: int


class TrafficSeries:
    """A ring of cluster-wide samples: request rate and hit ratio from the instances' cumulative
    ``requests`` / ``misses`` counters (their deltas; a restarted instance starts again from 0)."""

    def __init__(self, state: ClusterMirror, *, size: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.ring: deque[Sample] = deque(maxlen=size)
        self._last: dict[str, tuple[int, int]] = {}
        self._last_t: float | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self, instances: dict[str, InstanceRecord] | None = None) -> Sample | None:
        now = self.clock()
        instances = dict(self.state.instances.items) if instances is None else instances
        requests = misses = 0
        current: dict[str, tuple[int, int]] = {}
        for iid, r in instances.items():
            current[iid] = (r.requests, r.misses)
            prev = self._last.get(iid, (0, 0) if self._last_t is not None else (r.requests, r.misses))
            if r.requests < prev[0] or r.misses < prev[1]:  # restarted: its counters began again
                prev = (0, 0)
            requests += r.requests - prev[0]
            misses += r.misses - prev[1]
        first = self._last_t is None
        dt = now - (self._last_t or now)
        self._last, self._last_t = current, now
        if first or dt <= 0:
            return None
        s = Sample(
            t=now,
            rps=round(requests / dt, 3),
            hit_ratio=round(max(0.0, 1.0 - misses / requests), 4) if requests else None,
            copies_loaded=sum(r.model_count for r in instances.values()),
            used_bytes=sum(r.used_bytes for r in instances.values()),
        )
        self.ring.append(s)
        return s

    def points(self) -> list[dict[str, Any]]:
        return [s.__dict__ for s in self.ring]

    def start(self, interval_s: float) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run(interval_s), name="dashboard-series")

    async def _run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.sample()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
