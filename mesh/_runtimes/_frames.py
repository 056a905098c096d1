"""The instance's side of a worker's inference frames (``runtime_adapters._frame_server``):
one Unix-socket connection per worker, calls multiplexed by call id, answered on this event
loop with no thread in between (the calls themselves: ``mesh._frame_client``).

Failures look like the gRPC path's: a worker's error status is raised as the same
``grpc.aio.AioRpcError`` a gRPC call would raise (the edges pass it through), a call past its
deadline is ``DEADLINE_EXCEEDED``, and a connection that closes (the worker died) fails every
call in flight with UNAVAILABLE, which the copy turns into "lost".
"""

from __future__ import annotations

import asyncio

import grpc

from runtime_adapters import FRAME_REQUEST_HEAD as REQUEST_HEAD

from .._frame_client import AnswerReader, FramedCalls, rpc_error

__all__ = ["FrameClient", "rpc_error"]

_REQUEST_FIXED = REQUEST_HEAD.size - 4  # bytes after the length before the model id


class FrameClient(FramedCalls):
    """Calls on one worker's frame socket; connects on first use, and once connected, never
    again: a lost connection is a dead worker, and every later call fails with the reason."""

    who = "the runtime"
    malformed = "runtime sent a malformed frame"
    why_closed = "runtime connection closed"  # then the reason the connection went

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def lost_reason(self, exc: Exception | None) -> str:
        return f"runtime connection lost ({type(exc).__name__})" if exc else "runtime closed the connection"

    def _head(self, call_id: int, mid: bytes, payload_len: int, timeout_s: float) -> bytes:
        return REQUEST_HEAD.pack(_REQUEST_FIXED + len(mid) + payload_len, call_id, len(mid)) + mid

    async def _connect(self, timeout_s: float) -> AnswerReader:
        async with self._connecting:
            if self._closed:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, self.why_closed)
            if self._proto is not None:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                _, proto = await loop.create_unix_connection(lambda: AnswerReader(self), self.path)
            except OSError as exc:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"cannot reach the runtime: {exc}") from exc
            if self._closed:  # closed while connecting: this connection serves no call
                self._lost(proto, self.why_closed)
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, self.why_closed)
            self._proto = proto
            return proto

    def _on_lost(self, proto: AnswerReader, why: str) -> None:
        if not self._closed:  # the first reason stays
            self._closed = True
            self.why_closed = why

    async def close(self) -> None:
        if self._proto is not None:
            self._lost(self._proto, "runtime connection closed")
        self._closed = True
