"""The operator's read models of the cluster: JSON-ready views over one instance's mirror of the
store (models, vModels, instances with their copies, one model described, the decision log)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._cluster_mirror import ClusterMirror
from .._model_status import REGISTERED_STATES, model_state, vmodel_status
from .._paging import MAX_LIMIT, Page, PageRequest, encode_token, page_of
from .._store_schema import CopyRecord, DecisionRecord, ModelRecord

if TYPE_CHECKING:
    from ._series import TrafficSeries

STATES = tuple(str(s) for s in REGISTERED_STATES)
MAX_PAGE = MAX_LIMIT
MAX_DECISIONS_PAGE = 5000
"""The decision log pages up to 5,000 entries (``logs --follow`` and the benches poll in one page)."""
MODELS_LIST = "cluster/models"
DECISIONS_LIST = "decisions"


def _copy_json(iid: str, c: CopyRecord) -> dict[str, Any]:
    return {
        "instance_id": iid,
        "state": c.state,
        "size_bytes": c.size_bytes,
        "size_measured": c.size_measured,
        "load_time_s": c.load_time_s,
        "since": c.since,
        "last_used": c.last_used,
        "rpm": c.rpm,
        "error": c.error,
    }


def _flatten(records: Iterable[DecisionRecord]) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
    """Decision records -> one entry per action with its position (seq, index), newest first
    (records given newest first)."""
    for rec in records:
        for i, a in enumerate(reversed(rec.actions)):
            yield (rec.seq, i), {"seq": rec.seq, "at": rec.at, "leader": rec.leader, **a}


class ClusterOverview:
    """JSON-ready read models over one instance's :class:`ClusterMirror` (O(models) at most, no I/O)."""

    def __init__(
        self,
        state: ClusterMirror,
        instance_id: str,
        *,
        is_leader: Callable[[], bool] = lambda: False,
        series: TrafficSeries | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.instance_id = instance_id
        self.is_leader = is_leader
        self.series = series
        self.clock = clock

    # ------------------------------------------------------------ models

    def model_row(self, mid: str, rec: ModelRecord | None = None, now: float | None = None) -> dict[str, Any]:
        rec = rec or self.state.models.items.get(mid)
        copies = self.state.copies_of(mid)
        now = self.clock() if now is None else now
        counts = {"loaded": 0, "loading": 0, "failed": 0}
        where, errors = [], []
        size = rpm = last = 0.0
        for iid, c in sorted(copies.items()):
            if c.state in counts:
                counts[c.state] += 1
            if c.state == "loaded":
                where.append(iid)
                rpm += c.rpm
            if c.state == "failed" and c.error:
                errors.append(f"{iid}: {c.error}")
            size = max(size, c.size_bytes)
            last = max(last, c.last_used)
        counts["loading"] = len(self.state.loading_on(mid))  # with assigned copies that have no record yet
        if rec is not None and not size:
            size = rec.predicted_size_bytes
        return {
            "model_id": mid,
            "type": rec.model_type if rec else "",
            "tenant": rec.tenant if rec else "",
            "state": model_state(self.state, mid, now),
            "copies": counts,
            "size_bytes": int(size),
            "rpm": round(rpm, 1),
            "last_used": last,
            "where": where,
            "assigned": list(self.state.assigned(mid)),
            "errors": errors,
        }

    def _mine(self, tenant: str | None) -> Callable[[str], bool]:
        """Whether a model id belongs to ``tenant`` (None: every model, an admin's view)."""
        if tenant is None:
            return lambda _mid: True
        items = self.state.models.items
        return lambda mid: (rec := items.get(mid)) is not None and rec.tenant == tenant

    def models(
        self, *, q: str = "", state: str = "", sort: str = "model", offset: int = 0, limit: int = 50, tenant: str | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        """A page of models: ``q`` matches model ids (substring, case-insensitive), ``state`` one of STATES;
        ``tenant``: that tenant's models only (applied before the page is cut). By model id, a page
        starts at ``offset`` or after model id ``after`` (a page token's key) and carries
        ``next_page_token``; by another sort (values that change as traffic does), at ``offset`` only."""
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, offset)
        items = self.state.models.items
        needle = q.strip().lower()
        ids = [m for m in items if needle in m.lower()] if needle else list(items)
        if tenant is not None:
            ids = [m for m in ids if items[m].tenant == tenant]
        now = self.clock()
        if state:
            wanted = state.upper()
            ids = [m for m in ids if model_state(self.state, m, now) == wanted]
        total = len(ids)
        next_token = ""
        if sort == "model":
            if after is not None:
                ids = [m for m in ids if m > after]
            ordered = heapq.nsmallest(offset + limit + 1, ids)
            page_ids = ordered[offset : offset + limit]
            if len(ordered) > offset + limit:
                next_token = encode_token(MODELS_LIST, page_ids[-1])
            rows = [self.model_row(m, items[m], now) for m in page_ids]
        else:
            key = {"rpm": "rpm", "size": "size_bytes", "last_used": "last_used"}.get(sort, "rpm")
            all_rows = [self.model_row(m, items[m], now) for m in ids]
            all_rows.sort(key=lambda r: (-r[key], r["model_id"]))
            rows = all_rows[offset : offset + limit]
        return {"total": total, "offset": offset, "limit": limit, "models": rows, "next_page_token": next_token}

    def state_counts(self, tenant: str | None = None) -> dict[str, int]:
        now = self.clock()
        counts = dict.fromkeys(STATES, 0)
        mine = self._mine(tenant)
        for mid in filter(mine, self.state.models.items):
            counts[model_state(self.state, mid, now)] += 1
        return counts

    def _vmodel_row(self, name: str, now: float) -> dict[str, Any]:
        vm = self.state.vmodels.items[name]
        return {
            "name": name,
            "active_model_id": vm.active,
            "target_model_id": vm.target,
            "owner": vm.owner,
            "status": vmodel_status(self.state, name, now).status,
            "active_state": model_state(self.state, vm.active, now),
            "failure": vm.failure,
        }

    def _my_vmodels(self, tenant: str | None) -> Iterator[str]:
        return (n for n, vm in self.state.vmodels.items.items() if tenant is None or vm.tenant == tenant)

    def vmodels(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every vModel (of ``tenant``), by name: for callers that want them all (see :meth:`vmodels_page`)."""
        now = self.clock()
        return [self._vmodel_row(n, now) for n in sorted(self._my_vmodels(tenant))]

    def vmodels_page(self, req: PageRequest, tenant: str | None = None) -> Page[dict[str, Any]]:
        """A page of the vModels (of ``tenant``: scoped before the page is cut), by name."""
        page = page_of(self._my_vmodels(tenant), req)
        now = self.clock()
        return Page([self._vmodel_row(n, now) for n in page.items], page.next_page_token, page.total)

    def describe_model(self, mid: str, *, history: int = 100) -> dict[str, Any] | None:
        rec = self.state.models.items.get(mid)
        copies = self.state.copies_of(mid)
        past = self.decisions(model=mid, limit=history)["decisions"]
        if rec is None and not copies and not past:
            return None
        assignment = self.state.assignments.items.get(mid)
        last_failure: dict[str, Any] | None = None
        for iid, c in copies.items():
            if c.state == "failed" and (last_failure is None or c.since > last_failure["at"]):
                last_failure = {"at": c.since, "instance_id": iid, "error": c.error}
        if last_failure is None:
            for d in past:
                if d["reason"].startswith("load_failed"):
                    last_failure = {"at": d["at"], "instance_id": d["instance_id"], "error": d["reason"].partition(":")[2].strip()}
                    break
        return {
            "model_id": mid,
            "registered": rec is not None,
            "spec": {
                "type": rec.model_type,
                "path": rec.path,
                "storage_key": rec.storage_key,
                "tenant": rec.tenant,
                "min_copies": rec.min_copies,
                "max_copies": rec.max_copies,
                "pinned": rec.pinned,
                "predicted_size_bytes": rec.predicted_size_bytes,
                "registered_at": rec.registered_at,
            }
            if rec
            else None,
            "status": self.model_row(mid, rec),
            "copies": [_copy_json(iid, c) for iid, c in sorted(copies.items())],
            "assignment": {"instances": list(assignment.instances), "reasons": dict(assignment.reasons)} if assignment else None,
            "vmodels": self.state.referencing_vmodels(mid),
            "history": past,
            "last_failure": last_failure,
        }

    # ------------------------------------------------------------ instances

    def instances(self, *, models_per_instance: int = 20, tenant: str | None = None) -> list[dict[str, Any]]:
        held: dict[str, list[tuple[str, CopyRecord]]] = {}
        mine_of = self._mine(tenant)
        for mid, copies in self.state.copies_by_model().items():
            if not mine_of(mid):
                continue
            for iid, c in copies.items():
                held.setdefault(iid, []).append((mid, c))
        out = []
        for iid, r in sorted(self.state.instances.items.items()):
            mine = held.get(iid, [])
            top = heapq.nsmallest(models_per_instance, mine, key=lambda mc: (-mc[1].rpm, mc[1].state != "loaded", mc[0]))
            out.append(
                {
                    "instance_id": iid,
                    "address": r.address,
                    "rest_address": r.rest_address,
                    "capacity_bytes": r.capacity_bytes,
                    "used_bytes": r.used_bytes,
                    "models": r.model_count,
                    "loading": r.loading,
                    "rpm": r.rpm,
                    "zone": r.zone,
                    "version": r.version,
                    "shutting_down": r.shutting_down,
                    "started_at": r.started_at,
                    "lru_oldest": r.lru_oldest,
                    "copies": [
                        {"model_id": m, "state": c.state, "size_bytes": c.size_bytes, "rpm": c.rpm, "last_used": c.last_used}
                        for m, c in top
                    ],
                    "more_copies": max(len(mine) - len(top), 0),
                }
            )
        return out

    def hottest(self, n: int = 10, tenant: str | None = None) -> list[dict[str, Any]]:
        rates: dict[str, float] = {}
        mine = self._mine(tenant)
        for mid, copies in self.state.copies_by_model().items():
            if not mine(mid):
                continue
            rpm = sum(c.rpm for c in copies.values() if c.state == "loaded")
            if rpm > 0:
                rates[mid] = rpm
        top = heapq.nsmallest(n, rates.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"model_id": m, "rpm": round(r, 1), "where": list(self.state.holders(m))} for m, r in top]

    # ------------------------------------------------------------ decisions

    def decisions(
        self, *, model: str = "", instance: str = "", kind: str = "", limit: int = 100, after: int = 0, tenant: str | None = None,
        before: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Logged decisions, one entry per action, newest first (``after``: only records with a larger seq;
        ``tenant``: only about that tenant's models, applied before the page is cut; ``before``: only
        entries past that position (a page token's key: record seq, index of the action within it)).
        ``next_page_token`` continues with the older entries ('' when there are none)."""
        limit = max(1, min(limit, MAX_DECISIONS_PAGE))
        newest = self.state.decisions.newest()
        # a model or instance filter skips records whose bytes do not name it before decoding them
        records = self.state.decisions.records(newest_first=True, after=after, mentions=model or instance)
        out: list[dict[str, Any]] = []
        last: tuple[int, int] = (0, 0)
        more = False
        mine = self._mine(tenant)
        for pos, d in _flatten(r for r in records if before is None or r.seq <= before[0]):
            if before is not None and pos[0] == before[0] and pos[1] <= before[1]:
                continue
            if (model and d["model_id"] != model) or (instance and d["instance_id"] != instance) or (kind and d["kind"] != kind):
                continue
            if not mine(d["model_id"]):
                continue
            if len(out) >= limit:
                more = True
                break
            out.append(d)
            last = pos
        return {
            "decisions": out,
            "last_seq": newest.seq if newest is not None else 0,
            "next_page_token": encode_token(DECISIONS_LIST, list(last)) if more else "",
        }

    # ------------------------------------------------------------ all of it

    def leader_id(self) -> str:
        if self.is_leader():
            return self.instance_id
        newest = self.state.decisions.newest()
        return newest.leader if newest is not None else ""

    def overview(self, tenant: str | None = None) -> dict[str, Any]:
        """The dashboard's page; ``tenant``: models, copies, decisions and counts of that tenant only
        (instances' capacity and the traffic series stay cluster-wide aggregates)."""
        instances = self.instances(tenant=tenant)
        return {
            "time": self.clock(),
            "served_by": self.instance_id,
            "leader": self.leader_id(),
            "connected": self.state.connected,
            "instances": instances,
            "states": self.state_counts(tenant),
            "totals": {
                "models": sum(map(self._mine(tenant), self.state.models.items)),
                "vmodels": sum(1 for _ in self._my_vmodels(tenant)),
                "instances": len(instances),
                "capacity_bytes": sum(i["capacity_bytes"] for i in instances),
                "used_bytes": sum(i["used_bytes"] for i in instances),
                "copies_loaded": sum(i["models"] for i in instances),
                "rpm": round(sum(i["rpm"] for i in instances), 1),
            },
            "hottest": self.hottest(tenant=tenant),
            "series": self.series.points() if self.series else [],
            "decisions": self.decisions(limit=25, tenant=tenant)["decisions"],
        }
