"""The one store interface; :class:`MemoryStore` and :class:`EtcdStore` implement it.

Semantics (identical for both implementations, proved by the parametrised tests):

- Revisions: one store-wide counter. A write that changes something bumps it by one and
  every change it makes carries that revision as ``mod_revision``. A write that changes
  nothing (deleting an absent key, a transaction whose branch only deletes absent keys)
  leaves it unchanged.
- Compare-and-swap on the mod revision only; ``0`` means "the key must be absent".
- Transaction size: at most ``max_txn_ops`` compares, and as many operations a branch
  (etcd's ``--max-txn-ops``, 128 unless its operator raised it). Every implementation
  refuses more with :class:`StoreInvalidArgument`, so a write that etcd would refuse fails
  on the embedded stores (and in their tests) too.
- Leases: a key put with ``lease=id`` is deleted when the lease expires or is revoked
  (all its keys in one revision, delete events emitted). Putting a key with ``lease=0``
  detaches it. Writing with an unknown or expired lease raises :class:`LeaseExpired`.
- Size: ``usage()`` is the bytes the store holds against its quota (memory: an estimate of
  its keys and values; SQLite: the file's pages in use; etcd: the backend's bytes in use
  from the Status RPC, against the ``--quota-backend-bytes`` it was configured with, which
  the client cannot read and is told through settings). ``StoreRoom`` refuses writes that
  grow the store past a high-water fraction of it.
- Every operation fails fast: :class:`StoreUnavailable` when the store cannot be reached
  or does not answer within the per-operation time limit; nothing hangs.
- Watches: ``watch_prefix(prefix, start_revision)`` yields batches (``list[WatchEvent]``)
  in revision order, with no gaps, starting at ``start_revision`` (``<= 0``: from the next
  write). The FIRST batch is always an empty list, yielded once the watch is established,
  so a consumer knows it is live (``PrefixMirror`` uses it for ``connected``); later
  batches are never empty. A start revision older than the kept history raises
  :class:`Compacted` (as etcd does: after the empty first batch); a lost connection raises
  :class:`StoreUnavailable` (reconnecting is the caller's job, see ``PrefixMirror``). The iterator is an async generator: close it
  with ``aclose()`` (or ``contextlib.aclosing``) when done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence

from ._errors import StoreInvalidArgument
from ._types import Compare, Delete, KeyValue, Put, StoreUsage, WatchEvent

DEFAULT_MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``: compares, or operations of one branch, in one transaction."""


def validate_txn(
    compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete], max_ops: int
) -> None:
    """A transaction etcd would take: at most ``max_ops`` compares and operations a branch, then
    :func:`validate_ops` on each branch."""
    for what, n in (("comparisons", len(compares)), ("operations", len(success)), ("failure operations", len(failure))):
        if n > max_ops:
            raise StoreInvalidArgument(
                f"a transaction of {n} {what}: at most {max_ops} (etcd's --max-txn-ops; MODELMUX_STORE_MAX_TXN_OPS)"
            )
    validate_ops(success)
    validate_ops(failure)


def validate_ops(ops: Sequence[Put | Delete]) -> None:
    """One branch of a transaction: only puts and deletes, each key at most once."""
    seen: set[str] = set()
    for op in ops:
        if not isinstance(op, Put | Delete):
            raise StoreInvalidArgument(f"unknown transaction operation {op!r}")
        if op.key in seen:
            raise StoreInvalidArgument(f"key {op.key!r} appears twice in one transaction")
        seen.add(op.key)


class Store(ABC):
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    """compares, or operations of one branch, one transaction may hold (see the module doc)"""

    @abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None when absent."""

    @abstractmethod
    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix``, sorted by key, and the store revision they were read at."""

    @abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete; True when the key existed."""

    async def cas(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> int | None:
        """Write only if the key's mod revision is ``expected_mod_revision`` (0: create only).

        Returns the new revision, or None when the comparison failed. (A one-compare
        transaction: written once here for every implementation.)
        """
        ok, rev = await self.txn([Compare(key, expected_mod_revision)], [Put(key, value, lease)])
        return rev if ok else None

    async def delete_if(self, key: str, expected_mod_revision: int) -> bool:
        """Delete only if the key's mod revision matches; True when the comparison held."""
        ok, _ = await self.txn([Compare(key, expected_mod_revision)], [Delete(key)])
        return ok

    @abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> tuple[bool, int]:
        """Atomically: if every compare holds apply ``success`` else ``failure``.

        Returns (whether the compares held, the store revision after the transaction).
        A key may appear at most once among the operations of one branch.
        """

    @abstractmethod
    async def grant_lease(self, ttl_s: int) -> int:
        """A new lease living ``ttl_s`` seconds unless kept alive; returns its id (never 0).

        etcd raises short TTLs to its minimum (about 2 s with default settings).
        """

    @abstractmethod
    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; returns its TTL in seconds. Raises LeaseExpired when it is gone."""

    @abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease, deleting its keys. Revoking a lease that is gone is a no-op."""

    @abstractmethod
    def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Batches of events under ``prefix`` from ``start_revision`` (see the module doc)."""

    async def usage(self) -> StoreUsage:
        """The bytes the store holds against its quota (``StoreRoom`` watches it). A store
        that cannot tell reports 0 of 0 (no quota known)."""
        return StoreUsage(0, 0)

    @abstractmethod
    async def compact(self, revision: int) -> None:
        """Drop history older than ``revision`` (an administrative operation, used by tests)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks; open watches end."""
