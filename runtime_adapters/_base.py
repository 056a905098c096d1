"""The runtime interface (``RuntimeAdapter``, ``LoadedModel``) and the machinery the framework
adapters share: worker pools, model-file resolution, measured loads, validated inference.

Threads: every framework call (load, inference, garbage collection after an unload) runs
in a bounded ``ThreadPoolExecutor`` owned by :class:`WorkerPools`; the event loop only
awaits futures. Frameworks release the GIL while they compute, so ``infer_workers``
requests run in parallel.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ._errors import (
    AdapterError,
    DeviceUnavailable,
    InvalidInput,
    ModelLoadError,
    ModelNotLoaded,
    RequestTooLarge,
    UnsupportedModelType,
)
from ._memory import process_meter
from ._schema import SCHEMA_FILE
from ._settings import AdapterSettings
from ._tensors import Decoded, InputSpec, decode_inputs, input_nbytes
from ._types import (
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSpec,
    ModelState,
    RuntimeStatus,
    TensorMetadata,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the interface


class LoadedModel(ABC):
    """One loaded copy of a model."""

    spec: ModelSpec
    size_bytes: int
    metadata: ModelMetadata
    forwards_raw: ClassVar[bool] = False
    """True for a copy that takes the serialized ModelInferRequest as it came (``infer_bytes``):
    one in a runtime process, which parses it there"""

    @abstractmethod
    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request; raises ``InvalidInput`` before the framework runs when it does not fit."""

    @abstractmethod
    async def unload(self) -> None:
        """Free the framework objects; idempotent. Later ``infer`` calls raise ``ModelNotLoaded``."""

    @property
    @abstractmethod
    def status(self) -> ModelState: ...


class RuntimeAdapter(ABC):
    """Loads models of some types from a local file or directory."""

    name: str
    model_types: tuple[str, ...]

    @abstractmethod
    async def load(self, spec: ModelSpec, local_path: Path) -> LoadedModel: ...

    @abstractmethod
    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        """Expected bytes of the loaded model, before loading it (cheap: file sizes only)."""

    @abstractmethod
    async def status(self) -> RuntimeStatus: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the adapter owns (executors); loaded models stay usable until unloaded."""


# ---------------------------------------------------------------- shared machinery


class WorkerPools:
    """The bounded executors of one registry, and the process's load meter and size calibration."""

    def __init__(self, settings: AdapterSettings) -> None:
        self.infer = ThreadPoolExecutor(max_workers=settings.infer_workers, thread_name_prefix="mm-infer")
        self.load = ThreadPoolExecutor(max_workers=settings.load_workers, thread_name_prefix="mm-load")
        self.meter, self.calibration = process_meter()
        self.closed = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pool in (self.infer, self.load):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def requested_device(spec: ModelSpec, default: str = "cpu") -> str:
    """The device a model asks for: its ``device`` option, else the adapter default (lower-case)."""
    return (spec.options.get("device") or default).strip().lower()


