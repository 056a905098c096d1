"""The tentative cluster state of one decision (:class:`Plan`) and byte formatting for reasons."""

from __future__ import annotations

from ._types import Action, ClusterView, InstanceView, ModelView

INF = float("inf")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Plan:
    """Tentative cluster state while one decision is built: deltas over the view."""

    __slots__ = ("_added", "_loading", "_removed", "_tenant", "_used", "actions", "view")

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.actions: list[Action] = []
        self._used: dict[str, int] = {}
        self._loading: dict[str, int] = {}
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        self._tenant: dict[str, int] = {}

    def assigned(self, m: ModelView) -> frozenset[str]:
        a = m.assigned
        add = self._added.get(m.model_id)
        rem = self._removed.get(m.model_id)
        if add:
            a = a | add
        if rem:
            a = a - rem
        return a

    def free(self, inst: InstanceView) -> int:
        return inst.capacity_bytes - inst.used_bytes - self._used.get(inst.instance_id, 0)

    def loading(self, inst: InstanceView) -> int:
        return inst.loading + self._loading.get(inst.instance_id, 0)

    def tenant_delta(self, tenant: str) -> int:
        return self._tenant.get(tenant, 0)

    def load(self, m: ModelView, iid: str, reason: str) -> None:
        self._added.setdefault(m.model_id, set()).add(iid)
        rem = self._removed.get(m.model_id)
        if rem:
            rem.discard(iid)
        self._used[iid] = self._used.get(iid, 0) + m.size_bytes
        self._loading[iid] = self._loading.get(iid, 0) + 1
        self._tenant[m.tenant] = self._tenant.get(m.tenant, 0) + m.size_bytes
        self.actions.append(Action("load", m.model_id, iid, reason))

    def unload(self, m: ModelView, iid: str, reason: str, room_for: str = "") -> None:
        self._removed.setdefault(m.model_id, set()).add(iid)
        self._used[iid] = self._used.get(iid, 0) - m.size_bytes
        c = m.copy_on(iid)
        if c is None or c.state == "loading":
            self._loading[iid] = self._loading.get(iid, 0) - 1
        self._tenant[m.tenant] = self._tenant.get(m.tenant, 0) - m.size_bytes
        self.actions.append(Action("unload", m.model_id, iid, reason, room_for))
