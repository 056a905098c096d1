"""Domain types of the store: key-values, watch events and the transaction model.

Keys are full ``str`` keys (the caller owns the key layout and its prefix);
values are opaque ``bytes`` (callers encode JSON). Revisions follow etcd: one
store-wide counter, bumped once per write (a transaction is one write), so
every event of one transaction carries the same ``mod_revision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # writes since the key was (re)created: 1 on create
    lease: int = 0  # 0: not bound to a lease


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes  # empty for a delete
    mod_revision: int  # the revision of the write that caused the event
    prev_value: bytes | None = None  # the value before the write, when known


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """How full the store is: the bytes it holds against its quota (0: no quota known), and
    the fraction of the quota from which writes that grow it are refused (``StoreRoom``)."""

    used_bytes: int
    quota_bytes: int
    high_water: float = 0.9

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.quota_bytes if self.quota_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``key``'s mod revision equals ``mod_revision``; 0 means "key absent"."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete
