"""The placement decision log as every instance mirrors it: raw bytes, decoded when read.

The leader writes one :class:`~mesh._store_schema.DecisionRecord` per applied decision and keeps
the newest ``decision_log_size`` (2,000) in the store. Every instance mirrors the log (the
dashboard and the decisions API answer on any instance; a new leader rebuilds its history from
it). Decoded, a record with a few actions is ~3.7 KB of Python objects against ~1 KB of JSON, so
a mirror of decoded records held ~7 MB per instance, and the density bench's three in-process
instances ~22 MB: a fifth of its copies' bytes, counted as if the copies cost it. So the mirror
keeps the bytes (with the memory store, the very objects the store holds) and this class decodes
on read, with a small cache of the newest records read.

Keys are the record's sequence number, zero-padded (``Keys.decision``), so key order is log
order and the newest record is found without decoding. Filters on a model, instance or kind
skip a record whose bytes cannot contain that JSON string before decoding it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from cachetools import LRUCache

from ._store import PrefixMirror
from ._store_schema import DecisionRecord, decode

CACHE_RECORDS = 256


class DecisionLog:
    """Read side of the mirrored decision log (``ClusterMirror.decisions``)."""

    def __init__(self, mirror: PrefixMirror[bytes]) -> None:
        self.mirror = mirror
        self._cache: LRUCache[tuple[str, bytes], DecisionRecord] = LRUCache(CACHE_RECORDS)

    @property
    def items(self) -> Mapping[str, bytes]:
        """Key (the zero-padded sequence number) -> the record's bytes."""
        return self.mirror.items

    def __len__(self) -> int:
        return len(self.mirror.items)

    def keys(self, *, newest_first: bool = False) -> list[str]:
        return sorted((k for k in self.mirror.items if k.isdigit()), reverse=newest_first)

    def get(self, key: str) -> DecisionRecord | None:
        raw = self.mirror.items.get(key)
        if raw is None:
            return None
        # keyed by the bytes too: a key rewritten with other bytes is decoded afresh
        cache_key = (key, raw)
        rec = self._cache.get(cache_key)
        if rec is None:
            rec = decode(DecisionRecord, raw)
            self._cache[cache_key] = rec
        return rec

    def records(self, *, newest_first: bool = False, after: int = 0, mentions: str = "") -> Iterator[DecisionRecord]:
        """Decoded records in log order (or newest first) with a sequence number over ``after``;
        ``mentions``: only records whose JSON holds that string as a value (a prefilter: the
        caller still checks which action names it)."""
        needle = json.dumps(mentions).encode() if mentions else b""
        items = self.mirror.items
        for key in self.keys(newest_first=newest_first):
            if after and int(key) <= after:
                if newest_first:
                    return
                continue
            if needle and needle not in items.get(key, b""):
                continue
            rec = self.get(key)
            if rec is not None:
                yield rec

    def newest(self) -> DecisionRecord | None:
        keys = self.keys(newest_first=True)
        return self.get(keys[0]) if keys else None
