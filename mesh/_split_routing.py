"""Traffic split at request time: which target of a split vModel serves a request, and the shadow copy.

The router asks :meth:`SplitRouting.pick` once per client request. For a vModel without a split
it answers None after one dict look-up in the mirror (the hot path is unchanged). For a split
vModel it decodes the split once per record (cached by the record object, which the mirror
replaces on every change), picks a target with :meth:`TrafficSplit.choose` (sticky by the
request's ``mm-session``), counts it per target, and says whether the request is mirrored to the
shadow.

A shadow request is fire-and-forget: a task the caller never awaits, bounded by
``max_inflight`` (past it the copy is dropped and counted, never queued), its answer discarded
and its outcome counted (``ok`` / ``error`` / ``dropped``). It cannot fail or delay the primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._cluster_mirror import ClusterMirror
from ._metrics import Metrics
from ._store_schema import VModelRecord
from ._traffic_split import TrafficSplit

log = logging.getLogger(__name__)


class SplitRouting:
    def __init__(self, mirror: ClusterMirror, metrics: Metrics, *, max_inflight: int = 64) -> None:
        self.mirror = mirror
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._cache: dict[str, tuple[VModelRecord, TrafficSplit | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def split_of(self, name: str) -> TrafficSplit | None:
        vm = self.mirror.vmodels.items.get(name)
        if vm is None or not vm.split:
            return None
        hit = self._cache.get(name)
        if hit is not None and hit[0] is vm:
            return hit[1]
        try:
            split: TrafficSplit | None = TrafficSplit.from_json(vm.split)
        except Exception as exc:  # a record we cannot read: serve the vModel's active model
            log.warning("vmodel %s has an unreadable traffic split (%s); serving its active model", name, exc)
            split = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = (vm, split)
        return split

    def pick(self, name: str, session: str | None) -> tuple[str, str] | None:
        """(model id that serves the request, shadow model id or ''), or None: not a split vModel."""
        split = self.split_of(name)
        if split is None:
            return None
        mid = split.choose(name, session)
        self.metrics.split_requests.labels(name, mid).inc()
        return mid, (split.shadow if split.mirror() else "")

    def shadow(self, vmodel: str, send: Callable[[], Awaitable[Any]]) -> None:
        """Run ``send()`` in the background; its answer is discarded, its outcome counted."""
        if len(self._tasks) >= self.max_inflight:
            self.metrics.shadow_requests.labels(vmodel, "dropped").inc()
            return
        task = asyncio.create_task(self._run(vmodel, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, vmodel: str, send: Callable[[], Awaitable[Any]]) -> None:
        try:
            await send()
        except asyncio.CancelledError:
            self.metrics.shadow_requests.labels(vmodel, "error").inc()
            raise
        except Exception as exc:
            log.debug("shadow request for vmodel %s failed: %s", vmodel, exc)
            self.metrics.shadow_requests.labels(vmodel, "error").inc()
        else:
            self.metrics.shadow_requests.labels(vmodel, "ok").inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
