"""In-memory store for the embedded, single-process deployment (and for tests).

Same semantics as etcd (see ``_base``): one revision counter, a bounded history of
writes that watches replay from (older revisions raise :class:`Compacted`), leases that
expire by an injected clock. A background task (started with the first lease) expires
leases on time; tests with a manual clock call :meth:`MemoryStore.expire_leases_now`.
:meth:`MemoryStore.set_available` simulates an outage (every operation raises
:class:`StoreUnavailable`, open watches break) so that resilience code is testable
without etcd.

Everything runs on the event loop and every operation is O(log n) or O(result), so
nothing blocks; each operation yields to the loop once so that concurrent writers
interleave as they would against a remote store.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from ._base import Store, validate_txn
from ._errors import Compacted, LeaseExpired, StoreInvalidArgument, StoreUnavailable
from ._types import Compare, Delete, KeyValue, Put, StoreUsage, WatchEvent

logger = logging.getLogger(__name__)

_MAX_BATCH_EVENTS = 1000
_KEY_OVERHEAD_BYTES = 160  # a KeyValue, its dict entry and its place in the sorted key list
DEFAULT_QUOTA_BYTES = 2 << 30  # etcd's default --quota-backend-bytes


def footprint(key: str, value: bytes) -> int:
    """The bytes one key is counted for against the store's quota (an estimate in memory)."""
    return len(key) + len(value) + _KEY_OVERHEAD_BYTES


@dataclass
class _Lease:
    lease_id: int
    ttl_s: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class _Watcher:
    """One open watch: pending batches, filled by commits, drained by its generator."""

    __slots__ = ("error", "pending", "pending_events", "prefix", "wake")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: deque[list[WatchEvent]] = deque()
        self.pending_events = 0
        self.error: Exception | None = None
        self.wake = asyncio.Event()

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.pending.clear()
        self.pending_events = 0
        self.wake.set()


