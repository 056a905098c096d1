"""The provider seam: one protocol for every store, and the sink providers stream into.

A provider lists what an artifact consists of (one object, or every object under a prefix)
and streams one object into an ``ObjectSink``. The puller owns everything else: staging
directories, retries with backoff, verification, progress, unpacking and the cache. A
provider raises the puller's typed errors (``ArtifactNotFound``, ``AccessDenied``,
``BadCredentials``, ``StorageUnavailable``...) and marks nothing as retried itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._errors import IntegrityError, OverBudget, PullCancelled
from ._resolve import Source
from ._settings import PullerSettings


@dataclass(frozen=True)
class RemoteObject:
    """One object of an artifact.

    ``rel_path`` is where it lands under the artifact directory ("/"-separated; the puller
    rejects escaping paths), ``name`` the provider's handle (object key, URL). ``size_bytes``
    and ``md5_hex`` are what the listing says, when it says it; a provider may add them later
    through ``ObjectSink.expect`` once the response headers arrive.
    """

    rel_path: str
    name: str
    size_bytes: int | None = None
    md5_hex: str | None = None


@dataclass(frozen=True)
class Listing:
    """What an artifact consists of. ``single``: the reference named one object (a file), which
    the puller unpacks when it is an archive; otherwise a prefix (a directory)."""

    objects: tuple[RemoteObject, ...]
    single: bool


@dataclass(frozen=True)
class ProviderContext:
    """What a provider factory gets: the settings, the bounded executor for blocking calls and a
    directory inside the cache for files it must write (e.g. a CA bundle)."""

    settings: PullerSettings
    executor: Executor
    scratch_dir: Path


@runtime_checkable
class Provider(Protocol):
    async def list_objects(self, source: Source) -> Listing: ...

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None: ...

    async def aclose(self) -> None: ...


ProviderFactory = Callable[[ProviderContext], Provider]


class Meter:
    """Byte counter of one pull, shared by its sinks (thread-safe); ``on_change`` is called from
    whichever thread wrote, and must itself be thread-safe. ``bytes_total`` is known once every
    object's size is (from the listing or the response headers)."""

    def __init__(self, objects: tuple[RemoteObject, ...] = (), on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.bytes_done = 0
        self._count = len(objects)
        self._sizes = {o.rel_path: o.size_bytes for o in objects if o.size_bytes is not None}
        self._on_change = on_change

    @property
    def bytes_total(self) -> int | None:
        with self._lock:
            return sum(self._sizes.values()) if len(self._sizes) >= self._count else None

    def set_size(self, rel_path: str, size_bytes: int) -> None:
        with self._lock:
            self._sizes[rel_path] = size_bytes

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
        if self._on_change is not None:
            self._on_change()


class PullBudget:
    """The cache bytes one pull may write: a reservation against the cache budget that sinks
    claim before they write. ``grow(n)`` (the puller's; event loop only) reserves ``n`` more
    bytes, evicting unheld artifacts, or raises ``OverBudget``; blocking writers can only claim
    what is already reserved. Counters are thread-safe."""

    def __init__(self, grow: Callable[[int], Awaitable[None]] | None = None, *, step_bytes: int = 4 << 20) -> None:
        self._lock = threading.Lock()
        self.reserved = 0
        self.claimed = 0
        self._grow = grow
        self._step = step_bytes

    async def extend(self, n: int) -> None:
        """Reserve ``n`` more bytes (event loop thread; ``OverBudget`` when they cannot be had)."""
        if self._grow is None:
            raise OverBudget(f"no room to reserve {n} more bytes")
        await self._grow(n)

    def add_reserved(self, n: int) -> None:
        with self._lock:
            self.reserved += n

    def try_claim(self, n: int) -> bool:
        with self._lock:
            if self.claimed + n > self.reserved:
                return False
            self.claimed += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.claimed = max(0, self.claimed - n)

    async def claim(self, n: int, *, what: str) -> None:
        """Claim ``n`` bytes, growing the reservation when needed (event loop thread)."""
        if self.try_claim(n):
            return
        if self._grow is None:
            raise OverBudget(f"{what}: would grow past the bytes reserved for it in the cache budget")
        with self._lock:
            short = self.claimed + n - self.reserved
        try:
            await self._grow(max(short, self._step))  # a step at a time: not one eviction scan per chunk
        except OverBudget:
            await self._grow(short)
        if not self.try_claim(n):
            raise OverBudget(f"{what}: would grow past the bytes reserved for it in the cache budget")


class ObjectSink:
    """The destination of one object transfer (one attempt).

    ``write`` is blocking (call it from a worker thread: S3's boto3 loop does); async providers
    use ``awrite``, which runs the write on the puller's executor. Size and MD5, when known
    (from the listing or through ``expect`` before the first byte), are verified by ``finish``;
    a mismatch raises ``IntegrityError``, which the puller retries. A body that would run past
    its declared size is cut off before the excess is written.

    With a ``budget``, every byte is claimed from the pull's cache reservation before it is
    written — the whole declared size at the first write — so a download that cannot fit in
    the cache budget fails with ``OverBudget`` before its first byte (size known) or as soon as
    it outgrows what the budget can give (size unknown).
    """

    def __init__(
        self,
        path: Path,
        obj: RemoteObject,
        meter: Meter,
        executor: Executor,
        *,
        what: str,
        budget: PullBudget | None = None,
    ) -> None:
        self.path = path
        self.what = what
        self._meter = meter
        self._executor = executor
        self._file = open(path, "wb")  # closed by finish() / abort()
        self.bytes_written = 0
        self.expected_size: int | None = None
        self.expected_md5: str | None = None
        self._md5: hashlib._Hash | None = None
        self._rel_path = obj.rel_path
        self._cancelled = False
        self._budget = budget
        self._claimed = 0
        self.expect(obj.size_bytes, obj.md5_hex)

    def expect(self, size_bytes: int | None = None, md5_hex: str | None = None) -> None:
        """Declare the object's size / MD5 (from response headers); only before the first byte."""
        if size_bytes is not None and self.expected_size is None:
            self.expected_size = size_bytes
            self._meter.set_size(self._rel_path, size_bytes)
        if md5_hex and self.expected_md5 is None and self.bytes_written == 0:
            self.expected_md5 = md5_hex.lower()
            self._md5 = hashlib.md5(usedforsecurity=False)

    def _unclaimed(self, n: int) -> int:
        """Bytes still to claim before writing ``n`` more."""
        return max(self.expected_size or 0, self.bytes_written + n) - self._claimed

    def write(self, data: bytes | memoryview) -> None:
        if self._cancelled:
            raise PullCancelled(f"{self.what}: transfer cancelled")
        n = len(data)
        if not n:
            return
        if self.expected_size is not None and self.bytes_written + n > self.expected_size:
            raise IntegrityError(
                f"{self.what}: received more than the expected {self.expected_size} bytes (cut off)"
            )
        need = self._unclaimed(n)
        if need > 0 and self._budget is not None:
            if not self._budget.try_claim(need):
                raise OverBudget(f"{self.what}: would grow past the bytes reserved for it in the cache budget")
            self._claimed += need
        self._file.write(data)
        if self._md5 is not None:
            self._md5.update(data)
        self.bytes_written += n
        self._meter.add(n)

    async def areserve(self) -> None:
        """Claim the declared size from the budget now (async providers call it once the
        response headers are in, before reading the body): too big fails before any byte."""
        need = self._unclaimed(0)
        if need > 0 and self._budget is not None:
            await self._budget.claim(need, what=self.what)
            self._claimed += need

    async def awrite(self, data: bytes | memoryview) -> None:
        need = self._unclaimed(len(data))
        if need > 0 and self._budget is not None:
            await self._budget.claim(need, what=self.what)  # may evict: on the loop, before the write
            self._claimed += need
        await asyncio.get_running_loop().run_in_executor(self._executor, self.write, data)

    def finish(self) -> None:
        """Flush, close and verify (blocking)."""
        self._file.close()
        if self.expected_size is not None and self.bytes_written != self.expected_size:
            raise IntegrityError(
                f"{self.what}: received {self.bytes_written} of {self.expected_size} bytes (truncated)"
            )
        if self._md5 is not None and self.expected_md5 is not None:
            got = self._md5.hexdigest()
            if got != self.expected_md5:
                raise IntegrityError(f"{self.what}: MD5 {got} does not match the store's {self.expected_md5}")

    def cancel(self) -> None:
        """Make any later ``write`` (from a worker thread still streaming) fail at once."""
        self._cancelled = True

    def abort(self) -> None:
        """Close and forget this attempt's bytes (the file is removed with the staging dir)."""
        if not self._file.closed:
            self._file.close()
        self._meter.add(-self.bytes_written)
        self.bytes_written = 0
        if self._budget is not None:
            self._budget.release(self._claimed)
        self._claimed = 0
