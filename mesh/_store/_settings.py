"""Store settings (``MODELMUX_STORE_*``) and the one factory that builds a store from them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._base import DEFAULT_MAX_TXN_OPS, Store


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (an ``http(s)://`` scheme is tolerated) -> (host, port)."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"store endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


class StoreSettings(BaseSettings):
    """Where the cluster state lives.

    ``endpoints`` accepts a JSON list or a comma-separated string in the environment
    (``MODELMUX_STORE_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379``). TLS is used when
    ``ca_cert_path`` is set (client certificate: ``cert_path`` + ``key_path``).
    """

    model_config = SettingsConfigDict(env_prefix="MODELMUX_STORE_", extra="ignore")

    # memory: nothing survives the process (tests, demo); sqlite: durable, one process owns
    # ``data_dir`` (the CLI's default for serve and up); etcd: a cluster
    kind: Literal["memory", "sqlite", "etcd"] = "memory"
    data_dir: Path = Path("var/modelmux")  # sqlite: store.sqlite and store.lock live here
    endpoints: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1:2379"])
    prefix: str = "/modelmux"  # root of every key modelmux writes (used to build the key layout)
    op_timeout_s: float = Field(default=2.0, gt=0)  # bound on every store operation
    ca_cert_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    user: str = ""  # etcd authentication (with password_file): a token on every call
    password_file: Path | None = None  # re-read at each authentication (rotation without a restart)
    memory_history_revisions: int = Field(default=10_000, ge=1)  # watch replay depth (memory)
    # the store's quota: etcd's --quota-backend-bytes (a client cannot read it: give the same
    # value here; etcd's default is 2 GiB), the SQLite file's, the memory store's estimate
    quota_bytes: int = Field(default=2 << 30, gt=0)
    # writes that grow the store (registrations, new vModels, tenants) are refused from here on
    quota_high_water: float = Field(default=0.9, gt=0, le=1)
    # compares, or operations of one branch, one transaction may hold: etcd's --max-txn-ops (a
    # client cannot read it either; etcd's default is 128). Every kind keeps to it, so what
    # the embedded stores take, etcd takes too; writers split what is bigger
    max_txn_ops: int = Field(default=DEFAULT_MAX_TXN_OPS, ge=64)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _parse_endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            _split_endpoint(endpoint)
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> StoreSettings:
        if bool(self.user) != (self.password_file is not None):
            raise ValueError("store auth: user and password_file must be given together")
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("store TLS: cert_path and key_path must be given together")
        if self.kind == "etcd" and not self.endpoints:
            raise ValueError("store kind 'etcd' needs at least one endpoint")
        return self


def build_store(settings: StoreSettings, *, clock: Callable[[], float] = time.monotonic) -> Store:
    """The store the settings describe. Connects lazily (sqlite: locks its directory now)."""
    store = _build(settings, clock)
    store.max_txn_ops = settings.max_txn_ops
    return store


def _build(settings: StoreSettings, clock: Callable[[], float]) -> Store:
    if settings.kind == "memory":
        from ._memory import MemoryStore

        return MemoryStore(
            clock=clock,
            history_revisions=settings.memory_history_revisions,
            quota_bytes=settings.quota_bytes,
            quota_high_water=settings.quota_high_water,
        )
    if settings.kind == "sqlite":
        from ._sqlite import SqliteStore

        # takes the data directory's lock now (raises StoreLocked); loads on first use
        return SqliteStore(
            settings.data_dir,
            clock=clock,
            history_revisions=settings.memory_history_revisions,
            quota_bytes=settings.quota_bytes,
            quota_high_water=settings.quota_high_water,
        )
    from ._etcd import EtcdStore
    from ._etcd_auth import EtcdCredentials

    return EtcdStore(
        [_split_endpoint(e) for e in settings.endpoints],
        op_timeout_s=settings.op_timeout_s,
        ca_cert_path=settings.ca_cert_path,
        cert_path=settings.cert_path,
        key_path=settings.key_path,
        user=EtcdCredentials(settings.user, settings.password_file) if settings.password_file is not None else None,
        quota_bytes=settings.quota_bytes,
        quota_high_water=settings.quota_high_water,
    )
