"""Adaptive batching: requests for one model that arrive while its predict runs are merged
into one framework call (the idea of Triton's dynamic batcher and MLServer's adaptive
batching; this is our own code).

:func:`with_batching` wraps a :class:`LoadedModel` in a :class:`BatchingModel` with the same
``infer(InferRequest) -> InferResponse`` interface when batching applies to it, and returns
the model unchanged otherwise. Batching applies when

* the model's metadata has a variable leading dimension (``-1``) on every input and every
  output (the batch dimension), and
* it is switched on: :class:`BatchingSettings` ``enabled`` for every such model, or the
  model's ``batching`` option (``true``/``false``) for one model; the ``max_batch_size``
  and ``max_batch_delay_s`` options override the settings per model.

How a batch forms: a request is queued; while fewer batches of this model run than it may
run at once, the oldest queued request starts a batch at once, taking every queued request
that can merge with it, up to ``max_batch_size`` rows in all. How many may run at once
follows the model's speed: a model whose framework calls take at least
``parallel_above_row_s`` a row (its measured calls' usual low) runs up to
``max_concurrent_batches``; a faster one runs one call at a time, and what queues behind that
call merges into the next (one thread hand-off for many requests, where parallel calls of a
sub-millisecond model cost more in hand-offs than they gain). With ``max_batch_delay_s`` > 0
a batch that is not full first waits up to that long (from its oldest request's arrival) for
more. With the default delay of 0 a lone request never waits: batches form only from
requests that queued while a batch ran, so batching costs nothing at one request in flight:
a request that finds no call running and none queued runs at once, without being asked whether
it could merge (it counts among the calls running, and its time among the model's measured calls).

Merging: requests merge when they name the same inputs with the same datatypes and the same
non-leading dimensions, carry their data as raw bytes (typed contents are checked by their
values as a whole, so they run alone), ask for the same outputs, and carry no parameters
(request, input or output). The inputs are
concatenated along the leading dimension and the merged request runs through the wrapped
model (its validation and bounded executor); each output is split back by rows. A request
that cannot merge with any other (parameters, a bad shape, at least ``max_batch_size`` rows,
more than half ``max_batch_bytes`` of input) runs alone through the wrapped model. When a merged call fails, or its outputs do not have the batch's rows as leading
dimension, each request of the batch runs again alone, so an invalid request fails alone
with its own error and the others get their own answers.

Metrics: an optional :class:`BatchObserver` is told the size of every batch run (1 for a
request that runs alone) and each request's queue time; the mesh binds it to Prometheus.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._base import LoadedModel
from ._errors import ModelLoadError, ModelNotLoaded
from ._tensors import decode_bytes, dtype_size, encode_bytes
from ._types import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSpec,
    ModelState,
)

log = logging.getLogger(__name__)

OPTION_ENABLED = "batching"
OPTION_MAX_SIZE = "max_batch_size"
OPTION_MAX_DELAY = "max_batch_delay_s"

_LEN = struct.Struct("<I")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class BatchingSettings(BaseSettings):
    """Adaptive batching defaults (env prefix ``MODELMUX_BATCHING_``); model options override them."""

    model_config = SettingsConfigDict(env_prefix="MODELMUX_BATCHING_", extra="ignore")

    # on for every model whose metadata has a variable leading (batch) dimension; with the default
    # delay of 0 a lone request never waits, so this costs nothing at one request in flight
    enabled: bool = True
    # rows of one merged call (the sum of the merged requests' leading dimensions)
    max_batch_size: int = Field(default=16, ge=1)
    # how long a batch that is not full waits for more requests; 0 = never wait
    max_batch_delay_s: float = Field(default=0.0, ge=0.0, le=10.0)
    # merged calls of one model running at once (each holds one worker of the infer pool)
    max_concurrent_batches: int = Field(default=4, ge=1)
    # a model whose calls take at least this long a row (the framework's own call time, its
    # usual low) runs up to max_concurrent_batches calls at once; a faster one runs one call at a
    # time and merges what queues behind it; 0 = always up to max_concurrent_batches. On this
    # 2-core box (bench/RESULTS.md, session 15), tiny ONNX model at 16 in flight: 4 at once
    # 0.84x the bare servicer, one at a time 0.96x; a model of ~9 ms a row at 2 in flight: one
    # at a time 0.62x of 4 at once
    parallel_above_row_s: float = Field(default=0.001, ge=0.0, le=10.0)
    # input bytes of one merged call: big requests gain nothing from merging and a merged call
    # must stay under the adapters' max_request_bytes
    max_batch_bytes: int = Field(default=64 << 20, ge=1)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_batch_delay_s: float
    max_concurrent_batches: int = 1
    max_batch_bytes: int = 64 << 20
    parallel_above_row_s: float = 0.0


class BatchObserver(Protocol):
    """Told about every batch a :class:`BatchingModel` runs (called on the event loop; keep it cheap)."""

    def batch_ran(self, model_id: str, size: int, queue_times_s: Sequence[float]) -> None:
        """``size`` requests ran in one framework call; each waited ``queue_times_s[i]`` in the queue."""


# ---------------------------------------------------------------- policy


def batchable(metadata: ModelMetadata) -> bool:
    """Every input and every output has a variable leading dimension (the batch dimension)."""
    tensors = (*metadata.inputs, *metadata.outputs)
    return bool(metadata.inputs) and bool(metadata.outputs) and all(t.shape and t.shape[0] == -1 for t in tensors)


def _option(spec: ModelSpec, key: str, parse: Callable[[str], Any], what: str) -> Any:
    raw = spec.options.get(key)
    if raw is None:
        return None
    try:
        return parse(str(raw).strip())
    except ValueError as exc:
        raise ModelLoadError(f"model '{spec.model_id}': option {key}={raw!r} is not {what}") from exc


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def _parse_size(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _parse_delay(text: str) -> float:
    v = float(text)
    if not math.isfinite(v) or v < 0 or v > 10:
        raise ValueError(text)
    return v


def batch_policy(spec: ModelSpec, metadata: ModelMetadata, settings: BatchingSettings) -> BatchPolicy | None:
    """The batching a model gets, or None (see the module docstring); bad options fail the load."""
    enabled = _option(spec, OPTION_ENABLED, _parse_bool, "true or false")
    size = _option(spec, OPTION_MAX_SIZE, _parse_size, "an integer >= 1")
    delay = _option(spec, OPTION_MAX_DELAY, _parse_delay, "a number of seconds in [0, 10]")
    if enabled is None:
        enabled = settings.enabled
    if not enabled:
        return None
    if not batchable(metadata):
        log.info("model %s: no variable leading dimension on every input and output: not batched", spec.model_id)
        return None
    policy = BatchPolicy(
        max_batch_size=size if size is not None else settings.max_batch_size,
        max_batch_delay_s=delay if delay is not None else settings.max_batch_delay_s,
        max_concurrent_batches=settings.max_concurrent_batches,
        max_batch_bytes=settings.max_batch_bytes,
        parallel_above_row_s=settings.parallel_above_row_s,
    )
    return policy if policy.max_batch_size > 1 else None


def with_batching(
    model: LoadedModel, settings: BatchingSettings, observer: BatchObserver | None = None
) -> LoadedModel:
    """``model`` wrapped in a :class:`BatchingModel` when batching applies to it, else ``model``."""
    policy = batch_policy(model.spec, model.metadata, settings)
    if policy is None:
        return model
    return BatchingModel(model, policy, observer)


# ---------------------------------------------------------------- merging and splitting


def merge_key(request: InferRequest) -> tuple[Any, ...] | None:
    """Requests with equal keys can be merged; None = this request runs alone."""
    if request.parameters or not request.inputs:
        return None
    parts: list[Any] = []
    rows = -1
    for inp in request.inputs:
        if inp.parameters or not inp.shape or (inp.raw is None) == (inp.contents is None):
            return None
        lead = inp.shape[0]
        if not isinstance(lead, int) or lead < 1 or (rows != -1 and lead != rows):
            return None
        rows = lead
        # typed contents run alone: their checks look at each request's values as a whole
        # (bools among floats fail alone, but would pass once merged with numbers)
        if inp.raw is None:
            return None
        count = math.prod(inp.shape)
        if inp.datatype == "BYTES":
            if not _bytes_fit(inp.raw, count):
                return None
        else:
            size = dtype_size(inp.datatype)
            # a length that does not fit its shape is the model's error to report, alone
            if size is None or len(inp.raw) != count * size:
                return None
        parts.append((inp.name, inp.datatype, tuple(inp.shape[1:])))
    outs = []
    for o in request.outputs:
        if o.parameters:
            return None
        outs.append(o.name)
    return (tuple(parts), tuple(outs))


def _bytes_fit(raw: bytes, count: int) -> bool:
    """Whether length-prefixed BYTES data holds exactly ``count`` whole elements (else it runs alone)."""
    pos, end = 0, len(raw)
    for _ in range(count):
        if pos + 4 > end:
            return False
        pos += 4 + _LEN.unpack_from(raw, pos)[0]
    return pos == end


def rows_of(request: InferRequest) -> int:
    return request.inputs[0].shape[0]


def _rows_hint(request: InferRequest) -> int:
    """The rows of a request that may not be mergeable, for the per-row cost estimate: its first
    input's leading dimension, 1 where it has none."""
    inputs = request.inputs
    if inputs and inputs[0].shape:
        lead = inputs[0].shape[0]
        if isinstance(lead, int) and lead > 0:
            return lead
    return 1


