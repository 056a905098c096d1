"""``modelmux store export|import``: exactly what was registered, sorted and stable; export ->
wipe -> import round-trips (sqlite -> sqlite and sqlite -> a real etcd); importing is
idempotent; a bad document is refused before anything is written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mesh._errors import InvalidRequest
from mesh._store import EtcdStore, SqliteStore, Store
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    InstanceRecord,
    Keys,
    ModelRecord,
    TenantRecord,
    VModelRecord,
    encode,
)
from mesh._store_transfer import dump_yaml, export_records, import_records
from mesh.cli import app
from tests.etcd_server import EtcdServer

K = Keys("/modelmux")


async def _populate(store: Store, keys: Keys) -> None:
    # written out of order on purpose: the export sorts
    for mid, tenant in (("zeta", ""), ("alpha", "team-a"), ("mid.v2", "team-b")):
        rec = ModelRecord(mid, "onnx", path=f"/m/{mid}.onnx", tenant=tenant, min_copies=1, options={"b": "2", "a": "1"})
        await store.put(keys.model(mid), encode(rec))
    await store.put(keys.vmodel("prod"), encode(VModelRecord("prod", "alpha", "alpha", owner="ci")))
    await store.put(keys.tenant("team-b"), encode(TenantRecord("team-b", 4 << 30, "api", 1.5)))
    await store.put(keys.tenant("team-a"), encode(TenantRecord("team-a", 8 << 30, "api", 2.5)))
    # runtime state: never exported
    lease = await store.grant_lease(30)
    await store.put(keys.instance("i-1"), encode(InstanceRecord("i-1", "x:1")), lease=lease)
    await store.put(
        keys.copy("alpha", "i-1"), encode(CopyRecord("alpha", "i-1", "loaded", 1.0)), lease=lease
    )
    await store.put(keys.assignment("alpha"), encode(AssignmentRecord("alpha", ("i-1",))))


async def test_export_wipe_import_round_trips_and_is_idempotent(tmp_path: Path) -> None:
    src = SqliteStore(tmp_path / "a")
    try:
        await _populate(src, K)
        text = dump_yaml(await export_records(src, K))
    finally:
        await src.close()
    doc = yaml.safe_load(text)
    assert [m["model_id"] for m in doc["models"]] == ["alpha", "mid.v2", "zeta"]
    assert [t["name"] for t in doc["tenants"]] == ["team-a", "team-b"]
    assert doc["models"][0]["tenant"] == "team-a" and doc["vmodels"][0]["active"] == "alpha"
    assert "instances" not in text and "i-1" not in text  # runtime state stays out

    dst = SqliteStore(tmp_path / "b")  # the wiped store
    try:
        r1 = await import_records(dst, K, text)
        assert (r1.created, r1.updated, r1.unchanged) == (6, 0, 0)
        _, rev = await dst.get_prefix("")
        r2 = await import_records(dst, K, text)
        assert (r2.created, r2.updated, r2.unchanged) == (0, 0, 6)
        assert (await dst.get_prefix(""))[1] == rev  # the second import wrote nothing
        assert dump_yaml(await export_records(dst, K)) == text  # exactly the same document
        # a changed record is updated, the rest left alone
        changed = text.replace("max_bytes: 4294967296", "max_bytes: 1073741824")
        r3 = await import_records(dst, K, changed)
        assert (r3.created, r3.updated, r3.unchanged) == (0, 1, 5)
    finally:
        await dst.close()


@pytest.mark.etcd
async def test_cli_moves_one_machine_to_etcd(
    tmp_path: Path, etcd_server: EtcdServer, key_prefix: str
) -> None:
    keys = Keys(key_prefix.rstrip("/"))
    src = SqliteStore(tmp_path / "one")
    try:
        await _populate(src, keys)
    finally:
        await src.close()
    runner = CliRunner()
    env = {"MODELMUX_STORE_KIND": None, "MODELMUX_STORE_PREFIX": key_prefix.rstrip("/")}

    def cli(*args: str) -> str:
        r = runner.invoke(app, list(args), env=env)
        assert r.exit_code == 0, r.output
        return r.stdout

    out = tmp_path / "registrations.yaml"
    text = await asyncio.to_thread(cli, "store", "export", "--data-dir", str(tmp_path / "one"))
    assert text == yaml.safe_dump(yaml.safe_load(text), sort_keys=True)  # stable form
    assert len(yaml.safe_load(text)["models"]) == 3
    await asyncio.to_thread(
        cli, "store", "export", "--data-dir", str(tmp_path / "one"), "-o", str(out)
    )
    assert out.read_text() == text
    etcd = f"127.0.0.1:{etcd_server.client_port}"
    await asyncio.to_thread(
        cli, "store", "import", "-f", str(out), "--store", "etcd", "--etcd", etcd
    )
    again = await asyncio.to_thread(cli, "store", "export", "--store", "etcd", "--etcd", etcd)
    assert again == text
    st = EtcdStore([("127.0.0.1", etcd_server.client_port)])
    try:
        kvs, _ = await st.get_prefix(keys.prefix + "/")
        assert sorted(kv.key[len(keys.prefix) :] for kv in kvs) == [
            "/models/alpha", "/models/mid.v2", "/models/zeta", "/tenants/team-a",
            "/tenants/team-b", "/vmodels/prod",
        ]  # fmt: skip
    finally:
        await st.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("modelmux_export"), "not a modelmux export"),
        (lambda d: d["models"][0].update(model_id="../../etc"), "invalid model id"),
        (lambda d: d["models"][0].update(evil=1), "unknown fields"),
        (lambda d: d["models"].append(dict(d["models"][0])), "appears twice"),
        (lambda d: d["tenants"][0].update(max_bytes=-1), "max_bytes"),
        (lambda d: d["tenants"][0].update(max_bytes="lots"), "max_bytes"),
        (lambda d: d["tenants"][0].update(max_rps=-1.0), "max_rps"),
        (lambda d: d["tenants"][0].update(max_rps=1e300), "max_rps"),
        (lambda d: d.update(instances=[]), "unknown sections"),
    ],
)
async def test_bad_document_is_refused_and_nothing_written(
    tmp_path: Path, edit: object, message: str
) -> None:
    src = SqliteStore(tmp_path / "a")
    try:
        await _populate(src, K)
        doc = await export_records(src, K)
    finally:
        await src.close()
    edit(doc)  # type: ignore[operator]
    dst = SqliteStore(tmp_path / "b")
    try:
        await dst.put("/modelmux/models/untouched", b"{}")
        before = await dst.get_prefix("")
        with pytest.raises(InvalidRequest, match=message):
            await import_records(dst, K, dump_yaml(doc))
        assert await dst.get_prefix("") == before
    finally:
        await dst.close()
    with pytest.raises(InvalidRequest, match="not YAML"):
        await import_records(dst, K, "models: [")
