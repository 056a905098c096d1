"""Policy settings (built once by the caller and passed in; environment prefix ``MODELMUX_PLACEMENT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PolicySettings(BaseSettings):
    """Thresholds of the placement policy. Rates are requests per minute over all copies."""

    model_config = SettingsConfigDict(env_prefix="MODELMUX_PLACEMENT_", extra="forbid")

    kind: Literal["ours", "adaptive"] = Field(
        default="ours",
        description="which policy the mesh runs: ours (fixed recency horizon) or adaptive (learned; placement.AdaptivePolicy)",
    )
    # eviction
    rate_tau_s: float = Field(
        default=7200.0,
        gt=0,
        description="time constant of the decay of a model's value after its last use (recency weight)",
    )
    young_eviction_penalty: float = Field(
        default=4.0,
        ge=1,
        description="a miss evicts a copy younger than min_residency_s only if older victims would cost this factor more",
    )
    evidence_discount: float = Field(
        default=0.0,
        ge=0,
        description="requests subtracted from a model's decayed count: one request is weak evidence of demand",
    )
    value_floor: float = Field(default=0.05, gt=0, description="least decayed count a model is valued at")
    min_residency_s: float = Field(
        default=60.0,
        ge=0,
        description="a copy younger than this is evicted only when nothing older can make room",
    )
    swap_guard_s: float = Field(
        default=60.0,
        ge=0,
        description="for this long after a model was evicted for another, a miss of it weighs the other's copies more (0: off)",
    )
    swap_guard_penalty: float = Field(
        default=4.0,
        ge=1,
        description="a miss evicts a model it was evicted for within swap_guard_s only if other victims would cost this factor more",
    )
    replica_eviction_discount: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="weight of evicting a copy that is not a model's last one (its model stays served)",
    )
    eviction_shortlist: int = Field(
        default=8,
        ge=1,
        description="instances a miss reads eviction candidates on first (smallest shortfall, cheapest copy)",
    )
    fair_eviction: bool = Field(
        default=True,
        description="a tenant above its fair share of capacity evicts its own copies first",
    )
    fair_eviction_penalty: float = Field(
        default=4.0,
        ge=1,
        description="for a tenant over its share, other active tenants' copies weigh this many times their value",
    )
    cold_idle_s: float = Field(
        default=3600.0,
        gt=0,
        description="a model idle this long is cold: extra copies go, its tenant stops counting as active",
    )
    # adaptive policy (placement.AdaptivePolicy)
    adapt_tau_min_s: float = Field(
        default=60.0, gt=0, description="shortest recency horizon the adaptive policy may learn (near LRU)"
    )
    adapt_tau_max_s: float = Field(
        default=2 * 86400.0, gt=0, description="longest recency horizon the adaptive policy may learn (near LFU)"
    )
    adapt_learning_rate: float = Field(
        default=0.3, gt=0, description="steps of the horizon grid (x1.5 each) one ghost hit of average cost moves"
    )
    adapt_retune_min_s: float = Field(
        default=600.0,
        ge=0,
        description="least time between two horizon changes of the adaptive policy (each one rebuilds the eviction index)",
    )
    adapt_ghost_bytes_factor: float = Field(
        default=1.0, gt=0, description="ghost lists remember evicted models up to this many times the capacity in bytes"
    )
    # copies
    scale_out_rpm_per_copy: float = Field(default=600.0, gt=0, description="add a copy above this rate per copy")
    scale_out_inflight_per_copy: float = Field(
        default=16.0, gt=0, description="add a copy above this many in-flight requests per copy"
    )
    scale_in_rpm_per_copy: float = Field(
        default=150.0, ge=0, description="remove a copy when the rate per remaining copy stays below this"
    )
    second_copy_rpm: float = Field(
        default=6.0, gt=0, description="a model used at least this often gets a second copy where room is free"
    )
    second_copy_off_rpm: float = Field(
        default=2.0, ge=0, description="below this rate a model's second copy is released"
    )
    spread_zones: bool = Field(default=True, description="prefer zones that hold no copy of the model yet")
    max_actions_per_tick: int = Field(default=64, gt=0, description="bound on the actions one tick returns")

    @model_validator(mode="after")
    def _hysteresis(self) -> PolicySettings:
        if self.scale_in_rpm_per_copy >= self.scale_out_rpm_per_copy:
            raise ValueError(
                f"scale_in_rpm_per_copy ({self.scale_in_rpm_per_copy}) must be below "
                f"scale_out_rpm_per_copy ({self.scale_out_rpm_per_copy})"
            )
        if self.second_copy_off_rpm >= self.second_copy_rpm:
            raise ValueError(
                f"second_copy_off_rpm ({self.second_copy_off_rpm}) must be below second_copy_rpm ({self.second_copy_rpm})"
            )
        return self
