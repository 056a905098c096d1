"""The dashboard's HTTP surface on an instance's REST app: the static page and its JSON routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

from .._paging import PageRequest
from ._overview import (
    DECISIONS_LIST,
    MAX_DECISIONS_PAGE,
    MAX_PAGE,
    MODELS_LIST,
    STATES,
    ClusterOverview,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install(app: Any, views: ClusterOverview) -> None:
    """The dashboard page and its JSON routes on a FastAPI app (paths under /dashboard and /api/v1)."""
    from fastapi import Query
    from fastapi.responses import FileResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from .._auth import Action, Principal
    from .._errors import InvalidRequest, ModelNotFound
    from .._security import rest_principal

    def reader(request: Request) -> Principal:
        """The caller, allowed to read; its tenant (None for an admin) scopes every view below."""
        principal = rest_principal(request)
        principal.require(Action.READ, "the dashboard")
        return principal

    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_redirect() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/api/v1/cluster/overview")
    async def overview(request: Request) -> dict[str, Any]:
        return views.overview(reader(request).tenant)

    @app.get("/api/v1/cluster/models")
    async def models(
        request: Request, q: str = "", state: str = "", sort: str = "model", offset: int = Query(0, ge=0), limit: str = "", page_token: str = ""
    ) -> dict[str, Any]:
        if state and state.upper() not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        if sort not in ("model", "rpm", "size", "last_used"):
            raise InvalidRequest("sort must be one of model, rpm, size, last_used")
        page = PageRequest.parse(MODELS_LIST, limit, page_token, default=50, maximum=MAX_PAGE)
        if page_token and (sort != "model" or offset):
            raise InvalidRequest("page_token pages sort=model without offset (other sorts change with traffic: use offset)")
        return views.models(
            q=q, state=state, sort=sort, offset=offset, limit=page.limit, tenant=reader(request).tenant, after=page.after
        )

    @app.get("/api/v1/cluster/series")
    async def series(request: Request) -> dict[str, Any]:
        reader(request)
        return {"series": views.series.points() if views.series else []}

    @app.get("/api/v1/vmodels")
    async def vmodels(request: Request, limit: str = "", page_token: str = "") -> dict[str, Any]:
        tenant = reader(request).tenant
        page = views.vmodels_page(PageRequest.parse("vmodels", limit, page_token), tenant)
        return {"vmodels": page.items, "next_page_token": page.next_page_token}

    @app.get("/api/v1/decisions")
    async def decisions(
        request: Request, model: str = "", instance: str = "", kind: str = "", limit: str = "", after: int = Query(0, ge=0), page_token: str = ""
    ) -> dict[str, Any]:
        page = PageRequest.parse(DECISIONS_LIST, limit, page_token, default=100, maximum=MAX_DECISIONS_PAGE)
        before = page.after
        if before is not None and not (
            isinstance(before, list) and len(before) == 2 and all(type(x) is int for x in before)
        ):
            raise InvalidRequest("page_token is not a token of the decisions list; list again from the start without it")
        return views.decisions(
            model=model, instance=instance, kind=kind, limit=page.limit, after=after, tenant=reader(request).tenant,
            before=(before[0], before[1]) if before is not None else None,
        )

    @app.get("/api/v1/models/{model_id}/describe")
    async def describe(model_id: str, request: Request, history: int = Query(100, ge=1, le=5000)) -> dict[str, Any]:
        principal = reader(request)
        rec = views.state.models.items.get(model_id)
        hidden = principal.tenant is not None and (rec is None or rec.tenant != principal.tenant)
        out = None if hidden else views.describe_model(model_id, history=history)
        if out is None:  # another tenant's model (or its history) does not exist for it
            raise ModelNotFound(f"model '{model_id}' is not registered and has no history")
        return out
