"""The adaptive policy: learns online how much recency weighs against frequency, from its own mistakes.

Eviction key (lower goes first; the log of a copy's value per byte, common time term
dropped so the order holds until the model changes, as for :class:`~placement.Policy`)::

    log(c) + log(load_time_s / size_bytes) + last_used / tau
    c = max(rate_rpm * W / 60, 1)       (decayed request count over the rate window W)

* **Frequency** is ``c``, **cost and size** the GDSF term ``load_time_s / size_bytes`` (what a
  reload would cost, per byte the copy holds), **recency** ``last_used / tau``: a copy idle
  for ``tau`` seconds is worth ``e`` times less. A short ``tau`` makes the policy LRU (with
  cost/size tie-breaks), a long one LFU-like. The value of ``tau`` is what is learned.
* **Learning (ARC's balance, with LeCaR's regret and GDSF's cost).** Every copy evicted to
  make room goes to a ghost list, tagged with the side that let it go: *recent* (decayed
  count below 2: it was kept on recency alone) or *frequent* (it had a history, but had
  gone idle). A miss on a ghost is a regretted eviction: a *recent* ghost asks for a shorter
  horizon (recency should have weighed more), a *frequent* one for a longer. The step is the
  ghost's reload cost over the mean cost of ghosts (costly regrets count more) times
  ``adapt_learning_rate``, on a log grid of horizons (x1.5 per step, between
  ``adapt_tau_min_s`` and ``adapt_tau_max_s``). The ghost lists are bounded like ARC's: the
  oldest ghosts go once the ghosts' bytes exceed the cluster capacity (a ghost hit means "a
  cluster twice this size would have kept it").
* **Stability.** The horizon in use moves to a new grid step only once the learned position
  is 0.75 steps away (hysteresis), and only after a decision (never in the middle of one);
  the key order changes then (at most once per ``adapt_retune_min_s``, so the index rebuilds
  it causes are bounded), and :attr:`key_id` with it, so the producer of views rebuilds
  its index (the simulator and the mesh leader do so when ``key_id`` changes). Everything
  else is :class:`~placement.Policy`'s engine: residency, fair eviction, quotas, copies.
* **Explainable.** Each eviction's reason gives the victim's count, idle time, cost/size and
  the horizon in use with how it was learned (ghost hits on each side).

The learned state (:class:`AdaptiveState`) is explicit: :meth:`AdaptivePolicy.state`
returns it, and :meth:`AdaptivePolicy.seed_ghosts` rebuilds the ghost lists from a view (the
models that have no copy but were used recently, most recent first) - what a new leader
does so that it does not start blind. The policy does no I/O; its decisions are a function
of the views and misses it is given, in order, so a replay gives the same decisions.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from ._plan import fmt_bytes
from ._policy import Policy
from ._settings import PolicySettings
from ._types import Action, ClusterView, ModelView

_GRID = 1.5
_HYSTERESIS = 0.75


class Ghost(NamedTuple):
    evicted_at: float
    side: str
    """``recent`` or ``frequent``"""
    cost_s: float
    size_bytes: int


@dataclass(frozen=True)
class AdaptiveState:
    """What the adaptive policy has learned, for reports and for a new leader."""

    tau_s: float
    position: float
    ghosts: int
    ghost_bytes: int
    hits_recent: int
    hits_frequent: int
    retunes: int


class AdaptivePolicy(Policy):
    """Cost-aware eviction whose recency horizon is learned online from ghost hits (see module doc)."""

    name = "adaptive"

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        self._levels = self._grid(settings)
        self._level = min(range(len(self._levels)), key=lambda i: abs(math.log(self._levels[i] / settings.rate_tau_s)))
        self._pos = float(self._level)
        super().__init__(settings, seed)
        self._count_per_rpm = settings.rate_tau_s / 60.0
        self._tau = self._levels[self._level]
        self._ghosts: OrderedDict[str, Ghost] = OrderedDict()
        self._ghost_bytes = 0
        self._ghost_cost = 0.0
        self._sides = {"recent": 0, "frequent": 0}
        self.hits_recent = 0
        self.hits_frequent = 0
        self.retunes = 0
        self._retuned_at = -math.inf

    @staticmethod
    def _grid(settings: PolicySettings) -> list[float]:
        lo, hi = settings.adapt_tau_min_s, max(settings.adapt_tau_max_s, settings.adapt_tau_min_s)
        n = math.floor(math.log(hi / lo) / math.log(_GRID) + 1e-9) + 1
        return [lo * _GRID**k for k in range(n)]

    def _key_params(self) -> str:
        return f"{super()._key_params()}/tau={self._levels[self._level]:.0f}"

    # ------------------------------------------------------------------ key

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        c = m.rate_rpm * self._count_per_rpm
        if c < 1.0:
            c = 1.0
        lt = m.load_time_s if m.load_time_s > 1e-3 else 1e-3
        k = math.log(c * lt / (m.size_bytes if m.size_bytes > 1 else 1)) + m.last_used / self._tau
        if len(m.assigned) > 1:
            k += self._discount
        return k

    def _victim_detail(self, vm: ModelView, now: float) -> str:
        c = max(vm.rate_rpm * self._count_per_rpm, 1.0)
        return (
            f"count {c:.1f}, idle {now - vm.last_used:.0f}s, reload {vm.load_time_s:.1f}s for "
            f"{fmt_bytes(vm.size_bytes)}; horizon {self._tau:.0f}s learned from ghost hits "
            f"{self.hits_recent} recent / {self.hits_frequent} frequent"
        )

    # ------------------------------------------------------------------ learning

    def _side(self, m: ModelView) -> str:
        return "frequent" if m.rate_rpm * self._count_per_rpm >= 2.0 else "recent"

    def _remember(self, m: ModelView, now: float, limit_bytes: float) -> None:
        old = self._ghosts.pop(m.model_id, None)
        if old is not None:
            self._forget(old)
        g = Ghost(now, self._side(m), m.load_time_s, m.size_bytes)
        self._ghosts[m.model_id] = g
        self._ghost_bytes += g.size_bytes
        self._ghost_cost += g.cost_s
        self._sides[g.side] += 1
        while self._ghost_bytes > limit_bytes and len(self._ghosts) > 1:
            self._forget(self._ghosts.popitem(last=False)[1])

    def _forget(self, g: Ghost) -> None:
        self._ghost_bytes -= g.size_bytes
        self._ghost_cost -= g.cost_s
        self._sides[g.side] -= 1

    def _regret(self, model_id: str) -> None:
        """A miss on a ghost: move the horizon towards the side that would have kept it."""
        g = self._ghosts.get(model_id)
        if g is None:
            return
        mean = self._ghost_cost / len(self._ghosts) if self._ghost_cost > 0 else g.cost_s
        # ARC's step: a hit on the smaller ghost list is stronger evidence (hits per ghost entry balance)
        same = self._sides[g.side]
        other = len(self._ghosts) - same
        balance = min(max(other / same if same else 1.0, 1.0), 10.0)
        step = self.settings.adapt_learning_rate * min(g.cost_s / mean if mean > 0 else 1.0, 4.0) * balance
        del self._ghosts[model_id]
        self._forget(g)
        if g.side == "recent":
            self.hits_recent += 1
            self._pos = max(0.0, self._pos - step)
        else:
            self.hits_frequent += 1
            self._pos = min(float(len(self._levels) - 1), self._pos + step)

    def _retune(self, now: float) -> None:
        if abs(self._pos - self._level) < _HYSTERESIS:
            return
        if now - self._retuned_at < self.settings.adapt_retune_min_s:  # bounded: a rebuild at most this often
            return
        self._retuned_at = now
        self._level = round(self._pos)
        self._tau = self._levels[self._level]
        self.retunes += 1
        st = self.settings
        self.key_id = (
            f"{type(self).__name__}:{self._key_params()}|{st.scale_out_rpm_per_copy}/"
            f"{st.scale_out_inflight_per_copy}/{st.second_copy_rpm}"
        )

    def observe(self, view: ClusterView, model_id: str, actions: list[Action]) -> None:
        """Learn from one miss and the actions decided for it (called by :meth:`on_miss`)."""
        self._regret(model_id)
        evicted = [a for a in actions if a.kind == "unload" and a.reason_word == "evict"]
        if evicted:
            limit = self._total_capacity(view) * self.settings.adapt_ghost_bytes_factor
            for a in evicted:
                vm = view.models.get(a.model_id)
                if vm is not None and len(vm.assigned) <= 1:  # the last copy: its model is out
                    self._remember(vm, view.now, limit)
        self._retune(view.now)

    def on_miss(self, view: ClusterView, model_id: str) -> list[Action]:
        actions = super().on_miss(view, model_id)
        self.observe(view, model_id, actions)
        return actions

    # ------------------------------------------------------------------ state

    def state(self) -> AdaptiveState:
        return AdaptiveState(
            self._tau, self._pos, len(self._ghosts), self._ghost_bytes, self.hits_recent, self.hits_frequent,
            self.retunes,
        )

    def ghosts(self) -> list[tuple[str, Ghost]]:
        """The ghost entries, oldest first."""
        return list(self._ghosts.items())

    def seed_ghosts(self, view: ClusterView) -> int:
        """Rebuild the ghost lists from a view: models with no copy that were used, most recent first.

        For a new leader: it has not seen the evictions, but its view carries every model's
        last use and rate (the copies' reports, and the history of gone copies the mesh leader
        rebuilds from its decision log), so a model that was used and is held nowhere was
        evicted (or never loaded) after its last use. Those are remembered, most recently used first,
        up to the ghost byte bound, as if evicted at their last use. Returns how many.
        """
        self._ghosts.clear()
        self._ghost_bytes = 0
        self._ghost_cost = 0.0
        limit = self._total_capacity(view) * self.settings.adapt_ghost_bytes_factor
        gone = [m for m in view.models.values() if m.last_used > 0 and not m.assigned and not m.pinned]
        gone.sort(key=lambda m: (m.last_used, m.model_id))
        total = 0
        start = len(gone)
        while start > 0 and total + gone[start - 1].size_bytes <= limit:
            start -= 1
            total += gone[start].size_bytes
        for m in gone[start:]:  # oldest first, so the order matches eviction order
            self._remember(m, m.last_used, limit)
        return len(self._ghosts)


def build_policy(settings: PolicySettings, seed: int = 0) -> Policy:
    """The policy ``settings.kind`` names (what the mesh runs)."""
    return AdaptivePolicy(settings, seed) if settings.kind == "adaptive" else Policy(settings, seed)
