"""The durable embedded store: the memory store's semantics, every write kept in SQLite first.

One process owns a data directory (an ``flock`` on ``store.lock``, taken when the store is
built, so a second process fails at once with :class:`StoreLocked`). The keys live in
memory exactly as in :class:`MemoryStore` (reads, prefix ranges, watches and lease timers
are the memory store's code); a write is applied there only after SQLite committed it
(WAL journal, ``synchronous=FULL``: the commit is fsynced before it returns), so nothing a
caller or a reader ever saw is lost to kill -9 or a power cut, and a failed commit changes
nothing. Writes are group-committed: those queued while one commit runs go into the next
SQLite transaction together (one fsync for all; each keeps its own revision, compares are
evaluated in queue order). Every SQLite call runs on one dedicated thread, never on the
event loop.

Keys bound to a lease live in memory only. Every lease belongs to this process and dies
with it, so a lease-bound key (an instance's record, its copies and usage, the leader) can
never be wanted after a restart: it is never written to SQLite, and its writes cost no
fsync and no trip to the store's thread (the agents rewrite such records every second).
Un-leased keys are durable as above. Both kinds share the one revision counter, the one
key space (reads, prefix ranges, compares and watches see no difference) and the one
write queue: a write touching only lease-bound keys, or a lease expiring, is applied in
memory in its turn with no commit; a write whose branch mixes both commits the durable
part. Attaching a durable key to a lease deletes its row; detaching a lease-bound key
writes one. SQLite records the revision with every commit (and on close), so after a
restart the counter continues from at least every durable key's revision; a crash may
reissue the numbers of lease-only writes made after the last commit, which only this
process (gone with them) could have seen. The watch history starts after the restart
(an older start revision raises :class:`Compacted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ._base import validate_txn
from ._errors import (
    LeaseExpired,
    StoreError,
    StoreResourceExhausted,
    StoreUnavailable,
)
from ._memory import DEFAULT_QUOTA_BYTES, MemoryStore, _Lease, footprint
from ._types import Compare, Delete, KeyValue, Put, StoreUsage, WatchEvent

logger = logging.getLogger(__name__)

DB_FILE = "store.sqlite"
LOCK_FILE = "store.lock"
SCHEMA = 1
_MAX_GROUP = 512  # writes per group commit
T = TypeVar("T")

# (key, value, create_revision, mod_revision, version, lease)
_Row = tuple[str, bytes, int, int, int, int]


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a write task's outcome so an abandoned failure is not reported as unhandled."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class _Request:
    compares: Sequence[Compare]
    success: Sequence[Put | Delete]
    failure: Sequence[Put | Delete]
    future: asyncio.Future[tuple[bool, int, bool]]


class StoreLocked(StoreError):
    """Another process owns the data directory."""

    code = "failed_precondition"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_data_dir(directory: Path) -> int:
    """Take the data directory's lock (non-blocking); returns the lock file's descriptor."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreLocked(
            f"the store in {directory} is in use by another modelmux process (pid {holder}); "
            "stop it first, or give this one another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class _Db:
    """The SQLite side; every method runs on the store's one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def open(self) -> tuple[int, list[KeyValue], int]:
        """(revision, durable keys sorted, how many lease-bound rows an older version left)."""
        new = not self.path.exists()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self.conn = conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA:
            raise StoreError(f"{self.path} was written by a newer modelmux (schema {version})")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused the WAL journal")
        conn.execute("PRAGMA synchronous=FULL")  # WAL fsynced on every commit
        conn.execute("PRAGMA cache_size=-2048")  # 2 MiB: the keys live in memory anyway
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"{self.path} is damaged ({check}); restore it from an export")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, "
            "lease INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 1)")
        conn.execute(f"PRAGMA user_version={SCHEMA}")
        if new:
            _fsync_dir(self.path.parent)
        # modelmux up to schema 1's first release wrote lease-bound keys too: their leases died
        # with that process, drop them (one fsynced transaction)
        dropped = conn.execute("DELETE FROM kv WHERE lease != 0").rowcount
        revision = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]
        kvs = [
            KeyValue(k, bytes(v), c, m, ver, 0)
            for k, v, c, m, ver, _lease in conn.execute("SELECT * FROM kv ORDER BY key")
        ]
        return int(revision), kvs, max(dropped, 0)

    def commit(self, revision: int, puts: list[_Row], deletes: list[str]) -> None:
        conn = self.conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            if puts:
                conn.executemany("INSERT OR REPLACE INTO kv VALUES (?,?,?,?,?,?)", puts)
            if deletes:
                conn.executemany("DELETE FROM kv WHERE key=?", [(k,) for k in deletes])
            conn.execute("UPDATE meta SET value=? WHERE name='revision'", (revision,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def bytes_in_use(self) -> int:
        """The database file's pages that hold data (free pages, kept for reuse, not counted)."""
        conn = self.conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SqliteStore(MemoryStore):
    """The durable single-process store in ``directory`` (``store.sqlite`` + ``store.lock``)."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        history_revisions: int = 10_000,
        watch_queue_events: int = 100_000,
        max_expiry_interval_s: float = 1.0,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        quota_high_water: float = 0.9,
    ) -> None:
        super().__init__(
            clock=clock,
            history_revisions=history_revisions,
            watch_queue_events=watch_queue_events,
            max_expiry_interval_s=max_expiry_interval_s,
            quota_bytes=quota_bytes,
            quota_high_water=quota_high_water,
        )
        self.directory = Path(directory)
        self._lock_fd: int | None = lock_data_dir(self.directory)
        self._db = _Db(self.directory / DB_FILE)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="modelmux-store")
        self._open_task: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self.dropped_lease_keys = 0  # lease-bound rows an older version left, dropped on open
        self._disk_revision = 0  # the revision SQLite last recorded
        self._broken: StoreUnavailable | None = None
        self._queue: list[_Request] = []
        self._committer: asyncio.Future[None] | None = None

    def _check(self) -> None:
        super()._check()
        if self._broken is not None:
            raise self._broken

    @property
    def path(self) -> Path:
        return self._db.path

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
                raise StoreResourceExhausted(f"store {self.path}: {exc}") from exc
            raise StoreUnavailable(f"store {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ open

    async def open(self) -> None:
        """Load the keys (also done by the first operation); drops keys of dead leases."""
        if self._open_task is None:
            self._open_task = asyncio.ensure_future(self._load())
        await asyncio.shield(self._open_task)

    async def _load(self) -> None:
        if self._closed:
            raise StoreUnavailable("sqlite store is closed")
        revision, kvs, dropped = await self._io(self._db.open)
        self._revision = self._disk_revision = revision
        for kv in kvs:
            self._data[kv.key] = kv
        self._keys = [kv.key for kv in kvs]  # sorted by the query
        self._bytes = sum(footprint(kv.key, kv.value) for kv in kvs)
        self.dropped_lease_keys = dropped
        self._floor = self._revision + 1  # nothing before the restart can be replayed
        logger.info(
            "store %s: %d keys at revision %d (lease-bound keys are kept in memory only)",
            self.path, len(self._data), self._revision,
        )  # fmt: skip

    async def _enter(self) -> None:
        if self._open_task is None or not self._open_task.done():
            self._check()
            await self.open()
        await super()._enter()

    # ------------------------------------------------------------------ writes

    def _disk_rows(self, changes: dict[str, KeyValue | None]) -> tuple[list[_Row], list[str]]:
        """The SQLite side of ``changes`` (key -> its new value, None: deleted), computed
        before memory applies them: durable keys are written, a lease-bound one is not; a
        row is deleted only where a durable key was deleted or attached to a lease."""
        puts: list[_Row] = []
        deletes: list[str] = []
        for key, kv in changes.items():
            if kv is not None and not kv.lease:
                puts.append((key, kv.value, kv.create_revision, kv.mod_revision, kv.version, 0))
            elif (old := self._data.get(key)) is not None and not old.lease:
                deletes.append(key)
        return puts, deletes

    async def _persist(self, ops: Sequence[Put | Delete]) -> None:
        """Commit what ``_apply(ops)`` will change, if any of it is durable."""
        rev = self._revision + 1
        changes: dict[str, KeyValue | None] = {}
        for op in ops:
            old = self._data.get(op.key)
            if isinstance(op, Put):
                if op.lease and op.lease not in self._leases:
                    raise LeaseExpired(
                        f"lease {op.lease:x} for key {op.key!r} not found (expired or revoked)"
                    )
                changes[op.key] = KeyValue(
                    op.key, op.value, old.create_revision if old else rev, rev,
                    old.version + 1 if old else 1, op.lease,
                )  # fmt: skip
            elif old is not None:
                changes[op.key] = None
        puts, deletes = self._disk_rows(changes)
        if puts or deletes:
            await self._commit_rows(rev, puts, deletes)

    async def _commit_rows(self, rev: int, puts: list[_Row], deletes: list[str]) -> None:
        try:
            await self._io(self._db.commit, rev, puts, deletes)
            self._disk_revision = rev
        except StoreResourceExhausted:
            raise  # the disk is full: SQLite rolled the transaction back, nothing changed
        except BaseException as exc:
            # Whether the commit reached the disk is unknown (a failed fsync, a cancelled
            # wait): memory can no longer be trusted to match it. Refuse service until a
            # restart reloads the truth from disk.
            self._broken = StoreUnavailable(f"store {self.path} failed a write ({exc!r}); restart")
            raise

    async def _serialized(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` under the write lock in its own task: a caller that is cancelled
        mid-write stops waiting, but the write still completes (on disk and in memory)."""

        async def run() -> T:
            async with self._write_lock:
                await self._enter()
                return await body()

        task = asyncio.ensure_future(run())
        task.add_done_callback(_consume)
        return await asyncio.shield(task)

    async def _submit(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete],
    ) -> tuple[bool, int, bool]:
        """Queue one write for the group committer; returns (compares held, revision, changed).

        The answer comes once the write is on disk and applied in memory. A caller that is
        cancelled stops waiting; the write still completes."""
        await self._enter()
        fut: asyncio.Future[tuple[bool, int, bool]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._queue.append(_Request(compares, success, failure, fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_queued())
        return await asyncio.shield(fut)

    async def _commit_queued(self) -> None:
        """Group commit: every write queued meanwhile goes into one SQLite transaction (one
        fsync); each keeps its own revision, and is applied in memory after the commit."""
        while self._queue:
            async with self._write_lock:  # lease revocations take it too
                batch, self._queue = self._queue[:_MAX_GROUP], self._queue[_MAX_GROUP:]
                try:
                    self._check()
                    await self._commit_batch(batch)
                except BaseException as exc:
                    for req in batch:
                        if not req.future.done():
                            req.future.set_exception(
                                exc if isinstance(exc, Exception) else StoreUnavailable(repr(exc))
                            )
                    if not isinstance(exc, Exception):
                        raise

    async def _commit_batch(self, batch: list[_Request]) -> None:
        overlay: dict[str, KeyValue | None] = {}  # the batch's effect so far, per key

        def current(key: str) -> KeyValue | None:
            return overlay[key] if key in overlay else self._data.get(key)

        rev = self._revision
        plans: list[tuple[_Request, Sequence[Put | Delete], tuple[bool, int, bool]]] = []
        for req in batch:
            ok = all(
                (kv.mod_revision if (kv := current(c.key)) is not None else 0) == c.mod_revision
                for c in req.compares
            )
            ops = req.success if ok else req.failure
            bad = next(
                (
                    op
                    for op in ops
                    if isinstance(op, Put) and op.lease and op.lease not in self._leases
                ),
                None,
            )
            if bad is not None:
                assert isinstance(bad, Put)
                req.future.set_exception(
                    LeaseExpired(
                        f"lease {bad.lease:x} for key {bad.key!r} not found (expired or revoked)"
                    )
                )
                continue
            r = rev + 1
            changed = False
            for op in ops:
                old = current(op.key)
                if isinstance(op, Put):
                    if old is None:
                        overlay[op.key] = KeyValue(op.key, op.value, r, r, 1, op.lease)
                    else:
                        overlay[op.key] = KeyValue(
                            op.key, op.value, old.create_revision, r, old.version + 1, op.lease
                        )
                    changed = True
                elif old is not None:
                    overlay[op.key] = None
                    changed = True
            if changed:
                rev = r
            plans.append((req, ops, (ok, rev, changed)))
        puts, deletes = self._disk_rows(overlay)
        if puts or deletes:  # lease-bound keys only: nothing to make durable, no fsync
            await self._commit_rows(rev, puts, deletes)
        for req, ops, result in plans:
            if result[2]:
                applied = self._apply(ops)
                assert applied == result[1], (applied, result)
            if not req.future.done():
                req.future.set_result(result)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        _, rev, _ = await self._submit((), [Put(key, value, lease)], ())
        return rev

    async def delete(self, key: str) -> bool:
        _, _, existed = await self._submit((), [Delete(key)], ())
        return existed

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> tuple[bool, int]:
        validate_txn(compares, success, failure, self.max_txn_ops)
        ok, rev, _ = await self._submit(compares, success, failure)
        return ok, rev

    async def usage(self) -> StoreUsage:
        """The SQLite file's bytes in use (read on the store's thread) against the quota."""
        await self._enter()
        used = await self._io(self._db.bytes_in_use)
        return StoreUsage(used, self.quota_bytes, self.quota_high_water)

    # ------------------------------------------------------------------ leases

    async def _revoke_durably(self, lease: _Lease) -> None:
        keys = sorted(lease.keys)
        await self._persist([Delete(k) for k in keys])
        if self._leases.get(lease.lease_id) is lease:
            self._revoke(lease)

    async def keepalive(self, lease_id: int) -> int:
        await self._enter()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id:x} not found (expired or revoked)")
        if lease.deadline <= self._clock():
            await self._serialized(lambda: self._revoke_durably(lease))
            raise LeaseExpired(f"lease {lease_id:x} expired")
        lease.deadline = self._clock() + lease.ttl_s
        return lease.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        async def body() -> None:
            lease = self._leases.get(lease_id)
            if lease is not None:
                await self._revoke_durably(lease)

        await self._serialized(body)

    def expire_leases_now(self) -> int:
        raise TypeError("SqliteStore expires leases durably: await expire_leases()")

    async def expire_leases(self) -> int:
        """Revoke (durably) every lease whose deadline has passed; returns how many."""
        if self._closed or not self._available:
            return 0

        async def body() -> int:
            now = self._clock()
            expired = [lease for lease in self._leases.values() if lease.deadline <= now]
            for lease in expired:
                await self._revoke_durably(lease)
            return len(expired)

        return await self._serialized(body)

    # ------------------------------------------------------------------ watch, lifecycle

    async def _watch(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        await self._enter()
        async with contextlib.aclosing(super()._watch(prefix, start_revision)) as inner:
            async for batch in inner:
                yield batch

    async def close(self) -> None:
        if self._closed:
            return
        async with self._write_lock:  # let an in-flight commit finish
            if (
                self._broken is None
                and self._open_task is not None
                and self._open_task.done()
                and not self._open_task.cancelled()
                and self._open_task.exception() is None
                and self._revision > self._disk_revision
            ):
                # record the counter past the lease-only writes, so it continues after them
                with contextlib.suppress(StoreError):
                    await self._commit_rows(self._revision, [], [])
            await super().close()
        with contextlib.suppress(Exception):
            if self._open_task is not None:
                await self._open_task
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
