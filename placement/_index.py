"""Eviction index: every assigned copy, ordered by its policy's eviction key, kept incrementally.

Why an index: a miss that needs an eviction must find the cheapest copies among every copy
of every instance. Ranking them afresh on each miss is a pass over all assigned copies
(tens of thousands with 100 instances and 100k models); the index keeps them in per-tenant
binary heaps, so a miss pops only the handful of entries it looks at, on the few instances it considers.

Why keys can live in a heap: the policies' keys do not change with time. A model's value
decays as ``exp(-(now - last_used) / tau)``; its logarithm is ``log(weight) + last_used / tau
- now / tau``, and the last term is common to every model, so the order is fixed until the
model itself changes (a request, a new copy) - which is when :meth:`PlacementIndex.update`
is called. Plain LRU orders by ``last_used`` itself.

Layout: ``_heaps[(instance_id, tenant)]`` is a heap of ``(key, model_id, instance_id)``;
``_by_instance[instance_id]`` lists that instance's heap keys; ``_live[model_id]``
is the model's current record. Heaps are lazy: an update pushes new entries and leaves old
ones in place; an entry is live only while it matches ``_live`` (same key, tenant, and the
instance still assigned). Dead entries are dropped when popped, and the heaps are rebuilt
once dead entries outnumber live ones.

Tick candidates: with a ``watch`` predicate (the policy's), the index also keeps the set of
models the predicate holds for (extra copies, rates above a threshold, min copies, failed
copies) and every instance's holders, so that a periodic tick reads those models plus the
holders of instances that are not live, instead of every registered model.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ._types import ModelView

KeyFn = Callable[[ModelView], "float | None"]
"""Eviction key of a model (lower = evicted first); None = never evictable (not indexed)."""

WatchFn = Callable[[ModelView], bool]
"""Whether a periodic tick may have work for the model while all its instances are live."""


class Entry(NamedTuple):
    key: float
    model_id: str
    instance_id: str


class Candidate(NamedTuple):
    order: float
    """the key the scan is ordered by: ``key`` plus the tenant's offset"""
    key: float
    model_id: str
    instance_id: str
    tenant: str


@dataclass(frozen=True, slots=True)
class _Rec:
    key: float | None
    tenant: str
    assigned: frozenset[str]
    size_bytes: int
    view: ModelView
    """the model view this record was made from (a reader holding the same object may trust ``since``)"""
    since: dict[str, float | None] | None
    """per instance the model has a copy on: when a loaded copy loaded, -inf for a failed one, None for
    one still loading (first copy per instance, as ``ModelView.copies`` lists them); None for a model
    with min copies, requests in flight or pinned (whose evictability needs the whole view)"""


def _rec(m: ModelView, key: float | None) -> _Rec:
    since: dict[str, float | None] | None = None
    if not (m.min_copies > 0 or m.inflight > 0 or m.pinned):
        since = {}
        for c in m.copies:
            if c.instance_id not in since:
                since[c.instance_id] = c.since if c.state == "loaded" else (None if c.state == "loading" else _NEVER)
    return _Rec(key, m.tenant, m.assigned, m.size_bytes, m, since)


_NEVER = float("-inf")


