"""Puller settings (built once by the caller and passed in)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PullerSettings(BaseSettings):
    """Settings of one puller; environment prefix ``MODELMUX_PULLER_``.

    Security knobs (what each guarantees is in the module docstrings of ``_netguard``,
    ``_resolve`` and ``_puller``):

    * ``http_allow_private``: HTTP(S) sources and their redirects never reach loopback,
      link-local (cloud metadata), private, shared or unique-local addresses — checked on the
      resolved addresses of every connection — unless listed here (CIDRs such as
      ``10.0.0.0/8`` or ``127.0.0.1/32``, or exact host names). Empty by default. The origin a
      storage-config entry names itself (an http key's ``url``, a GCS ``endpoint_url``) is
      always reachable with that entry.
    * ``max_redirects``: redirect hops an HTTP(S) source may take (each one re-checked; the
      entry's headers are sent only to the origin the reference named).
    * ``pvc_claim_tenants``: ``{claim: [tenant, ...]}``; a listed ``pvc://`` claim serves only
      those tenants (as a storage key's ``tenants`` does); unlisted claims serve anyone.
    * ``pull_deadline_s``: the overall deadline of one pull (listing, download, unpacking,
      checks), from when it gets a download slot; past it the pull fails with
      ``PullTimeout`` (deadline_exceeded) and its partial download is removed.
    * ``max_pulls_per_source``: pulls from one source host (HTTP origin, or object-store
      endpoint) that may hold download slots at once, so that a slow host cannot hold every
      one of ``max_concurrent_pulls``.
    * ``cache_budget_bytes`` is reserved before a download (from the listing's sizes, or an
      object's ``Content-Length`` before its first byte is written) and enforced while it runs:
      a body longer than its declared length, or one without a length that grows past what
      the budget can give, is cut off and its partial file removed.
    """

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
    http_allow_private: list[str] = Field(
        default_factory=list,
        description="CIDRs or host names HTTP(S) sources may reach although not public (loopback, private...)",
    )
    max_redirects: int = Field(default=5, ge=0, description="redirect hops an HTTP(S) source may take")
    pvc_claim_tenants: dict[str, list[str]] = Field(
        default_factory=dict, description="pvc claim -> the only tenants that may read it"
    )
    pull_deadline_s: float = Field(default=3600.0, gt=0, description="overall deadline of one pull, from its slot")
    max_pulls_per_source: int = Field(default=2, gt=0, description="pulls from one source host at once")
