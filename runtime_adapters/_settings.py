"""Settings of the in-process runtimes and of the model-runtime gRPC server."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AdapterSettings(BaseSettings):
    """Threads, pools and limits of the in-process runtimes (env prefix ``MODELMUX_ADAPTER_``).

    Framework thread counts are per inference call: with ``infer_workers`` calls in flight a
    process uses about ``infer_workers x *_threads`` compute threads.
    """

    model_config = SettingsConfigDict(env_prefix="MODELMUX_ADAPTER_", extra="ignore")

    onnx_intra_op_threads: int = Field(default=1, ge=0)
    onnx_inter_op_threads: int = Field(default=1, ge=0)
    # ONNX Runtime memory (see runtime_adapters._onnx and bench/bench_memory.py): its CPU arena keeps
    # the peak of every run's activations per session and the memory pattern pre-plans one block per
    # input shape, neither of which a load measures; off, a session's memory is its weights and
    # freed activations go back to malloc (and, trimmed, to the OS).
    onnx_cpu_mem_arena: bool = False
    onnx_mem_pattern: bool = False
    # run each ONNX model once at load (zeros, batch 1) so what its first request allocates for
    # good is part of its measured size
    onnx_first_run_at_load: bool = True
    torch_threads: int = Field(default=1, ge=1)
    xgboost_threads: int = Field(default=1, ge=1)
    # a call of a tree-ensemble booster with rows x trees up to this runs on Treelite's GTIL
    # (runtime_adapters._treelite: ~10x cheaper than inplace_predict for small batches, worse
    # for large ones); 0 = always xgboost
    xgboost_treelite_max_work: int = Field(default=2048, ge=0)
    infer_workers: int = Field(default=4, ge=1)
    load_workers: int = Field(default=2, ge=1)
    # "cpu", "cuda" or "cuda:N"; a spec's "device" option overrides it per model.
    torch_device: str = "cpu"
    # Load the first model of each format twice and measure the second, so one-time framework
    # start-up costs are not charged to that model's size (see runtime_adapters._memory).
    warm_up_first_load: bool = True
    # A load that overlapped another (its RSS delta mixes both) reports its framework floor scaled
    # by the real cost per floor byte of trusted loads of its format; off: the floor alone.
    size_calibration: bool = True
    # Measure each load's process-RSS delta (see runtime_adapters._memory); off, a model's size is
    # its framework floor alone: smaller than the truth for ONNX Runtime, but the same on every
    # load, whatever else the process does meanwhile (for capacities planned from file sizes).
    measure_load_rss: bool = True
    # Upper bound of one request's input tensor bytes; 0 = no limit.
    max_request_bytes: int = Field(default=1 << 30, ge=0)


class RuntimeServerSettings(BaseSettings):
    """What the ``mmesh.ModelRuntime`` server reports and how it behaves (``MODELMUX_RUNTIME_``)."""

    model_config = SettingsConfigDict(env_prefix="MODELMUX_RUNTIME_", extra="ignore")

    capacity_bytes: int = Field(default=2 << 30, ge=0)
    default_model_size_bytes: int = Field(default=1 << 20, ge=0)
    max_loading_concurrency: int = Field(default=2, ge=1)
    model_loading_timeout_s: float = Field(default=90.0, gt=0)
    # ModelMesh's contract: a runtimeStatus call purges every loaded model (it is sent once,
    # when the mesh container (re)starts). Turn off for callers that poll it.
    purge_on_status: bool = True
    runtime_version: str = "modelmux"
    # frames path (``--frames``): a model whose recent calls averaged under this runs on the
    # event loop instead of the infer pool (0 = always the pool)
    inline_infer_below_s: float = Field(default=0.001, ge=0)
