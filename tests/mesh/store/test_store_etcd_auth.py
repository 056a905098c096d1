"""EtcdStore as an etcd user (MODELMUX_STORE_USER / MODELMUX_STORE_PASSWORD_FILE) against a real
etcd whose authentication deploy/etcd/etcd_auth.py turned on: every kind of call works with the
user's token, renewed tokens and a rotated password keep it working, and without the user (or
with a wrong password) the store gets nothing."""

from __future__ import annotations

import contextlib
import runpy
from pathlib import Path
from typing import Any

import pytest

from mesh._store import StoreError
from mesh._store._etcd_auth import EtcdCredentials
from mesh._store._settings import StoreSettings, build_store

SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "etcd" / "etcd_auth.py"
pytestmark = pytest.mark.etcd


def _bootstrap(monkeypatch: pytest.MonkeyPatch, d: Path, endpoint: str, password: str) -> Path:
    (d / "root").write_text("root-secret\n")
    (d / "user").write_text(password + "\n")
    monkeypatch.setenv("ETCD_ENDPOINT", endpoint)
    monkeypatch.setenv("ETCD_ROOT_PASSWORD_FILE", str(d / "root"))
    monkeypatch.setenv("ETCD_PASSWORD_FILE", str(d / "user"))
    monkeypatch.setenv("ETCD_PREFIX", "/modelmux")
    monkeypatch.delenv("ETCD_CA_FILE", raising=False)
    runpy.run_path(str(SCRIPT))["bootstrap"]()
    return d / "user"


async def _exercise(store: Any, key: str) -> None:
    rev = await store.put(key, b"1")
    assert (await store.get(key)).value == b"1"
    ok, _ = await store.txn([], [])
    assert ok
    lease = await store.grant_lease(5)
    await store.keepalive(lease)
    async with contextlib.aclosing(store.watch_prefix(key, rev)) as watch:
        batch = await anext(watch)
        while not batch:
            batch = await anext(watch)
        assert batch[0].key == key
    await store.revoke_lease(lease)


async def test_store_works_as_the_etcd_user_and_nothing_works_without_it(
    etcd_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    etcd = etcd_factory()
    password_file = _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-1")
    settings = StoreSettings(kind="etcd", endpoints=[etcd.endpoint], user="modelmux", password_file=password_file)
    store = build_store(settings)
    try:
        await _exercise(store, "/modelmux/t/a")
        with pytest.raises(StoreError):  # the user's role covers its prefix only
            await store.put("/elsewhere", b"x")
    finally:
        await store.close()

    anonymous = build_store(StoreSettings(kind="etcd", endpoints=[etcd.endpoint]))
    try:
        with pytest.raises(StoreError):
            await anonymous.get("/modelmux/t/a")
    finally:
        await anonymous.close()
    (tmp_path / "wrong").write_text("not-the-password")
    wrong = build_store(StoreSettings(kind="etcd", endpoints=[etcd.endpoint], user="modelmux", password_file=tmp_path / "wrong"))
    try:
        with pytest.raises(Exception):  # noqa: B017 - etcd's "authentication failed", as gRPC or store error
            await wrong.get("/modelmux/t/a")
    finally:
        await wrong.close()


async def test_tokens_are_renewed_and_a_rotated_password_is_read_again(
    etcd_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mesh._store._etcd import EtcdStore

    etcd = etcd_factory()
    password_file = _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-1")
    host, _, port = etcd.endpoint.rpartition(":")
    store = EtcdStore([(host, int(port))], user=EtcdCredentials("modelmux", password_file, refresh_s=0.0))
    try:
        await _exercise(store, "/modelmux/t/b")  # refresh_s 0: a new token for every call
        _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-2")  # the Secret rotated
        await _exercise(store, "/modelmux/t/c")
        assert (await store.get("/modelmux/t/b")).value == b"1"
    finally:
        await store.close()
