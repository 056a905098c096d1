"""Puller settings (built once by the caller and passed in)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PullerSettings(BaseSettings):
    """Settings of one puller; environment prefix ``MODELMUX_PULLER_``."""

    model_config = SettingsConfigDict(env_prefix="MODELMUX_PULLER_", extra="forbid")

    cache_dir: Path = Field(default=Path("modelmux-cache"), description="root of the artifact cache")
    cache_budget_bytes: int = Field(default=10 << 30, ge=0, description="bytes the cache may hold")
    allowed_roots: list[Path] = Field(
        default_factory=list, description="local roots that file:// and bare paths may read from"
    )
    pvc_root: Path = Field(default=Path("/pvc"), description="pvc://name/path -> pvc_root/name/path")
    serve_local_in_place: bool = Field(
        default=True, description="serve local/PVC files and directories in place instead of copying"
    )
    max_unpacked_bytes: int = Field(default=64 << 30, gt=0, description="limit on an archive's unpacked bytes")
    max_archive_entries: int = Field(default=100_000, gt=0, description="limit on an archive's entries")
    retries: int = Field(default=3, ge=0, description="retries after the first attempt on transient errors")
    backoff_base_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles per retry")
    backoff_max_s: float = Field(default=15.0, ge=0, description="cap on one retry delay")
    request_timeout_s: float = Field(default=60.0, gt=0, description="connect / read timeout per request")
    max_concurrent_pulls: int = Field(default=4, gt=0, description="distinct artifacts downloaded at once")
    object_concurrency: int = Field(default=8, gt=0, description="objects of one prefix downloaded at once")
    chunk_bytes: int = Field(default=256 << 10, gt=0, description="read / write chunk size of a stream")
    progress_interval_s: float = Field(default=1.0, ge=0, description="minimum time between progress reports")