def cuda_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:N`` -> N; anything else that is not ``cpu`` is rejected."""
    if device == "cuda":
        return 0
    prefix, _, idx = device.partition(":")
    if prefix == "cuda" and idx.isdigit():
        return int(idx)
    raise DeviceUnavailable(f"unknown device '{device}' (use cpu, cuda or cuda:N)")


@dataclass
class LoadResult:
    """What a framework load produces, before the shared code sizes and wraps it."""

    handle: Any
    metadata: ModelMetadata
    inputs: Mapping[str, InputSpec]
    framework_bytes: int
    # False when output names are only known after running (e.g. a TorchScript dict output)
    outputs_known: bool = True
    extra: Any = None
    # True when the framework objects hold reference cycles, so that freeing them after an
    # unload needs a full garbage collection (torch.export graph modules)
    cyclic: bool = False


class FrameworkModel(LoadedModel):
    """A loaded model whose inference is validated, then run in the infer pool."""

    writable_inputs: ClassVar[bool] = False

    def __init__(self, adapter: FrameworkAdapter, spec: ModelSpec, result: LoadResult, size_bytes: int) -> None:
        self.spec = spec
        self.size_bytes = size_bytes
        self.metadata = result.metadata
        self._adapter = adapter
        self._handle: Any = result.handle
        self._extra: Any = result.extra
        self._inputs = dict(result.inputs)
        self._outputs_known = result.outputs_known
        self._output_names = frozenset(t.name for t in result.metadata.outputs)
        self._cyclic = result.cyclic
        self._state = ModelState.LOADED
        self.last_infer_s = 0.0

    @property
    def status(self) -> ModelState:
        return self._state

    def _not_loaded(self) -> ModelNotLoaded:
        return ModelNotLoaded(f"model '{self.spec.model_id}' is not loaded ({self._state.value.lower()})")

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._handle is None:
            raise self._not_loaded()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._adapter.pools.infer, self._infer_sync, request)
        except RuntimeError as exc:
            if self._adapter.pools.closed:  # executor shut down under us
                raise self._not_loaded() from exc
            raise

    def infer_blocking(self, request: InferRequest) -> InferResponse:
        """``infer`` on the calling thread. For a process whose event loop serves nothing else
        (a runtime worker) when the model answers in well under a millisecond."""
        return self._infer_sync(request)

    def _infer_sync(self, request: InferRequest) -> InferResponse:
        t0 = time.perf_counter()
        try:
            return self._infer_checked(request)
        finally:
            # the call's own time, without the wait for a pool thread (a runtime worker decides
            # from it whether the model may run on its event loop)
            self.last_infer_s = time.perf_counter() - t0

    def _infer_checked(self, request: InferRequest) -> InferResponse:
        # local references keep the framework objects alive for this call, even across an unload
        handle, extra = self._handle, self._extra
        if handle is None:
            raise self._not_loaded()
        mid = self.spec.model_id
        limit = self._adapter.settings.max_request_bytes
        if limit:
            total = sum(input_nbytes(i) for i in request.inputs)
            if total > limit:
                raise RequestTooLarge(f"model '{mid}': request tensors are {total} bytes, over the {limit} limit")
        wanted = [o.name for o in request.outputs]
        if len(set(wanted)) != len(wanted):
            raise InvalidInput(f"model '{mid}': an output is requested more than once: {wanted}")
        if self._outputs_known:
            for name in wanted:
                if name not in self._output_names:
                    known = ", ".join(sorted(self._output_names))
                    raise InvalidInput(f"requested output '{name}' is not an output of model '{mid}' (outputs: {known})")
        decoded = decode_inputs(request.inputs, self._inputs, writable=self.writable_inputs, model_id=mid)
        produced = self._run(handle, extra, decoded, wanted or None)
        if wanted:
            by_name = {o.name: o for o in produced}
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise InvalidInput(
                    f"requested output '{missing[0]}' is not an output of model '{mid}' "
                    f"(outputs: {', '.join(by_name)})"
                )
            produced = [by_name[n] for n in wanted]
        return InferResponse(
            model_name=request.model_name or mid,
            model_version=request.model_version,
            id=request.id,
            outputs=tuple(produced),
        )

    @abstractmethod
    def _run(
        self, handle: Any, extra: Any, inputs: dict[str, Decoded], wanted: Sequence[str] | None
    ) -> list[InferOutput]:
        """Run the framework on validated inputs; ``wanted`` None = every output."""

    async def unload(self) -> None:
        if self._state is ModelState.UNLOADED:
            return
        self._state = ModelState.UNLOADED
        # The framework's objects are dropped in the load pool inside the meter (LoadMeter.free),
        # so that a load measured meanwhile does not count this model's freed bytes against its own.
        held = [self._handle, self._extra]
        self._handle = None
        self._extra = None
        self._adapter._forget(self)
        pools = self._adapter.pools
        if not pools.closed:
            try:
                # collect cycles and hand freed heap back to the OS, off the event loop
                await asyncio.get_running_loop().run_in_executor(
                    pools.load, functools.partial(pools.meter.free, held.clear, full=self._cyclic)
                )
            except RuntimeError:  # pools shut down meanwhile: nothing left to tidy
                pass


class FrameworkAdapter(RuntimeAdapter):
    """Shared adapter logic: type check, file resolution, one-time init, measured load, book-keeping.

    Subclasses set the class attributes and implement ``_initialise`` (import the framework,
    set its threads, warm it up), ``_load_model`` and ``_model_class``.
    """

    module: ClassVar[str]  # the framework's import name
    extensions: ClassVar[tuple[str, ...]]
    # predicted size = artifact bytes x size_factor (calibrated per framework, see the adapter)
    size_factor: ClassVar[float] = 1.0

    def __init__(self, settings: AdapterSettings, pools: WorkerPools | None = None) -> None:
        self.settings = settings
        self.pools = pools or WorkerPools(settings)
        self._owns_pools = pools is None
        self._models: dict[int, FrameworkModel] = {}
        self._init_lock = threading.Lock()
        self._initialised = False
        self._init_error: str | None = None
        self._warm_formats: set[str] = set()
        self._installed = self.available()

    @classmethod
    def available(cls) -> bool:
        """Whether the framework is installed (checked without importing it)."""
        try:
            return importlib.util.find_spec(cls.module) is not None
        except (ImportError, ValueError):
            return False

    # -- types and files

    def _check_type(self, spec: ModelSpec) -> str:
        mtype = spec.model_type.strip().lower()
        if mtype not in self.model_types:
            raise UnsupportedModelType(
                f"model '{spec.model_id}': type '{spec.model_type}' is not served by the {self.name} adapter "
                f"(types: {', '.join(self.model_types)})"
            )
        return mtype

    def _extensions_for(self, mtype: str) -> tuple[str, ...]:
        return self.extensions

    def _is_candidate(self, spec: ModelSpec, path: Path) -> bool:
        return path.name != SCHEMA_FILE and not path.name.startswith(".")

    def resolve(self, spec: ModelSpec, local_path: Path) -> Path:
        """The model file: ``local_path`` itself, or the one model file inside that directory.

        In a directory, ``model.<ext>`` at the top wins; otherwise exactly one file with a
        matching extension must exist anywhere below it.
        """
        mtype = self._check_type(spec)
        exts = self._extensions_for(mtype)
        path = Path(local_path)
        if path.is_file():
            return path
        if not path.is_dir():
            raise ModelLoadError(f"model '{spec.model_id}': path {path} does not exist")
        for ext in exts:
            top = path / f"model{ext}"
            if top.is_file():
                return top
        found = sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in exts and p.is_file() and self._is_candidate(spec, p)
        )
        if len(found) == 1:
            return found[0]
        if not found:
            raise ModelLoadError(
                f"model '{spec.model_id}': no {'/'.join(exts)} file in directory {path}"
            )
        names = ", ".join(str(p.relative_to(path)) for p in found[:5])
        raise ModelLoadError(
            f"model '{spec.model_id}': directory {path} holds several model files ({names}); "
            f"name the one to load model{exts[0]} or point at the file"
        )

    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        return max(1, int(self.resolve(spec, local_path).stat().st_size * self.size_factor))

    # -- one-time initialisation

    def _ensure_initialised(self) -> None:
        with self._init_lock:
            if self._initialised:
                return
            if self._init_error is not None:
                raise ModelLoadError(self._init_error)
            try:
                self._initialise()
            except Exception as exc:
                self._init_error = f"{self.name} adapter unavailable: {type(exc).__name__}: {exc}"
                raise ModelLoadError(self._init_error) from exc
            self._initialised = True

    @abstractmethod
    def _initialise(self) -> None:
        """Import the framework, configure threads, warm it up (runs once, in the load pool)."""

    # -- loading

    async def load(self, spec: ModelSpec, local_path: Path) -> LoadedModel:
        self._check_type(spec)
        if self.pools.closed:
            raise ModelLoadError(f"model '{spec.model_id}': the {self.name} adapter is closed")
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self.pools.load, self._load_sync, spec, Path(local_path))
        self._models[id(model)] = model
        log.debug("loaded %s (%s) with %d bytes", spec.model_id, self.name, model.size_bytes)
        return model

    def _format_key(self, spec: ModelSpec, model_file: Path) -> str:
        """Loads with the same key share one-time framework costs (see ``_load_sync``)."""
        return self.name

    def _load_framework(self, spec: ModelSpec, model_file: Path) -> LoadResult:
        try:
            return self._load_model(spec, model_file)
        except AdapterError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model '{spec.model_id}': {self.name} cannot load {model_file}: {type(exc).__name__}: {exc}"
            ) from exc

    def _load_sync(self, spec: ModelSpec, local_path: Path) -> FrameworkModel:
        self._ensure_initialised()
        model_file = self.resolve(spec, local_path)
        key = self._format_key(spec, model_file)
        if not self.settings.measure_load_rss:
            result = self._load_framework(spec, model_file)
            return self._model_class()(self, spec, result, max(result.framework_bytes, 1))
        meter = self.pools.meter
        if self.settings.warm_up_first_load and key not in self._warm_formats:
            # The first load of a format pays one-time costs (lazy imports, kernel registries,
            # thread pools: up to ~170 MB for torch.export's first load) that are not this
            # model's and are not freed by unloading it. Load once unmeasured, drop it, then
            # measure a second load.
            token = meter.begin()
            try:
                warm = self._load_framework(spec, model_file)
                cyclic = warm.cyclic
                del warm
                meter.settle(full=cyclic)
            finally:
                meter.end(token, measure=False)
            self._warm_formats.add(key)
        token = meter.begin()
        try:
            result = self._load_framework(spec, model_file)
        except BaseException:
            meter.end(token, measure=False)
            raise
        delta = meter.end(token)
        floor = max(result.framework_bytes, 1)
        calibration = self.pools.calibration
        if delta is not None:
            size = max(floor, delta)
            calibration.learn(key, floor, size)
        elif self.settings.size_calibration:  # overlapped another load: scaled by what trusted loads cost
            size = calibration.estimate(key, floor)
        else:
            size = floor
        log.debug(
            "model %s: framework %d bytes, rss delta %s -> %d bytes",
            spec.model_id,
            result.framework_bytes,
            "n/a" if delta is None else delta,
            size,
        )
        return self._model_class()(self, spec, result, size)

    @abstractmethod
    def _load_model(self, spec: ModelSpec, model_file: Path) -> LoadResult: ...

    @abstractmethod
    def _model_class(self) -> type[FrameworkModel]: ...

    def _forget(self, model: FrameworkModel) -> None:
        self._models.pop(id(model), None)

    # -- state

    async def status(self) -> RuntimeStatus:
        models = list(self._models.values())
        return RuntimeStatus(
            name=self.name,
            ready=self._installed and self._init_error is None and not self.pools.closed,
            loaded_models=len(models),
            used_bytes=sum(m.size_bytes for m in models),
        )

    async def close(self) -> None:
        if self._owns_pools:
            await self.pools.close()


def schema_inputs(tensors: Sequence[TensorMetadata], shapeless: frozenset[str]) -> dict[str, InputSpec]:
    """Strict input specs from schema tensors (shape unchecked where the schema gave none)."""
    return {
        t.name: InputSpec(meta=t, accepted=frozenset({t.datatype}), check_shape=t.name not in shapeless)
        for t in tensors
    }
