"""The paged views over a mirror (no servers): the decision log paged newest first by position
(record, action) and scoped before the cut; vModels and tenants scoped then paged; the dashboard's
model rows continue by token from an offset page."""

from __future__ import annotations

import pytest

from mesh._auth import Principal, Role
from mesh._dashboard import ClusterOverview
from mesh._errors import InvalidRequest
from mesh._management import Management
from mesh._paging import PageRequest, decode_token
from mesh._store_schema import DecisionRecord, TenantRecord, VModelRecord, encode
from tests.mesh.fakes import ManualClock, World, world

A = Principal("team-a-ci", Role.TENANT, "team-a")
ADMIN = Principal("ops", Role.ADMIN)


async def _decisions(w: World) -> None:
    """Records 1..30, three actions each, alternating between a model of team-a and one of team-b."""
    await w.model("ma", tenant="team-a")
    await w.model("mb", tenant="team-b")
    for seq in range(1, 31):
        actions = tuple({"kind": "load", "model_id": m, "instance_id": f"i{k}", "reason": "miss"} for k, m in enumerate(("ma", "mb", "ma")))
        await w.store.put(w.keys.decision(seq), encode(DecisionRecord(seq=seq, at=float(seq), leader="i0", actions=actions)))
    await w.settle(lambda: len(w.mirror.decisions.items) == 30 and len(w.mirror.models.items) == 2)


def walk_decisions(views: ClusterOverview, limit: int, tenant: str | None = None, **kw: object) -> list[list[tuple[int, str]]]:
    pages: list[list[tuple[int, str]]] = []
    before = None
    while True:
        out = views.decisions(limit=limit, tenant=tenant, before=before, **kw)  # type: ignore[arg-type]
        pages.append([(d["seq"], d["instance_id"]) for d in out["decisions"]])
        if not out["next_page_token"]:
            return pages
        before = tuple(decode_token("decisions", out["next_page_token"]))


async def test_decision_log_pages_newest_first_without_gaps_or_repeats() -> None:
    async with world() as w:
        await _decisions(w)
        views = ClusterOverview(w.mirror, "i0", clock=w.clock)
        everything = views.decisions(limit=5000)["decisions"]
        assert len(everything) == 90
        pages = walk_decisions(views, 7)  # pages end inside records (3 actions each)
        flat = [e for p in pages for e in p]
        assert flat == [(d["seq"], d["instance_id"]) for d in everything]
        assert all(len(p) == 7 for p in pages[:-1])
        # scoped before the cut: team-a's pages are full of team-a's entries (2 per record)
        mine = walk_decisions(views, 7, tenant="team-a")
        assert [len(p) for p in mine] == [7] * 8 + [4]
        assert all(i in ("i0", "i2") for p in mine for _, i in p)
        # the log grows while a reader pages through it: the next page continues where it was
        first = views.decisions(limit=10)
        await w.store.put(w.keys.decision(31), encode(DecisionRecord(seq=31, at=31.0, leader="i0", actions=({"kind": "unload", "model_id": "ma", "instance_id": "i9", "reason": "cold"},))))
        await w.settle(lambda: len(w.mirror.decisions.items) == 31)
        second = views.decisions(limit=10, before=tuple(decode_token("decisions", first["next_page_token"])))  # type: ignore[arg-type]
        assert [(d["seq"], d["instance_id"]) for d in first["decisions"] + second["decisions"]] == flat[:20]


async def test_vmodels_and_tenants_are_scoped_then_paged() -> None:
    async with world(ManualClock()) as w:
        for k in range(9):
            await w.model(f"a{k}", tenant="team-a")
            await w.store.put(w.keys.vmodel(f"va{k}"), encode(VModelRecord(name=f"va{k}", active=f"a{k}", target=f"a{k}", tenant="team-a")))
        for k in range(6):
            await w.model(f"b{k}", tenant="team-b")
            await w.store.put(w.keys.vmodel(f"vb{k}"), encode(VModelRecord(name=f"vb{k}", active=f"b{k}", target=f"b{k}", tenant="team-b")))
        for k in range(5):
            await w.store.put(w.keys.tenant(f"q{k}"), encode(TenantRecord(name=f"q{k}", max_bytes=1 << 30)))
        await w.settle(lambda: len(w.mirror.vmodels.items) == 15 and len(w.mirror.tenants.items) == 5)
        views = ClusterOverview(w.mirror, "i0", clock=w.clock)
        page = views.vmodels_page(PageRequest.parse("vmodels", 4), "team-a")
        assert [v["name"] for v in page.items] == ["va0", "va1", "va2", "va3"] and page.total == 9
        page = views.vmodels_page(PageRequest.parse("vmodels", 4, page.next_page_token), "team-a")
        assert [v["name"] for v in page.items] == ["va4", "va5", "va6", "va7"]
        page = views.vmodels_page(PageRequest.parse("vmodels", 4, page.next_page_token), "team-a")
        assert [v["name"] for v in page.items] == ["va8"] and page.next_page_token == ""
        assert views.overview("team-a")["totals"]["vmodels"] == 9

        mgmt = Management(w.mirror, "i0", store=w.store, clock=w.clock)
        assert [t["tenant"] for t in mgmt.list_tenants(principal=A).items] == ["team-a"]
        first = mgmt.list_tenants(principal=ADMIN, limit=3)
        rest = mgmt.list_tenants(principal=ADMIN, limit=3, page_token=first.next_page_token)
        assert [t["tenant"] for t in first.items + rest.items] == ["q0", "q1", "q2", "q3", "q4", "team-a"]
        last = mgmt.list_tenants(principal=ADMIN, limit=3, page_token=rest.next_page_token)
        assert [t["tenant"] for t in last.items] == ["team-b"] and last.next_page_token == ""
        page_a = mgmt.list_models(principal=A, limit=5)
        assert [m["model_id"] for m in page_a.items] == ["a0", "a1", "a2", "a3", "a4"] and page_a.total == 9
        with pytest.raises(InvalidRequest, match="continues the models list"):
            mgmt.list_tenants(principal=ADMIN, page_token=page_a.next_page_token)


async def test_dashboard_model_rows_continue_by_token_from_an_offset_page() -> None:
    async with world() as w:
        for k in range(25):
            await w.model(f"m{k:02d}", tenant="team-a" if k % 2 else "team-b")
        await w.settle(lambda: len(w.mirror.models.items) == 25)
        views = ClusterOverview(w.mirror, "i0", clock=w.clock)
        off = views.models(offset=5, limit=5, tenant="team-a")
        assert [r["model_id"] for r in off["models"]] == ["m11", "m13", "m15", "m17", "m19"] and off["total"] == 12
        nxt = views.models(limit=5, tenant="team-a", after=decode_token("cluster/models", off["next_page_token"]))
        assert [r["model_id"] for r in nxt["models"]] == ["m21", "m23"] and nxt["next_page_token"] == ""
        assert views.models(sort="rpm", limit=5)["next_page_token"] == ""  # other sorts page by offset only
