"""Settings of the runtime supervisor (``MODELMUX_RUNTIMES_*``). Inert; built once by the entry point."""

from __future__ import annotations

import os
from typing import Literal

import psutil
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1 << 30
MiB = 1 << 20

# Model code (TorchScript, torch.export) runs isolated by default; formats that are only parsed
# (ONNX, XGBoost) stay in the instance's process unless listed here.
DEFAULT_ISOLATED = ("pytorch", "torchscript", "torch_export")


class ExternalRuntime(BaseModel):
    """A server started by someone else: one that speaks ``mmesh.ModelRuntime`` + V2 gRPC
    (``kind="model_runtime"``), or an MLServer (``kind="mlserver"``, driven through its
    model-repository API; see ``_mlserver``)."""

    name: str
    address: str  # a gRPC target: host:port or unix:/path
    model_types: tuple[str, ...]
    kind: Literal["model_runtime", "mlserver"] = "model_runtime"
    # mlserver: its REST host:port, the model repository it was started on (writable by this
    # instance, readable by MLServer), model type -> implementation beyond the built-in ones,
    # and its pid to size models by RSS growth (0: sized by artifact bytes)
    rest_address: str = ""
    model_repository: str = ""
    implementations: dict[str, str] = Field(default_factory=dict)
    pid: int = Field(default=0, ge=0)


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELMUX_RUNTIMES_", extra="ignore")

    # worker processes; 0 = one per core, capped by memory (total // memory_per_runtime_bytes)
    count: int = Field(default=0, ge=0)
    # on_demand: no worker until the first load of an isolated type, then one more whenever a
    # load finds every started worker holding copies (an instance that never loads model code
    # pays nothing); at_start: all of them when the instance starts
    start_workers: Literal["on_demand", "at_start"] = "on_demand"
    memory_per_runtime_bytes: int = Field(default=2 * GiB, gt=0)
    # model types served by worker processes (lower-case); empty: no workers are started
    isolated_types: tuple[str, ...] = DEFAULT_ISOLATED
    external: tuple[ExternalRuntime, ...] = ()
    # address-space limit of a worker (RLIMIT_AS); 0 = none
    memory_limit_bytes: int = Field(default=8 * GiB, ge=0)
    # when the instance runs as root, workers run as this user (and its group)
    user: str = "nobody"
    # where read-only copies of staged artifacts go for workers that run as ``user`` (the
    # instance's own folders stay private); empty = the system's temporary folder
    share_dir: str = ""
    python: str = ""  # the worker's interpreter; empty = this one (or a same-version one the user can run)
    worker_module: str = "runtime_adapters"  # ``python -m <worker_module> --address unix:... [--frames PATH]``
    # inference to workers in frames on a second socket (see runtime_adapters._frame_server);
    # off: V2 gRPC, as to an external runtime
    frames: bool = True
    start_timeout_s: float = Field(default=60.0, gt=0)
    call_timeout_s: float = Field(default=10.0, gt=0)  # unload / size / metadata calls
    load_timeout_s: float = Field(default=90.0, gt=0)
    health_interval_s: float = Field(default=0.5, gt=0)
    health_timeout_s: float = Field(default=1.5, gt=0)
    # consecutive unanswered probes = hung (a first torch import can hold the GIL for a while)
    health_failures: int = Field(default=3, ge=1)
    # ... except while it loads: then hung only after this long without an answer
    loading_silence_s: float = Field(default=30.0, gt=0)
    restart_backoff_s: float = Field(default=0.1, ge=0)
    restart_backoff_max_s: float = Field(default=10.0, ge=0)
    stable_after_s: float = Field(default=30.0, ge=0)  # a worker up this long resets the backoff
    # a model in flight when its runtime died this many times within the window is failed
    crash_loop_strikes: int = Field(default=3, ge=1)
    crash_loop_window_s: float = Field(default=300.0, gt=0)
    # leak: after unloads, RSS above its start + max(held x factor, held + slack) recycles it
    leak_factor: float = Field(default=2.0, ge=1.0)
    leak_slack_bytes: int = Field(default=768 * MiB, ge=0)
    leak_check_s: float = Field(default=5.0, gt=0)

    def worker_count(self) -> int:
        if not self.isolated_types:
            return 0
        if self.count:
            return self.count
        by_memory = max(1, psutil.virtual_memory().total // self.memory_per_runtime_bytes)
        return max(1, min(os.cpu_count() or 1, by_memory))

    def isolated(self, model_type: str) -> bool:
        return model_type.strip().lower() in {t.lower() for t in self.isolated_types}