class PlacementIndex:
    """Assigned copies in eviction order, per instance and tenant, plus bytes and last use per tenant.

    Made by a policy (:meth:`placement.Policy.new_index`), which fixes its ``key`` function
    and ``key_id``; the producer of views calls :meth:`update` whenever a model changes
    (assignments, size, tenant, traffic) and :meth:`remove` when it is deleted, then passes
    the index in :class:`~placement.ClusterView`. Not thread-safe; single owner.
    """

    def __init__(self, key: KeyFn, key_id: str, watch: WatchFn | None = None) -> None:
        self.key = key
        self.key_id = key_id
        self.watch = watch
        self._watched: set[str] = set()
        self._holders: dict[str, set[str]] = {}
        self._live: dict[str, _Rec] = {}
        self._heaps: dict[tuple[str, str], list[Entry]] = {}
        self._by_instance: dict[str, list[tuple[str, str]]] = {}
        self._entries = 0  # total heap entries, live and dead
        self._live_entries = 0
        self._tenant_bytes: dict[str, int] = {}
        self._tenant_last_used: dict[str, float] = {}
        self._head: dict[str, float] = {}
        """cache of :meth:`head` (all tenants) per instance; an instance is absent while unknown"""

    @classmethod
    def build(
        cls, key: KeyFn, key_id: str, models: Iterable[ModelView], watch: WatchFn | None = None
    ) -> PlacementIndex:
        """An index of ``models`` in one pass (heapify, not n pushes)."""
        idx = cls(key, key_id, watch)
        heaps = idx._heaps
        tb = idx._tenant_bytes
        tl = idx._tenant_last_used
        live = idx._live
        watched = idx._watched
        holders = idx._holders
        n = 0
        for m in models:
            t = m.tenant
            if m.last_used > tl.get(t, float("-inf")):
                tl[t] = m.last_used
            if watch is not None and watch(m):
                watched.add(m.model_id)
            if not m.assigned:
                continue
            k = key(m)
            live[m.model_id] = _rec(m, k)
            tb[t] = tb.get(t, 0) + m.size_bytes * len(m.assigned)
            for iid in m.assigned:
                hs = holders.get(iid)
                if hs is None:
                    hs = holders[iid] = set()
                hs.add(m.model_id)
            if k is None:
                continue
            for iid in m.assigned:
                hk = (iid, t)
                h = heaps.get(hk)
                if h is None:
                    h = heaps[hk] = []
                    idx._by_instance.setdefault(iid, []).append(hk)
                h.append(Entry(k, m.model_id, iid))
                n += 1
        for h in heaps.values():
            heapq.heapify(h)
        idx._entries = idx._live_entries = n
        return idx

    def _push(self, iid: str, tenant: str, e: Entry) -> None:
        hk = (iid, tenant)
        h = self._heaps.get(hk)
        if h is None:
            h = self._heaps[hk] = []
            self._by_instance.setdefault(iid, []).append(hk)
        heapq.heappush(h, e)
        head = self._head.get(iid)
        if head is not None and e.key < head:  # a push lowers the instance's head at most to its key
            self._head[iid] = e.key

    # ------------------------------------------------------------------ updates

    def update(self, m: ModelView) -> None:
        """Record the model's current state (call after any change to it)."""
        t = m.tenant
        mid = m.model_id
        if m.last_used > self._tenant_last_used.get(t, float("-inf")):
            self._tenant_last_used[t] = m.last_used
        if self.watch is not None:
            if self.watch(m):
                self._watched.add(mid)
            else:
                self._watched.discard(mid)
        old = self._live.get(mid)
        if not m.assigned:
            if old is not None:
                self._drop(mid)
            return
        k = self.key(m)
        if old is not None:
            if old.key == k and old.tenant == t and old.assigned == m.assigned and old.size_bytes == m.size_bytes:
                if old.view is not m:
                    self._live[mid] = _rec(m, k)
                return
            self._tenant_bytes[old.tenant] -= old.size_bytes * len(old.assigned)
            if old.key is not None:
                self._live_entries -= len(old.assigned)
            if old.assigned != m.assigned:
                self._hold(mid, old.assigned, m.assigned)
        else:
            self._hold(mid, frozenset(), m.assigned)
        self._live[m.model_id] = _rec(m, k)
        self._tenant_bytes[t] = self._tenant_bytes.get(t, 0) + m.size_bytes * len(m.assigned)
        if k is None:
            return
        same_key = old is not None and old.key == k and old.tenant == t
        for iid in m.assigned:
            if not (same_key and old is not None and iid in old.assigned):
                self._push(iid, t, Entry(k, m.model_id, iid))
                self._entries += 1
        self._live_entries += len(m.assigned)
        self._maybe_compact()

    def _hold(self, model_id: str, before: frozenset[str], after: frozenset[str]) -> None:
        holders = self._holders
        for iid in before - after:
            hs = holders.get(iid)
            if hs is not None:
                hs.discard(model_id)
                if not hs:
                    del holders[iid]
        for iid in after - before:
            hs = holders.get(iid)
            if hs is None:
                hs = holders[iid] = set()
            hs.add(model_id)

    def remove(self, model_id: str) -> None:
        """Forget a deleted model."""
        self._watched.discard(model_id)
        self._drop(model_id)

    def _drop(self, model_id: str) -> None:
        old = self._live.pop(model_id, None)
        if old is None:
            return
        self._hold(model_id, old.assigned, frozenset())
        self._tenant_bytes[old.tenant] -= old.size_bytes * len(old.assigned)
        if old.key is not None:
            self._live_entries -= len(old.assigned)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._entries > 2 * self._live_entries + 256:
            self._compact()

    def _compact(self) -> None:
        heaps: dict[tuple[str, str], list[Entry]] = {}
        by_instance: dict[str, list[tuple[str, str]]] = {}
        n = 0
        for mid, rec in self._live.items():
            if rec.key is None:
                continue
            for iid in rec.assigned:
                hk = (iid, rec.tenant)
                h = heaps.get(hk)
                if h is None:
                    h = heaps[hk] = []
                    by_instance.setdefault(iid, []).append(hk)
                h.append(Entry(rec.key, mid, iid))
                n += 1
        for h in heaps.values():
            heapq.heapify(h)
        self._heaps = heaps
        self._by_instance = by_instance
        self._entries = self._live_entries = n
        self._head.clear()

    # ------------------------------------------------------------------ reads

    def tenant_bytes(self, tenant: str) -> int:
        """Bytes of every assigned copy of the tenant's models."""
        return self._tenant_bytes.get(tenant, 0)

    def tenant_last_used(self, tenant: str) -> float:
        """Latest use of any of the tenant's models (not lowered by removals)."""
        return self._tenant_last_used.get(tenant, float("-inf"))

    def tenants(self) -> list[str]:
        return sorted(self._tenant_last_used.keys() | self._tenant_bytes.keys())

    def tenant_set(self) -> set[str]:
        """:meth:`tenants`, unordered (cheaper where order does not matter)."""
        return self._tenant_last_used.keys() | self._tenant_bytes.keys()

    def tenant_usage(self) -> Mapping[str, int]:
        return dict(self._tenant_bytes)

    def __len__(self) -> int:
        return self._live_entries

    def tick_candidates(self, live: Collection[str]) -> set[str]:
        """Models a tick must look at: the watched ones plus every holder of an instance not in ``live``.

        Only meaningful with a ``watch`` predicate (else: the holders part alone).
        """
        out = set(self._watched)
        for iid, hs in self._holders.items():
            if iid not in live:
                out |= hs
        return out

    def _keys(self, instances: Iterable[str] | None, tenants: Collection[str] | None) -> list[tuple[str, str]]:
        if instances is None:
            keys: Iterable[tuple[str, str]] = self._heaps
        else:
            keys = [hk for iid in instances for hk in self._by_instance.get(iid, ())]
        if tenants is not None:
            keys = [hk for hk in keys if hk[1] in tenants]
        return list(dict.fromkeys(keys))  # each heap once (the order of the heaps does not matter)

    def head(self, instance_id: str, tenants: Collection[str] | None = None) -> float:
        """Lowest key on the instance among ``tenants`` (all when None); inf if none.

        Read from the heaps' tops without checking them: a dead top entry can make it low
        (never high). Good enough to shortlist instances, and scanning cleans the tops.
        For all tenants the value is cached per instance: a push lowers it in place, a scan
        (which pops the instance's heaps) or a compaction drops it, to be read again.
        """
        if tenants is None:
            cached = self._head.get(instance_id)
            if cached is not None:
                return cached
        best = float("inf")
        heaps = self._heaps
        for hk in self._by_instance.get(instance_id, ()):
            if tenants is not None and hk[1] not in tenants:
                continue
            h = heaps[hk]
            if h and h[0].key < best:
                best = h[0].key
        if tenants is None:
            self._head[instance_id] = best
        return best

    def head_values(self, instance_ids: list[str]) -> list[float]:
        """``head(i)`` (all tenants) for each instance, from the cache (filled for those not in it)."""
        cache = self._head
        for i in [i for i in instance_ids if i not in cache]:  # a scan drops the cache of its instances
            self.head(i)
        return list(map(cache.__getitem__, instance_ids))

    def heads(self, instance_ids: Iterable[str], tenants: Collection[str] | None = None) -> list[tuple[float, str]]:
        """``(head(i, tenants), i)`` for each instance, in one pass."""
        if tenants is None:
            ids = instance_ids if isinstance(instance_ids, list) else list(instance_ids)
            return list(zip(self.head_values(ids), ids, strict=True))
        heaps = self._heaps
        by_instance = self._by_instance
        inf = float("inf")
        out: list[tuple[float, str]] = []
        append = out.append
        for iid in instance_ids:
            best = inf
            for hk in by_instance.get(iid, ()):
                if tenants is not None and hk[1] not in tenants:
                    continue
                h = heaps[hk]
                if h and h[0][0] < best:
                    best = h[0][0]
            append((best, iid))
        return out

    def scan(
        self,
        tenants: Collection[str] | None = None,
        instances: Iterable[str] | None = None,
        offsets: Mapping[str, float] | None = None,
    ) -> Scan:
        """Live entries of ``tenants`` on ``instances`` (all when None) in ascending order of
        key + ``offsets[tenant]`` (0 for tenants not in ``offsets``).

        Use as a context manager: entries are popped as they are read and pushed back on
        close, so a scan costs O(k log n) for the k entries it reads.
        """
        return Scan(self, self._keys(instances, tenants), offsets or {})


