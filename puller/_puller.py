"""The puller: StorageRef -> a verified local artifact, cached, single-flight, atomic.

Holds (refcount semantics)
--------------------------
Every successful ``stage()`` and every ``hold(key)`` adds one hold on the artifact's key;
every ``release(key)`` removes one. An artifact with at least one hold is never evicted; at
zero holds it stays cached and becomes evictable, least recently used first, when a new pull
needs room. Concurrent ``stage()`` calls of one artifact share one download and each gets its
own hold. Releasing more often than held is ignored (logged), as is releasing an unknown key,
so that cleanup paths may release unconditionally. Holds live in memory only: after a restart
every cached artifact starts unheld (the agent re-stages what it reloads).

Local sources
-------------
``file://`` and bare paths must resolve (symlinks followed) inside ``allowed_roots``,
``pvc://name/path`` inside ``pvc_root/name``; anything else raises ``InvalidStorageRef``
before a byte is read. Files and directories are served IN PLACE (no copy; ``local_path`` is
the source itself, ``in_place=True``, size computed by walking it, not counted in the cache
budget) unless ``serve_local_in_place`` is off; a directory whose symlinks point outside the
roots is rejected. Local archives are unpacked into the cache like remote ones, keyed by
path, size and mtime.

Remote sources
--------------
A pull lists the artifact, reserves its bytes against the budget (evicting unheld LRU
artifacts, or failing with ``OverBudget``), downloads every object into
``staging/<key>.<random>/`` (``object_concurrency`` at a time, each verified by size and MD5
where the store gives one, each retried with exponential backoff on transient errors), unpacks
a single archive object safely, then renames the staging directory into ``artifacts/`` — the
only moment the artifact becomes visible. The cache key is a hash of the source identity
(type, endpoint, bucket and path, or URL), so models that share a source share one copy;
artifacts are treated as immutable (a changed object under the same name is not re-fetched
while cached).

Limits
------
The cache budget is reserved before a download (the listing's sizes; for HTTP the
``Content-Length``, claimed before the first byte is written) and enforced while it runs: a
body longer than it declared is cut off (``IntegrityError``), one with no declared length is
cut off once it outgrows what the budget can give (``OverBudget``); the partial download is
removed with its staging directory. Unpacking is bounded by the smaller of
``max_unpacked_bytes`` and the cache budget. A pull holds a download slot (one of
``max_concurrent_pulls``) only after it got one of its source's ``max_pulls_per_source``, and
for at most ``pull_deadline_s`` (``PullTimeout``, deadline_exceeded, staging removed).

Tenants
-------
``stage(ref, tenant=...)`` resolves the reference as that tenant: storage keys and PVC claims
bound to other tenants are refused (see ``_resolve``). Cached artifacts are shared by source
identity, which includes a fingerprint of the credentials used, so a tenant never gets a copy
made with credentials it could not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from ._archive import archive_kind, safe_relpath, unpack
from ._azure import AzureProvider
from ._cache import DATA, Cache, Entry, remove_tree, tree_size
from ._config import StorageConfig
from ._errors import (
    ArtifactNotFound,
    InvalidStorageRef,
    LocalDiskError,
    PullerClosed,
    PullerError,
    PullTimeout,
    UnsafeArchive,
    UnsupportedStorage,
)
from ._flight import Flight, ProgressCallback, SourceSlots, source_host
from ._gcs import GcsProvider
from ._http import HttpProvider
from ._local import LocalProvider, walk
from ._provider import (
    Listing,
    Meter,
    ObjectSink,
    Provider,
    ProviderContext,
    PullBudget,
    RemoteObject,
)
from ._resolve import Resolver, Source, cache_key, check_lexically, check_local, local_roots
from ._s3 import S3Provider
from ._settings import PullerSettings
from ._types import CachedArtifactInfo, CacheUsage, PullProgress, StagedArtifact, StorageRef

log = logging.getLogger(__name__)

T = TypeVar("T")

_FACTORIES: dict[str, Callable[[ProviderContext], Provider]] = {
    "s3": S3Provider,
    "gcs": GcsProvider,
    "azure": AzureProvider,
    "http": HttpProvider,
    "local": LocalProvider,
}


@dataclass
class _InPlace:
    path: Path
    size_bytes: int
    holds: int = 0


class Puller:
    """Stages artifacts into a local cache; see the module docstring for holds and layout.

    ``providers`` replaces the built-in provider of a storage type (``s3``, ``gcs``,
    ``azure``, ``http``, ``local``) with an instance of your own (the seam the tests use to
    count or slow transfers). ``clock`` drives progress rates only.
    """

    def __init__(
        self,
        settings: PullerSettings,
        storage_config: StorageConfig | None = None,
        *,
        providers: Mapping[str, Provider] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._config = storage_config if storage_config is not None else StorageConfig()
        self._resolver = Resolver(
            self._config, list(settings.allowed_roots), settings.pvc_root, settings.pvc_claim_tenants
        )
        self._clock = clock
        self._cache = Cache(settings.cache_dir, settings.cache_budget_bytes)
        workers = min(64, max(4, settings.max_concurrent_pulls * settings.object_concurrency))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="puller")
        self._ctx = ProviderContext(settings=settings, executor=self._executor, scratch_dir=self._cache.scratch)
        self._providers: dict[str, Provider] = dict(providers or {})
        self._owned: set[str] = set()
        self._flights: dict[str, Flight] = {}
        self._in_place: dict[str, _InPlace] = {}
        self._tasks: set[asyncio.Task[Entry]] = set()  # every pull task, detached ones included
        self._slots = asyncio.Semaphore(settings.max_concurrent_pulls)
        self._source_slots = SourceSlots(settings.max_pulls_per_source)
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the cache index from disk and remove interrupted pulls (idempotent)."""
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise PullerClosed("the puller is closed")
            try:
                entries = await self._run(self._cache.load)
            except OSError as exc:
                raise LocalDiskError(f"cache directory {str(self.settings.cache_dir)!r} is not usable: {exc}") from exc
            for entry in entries:
                self._cache.add(entry)
            await self._discard(self._cache.over_budget_victims())
            self._started = True
            log.info(
                "puller cache %s: %d artifacts, %d of %d bytes",
                self.settings.cache_dir,
                len(self._cache.entries),
                self._cache.used_bytes,
                self._cache.budget_bytes,
            )

    async def close(self) -> None:
        """Cancel pulls in progress, close providers and the executor."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for kind in list(self._owned):
            with contextlib.suppress(Exception):
                await self._providers[kind].aclose()
        await asyncio.to_thread(self._executor.shutdown, True)

    # -- public API ----------------------------------------------------------------------

    async def stage(
        self, ref: StorageRef, *, tenant: str | None = None, on_progress: ProgressCallback | None = None
    ) -> StagedArtifact:
        """A verified local copy of ``ref``'s artifact, held (pinned) until ``release(key)``.

        ``tenant`` is the requesting tenant (the model's owner; ``None`` or ``""``: none):
        storage keys and PVC claims bound to other tenants are refused."""
        if self._closed:
            raise PullerClosed("the puller is closed")
        if not self._started:
            await self.start()
        source = self._resolver.resolve(ref, tenant)
        if source.type == "local":
            return await self._stage_local(source, on_progress)
        key = cache_key(source.type, source.basename, source.identity())
        return await self._stage_cached(key, source, on_progress)

    async def local_size(self, ref: StorageRef, *, tenant: str | None = None) -> int:
        """Bytes of ``ref``'s artifact when it is local (a file or directory under the allowed
        roots or its PVC claim), 0 when it is remote (nothing is contacted).

        For registration: resolves ``ref`` as ``tenant`` (so bound keys and claims are refused),
        refuses a path outside the roots before any file-system access (lexically; then on
        the real path, with the same message whether it exists or not), and walks the tree
        on the puller's executor, never on the event loop. A missing path inside the roots is
        0 (the load reports it)."""
        source = self._resolver.resolve(ref, tenant)
        if source.type != "local":
            return 0
        check_lexically(source, list(self.settings.allowed_roots))
        return await self._run(self._local_size, source)

    def _local_size(self, source: Source) -> int:
        roots = local_roots(source, list(self.settings.allowed_roots))
        real = check_local(source, roots, list(self.settings.allowed_roots))
        try:
            files = walk(real, roots, what=source.display)
        except ArtifactNotFound:
            return 0
        return sum(size for _, _, size in files)

    def hold(self, key: str) -> None:
        """Add one hold on a staged artifact (cached or in place)."""
        entry = self._cache.entries.get(key)
        if entry is not None:
            entry.holds += 1
            self._cache.used_recently(entry)
            return
        local = self._in_place.get(key)
        if local is not None:
            local.holds += 1
            return
        raise ArtifactNotFound(f"no staged artifact with key {key!r} to hold")

    async def release(self, key: str) -> None:
        """Remove one hold; at zero the artifact stays cached but may be evicted."""
        entry = self._cache.entries.get(key)
        if entry is not None:
            if entry.holds > 0:
                entry.holds -= 1
            else:
                log.debug("release of %s, which is not held", key)
            await self._discard(self._cache.over_budget_victims())
            return
        local = self._in_place.get(key)
        if local is not None:
            local.holds -= 1
            if local.holds <= 0:
                del self._in_place[key]
            return
        log.debug("release of unknown artifact key %s", key)

    def in_progress(self) -> list[PullProgress]:
        """Progress of every download in progress."""
        return [f.snapshot() for f in self._flights.values() if f.meter is not None]

    def cache_usage(self) -> CacheUsage:
        artifacts = tuple(
            CachedArtifactInfo(key=e.key, source=e.source, size_bytes=e.size_bytes, holds=e.holds)
            for e in self._cache.entries.values()
        )
        return CacheUsage(
            used_bytes=self._cache.used_bytes,
            budget_bytes=self._cache.budget_bytes,
            artifacts=artifacts,
        )

    # -- staging -------------------------------------------------------------------------

    async def _stage_local(self, source: Source, on_progress: ProgressCallback | None) -> StagedArtifact:
        allowed = list(self.settings.allowed_roots)
        check_lexically(source, allowed)  # before any file-system access
        roots = local_roots(source, allowed)  # realpath: blocking, so below on the executor
        real = await self._run(check_local, source, roots, allowed)
        try:
            st = await self._run(os.stat, real)
        except FileNotFoundError:
            raise ArtifactNotFound(f"{source.display}: no such file or directory") from None
        is_file = stat.S_ISREG(st.st_mode)
        source = replace(source, local_path=real)
        if is_file and archive_kind(real.name):
            identity = f"local-archive\n{real}\n{st.st_size}\n{st.st_mtime_ns}"
            return await self._stage_cached(cache_key("local", real.name, identity), source, on_progress)
        if not self.settings.serve_local_in_place:
            identity = f"local-copy\n{real}\n{st.st_size}\n{st.st_mtime_ns}"
            return await self._stage_cached(cache_key("local", real.name, identity), source, on_progress)
        files = await self._run(partial(walk, real, roots, what=source.display))
        size = sum(size for _, _, size in files)
        key = cache_key("inplace", real.name, f"local\n{real}")
        local = self._in_place.setdefault(key, _InPlace(path=real, size_bytes=size))
        local.size_bytes = size
        local.holds += 1
        return StagedArtifact(key=key, local_path=real, size_bytes=size, in_place=True)

    async def _stage_cached(self, key: str, source: Source, on_progress: ProgressCallback | None) -> StagedArtifact:
        entry = self._cache.entries.get(key)
        cached = entry is not None
        if entry is not None:
            entry.holds += 1
            self._cache.used_recently(entry)
            self._executor.submit(Cache.touch, entry)
        else:
            entry = await self._join(key, source, on_progress)
        return StagedArtifact(key=entry.key, local_path=entry.data, size_bytes=entry.size_bytes, from_cache=cached)

    async def _join(self, key: str, source: Source, on_progress: ProgressCallback | None) -> Entry:
        """Wait for ``key``'s single in-flight pull, starting it if there is none.

        The pull grants one hold per waiter when it commits (in the same step as adding the
        entry, so nothing can evict it in between); a waiter cancelled after that gives its
        hold back.
        """
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = Flight(key, source.display, self._clock, self.settings.progress_interval_s, loop)
            flight.task = loop.create_task(self._fly(flight, source), name=f"pull {key}")
            self._tasks.add(flight.task)
            flight.task.add_done_callback(self._tasks.discard)
            self._flights[key] = flight
        task = flight.task
        assert task is not None
        flight.waiters += 1
        if on_progress is not None:
            flight.callbacks.append(on_progress)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and current.cancelling() == 0:
                # the pull itself was cancelled (the puller closed), not this caller
                raise PullerClosed(f"{source.display}: the puller closed during the pull") from None
            if task.done() and not task.cancelled() and task.exception() is None:
                entry = task.result()
                entry.holds = max(0, entry.holds - 1)
            else:
                flight.waiters -= 1
                if flight.waiters <= 0 and not task.done():
                    task.cancel()  # nobody wants it any more; a later stage() starts afresh
                    if self._flights.get(key) is flight:
                        del self._flights[key]
            raise
        finally:
            if on_progress is not None and on_progress in flight.callbacks:
                flight.callbacks.remove(on_progress)

    async def _fly(self, flight: Flight, source: Source) -> Entry:
        try:
            async with self._source_slots.slot(source_host(source)), self._slots:
                return await self._pull(flight, source)
        finally:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]

    async def _pull(self, flight: Flight, source: Source) -> Entry:
        what = source.display

        async def grow(n: int) -> None:
            victims = self._cache.make_room(n, what=what)  # reserves, or raises OverBudget
            budget.add_reserved(n)
            await self._discard(victims)

        budget = PullBudget(grow)
        box: list[Path] = []
        deadline = self.settings.pull_deadline_s
        try:
            async with asyncio.timeout(deadline):
                size = await self._prepare(flight, source, budget, box)
        except TimeoutError:
            raise PullTimeout(f"{what}: the pull ran past its deadline of {deadline:g}s; its partial download was removed") from None
        # from here the publish owns the staging dir and the reservation, even if cancelled
        return await asyncio.shield(self._publish(flight, box[0], what, size, budget.reserved))

    async def _prepare(self, flight: Flight, source: Source, budget: PullBudget, box: list[Path]) -> int:
        """List, reserve, download, unpack and check into a staging dir (``box[0]``); its size.
        On any failure (cancellation included) the staging dir and the reservation go."""
        provider = self._provider(source.type)
        what = source.display
        listing = await self._retry(lambda: provider.list_objects(source), what=what)
        objects = self._validate(listing, what)
        archive = archive_kind(objects[0].rel_path) if listing.single else None
        meter = Meter(objects, on_change=flight.tick)
        flight.begin(meter)
        staging: Path | None = None
        try:
            total = meter.bytes_total
            if total is not None:
                victims = self._cache.make_room(total, what=what)  # reserves, or raises OverBudget
                budget.add_reserved(total)
                await self._discard(victims)
            staging = self._cache.staging_path(flight.key)
            await self._run(self._cache.make_staging, staging)
            data = staging / DATA
            if archive and source.type == "local" and source.local_path is not None:
                archive_file = source.local_path  # unpack straight from the source, no copy
            else:
                dest = staging / "download" if archive else data
                await self._download(provider, source, objects, dest, meter, budget)
                archive_file = dest / objects[0].rel_path
            flight.emit()
            if archive:
                await self._run(
                    partial(
                        unpack,
                        archive_file,
                        data,
                        kind=archive,
                        max_bytes=min(self.settings.max_unpacked_bytes, self._cache.budget_bytes),
                        max_entries=self.settings.max_archive_entries,
                        chunk_bytes=self.settings.chunk_bytes,
                        what=f"archive {what}",
                    )
                )
                if archive_file.is_relative_to(staging):
                    await self._run(archive_file.unlink)
            size = await self._run(tree_size, data)
            if size > budget.reserved:
                await budget.extend(size - budget.reserved)
        except OSError as exc:
            self._cleanup(staging, budget.reserved)
            raise LocalDiskError(f"{what}: cache directory error: {exc}") from exc
        except BaseException:
            self._cleanup(staging, budget.reserved)
            raise
        box.append(staging)
        return size

    async def _publish(self, flight: Flight, staging: Path, what: str, size: int, reserved: int) -> Entry:
        try:
            entry = await self._run(self._cache.publish, staging, flight.key, what, size)
        except BaseException:
            self._cleanup(staging, reserved)
            raise
        self._cache.unreserve(reserved)
        entry.holds = flight.waiters
        self._cache.add(entry)
        log.info("staged %s from %s (%d bytes)", flight.key, what, size)
        return entry

    def _cleanup(self, staging: Path | None, reserved: int) -> None:
        """Give back the reservation and make the staging dir vanish: one ``rename`` into
        trash, done inline (also on cancellation), the deletion in the background."""
        self._cache.unreserve(reserved)
        if staging is None:
            return
        try:
            retired = self._cache.retire(staging)
        except OSError:
            log.exception("could not remove staging dir %s", staging)
            return
        if retired is not None:
            with contextlib.suppress(RuntimeError):  # executor already shut down
                self._executor.submit(remove_tree, retired)

    @staticmethod
    def _validate(listing: Listing, what: str) -> tuple[RemoteObject, ...]:
        """Reject object names that would land outside the artifact directory or collide."""
        if not listing.objects:
            raise ArtifactNotFound(f"{what}: nothing to pull")
        seen: set[PurePosixPath] = set()
        out: list[RemoteObject] = []
        for obj in listing.objects:
            try:
                rel = safe_relpath(obj.rel_path, what=what)
            except UnsafeArchive as exc:
                raise InvalidStorageRef(f"{what}: object {obj.name!r} has an unsafe name ({exc.message})") from exc
            if rel is None:
                raise InvalidStorageRef(f"{what}: object {obj.name!r} has an empty name")
            if rel in seen:
                raise InvalidStorageRef(f"{what}: two objects map to {str(rel)!r}")
            seen.add(rel)
            out.append(replace(obj, rel_path=str(rel)) if str(rel) != obj.rel_path else obj)
        for rel in seen:
            for parent in rel.parents:
                if parent in seen:
                    raise InvalidStorageRef(f"{what}: object {str(parent)!r} is also a prefix of {str(rel)!r}")
        return tuple(out)

    async def _discard(self, victims: list[Entry]) -> None:
        """Rename victims out of ``artifacts/`` (awaited: they are gone when this returns), then
        delete them in the background."""
        for victim in victims:
            retired = await self._run(self._cache.retire, victim.path)
            if retired is not None:
                self._executor.submit(remove_tree, retired)

    async def _download(
        self,
        provider: Provider,
        source: Source,
        objects: tuple[RemoteObject, ...],
        dest: Path,
        meter: Meter,
        budget: PullBudget,
    ) -> None:
        parents = sorted({(dest / o.rel_path).parent for o in objects})
        await self._run(_mkdirs, parents)
        slots = asyncio.Semaphore(self.settings.object_concurrency)

        async def one(obj: RemoteObject) -> None:
            async with slots:
                what = source.display if len(objects) == 1 else f"{source.display} [{obj.rel_path}]"
                await self._retry(
                    lambda: self._attempt(provider, source, obj, dest / obj.rel_path, meter, budget, what),
                    what=what,
                )

        tasks = [asyncio.ensure_future(one(obj)) for obj in objects]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(
        self,
        provider: Provider,
        source: Source,
        obj: RemoteObject,
        path: Path,
        meter: Meter,
        budget: PullBudget,
        what: str,
    ) -> None:
        sink = await self._run(partial(ObjectSink, path, obj, meter, self._executor, what=what, budget=budget))
        try:
            await provider.fetch(source, obj, sink)
            await self._run(sink.finish)
        except BaseException:
            sink.cancel()
            sink.abort()
            raise

    async def _retry(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        attempt = 0
        retries = self.settings.retries
        while True:
            try:
                return await fn()
            except PullerError as exc:
                if not exc.retryable or attempt >= retries or self._closed:
                    if attempt:
                        exc.message = f"{exc.message} (after {attempt + 1} attempts)"
                        exc.args = (exc.message,)
                    raise
                delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2**attempt))
                delay *= 0.5 + random.random() / 2
                log.warning("%s; retry %d of %d in %.2fs", exc.message, attempt + 1, retries, delay)
            except OSError as exc:
                raise LocalDiskError(f"{what}: cache directory error: {exc}") from exc
            except Exception as exc:
                raise PullerError(f"{what}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(delay)
            attempt += 1

    # -- helpers -------------------------------------------------------------------------

    def _provider(self, kind: str) -> Provider:
        provider = self._providers.get(kind)
        if provider is None:
            factory = _FACTORIES.get(kind)
            if factory is None:
                raise UnsupportedStorage(f"no provider for storage type {kind!r}")
            provider = factory(self._ctx)
            self._providers[kind] = provider
            self._owned.add(kind)
        return provider

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _mkdirs(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
