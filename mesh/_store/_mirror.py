"""PrefixMirror: a live, in-memory copy of every key under one prefix.

The hot path reads ``mirror.items`` (a dictionary look-up) and never the store. The
mirror lists the prefix once, then follows a watch from the listed revision + 1. When
the watch breaks (store down, connection lost) the mirror keeps serving its last state,
reports ``connected = False``, retries with capped exponential backoff and RESUMES the
watch from its last applied revision + 1, so no update is lost. When the store no longer
has that history (:class:`Compacted`), it re-lists and applies the difference as
ordinary changes. Nothing in the loop can crash it: decode failures are logged and the
key is left out of ``items``; subscriber exceptions are logged.

Keys in ``items``, in :class:`MirrorChange` and in ``revision_of`` are RELATIVE to the
prefix (``/modelmux/models/m1`` under ``/modelmux/models/`` is ``m1``); ``decode``
receives the relative key too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar, cast

from ._base import Store
from ._errors import Compacted
from ._types import KeyValue, WatchEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MirrorChange(Generic[T]):
    """One applied change. ``old`` None: created; ``new`` None: deleted."""

    key: str  # relative to the mirror's prefix
    old: T | None
    new: T | None
    mod_revision: int


class PrefixMirror(Generic[T]):
    """Mirror of ``prefix`` decoded by ``decode(relative_key, value)``; see the module doc."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        decode: Callable[[str, bytes], T],
        *,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._decode = decode
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._items: dict[str, T] = {}
        # read-only live view: relative key -> decoded value. An attribute, not a property: the
        # router reads it several times per request, and a property call costs more than the look-up
        self.items: Mapping[str, T] = MappingProxyType(self._items)
        self._revs: dict[str, int] = {}
        self._revision = 0
        self._connected = False
        self._need_relist = False
        self._subscribers: list[Callable[[list[MirrorChange[T]]], None]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ reading

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def revision(self) -> int:
        """The store revision this mirror reflects (advances with list reads and with events
        under the prefix; writes elsewhere in the store do not move it)."""
        return self._revision

    def revision_of(self, key: str) -> int:
        """Mod revision of the relative ``key`` as mirrored, 0 when absent (for CAS)."""
        return self._revs.get(key, 0)

    @property
    def connected(self) -> bool:
        """False while the watch is broken; ``items`` then holds the last known state."""
        return self._connected

    def subscribe(self, callback: Callable[[list[MirrorChange[T]]], None]) -> Callable[[], None]:
        """Call ``callback(changes)`` in the loop after each applied batch; returns unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every change or connection flip.

        Returns False when ``timeout_s`` passes first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changed = self._changed  # this generation; replaced on every change
            if predicate():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return predicate()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """List the prefix, then follow it; returns once the initial list is loaded.

        Raises the store's error when the initial list fails (nothing is started then).
        Subscribers registered before ``start`` see the initial items as creations.
        """
        if self._task is not None:
            return
        kvs, rev = await self._store.get_prefix(self._prefix)
        self._apply_listing(kvs, rev)
        self._set_connected(True)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"prefix-mirror {self._prefix}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_connected(False)

    # ------------------------------------------------------------------ internals

    def _rel(self, key: str) -> str:
        return key[len(self._prefix) :]

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._bump()

    def _bump(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _decoded(self, rel: str, value: bytes) -> tuple[bool, T | None]:
        try:
            return True, self._decode(rel, value)
        except Exception:
            logger.warning(
                "cannot decode %s%s; left out of the mirror", self._prefix, rel, exc_info=True
            )
            return False, None

    def _notify(self, changes: list[MirrorChange[T]]) -> None:
        if changes:
            for callback in list(self._subscribers):
                try:
                    callback(changes)
                except Exception:
                    logger.exception("mirror %s subscriber failed", self._prefix)
        self._bump()

    def _apply_listing(self, kvs: list[KeyValue], rev: int) -> None:
        """Replace the state with a listing, emitting the difference as changes."""
        changes: list[MirrorChange[T]] = []
        listed: set[str] = set()
        for kv in kvs:
            rel = self._rel(kv.key)
            listed.add(rel)
            if self._revs.get(rel) == kv.mod_revision:
                continue
            changes.extend(self._put(rel, kv.value, kv.mod_revision))
        for rel in [k for k in self._revs if k not in listed]:
            changes.extend(self._delete(rel, rev))
        self._revision = max(self._revision, rev)
        self._notify(changes)

    def _put(self, rel: str, value: bytes, rev: int) -> list[MirrorChange[T]]:
        old = self._items.get(rel)
        ok, new = self._decoded(rel, value)
        if not ok:
            return self._delete(rel, rev)
        self._items[rel] = cast(T, new)
        self._revs[rel] = rev
        return [MirrorChange(rel, old, new, rev)]

    def _delete(self, rel: str, rev: int) -> list[MirrorChange[T]]:
        self._revs.pop(rel, None)
        if rel not in self._items:
            return []
        old = self._items.pop(rel)
        return [MirrorChange(rel, old, None, rev)]

    def _apply_events(self, batch: list[WatchEvent]) -> None:
        base = self._revision
        top = base
        changes: list[MirrorChange[T]] = []
        for ev in batch:
            if ev.mod_revision <= base:
                continue  # already reflected (defensive: a resumed watch never repeats)
            rel = self._rel(ev.key)
            if ev.kind == "put":
                changes.extend(self._put(rel, ev.value, ev.mod_revision))
            else:
                changes.extend(self._delete(rel, ev.mod_revision))
            top = max(top, ev.mod_revision)
        self._revision = top
        self._notify(changes)

    async def _relist(self) -> None:
        kvs, rev = await self._store.get_prefix(self._prefix)
        self._need_relist = False
        self._apply_listing(kvs, rev)

    async def _run(self) -> None:
        delay = self._retry_initial_s
        while True:
            try:
                if self._need_relist:
                    await self._relist()
                watch = self._store.watch_prefix(self._prefix, self._revision + 1)
                try:
                    async for batch in watch:
                        if not self._connected:
                            logger.info(
                                "mirror %s reconnected at revision %d", self._prefix, self._revision
                            )
                        self._set_connected(True)
                        delay = self._retry_initial_s
                        if batch:
                            self._apply_events(batch)
                finally:
                    await watch.aclose()
                logger.warning("watch on %s ended; resuming", self._prefix)
            except asyncio.CancelledError:
                raise
            except Compacted as exc:
                logger.info("mirror %s must re-list: %s", self._prefix, exc)
                self._need_relist = True
                if self._connected:
                    continue  # the store answered: re-list at once
            except Exception as exc:
                if self._connected:
                    logger.warning("watch on %s broke, serving last state: %s", self._prefix, exc)
            self._set_connected(False)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self._retry_max_s)
