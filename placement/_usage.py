"""Request rates and the history of models' traffic: the one estimator the simulator and the mesh share.

A model's traffic is a :class:`Usage`: the time of its last request and an exponentially
weighted rate at that time, with time constant ``window_s`` (each request adds
``60 / window_s`` requests per minute to the rate, decayed since the previous one). The rate
is the one at ``last_used``, not at "now": it changes only when a request comes, so an
eviction key built on it holds its order while the model is idle (the decay since the last
use is the key's recency term), and a record that publishes it is written only on traffic.
Code that needs the rate *now* (a tick deciding copies by rate) decays it with :meth:`Usage.at`.

The estimator is linear, so the traffic of a model is the :meth:`~Usage.merge` of the traffic
each part of the cluster saw (each copy counts the requests it served): exactly what one
meter over all its requests would say, up to float rounding.

* The simulator (:class:`~placement.VirtualCluster`) meters every request with
  :meth:`Usage.record`.
* A mesh instance meters each copy the same way and reports it; the placement leader merges
  the copies' reports, and keeps, in a :class:`UsageHistory`, the traffic of copies that are
  gone (evicted, unloaded, lost with their instance), with the model's reload cost and
  measured size: so a model that returns is valued by its past, as in the simulator, and
  not as a model never seen.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Usage(NamedTuple):
    """Traffic of a model (or of one copy): last request time and the rate (rpm) at that time."""

    last_used: float = 0.0
    rate_rpm: float = 0.0

    def record(self, now: float, window_s: float, requests: int = 1) -> Usage:
        """The usage after ``requests`` requests at ``now`` (the simulator's and the instances' meter)."""
        add = requests * 60.0 / window_s
        if self.last_used > 0:
            return Usage(now, self.rate_rpm * math.exp(-(now - self.last_used) / window_s) + add)
        return Usage(now, add)

    def at(self, now: float, window_s: float) -> float:
        """The rate (rpm) at ``now``: decayed since the last request (never raised for a ``now`` before it)."""
        if now <= self.last_used or self.rate_rpm == 0.0:
            return self.rate_rpm
        return self.rate_rpm * math.exp(-(now - self.last_used) / window_s)

    def merge(self, other: Usage, window_s: float) -> Usage:
        """The usage of the requests counted by both (disjoint request sets: each copy counts its own)."""
        if other.last_used <= 0:
            return self
        if self.last_used <= 0:
            return other
        old, new = (self, other) if self.last_used <= other.last_used else (other, self)
        if old.rate_rpm == 0.0:
            return Usage(new.last_used, new.rate_rpm)
        return Usage(new.last_used, old.rate_rpm * math.exp(-(new.last_used - old.last_used) / window_s) + new.rate_rpm)


def merge_usage(parts: Iterable[Usage], window_s: float) -> Usage:
    """:meth:`Usage.merge` over several parts (a model's copies and its history)."""
    out = Usage()
    for u in parts:
        out = out.merge(u, window_s)
    return out


class Remembered(NamedTuple):
    """What the policy needs of a model whose copies went: its traffic, reload cost and measured size."""

    last_used: float
    rate_rpm: float
    load_time_s: float = 0.0
    """seconds the last measured load took (0: none measured)"""
    size_bytes: int = 0
    """measured size (0: none measured)"""

    @property
    def usage(self) -> Usage:
        return Usage(self.last_used, self.rate_rpm)

    def with_part(self, part: Usage, window_s: float, *, load_time_s: float = 0.0, size_bytes: int = 0) -> Remembered:
        """This entry with the traffic one gone copy counted added; a load time or size given (measured
        by that copy) replaces the remembered one: the newest measurement wins."""
        u = self.usage.merge(part, window_s)
        return Remembered(u.last_used, u.rate_rpm, load_time_s or self.load_time_s, size_bytes or self.size_bytes)


class UsageHistory:
    """Bounded memory of models' past traffic, reload cost and size, for models whose copies went.

    At most ``max_models`` entries; past that, the entries whose last use is oldest go first
    (they are the ones the policy values least: their recency term is the smallest; among equal
    last uses, the one written first). Reading an entry does not refresh it; writing one does.

    The order by last use is a heap with stale entries skipped when they surface, so a write
    costs O(log n) whatever its last use. (It was a list kept sorted by walking back from the
    newest entry: a copy evicted for being cold folds in with a last use older than most of the
    history, and on the density bench's leader one such fold walked thousands of entries and
    held the event loop 30 ms.)
    """

    def __init__(self, max_models: int = 50_000) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self._entries: dict[str, Remembered] = {}
        self._written: dict[str, int] = {}  # model -> sequence number of its entry's last write
        self._by_use: list[tuple[float, int, str]] = []  # heap of (last_used, write, model); stale ones skipped
        self._writes = 0
        self.dropped = 0
        """entries dropped for the bound so far"""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def get(self, model_id: str) -> Remembered | None:
        return self._entries.get(model_id)

    def items(self) -> Iterator[tuple[str, Remembered]]:
        """Entries, oldest last use first (among equal last uses, the first written first)."""
        for _, _, mid in sorted(e for e in self._by_use if self._current(e)):
            yield mid, self._entries[mid]

    def _current(self, e: tuple[float, int, str]) -> bool:
        """Whether a heap entry is its model's last write (not replaced, forgotten or dropped since)."""
        return self._written.get(e[2]) == e[1]

    def put(self, model_id: str, entry: Remembered) -> None:
        """Remember ``entry`` for the model (replacing what was there)."""
        self._writes += 1
        self._entries[model_id] = entry
        self._written[model_id] = self._writes
        heapq.heappush(self._by_use, (entry.last_used, self._writes, model_id))
        while len(self._entries) > self.max_models:
            oldest = heapq.heappop(self._by_use)
            if self._current(oldest):
                del self._entries[oldest[2]], self._written[oldest[2]]
                self.dropped += 1
        if len(self._by_use) > 2 * len(self._entries) + 64:  # mostly stale: rebuild from the live entries
            self._by_use = [e for e in self._by_use if self._current(e)]
            heapq.heapify(self._by_use)

    def fold(
        self, model_id: str, part: Usage, window_s: float, *, load_time_s: float = 0.0, size_bytes: int = 0
    ) -> Remembered:
        """Add one gone copy's final report to the model's history (:meth:`Remembered.with_part`); returns the entry."""
        old = self._entries.get(model_id) or Remembered(0.0, 0.0)
        entry = old.with_part(part, window_s, load_time_s=load_time_s, size_bytes=size_bytes)
        self.put(model_id, entry)
        return entry

    def forget(self, model_id: str) -> None:
        if self._entries.pop(model_id, None) is not None:
            del self._written[model_id]  # its heap entries are stale now

    def clear(self) -> None:
        self._entries.clear()
        self._written.clear()
        self._by_use.clear()
