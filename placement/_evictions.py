"""What recent evictions made room for: the memory behind the swap guard (no load/evict ping-pong).

When a miss of ``b`` evicts a copy of ``a``, and ``a`` is requested again a few seconds later,
the cheapest victim for ``a`` is often ``b`` itself: both are young, both were just used, and
the two models would evict each other for as long as they take turns. The policy breaks that
cycle with this memory: a miss of ``a`` weighs the copies of every model ``a`` was evicted for
within ``PolicySettings.swap_guard_s`` at ``swap_guard_penalty`` times their value, so another
copy goes unless every other is worth that much more (a hot copy is not given up for a cold pair).

The producer of views keeps one :class:`EvictionMemory` and passes :attr:`EvictionMemory.recent`
as ``ClusterView.evicted_for``: the simulator from the actions it applies, the mesh's
placement leader from the decisions it applies, and a new leader rebuilds it from the
decision log (each logged eviction names the model it made room for). So the guard is a
pure function of the view, simulated and live alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ._types import Action


class EvictionMemory:
    """Per evicted model, the models its recent evictions made room for, and the latest time each.

    Entries older than ``window_s`` (by the times noted) are dropped as newer ones arrive,
    and at most ``max_entries`` are kept; readers still compare times with their own clock.
    """

    def __init__(self, window_s: float = 60.0, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._log: deque[tuple[float, str, str]] = deque()  # (at, evicted, room_for), in the order noted
        self._by_victim: dict[str, dict[str, float]] = {}
        self.recent: Mapping[str, Mapping[str, float]] = MappingProxyType(self._by_victim)
        """read-only view: evicted model -> {model it made room for: latest time}"""

    def __len__(self) -> int:
        return len(self._log)

    def note(self, evicted: str, room_for: str, at: float) -> None:
        """``evicted`` lost a copy at ``at`` to make room for ``room_for``."""
        if not room_for or room_for == evicted:
            return
        seen = self._by_victim.setdefault(evicted, {})
        if seen.get(room_for, float("-inf")) <= at:
            seen[room_for] = at
        self._log.append((at, evicted, room_for))
        self.expire(at)

    def note_actions(self, actions: Iterable[Action], at: float) -> None:
        """Note the evictions among ``actions`` (unloads that name the model they make room for)."""
        for a in actions:
            if a.kind == "unload" and a.room_for:
                self.note(a.model_id, a.room_for, at)

    def expire(self, now: float) -> None:
        """Drop the entries noted before ``now - window_s`` (and the oldest past ``max_entries``)."""
        cutoff = now - self.window_s
        log = self._log
        while log and (log[0][0] < cutoff or len(log) > self.max_entries):
            at, evicted, room_for = log.popleft()
            seen = self._by_victim.get(evicted)
            if seen is not None and seen.get(room_for) == at:
                del seen[room_for]
                if not seen:
                    del self._by_victim[evicted]

    def clear(self) -> None:
        self._log.clear()
        self._by_victim.clear()
