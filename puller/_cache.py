"""The on-disk artifact cache: layout, index, byte budget and LRU eviction.

Layout under ``cache_dir``::

    artifacts/<key>/meta.json   {"key", "source", "size_bytes"}; its mtime is the last use
    artifacts/<key>/data/       the artifact itself (``StagedArtifact.local_path``)
    staging/<key>.<random>/     a pull in progress (data/ + meta.json), renamed into
                                artifacts/ in one ``rename`` once verified, so a partial
                                download is never visible under artifacts/
    trash/<random>/             evicted entries being deleted (renamed out first, atomically)
    scratch/                    files providers write (CA bundles)

``load`` rebuilds the index from ``artifacts/`` (LRU order from the meta files' mtimes, so
recency survives a restart) and deletes whatever ``staging/`` and ``trash/`` hold: pulls and
deletions that a crash interrupted. One process per cache directory.

Bookkeeping (``make_room``, ``commit``, holds) is synchronous and runs on the event loop
thread only, so no lock is needed; file operations are blocking and the puller runs them on
its executor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ._errors import OverBudget

log = logging.getLogger(__name__)

META = "meta.json"
DATA = "data"


@dataclass
class Entry:
    key: str
    source: str
    size_bytes: int
    path: Path
    holds: int = 0

    @property
    def data(self) -> Path:
        return self.path / DATA


def tree_size(path: Path) -> int:
    """Apparent size of every regular file under ``path`` (symlinks not followed; blocking)."""
    if path.is_file() and not path.is_symlink():
        return path.stat().st_size
    total = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


class Cache:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.artifacts = root / "artifacts"
        self.staging = root / "staging"
        self.trash = root / "trash"
        self.scratch = root / "scratch"
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.reserved_bytes = 0

    @property
    def used_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries.values())

    # -- blocking file operations (executor) -------------------------------------------

    def load(self) -> list[Entry]:
        """Create the layout, clear interrupted work, return the entries found (LRU first)."""
        for d in (self.artifacts, self.staging, self.trash, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.staging, self.trash):
            for leftover in d.iterdir():
                log.info("removing interrupted %s", leftover)
                remove_tree(leftover)
        found: list[tuple[int, Entry]] = []
        for path in self.artifacts.iterdir():
            entry = _read_entry(path)
            if entry is None:
                log.warning("removing unreadable cache entry %s", path)
                remove_tree(path)
                continue
            found.append(((path / META).stat().st_mtime_ns, entry))
        found.sort(key=lambda item: item[0])
        return [entry for _, entry in found]

    def staging_path(self, key: str) -> Path:
        """A fresh staging dir name for ``key`` (pure: create it with ``make_staging``)."""
        return self.staging / f"{key}.{uuid.uuid4().hex[:12]}"

    @staticmethod
    def make_staging(path: Path) -> None:
        (path / DATA).mkdir(parents=True)

    def publish(self, staging: Path, key: str, source: str, size_bytes: int) -> Entry:
        """Write the meta file and rename the staging dir into place (the commit point)."""
        meta = {"key": key, "source": source, "size_bytes": size_bytes}
        (staging / META).write_text(json.dumps(meta))
        _stamp(staging / META)
        final = self.artifacts / key
        if final.exists():  # a stale entry the index did not know: move it aside first
            self.discard(final)
        os.rename(staging, final)
        return Entry(key=key, source=source, size_bytes=size_bytes, path=final)

    def retire(self, path: Path) -> Path | None:
        """Rename ``path`` into trash (atomic: it disappears at once); the new path, to delete."""
        target = self.trash / uuid.uuid4().hex
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        return target

    def discard(self, path: Path) -> None:
        """Retire ``path`` and delete it."""
        retired = self.retire(path)
        if retired is not None:
            remove_tree(retired)

    @staticmethod
    def touch(entry: Entry) -> None:
        try:
            _stamp(entry.path / META)
        except FileNotFoundError:
            pass

    # -- bookkeeping (event loop thread) -----------------------------------------------

    def add(self, entry: Entry) -> None:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)

    def used_recently(self, entry: Entry) -> None:
        self.entries.move_to_end(entry.key)

    def make_room(self, need_bytes: int, *, what: str) -> list[Entry]:
        """Reserve ``need_bytes``, choosing least recently used unheld entries to evict.

        The victims leave the index at once (the caller deletes their files); raises
        ``OverBudget`` — evicting nothing — when even evicting every unheld entry would not do.
        """
        if need_bytes <= 0:
            return []
        free = self.budget_bytes - self.used_bytes - self.reserved_bytes
        victims: list[Entry] = []
        for entry in self.entries.values():
            if free >= need_bytes:
                break
            if entry.holds == 0:
                victims.append(entry)
                free += entry.size_bytes
        if free < need_bytes:
            held = sum(e.size_bytes for e in self.entries.values() if e.holds)
            raise OverBudget(
                f"{what} needs {need_bytes} bytes but the cache budget is {self.budget_bytes} bytes, "
                f"{held} held by loaded models and {self.reserved_bytes} reserved by pulls in progress"
            )
        for victim in victims:
            del self.entries[victim.key]
            log.info("evicting %s (%s, %d bytes)", victim.key, victim.source, victim.size_bytes)
        self.reserved_bytes += need_bytes
        return victims

    def unreserve(self, n: int) -> None:
        self.reserved_bytes = max(0, self.reserved_bytes - n)

    def over_budget_victims(self) -> list[Entry]:
        """Unheld entries to evict (LRU first) until usage is within the budget again."""
        excess = self.used_bytes + self.reserved_bytes - self.budget_bytes
        victims: list[Entry] = []
        for entry in list(self.entries.values()):
            if excess <= 0:
                break
            if entry.holds == 0:
                victims.append(entry)
                excess -= entry.size_bytes
                del self.entries[entry.key]
        return victims


def _stamp(path: Path) -> None:
    """Record "used now" as the file's mtime, from the high-resolution clock (the kernel's own
    file timestamps are coarse: two uses milliseconds apart could tie)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _read_entry(path: Path) -> Entry | None:
    try:
        meta = json.loads((path / META).read_text())
        key = str(meta["key"])
        size = int(meta["size_bytes"])
        source = str(meta.get("source", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if key != path.name or size < 0 or not (path / DATA).exists():
        return None
    return Entry(key=key, source=source, size_bytes=size, path=path)


def remove_tree(path: Path) -> None:
    """Delete a file or directory tree (symlinks are unlinked, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
