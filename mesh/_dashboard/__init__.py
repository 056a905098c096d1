"""What an operator sees: read-only views of the cluster, a request-rate ring, the dashboard page.

Every instance serves them (any instance can answer: they read only the instance's mirrors
of the store, never the store itself, and never anything on the request path):

* :class:`ClusterOverview` - models (searchable, paged), vModels, instances with their copies,
  one model described (copies, assignment, history, last failure), the placement decision
  log (``decisions/`` keys, written by the leader with each change).
* :class:`TrafficSeries` - a small ring of samples of the cluster's request rate and hit
  ratio, computed from the cumulative counters each instance publishes in its record.
* :func:`install` - the JSON routes and the static page (``/dashboard``, plain HTML/JS/CSS
  from ``static/``, no build step) on an instance's REST app.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._cluster_mirror import ClusterMirror
from .._model_status import REGISTERED_STATES, model_state, vmodel_status
from .._store_schema import CopyRecord, DecisionRecord, InstanceRecord, ModelRecord
from .._tasks import cancel_and_wait

STATIC_DIR = Path(__file__).resolve().parent / "static"

STATES = tuple(str(s) for s in REGISTERED_STATES)
MAX_PAGE = 500


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


def _flatten(records: Iterable[DecisionRecord]) -> Iterator[dict[str, Any]]:
    """Decision records -> one entry per action, newest first (records given newest first)."""
    for rec in records:
        for a in reversed(rec.actions):
            yield {"seq": rec.seq, "at": rec.at, "leader": rec.leader, **a}


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

    def models(self, *, q: str = "", state: str = "", sort: str = "model", offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """A page of models: ``q`` matches model ids (substring, case-insensitive), ``state`` one of STATES."""
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, offset)
        items = self.state.models.items
        needle = q.strip().lower()
        ids = [m for m in items if needle in m.lower()] if needle else list(items)
        now = self.clock()
        if state:
            wanted = state.upper()
            ids = [m for m in ids if model_state(self.state, m, now) == wanted]
        total = len(ids)
        if sort == "model":
            page_ids = sorted(ids)[offset : offset + limit]
            rows = [self.model_row(m, items[m], now) for m in page_ids]
        else:
            key = {"rpm": "rpm", "size": "size_bytes", "last_used": "last_used"}.get(sort, "rpm")
            all_rows = [self.model_row(m, items[m], now) for m in ids]
            all_rows.sort(key=lambda r: (-r[key], r["model_id"]))
            rows = all_rows[offset : offset + limit]
        return {"total": total, "offset": offset, "limit": limit, "models": rows}

    def state_counts(self) -> dict[str, int]:
        now = self.clock()
        counts = dict.fromkeys(STATES, 0)
        for mid in self.state.models.items:
            counts[model_state(self.state, mid, now)] += 1
        return counts

    def vmodels(self) -> list[dict[str, Any]]:
        out = []
        for name, vm in sorted(self.state.vmodels.items.items()):
            status = vmodel_status(self.state, name, self.clock()).status
            out.append(
                {
                    "name": name,
                    "active_model_id": vm.active,
                    "target_model_id": vm.target,
                    "owner": vm.owner,
                    "status": status,
                    "active_state": model_state(self.state, vm.active, self.clock()),
                    "failure": vm.failure,
                }
            )
        return out

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

    def instances(self, *, models_per_instance: int = 20) -> list[dict[str, Any]]:
        held: dict[str, list[tuple[str, CopyRecord]]] = {}
        for mid, copies in self.state.copies_by_model().items():
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

    def hottest(self, n: int = 10) -> list[dict[str, Any]]:
        rates: dict[str, float] = {}
        for mid, copies in self.state.copies_by_model().items():
            rpm = sum(c.rpm for c in copies.values() if c.state == "loaded")
            if rpm > 0:
                rates[mid] = rpm
        top = heapq.nsmallest(n, rates.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"model_id": m, "rpm": round(r, 1), "where": list(self.state.holders(m))} for m, r in top]

    # ------------------------------------------------------------ decisions

    def decisions(
        self, *, model: str = "", instance: str = "", kind: str = "", limit: int = 100, after: int = 0
    ) -> dict[str, Any]:
        """Logged decisions, one entry per action, newest first (``after``: only records with a larger seq)."""
        limit = max(1, min(limit, 5000))
        records = sorted(self.state.decisions.items.values(), key=lambda r: r.seq, reverse=True)
        out = []
        for d in _flatten(r for r in records if r.seq > after):
            if (model and d["model_id"] != model) or (instance and d["instance_id"] != instance) or (kind and d["kind"] != kind):
                continue
            out.append(d)
            if len(out) >= limit:
                break
        return {"decisions": out, "last_seq": records[0].seq if records else 0}

    # ------------------------------------------------------------ all of it

    def leader_id(self) -> str:
        if self.is_leader():
            return self.instance_id
        newest = max(self.state.decisions.items.values(), key=lambda r: r.seq, default=None)
        return newest.leader if newest is not None else ""

    def overview(self) -> dict[str, Any]:
        instances = self.instances()
        return {
            "time": self.clock(),
            "served_by": self.instance_id,
            "leader": self.leader_id(),
            "connected": self.state.connected,
            "instances": instances,
            "states": self.state_counts(),
            "totals": {
                "models": len(self.state.models.items),
                "vmodels": len(self.state.vmodels.items),
                "instances": len(instances),
                "capacity_bytes": sum(i["capacity_bytes"] for i in instances),
                "used_bytes": sum(i["used_bytes"] for i in instances),
                "copies_loaded": sum(i["models"] for i in instances),
                "rpm": round(sum(i["rpm"] for i in instances), 1),
            },
            "hottest": self.hottest(),
            "series": self.series.points() if self.series else [],
            "decisions": self.decisions(limit=25)["decisions"],
        }


@dataclass(frozen=True)
class Sample:
    t: float
    rps: float
    hit_ratio: float | None  # None: no requests in the interval
    copies_loaded: int
    used_bytes: int


class TrafficSeries:
    """A ring of cluster-wide samples: request rate and hit ratio from the instances' cumulative
    ``requests`` / ``misses`` counters (their deltas; a restarted instance starts again from 0)."""

    def __init__(self, state: ClusterMirror, *, size: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.ring: deque[Sample] = deque(maxlen=size)
        self._last: dict[str, tuple[int, int]] = {}
        self._last_t: float | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self, instances: dict[str, InstanceRecord] | None = None) -> Sample | None:
        now = self.clock()
        instances = dict(self.state.instances.items) if instances is None else instances
        requests = misses = 0
        current: dict[str, tuple[int, int]] = {}
        for iid, r in instances.items():
            current[iid] = (r.requests, r.misses)
            prev = self._last.get(iid, (0, 0) if self._last_t is not None else (r.requests, r.misses))
            if r.requests < prev[0] or r.misses < prev[1]:  # restarted: its counters began again
                prev = (0, 0)
            requests += r.requests - prev[0]
            misses += r.misses - prev[1]
        first = self._last_t is None
        dt = now - (self._last_t or now)
        self._last, self._last_t = current, now
        if first or dt <= 0:
            return None
        s = Sample(
            t=now,
            rps=round(requests / dt, 3),
            hit_ratio=round(max(0.0, 1.0 - misses / requests), 4) if requests else None,
            copies_loaded=sum(r.model_count for r in instances.values()),
            used_bytes=sum(r.used_bytes for r in instances.values()),
        )
        self.ring.append(s)
        return s

    def points(self) -> list[dict[str, Any]]:
        return [s.__dict__ for s in self.ring]

    def start(self, interval_s: float) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run(interval_s), name="dashboard-series")

    async def _run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.sample()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None


def install(app: Any, views: ClusterOverview) -> None:
    """The dashboard page and its JSON routes on a FastAPI app (paths under /dashboard and /v1)."""
    from fastapi import Query
    from fastapi.responses import FileResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from .._errors import InvalidRequest, ModelNotFound

    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_redirect() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/v1/cluster/overview")
    async def overview() -> dict[str, Any]:
        return views.overview()

    @app.get("/v1/cluster/models")
    async def models(
        q: str = "", state: str = "", sort: str = "model", offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        if state and state.upper() not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        if sort not in ("model", "rpm", "size", "last_used"):
            raise InvalidRequest("sort must be one of model, rpm, size, last_used")
        return views.models(q=q, state=state, sort=sort, offset=offset, limit=limit)

    @app.get("/v1/cluster/series")
    async def series() -> dict[str, Any]:
        return {"series": views.series.points() if views.series else []}

    @app.get("/v1/vmodels")
    async def vmodels() -> dict[str, Any]:
        return {"vmodels": views.vmodels()}

    @app.get("/v1/decisions")
    async def decisions(
        model: str = "", instance: str = "", kind: str = "", limit: int = Query(100, ge=1, le=5000), after: int = Query(0, ge=0)
    ) -> dict[str, Any]:
        return views.decisions(model=model, instance=instance, kind=kind, limit=limit, after=after)

    @app.get("/v1/models/{model_id}/describe")
    async def describe(model_id: str, history: int = Query(100, ge=1, le=5000)) -> dict[str, Any]:
        out = views.describe_model(model_id, history=history)
        if out is None:
            raise ModelNotFound(f"model '{model_id}' is not registered and has no history")
        return out
