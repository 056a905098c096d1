"""The dashboard's HTTP surface on an instance's REST app: the static page and its JSON routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._overview import MAX_PAGE, STATES, ClusterOverview

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install(app: Any, views: ClusterOverview) -> None:
    """The dashboard page and its JSON routes on a FastAPI app (paths under /dashboard and /api/v1)."""
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

    @app.get("/api/v1/cluster/overview")
    async def overview() -> dict[str, Any]:
        return views.overview()

    @app.get("/api/v1/cluster/models")
    async def models(
        q: str = "", state: str = "", sort: str = "model", offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        if state and state.upper() not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        if sort not in ("model", "rpm", "size", "last_used"):
            raise InvalidRequest("sort must be one of model, rpm, size, last_used")
        return views.models(q=q, state=state, sort=sort, offset=offset, limit=limit)

    @app.get("/api/v1/cluster/series")
    async def series() -> dict[str, Any]:
        return {"series": views.series.points() if views.series else []}

    @app.get("/api/v1/vmodels")
    async def vmodels() -> dict[str, Any]:
        return {"vmodels": views.vmodels()}

    @app.get("/api/v1/decisions")
    async def decisions(
        model: str = "", instance: str = "", kind: str = "", limit: int = Query(100, ge=1, le=5000), after: int = Query(0, ge=0)
    ) -> dict[str, Any]:
        return views.decisions(model=model, instance=instance, kind=kind, limit=limit, after=after)

    @app.get("/api/v1/models/{model_id}/describe")
    async def describe(model_id: str, history: int = Query(100, ge=1, le=5000)) -> dict[str, Any]:
        out = views.describe_model(model_id, history=history)
        if out is None:
            raise ModelNotFound(f"model '{model_id}' is not registered and has no history")
        return out
