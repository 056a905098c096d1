"""Settings of one instance (``MODELMUX_INSTANCE_*``). Inert; built once by the entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1 << 30
MiB = 1 << 20


class InstanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELMUX_INSTANCE_", extra="ignore")

    instance_id: str = ""  # empty: derived from host name, pid and a random suffix
    host: str = "127.0.0.1"  # bind address of both servers
    advertise_host: str = ""  # address peers use to reach this instance (default: host)
    grpc_port: int = 8033  # 0 picks a free port
    rest_port: int = 8008  # 0 picks a free port; -1 disables REST
    # forwards between instances in frames over one connection per peer (mesh._peer_link), same
    # credentials as the gRPC port; 0 picks a free port; -1: no link (peers forward over gRPC)
    peer_link_port: int = 0
    forward_over_link: bool = True  # forward to peers over their links (off: always gRPC, e.g. to compare)
    metrics_port: int = -1  # Prometheus on its own port (ModelMesh: 2112); 0 picks a free port; -1: only REST /metrics
    per_model_metrics: bool = False  # modelId / vModelId labels on histograms (unbounded: off by default)
    dashboard_sample_s: float = Field(default=2.0, gt=0)  # request rate / hit ratio sampling for the dashboard
    capacity_bytes: int = 1 * GiB
    loading_slots: int = Field(default=2, ge=1)
    zone: str = ""
    data_dir: Path = Path("var/modelmux")
    lease_ttl_s: int = Field(default=10, ge=2)
    store_connect_timeout_s: float = Field(default=60.0, ge=0)  # at start, retry an unreachable store this long
    publish_interval_s: float = 1.0  # coalescing window for instance / usage records
    rate_window_s: float = Field(default=60.0, gt=0)  # request rates (rpm, for copies by rate) are over this sliding window
    # time constant of the placement meter (each copy's usage_rpm: the request count eviction values
    # a model by). None: the placement policy's rate_tau_s, as the simulator meters. Every instance
    # of a cluster must run the same (the leader merges the copies' reports with it).
    usage_window_s: float | None = Field(default=None, gt=0)
    failure_ttl_s: float = 30.0  # a failed load blocks retries on that instance this long
    max_message_bytes: int = 64 * MiB  # larger requests: RESOURCE_EXHAUSTED / 413
    grpc_reflection: bool = True  # gRPC server reflection on the serving port (grpcurl list / describe)
    # admission (mesh._admission): inference requests running / waiting, per instance and per tenant;
    # beyond them RESOURCE_EXHAUSTED / 429 with Retry-After: retry_after_s
    instance_inflight: int = Field(default=512, ge=1)
    instance_queued: int = Field(default=2048, ge=0)
    tenant_inflight: int = Field(default=128, ge=1)
    tenant_queued: int = Field(default=512, ge=0)
    retry_after_s: float = Field(default=1.0, gt=0)
    # a refusal is answered this long after it was decided (at most half the caller's deadline),
    # so a client that retries at once cannot keep the server's call queue full (mesh._admission);
    # past refusals_held_max held at once, refusals are answered at once
    refusal_hold_s: float = Field(default=0.25, ge=0)
    # a refusal for a tenant over its rate (max_rps) is held this long instead: the tenant has
    # used a whole second's worth, and each refusal answered sooner costs the instance a call
    rate_refusal_hold_s: float = Field(default=1.0, ge=0)
    # the rate of a tenant whose quota sets none (requests per second on this instance; 0: none)
    tenant_max_rps: float = Field(default=0.0, ge=0, le=1e9)
    refusals_held_max: int = Field(default=4096, ge=0)
    # registration caps (mesh._caps): modelInfo.key bytes, stored record bytes, models per tenant (0: no cap)
    max_key_bytes: int = Field(default=64 << 10, ge=1)
    max_record_bytes: int = Field(default=256 << 10, ge=1)
    max_models_per_tenant: int = Field(default=10_000, ge=0)
    forward_attempts: int = 3  # forwards answered NOT_FOUND (copy gone) before a request gives up
    # a forward not answered in this long is abandoned for another holder (only when one exists;
    # 0: the request's whole deadline). Guards against a hung (e.g. SIGSTOPped) holder.
    forward_attempt_timeout_s: float = Field(default=20.0, ge=0)
    suspect_holder_s: float = Field(default=10.0, ge=0)  # a holder that failed or hung is avoided this long
    forward_retry_backoff_s: float = Field(default=0.5, gt=0)  # every holder failed: retry them after this (or a view change)
    default_deadline_s: float = 60.0  # bound for a request that carries no deadline
    shutdown_grace_s: float = 20.0  # how long a stopping instance waits for its models to move
    scheduler_tick_s: float = 2.0
    enable_scheduler: bool = True  # take part in leader election
    # security (docs/security.md): callers identified by the auth file, TLS on every port
    auth_file: Path | None = None  # principals (YAML; re-read on change); none: every caller is an admin
    tls_cert: Path | None = None  # TLS on the gRPC, REST and metrics ports (files re-read on change)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients (and peers) present a certificate from this CA
    peer_token_file: Path | None = None  # bearer token for forwarding to peers (a principal of role instance)
    peer_tls_server_name: str = ""  # the name checked in a peer's certificate (peers are dialled by pod IP)
    peer_tls_ca_file: Path | None = None  # CA for peers' certificates without --tls-client-ca (default: system roots)
    insecure: bool = False  # allow binding beyond loopback without auth file and TLS (loudly)
    health_port: int = -1  # plaintext port serving grpc.health.v1.Health only (kubelet probes); 0: any; -1: off
