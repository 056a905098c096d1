"""StoreSettings parsing and build_store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesh._store import (
    Compacted,
    EtcdStore,
    LeaseExpired,
    MemoryStore,
    StoreConflict,
    StoreError,
    StoreInvalidArgument,
    StoreSettings,
    StoreUnavailable,
    build_store,
)

CODES = {
    "invalid_argument", "not_found", "already_exists", "failed_precondition", "resource_exhausted",
    "unavailable", "deadline_exceeded", "permission_denied", "unauthenticated", "internal",
    "unimplemented", "aborted", "load_failed",
}  # fmt: skip


def test_defaults_are_an_embedded_memory_store() -> None:
    s = StoreSettings()
    assert (s.kind, s.prefix, s.op_timeout_s) == ("memory", "/modelmux", 2.0)
    assert isinstance(build_store(s), MemoryStore)


def test_env_endpoints_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_STORE_KIND", "etcd")
    monkeypatch.setenv("MODELMUX_STORE_ENDPOINTS", "10.0.0.1:2379, http://etcd-1.svc:2379")
    monkeypatch.setenv("MODELMUX_STORE_OP_TIMEOUT_S", "0.5")
    s = StoreSettings()
    assert s.endpoints == ["10.0.0.1:2379", "http://etcd-1.svc:2379"]
    assert s.op_timeout_s == 0.5
    assert isinstance(build_store(s), EtcdStore)
    monkeypatch.setenv("MODELMUX_STORE_ENDPOINTS", '["a:1", "b:2"]')
    assert StoreSettings().endpoints == ["a:1", "b:2"]


@pytest.mark.parametrize("bad", ["no-port", "host:0", "host:99999", ":2379", "host:abc"])
def test_bad_endpoint_is_named(bad: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(bad)):
        StoreSettings(endpoints=[bad])


def test_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cert_path and key_path"):
        StoreSettings(kind="etcd", cert_path=tmp_path / "c.pem")


def test_unreadable_ca_is_named() -> None:
    s = StoreSettings(kind="etcd", ca_cert_path=Path("/nonexistent/ca.pem"))
    with pytest.raises(StoreInvalidArgument, match=r"/nonexistent/ca\.pem"):
        build_store(s)


def test_every_error_carries_a_known_code() -> None:
    for cls in (
        StoreError,
        StoreUnavailable,
        LeaseExpired,
        Compacted,
        StoreConflict,
        StoreInvalidArgument,
    ):
        assert cls.code in CODES
    assert StoreUnavailable("x").code == "unavailable"
    assert LeaseExpired("x").code == "not_found"
    assert Compacted("x").code == "aborted"
    subclasses = StoreError.__subclasses__()
    assert len(subclasses) >= 7 and all(c.code in CODES for c in subclasses)
