"""A lean inference path for the instance that started this runtime: V2 ``ModelInfer`` bytes in
length-prefixed frames over a Unix socket, beside the gRPC server (which stays the contract for
everyone else and for management).

Why: a gRPC call from Python crosses about nine threads (gRPC's event-engine poller and
callback threads and grpc.aio's completion-queue poller, on both sides, then the infer pool and
back) before the answer is on the caller's event loop. On a busy host every one of those
wake-ups waits for a CPU, and a tiny model's call cost 5-10x its in-process time. Here the
caller's event loop writes a frame, this process's event loop reads it, infers (inline when the
model has been fast, else in the infer pool), and writes the answer: two wake-ups, as in process.

Frames (little-endian):

* request: ``u32 length`` (of what follows) ``u32 call id`` ``u16 model id length`` model id
  (UTF-8), then a serialized V2 ``ModelInferRequest``.
* answer: ``u32 length`` ``u32 call id`` ``u8 status`` (0 = OK, else a ``grpc.StatusCode``
  value) then a serialized ``ModelInferResponse`` (OK) or the error message (UTF-8).

Calls on one connection are answered in any order (matched by call id); a caller that gives up
on a call just ignores its answer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from protos import grpc_predict_v2_pb2 as v2

from ._base import LoadedModel
from ._errors import AdapterError, InvalidInput
from ._frame_reader import FrameReader
from ._types import InferRequest, InferResponse
from ._v2 import request_from_pb, response_to_pb

if TYPE_CHECKING:
    from ._runtime_server import RuntimeService

log = logging.getLogger(__name__)

REQUEST_HEAD = struct.Struct("<IIH")  # length, call id, model id length
ANSWER_HEAD = struct.Struct("<IIB")  # length, call id, status
_CALL = struct.Struct("<IH")  # call id, model id length
MAX_FRAME_BYTES = 1 << 31
# a fast model's large request (a big batch) goes to the pool: an inline call must stay short,
# the loop also answers the supervisor's health probes
INLINE_MAX_BYTES = 64 << 10


def answer_frame(call_id: int, status: int, body: bytes) -> bytes:
    return ANSWER_HEAD.pack(4 + 1 + len(body), call_id, status) + body


class _Speed:
    """A model's recent inference time (moving average), deciding inline vs the infer pool."""

    __slots__ = ("avg_s",)

    def __init__(self) -> None:
        self.avg_s = float("inf")  # unknown: the pool until measured there

    def add(self, seconds: float) -> None:
        self.avg_s = seconds if self.avg_s == float("inf") else 0.8 * self.avg_s + 0.2 * seconds


class FrameServer:
    """Serves the frames of one runtime service; ``inline_below_s`` 0 = always use the infer pool."""

    def __init__(self, service: RuntimeService, *, inline_below_s: float) -> None:
        self.service = service
        self.inline_below_s = inline_below_s
        self._speed: dict[str, _Speed] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _error(self, call_id: int, mid: str, exc: Exception) -> bytes:
        if isinstance(exc, AdapterError):
            status, message = self.service.status_for(exc)
            return answer_frame(call_id, status.value[0], message.encode())
        log.error("inference of %s failed", mid, exc_info=exc)
        return answer_frame(call_id, grpc.StatusCode.INTERNAL.value[0], f"{type(exc).__name__}: {exc}".encode())

    def _inline(self, call_id: int, mid: str, payload: bytes) -> bytes | None:
        """The answer frame, computed on this thread; None when the model has no blocking path."""
        try:
            msg, model, request = self._prepare(mid, payload)
            blocking = getattr(model, "infer_blocking", None)
            if blocking is None:  # reloaded as another kind of model: the pool from now on
                self._speed.pop(mid, None)
                return None
            t0 = time.perf_counter()
            resp = blocking(request)
            self._speed[mid].add(time.perf_counter() - t0)
            return answer_frame(call_id, 0, _finish(msg, resp))
        except Exception as exc:
            return self._error(call_id, mid, exc)

    async def _answer(self, transport: asyncio.Transport, call_id: int, mid: str, payload: bytes) -> None:
        try:
            msg, model, request = self._prepare(mid, payload)
            resp = await model.infer(request)
            if getattr(model, "infer_blocking", None) is not None:
                # the call's own time (``last_infer_s``), not the wait for a pool thread
                self._speed.setdefault(mid, _Speed()).add(float(getattr(model, "last_infer_s", 1.0)))
            frame = answer_frame(call_id, 0, _finish(msg, resp))
        except Exception as exc:
            frame = self._error(call_id, mid, exc)
        if not transport.is_closing():
            transport.write(frame)

    def _prepare(self, mid: str, payload: bytes) -> tuple[v2.ModelInferRequest, LoadedModel, InferRequest]:
        try:
            msg = v2.ModelInferRequest.FromString(payload)
        except DecodeError as exc:
            raise InvalidInput(f"malformed ModelInferRequest: {exc}") from exc
        model = self.service.model(mid or msg.model_name)
        return msg, model, request_from_pb(msg, msg.model_name or model.spec.model_id)


def _finish(msg: v2.ModelInferRequest, resp: InferResponse) -> bytes:
    out = response_to_pb(resp)
    if msg.id:
        out.id = msg.id
    return bytes(out.SerializeToString())


class _RequestReader(FrameReader):
    """One connection of the instance: request frames parsed as they arrive."""

    def __init__(self, frames: FrameServer) -> None:
        super().__init__(_CALL.size, MAX_FRAME_BYTES)
        self._frames = frames

    def frame_received(self, body: bytes | bytearray, start: int, stop: int) -> None:
        """One request frame (``body[start:stop]``, after its length): answered here, or by a task."""
        transport = self.transport
        assert transport is not None
        frames = self._frames
        call_id, mid_len = _CALL.unpack_from(body, start)
        at = start + 6  # _CALL.size
        mid_end = min(at + mid_len, stop)  # a model id longer than its frame ends with the frame
        mid = bytes(body[at:mid_end]).decode("utf-8", errors="replace")
        payload = bytes(body[mid_end:stop])
        speed = frames._speed.get(mid)
        if speed is not None and speed.avg_s < frames.inline_below_s and len(payload) <= INLINE_MAX_BYTES:
            # this loop serves only this runtime: a call of well under a millisecond is cheaper
            # here, in the callback that read it, than a task and the two thread hand-offs of the pool
            answer = frames._inline(call_id, mid, payload)
            if answer is not None:
                transport.write(answer)
                return
        task = asyncio.get_running_loop().create_task(frames._answer(transport, call_id, mid, payload))
        frames._tasks.add(task)
        task.add_done_callback(frames._tasks.discard)

    def bad_frame_length(self, length: int) -> None:
        log.warning("bad frame length %d: closing the connection", length)
        super().bad_frame_length(length)


async def start_frame_server(service: RuntimeService, path: str, *, inline_below_s: float) -> asyncio.Server:
    frames = FrameServer(service, inline_below_s=inline_below_s)
    return await asyncio.get_running_loop().create_unix_server(lambda: _RequestReader(frames), path=path)