class MemoryStore(Store):
    """The in-process store.

    ``history_revisions``: how many past writes watches can replay (older: Compacted).
    ``watch_queue_events``: events a slow watch consumer may fall behind by before its
    watch breaks with Compacted (the consumer re-lists; memory stays bounded).
    ``quota_bytes``: what :meth:`usage` reports the estimated size of the keys against.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        history_revisions: int = 10_000,
        watch_queue_events: int = 100_000,
        max_expiry_interval_s: float = 1.0,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        quota_high_water: float = 0.9,
    ) -> None:
        if history_revisions < 1:
            raise StoreInvalidArgument(f"history_revisions must be >= 1, got {history_revisions}")
        self._clock = clock
        self._history_max = history_revisions
        self._watch_queue_max = watch_queue_events
        self._max_expiry_interval_s = max_expiry_interval_s
        self._revision = 1  # like etcd: an empty store is at revision 1
        self._floor = 0  # events of revisions < _floor are no longer kept
        self._data: dict[str, KeyValue] = {}
        self._bytes = 0  # footprint() of every key in _data
        self.quota_bytes = quota_bytes
        self.quota_high_water = quota_high_water
        self._keys: list[str] = []  # sorted, for prefix ranges
        self._history: deque[tuple[int, list[WatchEvent]]] = deque()
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._watchers: set[_Watcher] = set()
        self._available = True
        self._closed = False
        self._expiry_task: asyncio.Task[None] | None = None
        self._expiry_wake: asyncio.Event | None = None

    # ------------------------------------------------------------------ helpers

    def _check(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory store is closed")
        if not self._available:
            raise StoreUnavailable("memory store is unavailable (simulated outage)")

    async def _enter(self) -> None:
        self._check()
        await asyncio.sleep(0)  # let concurrent callers interleave, as with a remote store
        self._check()

    @property
    def revision(self) -> int:
        """The current store revision."""
        return self._revision

    def _insert_key(self, key: str) -> None:
        bisect.insort(self._keys, key)

    def _remove_key(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def _prefix_keys(self, prefix: str) -> list[str]:
        i = bisect.bisect_left(self._keys, prefix)
        out: list[str] = []
        keys = self._keys
        while i < len(keys) and keys[i].startswith(prefix):
            out.append(keys[i])
            i += 1
        return out

    def _apply(self, ops: Sequence[Put | Delete]) -> int:
        """Apply ops atomically at one new revision (none if nothing changes); returns revision."""
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseExpired(
                    f"lease {op.lease:x} for key {op.key!r} not found (expired or revoked)"
                )
        rev = self._revision + 1
        events: list[WatchEvent] = []
        for op in ops:
            old = self._data.get(op.key)
            if isinstance(op, Put):
                self._bytes += footprint(op.key, op.value)
                if old is None:
                    kv = KeyValue(op.key, op.value, rev, rev, 1, op.lease)
                    self._insert_key(op.key)
                else:
                    self._bytes -= footprint(old.key, old.value)
                    kv = KeyValue(
                        op.key, op.value, old.create_revision, rev, old.version + 1, op.lease
                    )
                    if old.lease and old.lease != op.lease:
                        self._detach(old.lease, op.key)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._data[op.key] = kv
                events.append(WatchEvent("put", op.key, op.value, rev, old.value if old else None))
            elif old is not None:
                del self._data[op.key]
                self._bytes -= footprint(old.key, old.value)
                self._remove_key(op.key)
                if old.lease:
                    self._detach(old.lease, op.key)
                events.append(WatchEvent("delete", op.key, b"", rev, old.value))
        if events:
            self._commit(rev, events)
        return self._revision

    def _detach(self, lease_id: int, key: str) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def _commit(self, rev: int, events: list[WatchEvent]) -> None:
        self._revision = rev
        if len(self._history) >= self._history_max:
            dropped_rev, _ = self._history.popleft()
            self._floor = max(self._floor, dropped_rev + 1)
        self._history.append((rev, events))
        for w in self._watchers:
            if w.error is not None:
                continue
            mine = [e for e in events if e.key.startswith(w.prefix)]
            if not mine:
                continue
            w.pending.append(mine)
            w.pending_events += len(mine)
            if w.pending_events > self._watch_queue_max:
                w.fail(
                    Compacted(
                        f"watch on {w.prefix!r} fell behind by more than {self._watch_queue_max} events"
                    )
                )
            w.wake.set()

    # ------------------------------------------------------------------ key-value

    async def get(self, key: str) -> KeyValue | None:
        await self._enter()
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._enter()
        return [self._data[k] for k in self._prefix_keys(prefix)], self._revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._enter()
        return self._apply([Put(key, value, lease)])

    async def delete(self, key: str) -> bool:
        await self._enter()
        existed = key in self._data
        self._apply([Delete(key)])
        return existed

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> tuple[bool, int]:
        await self._enter()
        validate_txn(compares, success, failure, self.max_txn_ops)
        ok = True
        for c in compares:
            kv = self._data.get(c.key)
            if (kv.mod_revision if kv is not None else 0) != c.mod_revision:
                ok = False
                break
        rev = self._apply(success if ok else failure)
        return ok, rev

    async def usage(self) -> StoreUsage:
        """The estimated bytes of the keys and values held (history not counted)."""
        await self._enter()
        return StoreUsage(self._bytes, self.quota_bytes, self.quota_high_water)

    async def compact(self, revision: int) -> None:
        await self._enter()
        if revision > self._revision:
            raise StoreInvalidArgument(
                f"cannot compact to revision {revision}: the store is at {self._revision}"
            )
        while self._history and self._history[0][0] < revision:
            self._history.popleft()
        self._floor = max(self._floor, revision)

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: int) -> int:
        await self._enter()
        if ttl_s <= 0:
            raise StoreInvalidArgument(f"lease TTL must be positive, got {ttl_s}")
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(lease_id, int(ttl_s), self._clock() + ttl_s)
        self._ensure_expiry_task()
        return lease_id

    async def keepalive(self, lease_id: int) -> int:
        await self._enter()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id:x} not found (expired or revoked)")
        now = self._clock()
        if lease.deadline <= now:
            self._revoke(lease)
            raise LeaseExpired(f"lease {lease_id:x} expired")
        lease.deadline = now + lease.ttl_s
        return lease.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        await self._enter()
        lease = self._leases.get(lease_id)
        if lease is not None:
            self._revoke(lease)

    def _revoke(self, lease: _Lease) -> None:
        del self._leases[lease.lease_id]
        if lease.keys:
            keys = sorted(lease.keys)
            lease.keys.clear()
            self._apply([Delete(k) for k in keys])

    def expire_leases_now(self) -> int:
        """Revoke every lease whose deadline (by the injected clock) has passed; returns how many."""
        if self._closed or not self._available:
            return 0
        now = self._clock()
        expired = [lease for lease in self._leases.values() if lease.deadline <= now]
        for lease in expired:
            logger.debug("lease %x expired with %d keys", lease.lease_id, len(lease.keys))
            self._revoke(lease)
        return len(expired)

    async def expire_leases(self) -> int:
        """What the expiry timer runs (a durable store overrides it to revoke durably)."""
        return self.expire_leases_now()

    def _ensure_expiry_task(self) -> None:
        if self._expiry_task is None or self._expiry_task.done():
            self._expiry_wake = asyncio.Event()
            self._expiry_task = asyncio.get_running_loop().create_task(
                self._expiry_loop(), name="memory-store-lease-expiry"
            )
        elif self._expiry_wake is not None:
            self._expiry_wake.set()

    async def _expiry_loop(self) -> None:
        wake = self._expiry_wake
        assert wake is not None
        while not self._closed:
            try:
                await self.expire_leases()
            except Exception:  # never let the timer die
                logger.exception("lease expiry failed")
            timeout: float | None = None
            if self._leases:
                earliest = min(lease.deadline for lease in self._leases.values())
                timeout = min(max(earliest - self._clock(), 0.01), self._max_expiry_interval_s)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    # ------------------------------------------------------------------ watch

    def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        return self._watch(prefix, start_revision)

    async def _watch(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        self._check()
        start = start_revision if start_revision > 0 else self._revision + 1
        w = _Watcher(prefix)
        if start < self._floor:
            # like etcd: the watch is created, then cancelled with the compaction revision
            yield []
            raise Compacted(
                f"watch on {prefix!r} from revision {start}: history before revision "
                f"{self._floor} is compacted",
                compact_revision=self._floor,
            )
        # Replay the kept history and register in one synchronous step: no gap, no duplicate.
        for rev, events in self._history:
            if rev >= start:
                mine = [e for e in events if e.key.startswith(prefix)]
                if mine:
                    w.pending.append(mine)
                    w.pending_events += len(mine)
        self._watchers.add(w)
        try:
            yield []
            while True:
                while not w.pending and w.error is None:
                    w.wake.clear()
                    await w.wake.wait()
                if w.error is not None:
                    raise w.error
                batch = w.pending.popleft()
                while w.pending and len(batch) + len(w.pending[0]) <= _MAX_BATCH_EVENTS:
                    batch = batch + w.pending.popleft()
                w.pending_events -= len(batch)
                yield batch
        finally:
            self._watchers.discard(w)

    # ------------------------------------------------------------------ faults, lifecycle

    def set_available(self, available: bool) -> None:
        """Simulate an outage (False) and recovery (True), for tests.

        While unavailable every operation raises StoreUnavailable, open watches break with
        it, and leases do not expire; on recovery every lease gets its full TTL again (as
        etcd does after a restart).
        """
        if available == self._available:
            return
        self._available = available
        if not available:
            for w in list(self._watchers):
                w.fail(StoreUnavailable("memory store is unavailable (simulated outage)"))
        else:
            now = self._clock()
            for lease in self._leases.values():
                lease.deadline = now + lease.ttl_s

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in list(self._watchers):
            w.fail(StoreUnavailable("memory store is closed"))
        task, self._expiry_task = self._expiry_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
