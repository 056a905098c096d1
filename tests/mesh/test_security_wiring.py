"""mesh._security in isolation: which files are required together, which REST paths are public,
and the data plane's decision on forwarded calls and tenants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from mesh._auth import LOCAL_ADMIN, Action, Authenticator, AuthFile, Principal, Role
from mesh._errors import InvalidRequest, PermissionDenied, Unauthenticated
from mesh._security import AuthMiddleware, build_security, exposure_warning, rest_principal
from tests.security.tenancy_help import TOKENS, write_auth_file


def test_files_that_go_together(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="both --tls-cert and --tls-key"):
        build_security(tls_cert=tmp_path / "c")
    with pytest.raises(InvalidRequest, match="--tls-client-ca needs"):
        build_security(tls_client_ca=tmp_path / "ca")
    with pytest.raises(InvalidRequest, match="cannot read"):
        build_security(auth_file=tmp_path / "missing.yaml")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidRequest, match="is empty"):
        build_security(peer_token_file=tmp_path / "empty")
    sec = build_security(peer_token_file=_write(tmp_path / "tok", "abc\n"))
    assert sec.peer_metadata == (("authorization", "Bearer abc"),) and sec.peer_credentials is None
    with pytest.raises(InvalidRequest, match=r"refusing to listen on 0\.0\.0\.0"):
        exposure_warning(["0.0.0.0"], sec, insecure=False)
    assert "INSECURE" in (exposure_warning(["0.0.0.0"], sec, insecure=True) or "")
    assert exposure_warning(["127.0.0.1"], sec, insecure=False) is None


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _app(tmp_path: Path) -> httpx.AsyncClient:
    source = AuthFile(write_auth_file(tmp_path / "auth.yaml"))
    source.load()
    app = FastAPI()
    app.add_middleware(AuthMiddleware, authenticator=Authenticator(source))

    @app.get("/v1/who")
    async def who(request: Request) -> dict[str, Any]:
        p = rest_principal(request)
        return {"name": p.name, "tenant": p.tenant}

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> dict[str, Any]:
        try:
            rest_principal(request)
        except Unauthenticated:
            return {"ready": True, "principal": None}
        return {"ready": True, "principal": "someone"}

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mesh")


async def test_rest_routes_need_a_principal_and_probes_do_not(tmp_path: Path) -> None:
    async with _app(tmp_path) as client:
        await _check(client)


async def _check(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/who")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "authentication required" in r.json()["error"]
    assert (await client.get("/v1/who", headers={"authorization": "Bearer nope"})).status_code == 401
    assert (await client.get("/v1/who", headers={"authorization": "Basic abc"})).status_code == 401
    r = await client.get("/v1/who", headers={"authorization": f"Bearer {TOKENS['a']}"})
    assert r.json() == {"name": "team-a-ci", "tenant": "team-a"}
    # a public path runs without credentials, and gets no principal (never the local admin)
    assert (await client.get("/v2/health/ready")).json() == {"ready": True, "principal": None}


async def test_forwarded_calls_need_the_right_to_forward() -> None:
    from mesh._dataplane import DataPlane, RequestContext

    dp = DataPlane.__new__(DataPlane)  # authorize() needs no router for these principals
    instance = Principal("peers", Role.INSTANCE)
    await dp.authorize("any", RequestContext(forwarded=True, principal=instance))
    await dp.authorize("any", RequestContext(forwarded=True, principal=LOCAL_ADMIN))
    for p in (Principal("a", Role.TENANT, "team-a"), Principal("r", Role.READER, "team-a")):
        with pytest.raises(PermissionDenied, match="forward"):
            await dp.authorize("any", RequestContext(forwarded=True, principal=p))
    assert instance.allows(Action.INFER) and not instance.allows(Action.MANAGE)