Row = tuple[float, Entry, str, list[Entry], _Rec]
"""A scan's row as read: ``(order, entry, tenant, heap it came from, the model's record)``; rows compare as
``(order, key, model_id, instance_id, tenant)`` (one row per heap is in flight, so the heap
itself is never compared)."""


class Scan:
    """An ordered read of some of an index's heaps that restores them when closed.

    The read is a merge of the heaps through a heap of their heads; a heap is advanced past
    its dead entries (dropped for good) only when its row has been read and the next row is
    asked for, so a read that stops after a row leaves that row's heap as it was.
    """

    def __init__(self, index: PlacementIndex, keys: list[tuple[str, str]], offsets: Mapping[str, float]) -> None:
        self._index = index
        self._offsets = offsets
        self._read: list[Row] = []
        """rows read: their entries go back into their heaps on close (as do those still in ``_heads``)"""
        self._heads: list[Row] = []
        self._closed = False
        self._instances = {hk[0] for hk in keys}
        cache = index._head
        for iid in self._instances:
            cache.pop(iid, None)
        heaps = index._heaps
        self._stream = self._merge([(heaps[hk], hk[1], None) for hk in keys])

    def _merge(self, start: list[tuple[list[Entry], str, Entry | None]]) -> Generator[Row, None, None]:
        """The read itself: every heap in ``start`` advanced to its first live entry, then one row
        at a time, advancing only the heap of the row read last (the one heap-advance loop).

        A row read stays on top of ``_heads`` until its heap is advanced, which replaces it
        with that heap's next live row (one sift instead of a pop and a push).
        """
        idx = self._index
        live = idx._live
        heads = self._heads
        read = self._read
        offsets = self._offsets
        pop = heapq.heappop
        push = heapq.heappush
        replace = heapq.heapreplace
        pending: Iterable[tuple[list[Entry], str, Entry | None]] = start
        started = False
        while True:
            dropped = 0
            for h, tenant, prev in pending:
                off = offsets.get(tenant, 0.0) if offsets else 0.0
                while h:
                    e = pop(h)
                    # a live entry equal to the row just read from this heap is its duplicate
                    # (identical entries pop one after the other)
                    if e != prev:
                        rec = live.get(e[1])
                        if rec is not None and rec.key == e[0] and rec.tenant == tenant and e[2] in rec.assigned:
                            (replace if started else push)(heads, (e[0] + off, e, tenant, h, rec))
                            break
                    dropped += 1  # dead, or a duplicate of a live entry: dropped for good
                else:
                    if started:  # the heap is used up: its row leaves the heads
                        pop(heads)
            if dropped:
                idx._entries -= dropped
            if not heads:
                return
            row = heads[0]
            yield row
            read.append(row)  # from here on the row is no longer among the heads
            pending = ((row[3], row[2], row[1]),)
            started = True

    def raw(self) -> Iterator[Row]:
        """The read as :data:`Row` tuples (the hot loop of a miss: no tuple rebuilt per row)."""
        return self._stream

    def __iter__(self) -> Iterator[Candidate]:
        for order, e, tenant, _, _ in self._stream:
            yield Candidate(order, e[0], e[1], e[2], tenant)

    def rows(self) -> Iterator[tuple[float, float, str, str, str]]:
        """The read as plain ``(order, key, model_id, instance_id, tenant)`` tuples."""
        for order, e, tenant, _, _ in self._stream:
            yield order, e[0], e[1], e[2], tenant

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        cache = self._index._head
        for iid in self._instances:
            cache.pop(iid, None)
        push = heapq.heappush
        for _, e, _, h, _ in self._read:
            push(h, e)
        for _, e, _, h, _ in self._heads:
            push(h, e)
        self._read.clear()
        self._heads.clear()

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