def merge(requests: Sequence[InferRequest]) -> InferRequest:
    """One request whose inputs are the given requests' inputs concatenated along dimension 0."""
    first = requests[0]
    total = sum(rows_of(r) for r in requests)
    inputs = []
    for i, inp in enumerate(first.inputs):
        raw = b"".join(r.inputs[i].raw or b"" for r in requests)
        inputs.append(InferInput(inp.name, inp.datatype, (total, *inp.shape[1:]), raw=raw))
    # no name: the answer carries the model's id, and each split answer its own request's name
    return InferRequest(model_name="", inputs=tuple(inputs), outputs=first.outputs)


def split(response: InferResponse, requests: Sequence[InferRequest]) -> list[InferResponse] | None:
    """The merged answer cut back into one answer per request; None when an output is not per row."""
    counts = [rows_of(r) for r in requests]
    total = sum(counts)
    pieces: list[list[InferOutput]] = [[] for _ in requests]
    for out in response.outputs:
        if not out.shape or out.shape[0] != total:
            return None
        tail = tuple(out.shape[1:])
        if out.datatype == "BYTES":
            items = decode_bytes(out.raw, name=out.name)
            per_row = math.prod(tail)
            if len(items) != total * per_row:
                return None
            start = 0
            for k, n in enumerate(counts):
                stop = start + n * per_row
                pieces[k].append(InferOutput(out.name, out.datatype, (n, *tail), encode_bytes(items[start:stop])))
                start = stop
            continue
        size = dtype_size(out.datatype)
        row_bytes = (size or 0) * math.prod(tail)
        if size is None or len(out.raw) != total * row_bytes:
            return None
        view = memoryview(out.raw)
        start = 0
        for k, n in enumerate(counts):
            stop = start + n * row_bytes
            pieces[k].append(InferOutput(out.name, out.datatype, (n, *tail), bytes(view[start:stop])))
            start = stop
    return [
        InferResponse(
            model_name=r.model_name or response.model_name,
            outputs=tuple(p),
            id=r.id,
            model_version=r.model_version,
        )
        for r, p in zip(requests, pieces, strict=True)
    ]


