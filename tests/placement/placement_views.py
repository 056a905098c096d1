"""Builders of consistent cluster views for the placement tests (used bytes derived from assignments)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from placement import Action, ClusterView, CopyView, InstanceView, ModelView, TenantQuota

GB = 1 << 30


def model(
    mid: str,
    size: int = GB,
    on: Iterable[str] = (),
    *,
    state: str = "loaded",
    since: float = 0.0,
    **kw: object,
) -> ModelView:
    """A model assigned to ``on``, each copy in ``state`` since ``since``."""
    on = tuple(on)
    copies = tuple(CopyView(i, state, since) for i in on)  # type: ignore[arg-type]
    return ModelView(model_id=mid, size_bytes=size, size_measured=True, copies=copies, assigned=frozenset(on), **kw)  # type: ignore[arg-type]


def view(
    now: float,
    instances: Mapping[str, int] | Iterable[InstanceView],
    models: Iterable[ModelView],
    *,
    quotas: Iterable[TenantQuota] = (),
    zones: Mapping[str, str] | None = None,
    states: Mapping[str, str] | None = None,
    slots: int = 2,
) -> ClusterView:
    """A view whose instances' used bytes and loading counts follow the models' assignments."""
    ms = {m.model_id: m for m in models}
    if isinstance(instances, Mapping):
        insts = [
            InstanceView(
                iid, cap, 0, loading_slots=slots, zone=(zones or {}).get(iid, ""),
                state=(states or {}).get(iid, "live"),  # type: ignore[arg-type]
            )
            for iid, cap in instances.items()
        ]
    else:
        insts = list(instances)
    used: dict[str, int] = {}
    loading: dict[str, int] = {}
    for m in ms.values():
        for iid in m.assigned:
            used[iid] = used.get(iid, 0) + m.size_bytes
            c = m.copy_on(iid)
            if c is None or c.state == "loading":
                loading[iid] = loading.get(iid, 0) + 1
    out = {
        i.instance_id: InstanceView(
            i.instance_id, i.capacity_bytes, used.get(i.instance_id, 0), loading.get(i.instance_id, 0),
            i.loading_slots, i.zone, i.labels, i.state,
        )
        for i in insts
    }
    return ClusterView(now=now, instances=out, models=ms, quotas={q.tenant: q for q in quotas})


def apply(v: ClusterView, actions: Iterable[Action], *, loaded: bool = True) -> ClusterView:
    """The view after ``actions`` (loads complete at once when ``loaded``), at the same time."""
    ms = dict(v.models)
    for a in actions:
        m = ms[a.model_id]
        if a.kind == "load":
            assert a.instance_id not in m.assigned, a
            c = CopyView(a.instance_id, "loaded" if loaded else "loading", v.now)
            ms[a.model_id] = _with(m, m.assigned | {a.instance_id}, (*m.copies, c))
        else:
            assert a.instance_id in m.assigned, a
            ms[a.model_id] = _with(
                m, m.assigned - {a.instance_id}, tuple(c for c in m.copies if c.instance_id != a.instance_id)
            )
    return view(v.now, list(v.instances.values()), ms.values(), quotas=v.quotas.values())


def _with(m: ModelView, assigned: frozenset[str], copies: tuple[CopyView, ...]) -> ModelView:
    from dataclasses import replace

    return replace(m, assigned=assigned, copies=copies)


def check_capacity(v: ClusterView) -> None:
    for i in v.instances.values():
        assert i.used_bytes <= i.capacity_bytes, f"{i.instance_id}: {i.used_bytes} > {i.capacity_bytes}"
