"""deploy/etcd/etcd_auth.py against a real etcd: it turns authentication on, gives the modelmux
user read-write on its prefix and nothing else, and running it again changes nothing but a
rotated password."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from tests.etcd_server import EtcdServer

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "etcd" / "etcd_auth.py"
pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd(etcd_factory: Any) -> EtcdServer:
    server: EtcdServer = etcd_factory()
    return server


def _bootstrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str, password: str) -> str:
    (tmp_path / "root").write_text("root-secret\n")
    (tmp_path / "user").write_text(password + "\n")
    monkeypatch.setenv("ETCD_ENDPOINT", endpoint)
    monkeypatch.setenv("ETCD_ROOT_PASSWORD_FILE", str(tmp_path / "root"))
    monkeypatch.setenv("ETCD_PASSWORD_FILE", str(tmp_path / "user"))
    monkeypatch.setenv("ETCD_PREFIX", "/modelmux")
    monkeypatch.delenv("ETCD_CA_FILE", raising=False)
    module = runpy.run_path(str(SCRIPT))
    return str(module["bootstrap"]())


def _token(channel: grpc.Channel, user: str, password: str) -> tuple[tuple[str, str], ...]:
    resp = rpc.AuthStub(channel).Authenticate(rpc.AuthenticateRequest(name=user, password=password), timeout=5)
    return (("token", resp.token),)


def _put(channel: grpc.Channel, key: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    rpc.KVStub(channel).Put(rpc.PutRequest(key=key.encode(), value=b"v"), timeout=5, metadata=metadata)


def test_bootstrap_enables_auth_scoped_to_the_prefix(etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with grpc.insecure_channel(etcd.endpoint) as channel:
        _put(channel, "/other/before")  # open before the bootstrap
        summary = _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-1")
        assert "auth enabled" in summary and "user modelmux" in summary
        # anonymous callers: refused
        with pytest.raises(grpc.RpcError) as anon:
            _put(channel, "/modelmux/x")
        assert anon.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
        user = _token(channel, "modelmux", "pw-1")
        _put(channel, "/modelmux/instances/a", user)  # its own prefix: allowed
        kv = rpc.KVStub(channel)
        got = kv.Range(rpc.RangeRequest(key=b"/modelmux/instances/a"), timeout=5, metadata=user)
        assert [k.value for k in got.kvs] == [b"v"]
        for outside in ("/other/x", "/modelmuxx/y", "/modelmux", "/"):  # not a byte outside the prefix range
            with pytest.raises(grpc.RpcError) as denied:
                _put(channel, outside, user)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, outside
        with pytest.raises(grpc.RpcError) as read_other:
            kv.Range(rpc.RangeRequest(key=b"/other/before"), timeout=5, metadata=user)
        assert read_other.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the modelmux user cannot administer etcd
        with pytest.raises(grpc.RpcError):
            rpc.AuthStub(channel).AuthDisable(rpc.AuthDisableRequest(), timeout=5, metadata=user)


def test_bootstrap_is_idempotent_and_rotates_the_password(etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-1")
    again = _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-1")
    assert "auth enabled" not in again and "already set up" in again
    _bootstrap(monkeypatch, tmp_path, etcd.endpoint, "pw-2")  # rotation: the Secret changed
    with grpc.insecure_channel(etcd.endpoint) as channel:
        with pytest.raises(grpc.RpcError) as old:
            _token(channel, "modelmux", "pw-1")
        assert old.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _put(channel, "/modelmux/k", _token(channel, "modelmux", "pw-2"))


def test_prefix_range_covers_exactly_the_prefix() -> None:
    prefix_range = runpy.run_path(str(SCRIPT))["prefix_range"]
    assert prefix_range("/modelmux") == (b"/modelmux/", b"/modelmux0")
    assert prefix_range("/modelmux/") == (b"/modelmux/", b"/modelmux0")
    for everything in ("", "/"):
        with pytest.raises(SystemExit):
            prefix_range(everything)
