"""The placement policies: pure functions of a cluster view, returning actions with reasons.

:class:`Policy` (ours) values a copy by what losing it would cost: expected future requests
(an exponentially decayed request count: request rate and recency in one number) times the
time a reload takes, per byte it occupies - a GreedyDual-Size-Frequency flavour of
cost-aware LRU. :class:`LruPolicy` is the ModelMesh-style baseline: least recently used goes.

Both share one engine (:class:`BasePolicy`):

* **Place on a miss.** Among live instances that can ever hold the model (capacity, no
  recent load failure there), the ones where it fits without eviction win; among them a
  zone with no copy yet, then a free loading slot, then most free bytes, then fewest loads
  in flight, then a seeded hash. Otherwise the index is read in ascending key order, and
  the first instance whose candidates add up to the bytes it lacks is chosen: its victims
  are the cheapest possible, in the sense that every other instance would need a more
  valuable copy to make room (minimax over instances; found without ranking every copy).
  With more than ``eviction_shortlist`` instances the read covers a shortlist first (the
  smallest shortfalls and the cheapest first candidates), then, only if that fails, all.
* **Loading slots** never cause evictions: a miss prefers an instance with a free slot,
  but when the only instances it fits on (with or without evictions) have their slots
  full, the load is still assigned and waits at that instance's agent for a slot (a client
  is waiting; refusing would fail it). Repairs (min copies, copies lost with an instance,
  moves off draining instances) queue the same way; extra copies for traffic (scale-out,
  second copy) need a free slot.
* **Never evicted:** pinned models, a copy whose removal would leave fewer live copies
  than ``min_copies`` (pinned counts as one), copies still loading (or not reported yet).
* **Residency:** copies younger than ``min_residency_s`` (and the last copy of a model with
  requests in flight) are never removed by a tick (scale-in, cold, quota trims), and a
  miss evicts them only when older copies cannot make room at a value within
  ``young_eviction_penalty`` times theirs (for :class:`Policy`; the baselines only when
  nothing older can make room at all). Churn is bounded, yet a request is never refused
  for it.
* **No OOM by design:** every load is planned against the instance's capacity minus its
  assigned bytes (loading copies included) after the planned evictions. A copy measured
  larger than it was planned at can still leave an instance's assigned bytes over its
  capacity (a load planned beside it then waits there for room); the next tick evicts the
  cheapest copies on that instance until they fit (young ones, then awaited ones, only if
  nothing else covers the excess).
* **Tenants:** a hard per-tenant byte quota (evicting the tenant's own copies to make room),
  and fair eviction: a tenant above its fair share (capacity divided among tenants used in
  the last ``cold_idle_s``) makes room from its own copies and idle tenants' copies, unless
  another active tenant's copy is worth ``fair_eviction_penalty`` times less; so its scan
  cannot flush another tenant's hot set (the value order already protects hot copies from
  one-off scans; this bounds what a tenant's own heavy traffic takes from the others).
"""

from __future__ import annotations

import math

from ._plan import INF as _INF
from ._scaling import Scaling
from ._settings import PolicySettings
from ._types import ModelView


class BasePolicy(Scaling):
    """The engine shared by the policies; subclasses define the eviction key and switches.

    Built in layers, one module per job: ``_core`` (keys, index, tie-breaks), ``_victims``
    (evictability, victim scan, fairness, quotas), ``_placing`` (one more copy; ``on_miss``)
    and ``_scaling`` (``on_tick``).
    """

    name = "base"


class Policy(BasePolicy):
    """Ours: cost-aware eviction (decayed request count x reload time / bytes), copies by rate, fair tenants.

    Eviction key (the log of a copy's value per byte, without the ``-now / tau`` term that
    every copy shares, so the order holds until the model changes)::

        log(f * load_time_s / size_bytes) + last_used / tau
          (+ log(replica_eviction_discount) when the model has other copies)
        f = max(max(rate_rpm * tau / 60, 1) - evidence_discount, value_floor)

    ``rate_rpm * tau / 60`` is the request count a rate implies over one decay time (tau =
    ``rate_tau_s``), so the value is the expected number of near-future requests, decayed
    by idleness, times what a reload would cost them - GreedyDual-Size-Frequency with time
    decay instead of an inflation clock. A model used once counts as one request.
    """

    name = "ours"

    def _key_params(self) -> str:
        s = self.settings
        return f"{s.rate_tau_s}/{s.replica_eviction_discount}/{s.evidence_discount}/{s.value_floor}"

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self._tau = settings.rate_tau_s
        self._per_min = settings.rate_tau_s / 60.0
        self._discount = math.log(settings.replica_eviction_discount)
        self._prior = settings.evidence_discount
        self._floor = settings.value_floor
        self._young = math.log(settings.young_eviction_penalty)
        self._fair = math.log(settings.fair_eviction_penalty)
        self._swap = math.log(settings.swap_guard_penalty)

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        f = m.rate_rpm * self._per_min
        if f < 1.0:
            f = 1.0
        f -= self._prior
        if f < self._floor:
            f = self._floor
        lt = m.load_time_s if m.load_time_s > 1e-3 else 1e-3
        k = math.log(f * lt / (m.size_bytes if m.size_bytes > 1 else 1)) + m.last_used / self._tau
        if len(m.assigned) > 1:
            k += self._discount
        return k

    def value_key(self, m: ModelView) -> float:
        k = self.evict_key(m)
        if k is None:
            return _INF
        return k - self._discount if len(m.assigned) > 1 else k

    def young_margin(self) -> float:
        return self._young

    def fair_margin(self) -> float:
        return self._fair

    def swap_margin(self) -> float:
        return self._swap


class LruPolicy(BasePolicy):
    """Baseline, as ModelMesh does it: place where most free, evict the least recently used copies.

    Hard constraints are kept (capacity, pinned, min copies, loading copies, dead and
    draining instances, quotas); no rate-driven copies, no fairness, no residency.
    """

    name = "lru"
    rate_copies = False
    fair = False
    residency = False
    swap_guard = False

    def evict_key(self, m: ModelView) -> float | None:
        return None if m.pinned else m.last_used
