"""What every policy shares below its decisions: settings, eviction keys, the index, tie-breaks.

:class:`PolicyCore` is the root of the policy engine's layers, each a module by job:
``_victims`` (which copies may go, cheapest first; fairness and quotas), ``_placing``
(one more copy somewhere: on a miss, for a repair or for traffic), ``_scaling`` (the
periodic tick: repairs, scale-out/in) and ``_policy`` (the concrete policies). The
subclasses define the eviction key and the switches below.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

from ._index import PlacementIndex
from ._plan import INF as _INF
from ._plan import fmt_bytes
from ._settings import PolicySettings
from ._types import ClusterView, ModelView

_CACHE_ATTR = "_placement_index_cache"


class PolicyCore:
    """The engine's root: settings, eviction keys, the eviction index, tie-breaks, and the subclass hooks."""

    name: ClassVar[str] = "base"
    rate_copies: ClassVar[bool] = True
    """add and remove copies by request rate (scale out / second copy / scale in)"""
    fair: ClassVar[bool] = True
    """fair eviction between tenants"""
    residency: ClassVar[bool] = True
    """protect copies younger than min_residency_s (second pass only)"""
    swap_guard: ClassVar[bool] = True
    """a miss weighs the copies of a model it was just evicted for (ClusterView.evicted_for) :meth:`swap_margin` more"""

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        self.settings = settings
        self.seed = seed
        st = settings
        self.key_id = (
            f"{type(self).__name__}:{self._key_params()}|{st.scale_out_rpm_per_copy}/"
            f"{st.scale_out_inflight_per_copy}/{st.second_copy_rpm}"
        )
        self._inst_hash: dict[str, int] = {}

    # ------------------------------------------------------------------ keys

    def _key_params(self) -> str:
        return ""

    def evict_key(self, m: ModelView) -> float | None:
        """Eviction order of the model's copies (lower goes first); None: never evicted."""
        raise NotImplementedError

    def value_key(self, m: ModelView) -> float:
        """The key the model would have as a single copy (threshold for evicting on its behalf)."""
        k = self.evict_key(m)
        return _INF if k is None else k

    def tick_watch(self, m: ModelView) -> bool:
        """Whether :meth:`on_tick` may act on ``m`` while every instance it is assigned to is live.

        A superset of the per-model conditions of a tick (below min copies, a failed copy,
        more than one copy, a rate or load that asks for another copy); the time-dependent
        parts (idle, young copies) are checked by the tick itself. The index keeps the set
        of models this holds for, so a tick reads those and the holders of instances that
        are not live instead of every model.
        """
        if self.min_copies(m) > 0:
            return True
        a = m.assigned
        if not a:
            return False
        for c in m.copies:
            if c.state == "failed" and c.instance_id in a:
                return True
        if not self.rate_copies:
            return False
        if len(a) > 1:
            return True
        s = self.settings
        rate = max(m.rate_rpm, m.recent_rpm)  # whichever the tick reads (ClusterView.recent_window_s)
        return rate >= s.second_copy_rpm or rate > s.scale_out_rpm_per_copy or m.inflight > s.scale_out_inflight_per_copy

    def new_index(self) -> PlacementIndex:
        """An empty index in this policy's eviction order, for producers that keep one current."""
        return PlacementIndex(self.evict_key, self.key_id, self.tick_watch)

    def build_index(self, models: Sequence[ModelView] | Any) -> PlacementIndex:
        return PlacementIndex.build(self.evict_key, self.key_id, models, self.tick_watch)

    def index_for(self, view: ClusterView) -> PlacementIndex:
        """The view's own index when it is in this policy's order, else one built from the view (cached on it)."""
        if view.index is not None and view.index.key_id == self.key_id:
            return view.index
        cached = view.__dict__.get(_CACHE_ATTR)
        if cached is not None and cached.key_id == self.key_id:
            return cached  # type: ignore[no-any-return]
        idx = self.build_index(view.models.values())
        object.__setattr__(view, _CACHE_ATTR, idx)
        return idx

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def min_copies(m: ModelView) -> int:
        return max(m.min_copies, 1 if m.pinned else 0)

    def _tiebreak(self, model_hash: int, iid: str) -> int:
        h = self._inst_hash.get(iid)
        if h is None:
            h = self._inst_hash[iid] = zlib.crc32(f"{self.seed}/{iid}".encode())
        return (h ^ model_hash) * 2654435761 % (1 << 32)

    def _model_hash(self, m: ModelView) -> int:
        return zlib.crc32(m.model_id.encode())


    # ------------------------------------------------------------------ hooks

    def young_margin(self) -> float:
        """How much further (in key) a scan looks for old victims once young ones would do."""
        return _INF
    def swap_margin(self) -> float:
        """Key offset of a copy whose model the miss's model was just evicted for (infinite: last resort)."""
        return _INF
    def fair_margin(self) -> float:
        """Key offset of other tenants' copies for a tenant over its share (in the units of the key)."""
        return 0.0
    def _victim_detail(self, vm: ModelView, now: float) -> str:
        return f"idle {now - vm.last_used:.0f}s, {vm.rate_rpm:.1f} rpm, {fmt_bytes(vm.size_bytes)}"