# ---------------------------------------------------------------- the batching wrapper


@dataclass
class _Pending:
    request: InferRequest
    key: tuple[Any, ...]
    rows: int
    nbytes: int
    future: asyncio.Future[InferResponse]
    queued_at: float


class BatchingModel(LoadedModel):
    """A loaded model whose concurrent requests are merged into batches (see the module docstring).

    Framework calls still go through the wrapped model's ``infer`` (validation, bounded
    executor). ``inner`` is the wrapped model; ``spec``, ``size_bytes`` and ``metadata`` are its own.
    """

    def __init__(self, inner: LoadedModel, policy: BatchPolicy, observer: BatchObserver | None = None) -> None:
        self.inner = inner
        self.policy = policy
        self.spec = inner.spec
        self.size_bytes = inner.size_bytes
        self.metadata = inner.metadata
        self._observer = observer
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._row_s = 0.0  # the framework's time per row, a low estimate (0: none measured yet)
        # calls that may run at once: one until the model is measured slow (see BatchingSettings)
        self._limit = 1 if policy.parallel_above_row_s > 0 else policy.max_concurrent_batches

    @property
    def concurrent_limit(self) -> int:
        """Merged calls of this model that may run at once now (1 for a fast model)."""
        return self._limit

    async def _call(self, request: InferRequest, rows: int) -> InferResponse:
        """The wrapped model's call; the time a row of a call that answered decides how many
        calls may run at once (a failed call says nothing of the model's speed)."""
        t0 = time.perf_counter()
        resp = await self.inner.infer(request)
        self._measured(t0, rows)
        return resp

    def _measured(self, t0: float, rows: int) -> None:
        """A call of ``rows`` rows that started at ``t0`` (``perf_counter()``) answered now."""
        # the framework's own time where the model reports it (no wait for a worker, no
        # event-loop delay: those grow with load, not with the model's cost), else the call's
        took = getattr(self.inner, "last_infer_s", None)
        if not isinstance(took, float) or took <= 0.0:
            took = time.perf_counter() - t0
        row_s = took / max(rows, 1)
        # the model's cost, not its worst calls: a lower time is taken at once, a higher one
        # moves the estimate 2% a call (a call that waited for the GIL says nothing of the model)
        self._row_s = row_s if self._row_s == 0.0 or row_s < self._row_s else min(row_s, self._row_s * 1.02)
        pol = self.policy
        self._limit = pol.max_concurrent_batches if self._row_s >= pol.parallel_above_row_s else 1

    @property
    def status(self) -> ModelState:
        return self.inner.status

    @property
    def queued(self) -> int:
        """Requests waiting for a batch now (a gauge for metrics and tests)."""
        return sum(1 for p in self._queue if not p.future.done())

    async def unload(self) -> None:
        await self.inner.unload()

    def _observe(self, size: int, waits: Sequence[float]) -> None:
        if self._observer is not None:
            try:
                self._observer.batch_ran(self.spec.model_id, size, waits)
            except Exception:  # a metrics hook never fails a request
                log.exception("batch observer failed")

    async def infer(self, request: InferRequest) -> InferResponse:
        if not self._queue and self._running < self._limit and not self.policy.max_batch_delay_s:
            # idle: there is nothing to merge it with, so whether it could merge is not asked. It
            # runs now, in this task (no queue, no future); requests arriving meanwhile queue
            self._running += 1
            self._observe(1, (0.0,))
            try:  # _call's steps, inline: one coroutine less per request
                t0 = time.perf_counter()
                resp = await self.inner.infer(request)
                self._measured(t0, _rows_hint(request))
                return resp
            finally:
                self._running -= 1
                if self._queue:
                    self._dispatch()
        key = merge_key(request)
        nbytes = sum(len(i.raw or b"") for i in request.inputs)
        rows = rows_of(request) if key is not None else 0  # a request with no key may have no rows to read
        if key is None or rows >= self.policy.max_batch_size or 2 * nbytes > self.policy.max_batch_bytes:
            self._observe(1, (0.0,))
            return await self.inner.infer(request)
        loop = asyncio.get_running_loop()
        item = _Pending(request, key, rows, nbytes, loop.create_future(), time.monotonic())
        self._queue.append(item)
        self._dispatch()
        return await item.future

    # -- scheduling (event loop only)

    def _dispatch(self) -> None:
        while self._queue and self._running < self._limit:
            # drop requests whose callers went away while queued
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                return
            delay = self.policy.max_batch_delay_s
            if delay > 0 and self._queued_rows_for_head() < self.policy.max_batch_size:
                due = self._queue[0].queued_at + delay - time.monotonic()
                if due > 1e-4:  # asyncio may fire a timer up to its clock resolution early
                    if self._timer is None:
                        self._timer = asyncio.get_running_loop().call_later(due, self._on_timer)
                    return
            batch = self._take()
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _queued_rows_for_head(self) -> int:
        head = self._queue[0]
        return sum(p.rows for p in self._queue if p.key == head.key and not p.future.done())

    def _take(self) -> list[_Pending]:
        """The head request and every queued request that merges with it, up to the row limit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = self._queue.popleft()
        batch = [head]
        rows, nbytes = head.rows, head.nbytes
        keep: collections.deque[_Pending] = collections.deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():
                continue
            if (
                p.key == head.key
                and rows + p.rows <= self.policy.max_batch_size
                and nbytes + p.nbytes <= self.policy.max_batch_bytes
            ):
                batch.append(p)
                rows += p.rows
                nbytes += p.nbytes
            else:
                keep.append(p)
        self._queue = keep
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        self._observe(len(batch), [now - p.queued_at for p in batch])
        try:
            if len(batch) == 1:
                await self._run_alone(batch[0])
            else:
                await self._run_merged(batch)
        finally:
            self._running -= 1
            self._dispatch()

    async def _run_alone(self, item: _Pending) -> None:
        try:
            resp = await self._call(item.request, item.rows)
        except asyncio.CancelledError:
            if not item.future.done():
                item.future.cancel()
            raise
        except BaseException as exc:  # handed to the caller
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(resp)

    async def _run_merged(self, batch: list[_Pending]) -> None:
        requests = [p.request for p in batch]
        answers: list[InferResponse] | None = None
        try:
            merged = await self._call(merge(requests), sum(p.rows for p in batch))
            answers = split(merged, requests)
            if answers is None:
                log.warning("model %s: a merged answer is not per row; its requests run alone", self.spec.model_id)
        except ModelNotLoaded as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.cancel()
            raise
        except Exception as exc:  # each request gets its own outcome below
            log.debug("model %s: a merged call of %d failed (%s); each runs alone", self.spec.model_id, len(batch), exc)
        if answers is None:
            # one bad request must not fail the others: each runs alone and gets its own answer or error
            await asyncio.gather(*(self._run_alone(p) for p in batch))
            return
        for p, a in zip(batch, answers, strict=True):
            if not p.future.done():
                p.future.set_result(a)
