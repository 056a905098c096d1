"""The instance's side of a worker's inference frames (``runtime_adapters._frame_server``):
one Unix-socket connection per worker, calls multiplexed by call id, answered on this event
loop with no thread in between.

Failures look like the gRPC path's: a worker's error status is raised as the same
``grpc.aio.AioRpcError`` a gRPC call would raise (the edges pass it through), a call past its
deadline is ``DEADLINE_EXCEEDED``, and a connection that closes (the worker died) fails every
call in flight with UNAVAILABLE, which the copy turns into "lost".
"""

from __future__ import annotations

import asyncio

import grpc

from runtime_adapters import FRAME_ANSWER_HEAD as ANSWER_HEAD
from runtime_adapters import FRAME_REQUEST_HEAD as REQUEST_HEAD

_STATUS = {s.value[0]: s for s in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _expire(fut: asyncio.Future[bytes], timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from the runtime in {timeout_s:.3f}s"))


# a payload this small is copied into the head's buffer: one write, one send, and the worker
# wakes once for the whole frame instead of once for the head and again for the body
_JOIN_BELOW = 64 << 10
_HIGH_WATER = 1 << 20


class _AnswerReader(asyncio.Protocol):
    """Parses answer frames as the bytes arrive and settles their calls in the same callback
    (no reader task between the socket and the caller: one wake-up fewer per call)."""

    def __init__(self, client: FrameClient) -> None:
        self._client = client
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the usual case: whole frames, parsed without a copy into the buffer
        pos, end = 0, len(view)
        answer = self._client._answer
        while end - pos >= ANSWER_HEAD.size:
            length, call_id, status = ANSWER_HEAD.unpack_from(view, pos)
            if length < ANSWER_HEAD.size - 4:  # shorter than its own head: not our protocol
                self._buf = bytearray()
                self._client._fail_all("runtime sent a malformed frame")
                return
            stop = pos + 4 + length
            if stop > end:
                break
            answer(call_id, status, bytes(view[pos + ANSWER_HEAD.size : stop]))
            pos = stop
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"runtime connection lost ({type(exc).__name__})" if exc else "runtime closed the connection"
        self._client._fail_all(why)
        self._drained.set()

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    async def drain(self) -> None:
        await self._drained.wait()


class FrameClient:
    """Calls on one worker's frame socket; connects on first use, once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proto: _AnswerReader | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._closed = False
        self._why = ""

    async def _connect(self) -> _AnswerReader:
        async with self._connecting:
            if self._proto is not None:
                return self._proto
            if self._closed:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, self._why or "runtime connection closed")
            loop = asyncio.get_running_loop()
            try:
                _, proto = await loop.create_unix_connection(lambda: _AnswerReader(self), self.path)
            except OSError as exc:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"cannot reach the runtime: {exc}") from exc
            self._proto = proto
            return proto

    def _answer(self, call_id: int, status: int, body: bytes) -> None:
        fut = self._calls.pop(call_id, None)
        if fut is None or fut.done():
            return  # its caller gave up
        if status == 0:
            fut.set_result(body)
        else:
            code = _STATUS.get(status, grpc.StatusCode.UNKNOWN)
            fut.set_exception(rpc_error(code, body.decode("utf-8", errors="replace")))

    def _fail_all(self, why: str) -> None:
        if not self._closed:
            self._closed = True
            self._why = why
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(rpc_error(grpc.StatusCode.UNAVAILABLE, why))
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    async def call(self, model_id: str, payload: bytes, timeout_s: float) -> bytes:
        proto = self._proto or await self._connect()
        transport = proto.transport
        if self._closed or transport is None or transport.is_closing():
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, self._why or "runtime connection closed")
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        call_id = self._next_id
        mid = model_id.encode()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._calls[call_id] = fut
        # a timer on the future itself (asyncio.wait_for would add a task hop per call)
        timer = loop.call_later(timeout_s, _expire, fut, timeout_s)
        head = REQUEST_HEAD.pack(6 + len(mid) + len(payload), call_id, len(mid)) + mid
        if len(payload) < _JOIN_BELOW:
            transport.write(head + payload)
        else:
            transport.write(head)
            transport.write(payload)
        try:
            if transport.get_write_buffer_size() > _HIGH_WATER:
                await proto.drain()
            return await fut
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)

    async def close(self) -> None:
        self._fail_all("runtime connection closed")
