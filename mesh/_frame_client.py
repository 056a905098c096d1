"""The calling side of length-prefixed frames, shared by the runtime workers' frames
(``mesh._runtimes._frames``) and the peer link (``mesh._peer_link``): calls multiplexed by call
id over one connection, answers settled in the socket's own callback.

Answer frames are the same on both (little-endian): ``u32 length`` ``u32 call id`` ``u8 status``
(0 = OK, else a ``grpc.StatusCode`` value) then the answer's bytes (OK) or the error message
(UTF-8). A subclass of :class:`FramedCalls` says how a request's head is packed and how a
connection is opened (and whether a lost one is replaced); the rest is here, once.

Failures look like the gRPC path's: an error status is raised as the same
``grpc.aio.AioRpcError`` a gRPC call would raise, a call past its deadline is
``DEADLINE_EXCEEDED``, and a connection that closes fails every call in flight with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from typing import cast

import grpc

from runtime_adapters import FRAME_ANSWER_HEAD as ANSWER_HEAD

_STATUS = {s.value[0]: s for s in grpc.StatusCode}
# a payload this small is copied into the head's buffer: one write, one send, and the other side
# wakes once for the whole frame instead of once for the head and again for the body
JOIN_BELOW_BYTES = 64 << 10
HIGH_WATER_BYTES = 1 << 20
_MAX_CALL_ID = 0xFFFFFFFF


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _expire(fut: asyncio.Future[bytes], timeout_s: float, who: str) -> None:
    if not fut.done():
        fut.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from {who} in {timeout_s:.3f}s"))


class AnswerReader(asyncio.Protocol):
    """One connection of a :class:`FramedCalls`: parses answer frames as the bytes arrive and
    settles their calls in the same callback (no reader task between the socket and the caller:
    one wake-up fewer per call)."""

    def __init__(self, client: FramedCalls) -> None:
        self._client = client
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self.lost = False  # no new call may use this connection
        self.failed = False  # its calls have been failed (once)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport: no isinstance check)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER_BYTES)

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
                self._client._lost(self, self._client.malformed)
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
        self._client._lost(self, self._client.lost_reason(exc))
        self._drained.set()

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    async def drain(self) -> None:
        await self._drained.wait()


class FramedCalls:
    """Calls over one framed connection at a time. Subclasses supply :meth:`_head` (a request's
    head and model id), :meth:`_connect` (the connection policy), :meth:`_on_lost` (what a lost
    connection means for later calls) and the words of their errors."""

    who = ""  # whose answer a call past its deadline did not get ("the runtime", "the peer")
    malformed = ""  # why the calls fail when an answer frame is shorter than its own head
    why_closed = ""  # why a call fails on a connection that is closing

    def __init__(self) -> None:
        self._proto: AnswerReader | None = None
        self._connecting = asyncio.Lock()
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0  # call ids run 1..2^32-1: 0 is never a call's (the peer link's hello)
        self._closed = False

    def lost_reason(self, exc: Exception | None) -> str:
        """Why the calls fail when the connection closes (``exc`` None: the other side closed it)."""
        raise NotImplementedError

    def _head(self, call_id: int, mid: bytes, payload_len: int, timeout_s: float) -> bytes:
        """The request frame up to its payload: length, call id, the rest of the head, model id."""
        raise NotImplementedError

    async def _connect(self, timeout_s: float) -> AnswerReader:
        """A live connection (``self._proto``), opened under ``self._connecting`` when there is none."""
        raise NotImplementedError

    def _on_lost(self, proto: AnswerReader, why: str) -> None:
        """``proto`` is lost (its calls are failed next): the policy's bookkeeping."""
        raise NotImplementedError

    def _answer(self, call_id: int, status: int, body: bytes) -> None:
        fut = self._calls.pop(call_id, None)
        if fut is None or fut.done():
            return  # its caller gave up
        if status == 0:
            fut.set_result(body)
        else:
            fut.set_exception(rpc_error(_STATUS.get(status, grpc.StatusCode.UNKNOWN), body.decode("utf-8", errors="replace")))

    def _lost(self, proto: AnswerReader, why: str) -> None:
        """The connection ``proto`` is gone: its calls fail UNAVAILABLE with ``why``."""
        if proto.failed:
            return  # already handled (a malformed frame, then the close it caused)
        proto.failed = proto.lost = True
        self._on_lost(proto, why)
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(rpc_error(grpc.StatusCode.UNAVAILABLE, why))
        if proto.transport is not None:
            proto.transport.close()

    async def call(self, model_id: str, payload: bytes, timeout_s: float) -> bytes:
        """The answer's bytes, or the ``grpc.aio.AioRpcError`` a gRPC call would raise."""
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._connect(timeout_s)
        transport = proto.transport
        if transport is None or transport.is_closing():
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, self.why_closed)
        self._next_id = call_id = (self._next_id % _MAX_CALL_ID) + 1
        mid = model_id.encode()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._calls[call_id] = fut
        # a timer on the future itself (asyncio.wait_for would add a task hop per call)
        timer = loop.call_later(timeout_s, _expire, fut, timeout_s, self.who)
        head = self._head(call_id, mid, len(payload), timeout_s)
        if len(payload) < JOIN_BELOW_BYTES:
            transport.write(head + payload)
        else:
            transport.write(head)
            transport.write(payload)
        try:
            if transport.get_write_buffer_size() > HIGH_WATER_BYTES:
                await proto.drain()
            return await fut
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)
