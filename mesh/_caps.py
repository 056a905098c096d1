"""Caps on what a registration may store: key size, record size, models per tenant.

Checked by :class:`~mesh._management.Management` before anything is written, on both edges
(the REST body limit refuses an oversized body earlier still). A refused registration changes
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import InvalidRequest, NoCapacity


@dataclass(frozen=True)
class RegistrationCaps:
    max_key_bytes: int = 64 << 10  # modelInfo.key (storage key or JSON options)
    max_record_bytes: int = 256 << 10  # the encoded model record as stored
    max_models_per_tenant: int = 10_000  # 0: unlimited


def check_key(model_id: str, key: str, caps: RegistrationCaps) -> None:
    """Refuse an oversized modelInfo.key before it is parsed."""
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > caps.max_key_bytes:
        raise InvalidRequest(f"model '{model_id}': modelInfo.key is {size} bytes; the limit is {caps.max_key_bytes} bytes")


def check_record(model_id: str, encoded: bytes, caps: RegistrationCaps) -> None:
    if len(encoded) > caps.max_record_bytes:
        raise InvalidRequest(
            f"model '{model_id}': its record is {len(encoded)} bytes; the limit is {caps.max_record_bytes} bytes"
        )


def check_tenant_count(model_id: str, tenant: str, tenants_of_models: Iterable[str], caps: RegistrationCaps) -> None:
    """Refuse a new model of a tenant that already has ``max_models_per_tenant`` models."""
    if not caps.max_models_per_tenant:
        return
    count = sum(1 for t in tenants_of_models if t == tenant)
    if count >= caps.max_models_per_tenant:
        raise NoCapacity(
            f"tenant '{tenant or 'default'}' already has {count} models registered, the limit per tenant; "
            f"model '{model_id}' was not registered"
        )
