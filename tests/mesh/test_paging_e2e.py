"""Every management list pages the same way, end to end on a two-instance mesh with an auth file:
250 models over two tenants listed in small pages by each tenant and the admin (union = all, no
duplicates, every page full, tenant A never sees one of B's), limits and tampered tokens refused
with 400, the /api/v1/cluster summary's totals and continuation tokens, and the CLI following the
pages to the end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from mesh._store_schema import ModelRecord, encode
from mesh.cli import _client, app
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import add_model
from tests.security.tenancy_help import TOKENS, write_auth_file

A_MODELS = [f"a-model-{i:03d}" for i in range(150)]
B_MODELS = [f"b-model-{i:03d}" for i in range(100)]
A_VMODELS = [f"a-vm-{i:02d}" for i in range(12)]
B_VMODELS = [f"b-vm-{i:02d}" for i in range(5)]
QUOTA_TENANTS = [f"team-q{i:02d}" for i in range(20)]


def _h(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[who]}"}


async def walk(c: httpx.AsyncClient, path: str, field: str, who: str, limit: int, **params: Any) -> list[list[Any]]:
    """Every page of a list, following next_page_token."""
    pages: list[list[Any]] = []
    token = ""
    while True:
        r = await c.get(path, params={**params, "limit": limit, **({"page_token": token} if token else {})}, headers=_h(who))
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body[field])
        token = body["next_page_token"]
        if not token:
            return pages
        assert len(pages) < 1000, "paging never ended"


def ids(pages: list[list[Any]], key: str = "model_id") -> list[str]:
    return [row[key] if isinstance(row, dict) else row for page in pages for row in page]


def check_pages(pages: list[list[Any]], limit: int, expected: set[str], key: str = "model_id") -> None:
    got = ids(pages, key)
    assert len(got) == len(set(got)), "a row was listed twice"
    assert set(got) == expected
    assert got == sorted(got), "rows are not in key order"
    assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit, [len(p) for p in pages]


async def populate(cluster: MemoryCluster, c: httpx.AsyncClient, tmp_path: Path) -> None:
    """250 models (registrations only, nothing loads: straight into the store, as the tenants'
    registrations would write them), vModels through the API as each tenant, quotas as the admin."""
    add_model(tmp_path / "shared" / "model.onnx", 1.0, table_bytes=4 << 10)  # (the mid-listing registrations' artifact)
    assert cluster.mesh is not None
    instances = cluster.mesh.instances
    for mid, tenant in [*((m, "team-a") for m in A_MODELS), *((m, "team-b") for m in B_MODELS)]:
        rec = ModelRecord(model_id=mid, model_type="onnx", path=f"/nowhere/{mid}.onnx", tenant=tenant, predicted_size_bytes=4096)
        await cluster.store.put(instances[0].keys.model(mid), encode(rec))
    n = len(A_MODELS) + len(B_MODELS)
    await wait_until(lambda: all(len(i.state.models.items) == n for i in instances), what="250 models mirrored on both instances")
    for names, who, models in ((A_VMODELS, "a", A_MODELS), (B_VMODELS, "b", B_MODELS)):
        for k, name in enumerate(names):
            r = await c.put(f"/api/v1/vmodels/{name}", json={"targetModelId": models[k]}, headers=_h(who))
            assert r.status_code == 200, r.text
    for t in QUOTA_TENANTS:
        assert (await c.put(f"/api/v1/tenants/{t}", json={"maxBytes": "1Gi"}, headers=_h("admin"))).status_code == 200


async def test_every_list_pages_scoped_before_the_cut(tmp_path: Path) -> None:
    auth = write_auth_file(tmp_path / "auth.yaml")
    cluster = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"auth_file": auth})
    await cluster.start()
    try:
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=60) as c, httpx.AsyncClient(
            base_url=cluster.rest[1], timeout=60
        ) as c1:
            await populate(cluster, c, tmp_path)

            # models: each tenant its own, full pages, in order; the admin everything
            check_pages(await walk(c, "/api/v1/models", "models", "a", 7), 7, set(A_MODELS))
            check_pages(await walk(c1, "/api/v1/models", "models", "b", 9), 9, set(B_MODELS))
            check_pages(await walk(c, "/api/v1/models", "models", "admin", 33), 33, set(A_MODELS) | set(B_MODELS))
            default = (await c.get("/api/v1/models", headers=_h("admin"))).json()
            assert len(default["models"]) == 100 and default["next_page_token"]
            # a token from one instance continues on the other (any instance answers)
            rest = await c1.get("/api/v1/models", params={"page_token": default["next_page_token"], "limit": 1000}, headers=_h("admin"))
            assert ids([default["models"], rest.json()["models"]]) == sorted(A_MODELS + B_MODELS)

            # the dashboard's model rows by model id, the KServe V1 names, vModels, tenants, instances
            check_pages(await walk(c, "/api/v1/cluster/models", "models", "a", 11), 11, set(A_MODELS))
            check_pages(await walk(c, "/v1/models", "models", "a", 13), 13, set(A_MODELS) | set(A_VMODELS))
            check_pages(await walk(c, "/v1/models", "models", "b", 13), 13, set(B_MODELS) | set(B_VMODELS))
            check_pages(await walk(c, "/api/v1/vmodels", "vmodels", "a", 5), 5, set(A_VMODELS), key="name")
            check_pages(await walk(c, "/api/v1/vmodels", "vmodels", "b", 2), 2, set(B_VMODELS), key="name")
            all_tenants = {"team-a", "team-b", *QUOTA_TENANTS}
            check_pages(await walk(c, "/api/v1/tenants", "tenants", "admin", 4), 4, all_tenants, key="tenant")
            assert ids(await walk(c, "/api/v1/tenants", "tenants", "a", 1), "tenant") == ["team-a"]
            check_pages(await walk(c, "/api/v1/instances", "instances", "admin", 1), 1, set(await instance_ids(c)), key="instance_id")

            # the summary: first pages, totals of what the caller sees, tokens that continue on the lists
            summary = (await c.get("/api/v1/cluster", params={"limit": 40}, headers=_h("a"))).json()
            assert summary["totals"] == {"instances": 2, "models": 150} and "self" not in summary
            assert ids([summary["models"]]) == A_MODELS[:40]
            more = await c.get("/api/v1/models", params={"page_token": summary["next_page_tokens"]["models"], "limit": 1000}, headers=_h("a"))
            assert ids([summary["models"], more.json()["models"]]) == A_MODELS
            assert (await c.get("/api/v1/cluster", headers=_h("b"))).json()["totals"]["models"] == 100

            # registered and removed while a listing is under way: nothing listed twice, nothing
            # that stayed is missed
            first = (await c.get("/api/v1/models", params={"limit": 50}, headers=_h("a"))).json()
            assert (await c.delete(f"/api/v1/models/{A_MODELS[20]}", headers=_h("a"))).status_code == 200  # behind the cursor
            assert (await c.delete(f"/api/v1/models/{A_MODELS[80]}", headers=_h("a"))).status_code == 200  # ahead of it
            for mid in ("a-model-000x", "a-model-120x"):
                body = {"modelInfo": {"type": "onnx", "path": str(tmp_path / "shared" / "model.onnx"), "key": json.dumps({"size_bytes": 1})}}
                assert (await c.post(f"/api/v1/models/{mid}", json=body, headers=_h("a"))).status_code == 200
            token = first["next_page_token"]
            later: list[str] = []
            while token:
                page = (await c.get("/api/v1/models", params={"limit": 50, "page_token": token}, headers=_h("a"))).json()
                later += ids([page["models"]])
                token = page["next_page_token"]
            listed = ids([first["models"]]) + later
            assert len(listed) == len(set(listed))
            assert set(A_MODELS) - {A_MODELS[20], A_MODELS[80]} <= set(listed)
            assert "a-model-120x" in later and "a-model-000x" not in listed and A_MODELS[80] not in listed

            # limits and tokens that are not right: 400 with the reason, on every list
            token_a = (await c.get("/api/v1/models", params={"limit": 3}, headers=_h("a"))).json()["next_page_token"]
            token_t = (await c.get("/api/v1/tenants", params={"limit": 3}, headers=_h("admin"))).json()["next_page_token"]
            for path in ("/api/v1/models", "/api/v1/vmodels", "/api/v1/tenants", "/api/v1/instances", "/v1/models", "/api/v1/cluster"):
                for limit, why in (("1001", "maximum of 1000"), ("0", "at least 1"), ("x", "whole number")):
                    r = await c.get(path, params={"limit": limit}, headers=_h("admin"))
                    assert r.status_code == 400 and why in r.json()["error"], (path, limit, r.text)
            for path in ("/api/v1/models", "/api/v1/vmodels", "/api/v1/tenants", "/api/v1/instances", "/v1/models", "/api/v1/cluster/models", "/api/v1/decisions"):
                r = await c.get(path, params={"page_token": token_a[:-3] + ("A" if token_a[-3] != "A" else "B")}, headers=_h("admin"))
                assert r.status_code == 400 and "page_token" in r.json()["error"], (path, r.text)
            r = await c.get("/api/v1/models", params={"page_token": token_t}, headers=_h("admin"))
            assert r.status_code == 400 and "continues the tenants list" in r.json()["error"]
            assert (await c.get("/api/v1/cluster/models", params={"limit": 1001}, headers=_h("admin"))).status_code == 400
            assert (await c.get("/api/v1/decisions", params={"limit": 5001}, headers=_h("admin"))).status_code == 400
            bad = await c.get("/api/v1/cluster/models", params={"sort": "rpm", "page_token": token_a}, headers=_h("a"))
            assert bad.status_code == 400
            # a token carries no authority: B holding A's token gets only B's models after that key
            stolen = await c.get("/api/v1/models", params={"page_token": token_a, "limit": 1000}, headers=_h("b"))
            assert set(ids([stolen.json()["models"]])) == set(B_MODELS)

            # the CLI follows the pages (small ones here) to the end, or stops at --limit
            await cli_follows_pages(cluster.rest[1])
    finally:
        await cluster.close()


async def instance_ids(c: httpx.AsyncClient) -> list[str]:
    return [i["instance_id"] for i in (await c.get("/api/v1/cluster", headers=_h("admin"))).json()["instances"]]


async def cli_follows_pages(address: str) -> None:
    runner = CliRunner()
    old = _client.PAGE
    _client.PAGE = 7
    try:

        async def cli(*argv: str, who: str = "a") -> Any:
            res = await asyncio.to_thread(
                runner.invoke, app, [*argv, "--address", address, "-o", "json"], env={"MODELMUX_TOKEN": TOKENS[who], "COLUMNS": "200"}
            )
            assert res.exit_code == 0, res.output
            return json.loads(res.stdout)

        models = [m["model_id"] for m in await cli("get", "models")]
        assert len(models) == len(set(models)) and set(models) == set(A_MODELS) - {A_MODELS[20], A_MODELS[80]} | {"a-model-000x", "a-model-120x"}
        assert [m["model_id"] for m in await cli("get", "models", "--limit", "20")] == sorted(models)[:20]
        assert [m["name"] for m in await cli("get", "vmodels")] == A_VMODELS
        assert [m["name"] for m in await cli("get", "vmodels", "--limit", "9")] == A_VMODELS[:9]
        assert [t["tenant"] for t in await cli("tenant", "list", who="admin")] == sorted({"team-a", "team-b", *QUOTA_TENANTS})
        assert [t["tenant"] for t in await cli("tenant", "list", who="b")] == ["team-b"]
    finally:
        _client.PAGE = old
