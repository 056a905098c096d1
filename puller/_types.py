"""Domain types of the puller (frozen dataclasses; sizes in bytes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StorageRef:
    """Where a model's artifact lives, ModelMesh / KServe style.

    Either ``storage_uri`` (``s3://bucket/path``, ``gs://bucket/path``, ``https://...``,
    ``http://...``, ``azure://container/path``, ``pvc://name/path``, ``file:///abs`` or a bare
    local path), or ``storage_key`` + ``path`` (+ ``parameters``) resolved against the
    storage-config secret. ``parameters`` override the secret entry's fields
    (e.g. ``{"type": "s3", "bucket": "models"}``). A ``storage_key`` given with a
    ``storage_uri`` selects the credentials used for that URI.
    """

    storage_uri: str | None = None
    storage_key: str | None = None
    path: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedArtifact:
    """A verified local copy of an artifact.

    ``local_path`` is a directory holding exactly the artifact (remote objects, prefixes,
    unpacked archives), or — for local and PVC sources served in place — the source file or
    directory itself. ``key`` is what ``Puller.release`` takes.
    """

    key: str
    local_path: Path
    size_bytes: int
    in_place: bool = False
    # served from the local cache: this call transferred nothing (about the call, not the artifact)
    from_cache: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class PullProgress:
    """A snapshot of one download; ``bytes_total``/``eta_s`` are None while the size is unknown."""

    key: str
    source: str
    bytes_done: int
    bytes_total: int | None
    bytes_per_s: float
    eta_s: float | None


@dataclass(frozen=True)
class CachedArtifactInfo:
    key: str
    source: str
    size_bytes: int
    holds: int


@dataclass(frozen=True)
class CacheUsage:
    """Bytes used by cached artifacts (in-place local sources are not counted) against the budget."""

    used_bytes: int
    budget_bytes: int
    artifacts: tuple[CachedArtifactInfo, ...]
