"""The peer link: forwarding between instances in length-prefixed frames over one TCP (or TLS)
connection per peer, beside the gRPC port (which stays the contract for clients, for management
and for peers that do not advertise a link).

Why: a forwarded request through grpc.aio costs a client call on the forwarding instance and a
second server call on the holder, each about as expensive as a whole bare gRPC servicer (the
profile in ``bench/RESULTS.md``: 63% of the forwarding instance's samples are in gRPC's core and
its callbacks, 19% in the client call). Here the forwarding instance's event loop writes one frame
and the holder's event loop reads it in the socket's own callback, as the runtime workers' frames
do (``runtime_adapters._frame_server``), with one task per call and no thread in between.

Same guarantees as the gRPC forward: the holder authenticates the link once, at its hello, with
the same credentials a forwarded gRPC call carries (the peer bearer token, or the client
certificate under mutual TLS) and refuses a caller without the right to forward; each call carries
its deadline; errors arrive as the same ``grpc.aio.AioRpcError`` (code and message) a gRPC forward
raises, so the router's retries and the edges' error mapping do not change.

Frames (little-endian):

* hello (client, first frame): ``u32 length`` then UTF-8 JSON ``{"authorization": "Bearer ..."}``
  (``""`` without a token); answered with an answer frame of call id 0 (status 0, or the refusal's
  gRPC status and message, after which the holder closes the connection).
* request: ``u32 length`` ``u32 call id`` ``u32 timeout (ms)`` ``u16 model id length`` model id
  (UTF-8), then a serialized V2 ``ModelInferRequest``.
* answer: ``u32 length`` ``u32 call id`` ``u8 status`` (0 = OK, else a ``grpc.StatusCode`` value)
  then a serialized ``ModelInferResponse`` (OK) or the error message (UTF-8): the runtime
  frames' answer, read by the same calling side (``mesh._frame_client``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import grpc

from runtime_adapters import FrameReader

from ._errors import InvalidRequest, status_for
from ._frame_client import ANSWER_HEAD, HIGH_WATER_BYTES, AnswerReader, FramedCalls
from ._tls import cert_names_from_peercert

if TYPE_CHECKING:
    from ._auth import Principal
    from ._dataplane import DataPlane

log = logging.getLogger(__name__)

REQUEST_HEAD = struct.Struct("<IIIH")  # length, call id, timeout ms, model id length
_LENGTH = struct.Struct("<I")
_CALL = struct.Struct("<IIH")
_REQUEST_FIXED = _CALL.size  # bytes after the length before the model id
MAX_HELLO_BYTES = 64 << 10


def answer_frame(call_id: int, status: int, body: bytes) -> bytes:
    return ANSWER_HEAD.pack(4 + 1 + len(body), call_id, status) + body


def _error_frame(call_id: int, exc: BaseException) -> bytes:
    if isinstance(exc, grpc.aio.AioRpcError):  # an error the holder passed through (e.g. from its runtime)
        return answer_frame(call_id, exc.code().value[0], (exc.details() or "").encode())
    status, message = status_for(exc)
    if status.grpc == grpc.StatusCode.INTERNAL and getattr(exc, "code", None) is None:
        log.error("forwarded call %d failed", call_id, exc_info=exc)
    return answer_frame(call_id, status.grpc.value[0], message.encode())


# ---------------------------------------------------------------- the holder's side


class PeerLinkServer:
    """Serves forwarded calls on the link into this instance's data plane."""

    def __init__(self, dataplane: DataPlane, *, max_frame_bytes: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.dataplane = dataplane
        self.max_frame_bytes = max_frame_bytes
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_PeerConnection] = set()
        self.refused = 0  # hellos refused (no valid credentials, or no right to forward)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _PeerConnection(self), host, port, ssl=self.ssl_context, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop accepting, give the calls in flight ``grace_s`` to finish, then drop every
        connection (calls still running are cancelled; their forwarding peers see UNAVAILABLE
        and retry elsewhere)."""
        if self._server is not None:
            self._server.close()
        running = [t for conn in self._connections for t in conn._tasks]
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    def read_hello(hello: bytes) -> str | None:
        """The authorization a hello carries (None: no token)."""
        try:
            doc = json.loads(hello.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequest("malformed peer-link hello") from exc
        authorization = doc.get("authorization") if isinstance(doc, dict) else None
        if authorization is not None and not isinstance(authorization, str):
            raise InvalidRequest("malformed peer-link hello: authorization is not a string")
        return authorization or None

    def authenticate(self, authorization: str | None, cert_names: Sequence[str]) -> Principal:
        """The peer of one connection, checked again on every call (a token taken out of the auth
        file, as a gRPC forward is): raises UNAUTHENTICATED / PERMISSION_DENIED."""
        from ._auth import Action

        principal = self.dataplane.authenticate(authorization, cert_names)
        principal.require(Action.FORWARD, "send forwarded requests (peer link)")
        return principal


class _PeerConnection(FrameReader):
    """One forwarding peer's connection: its hello, then request frames parsed as they arrive."""

    def __init__(self, server: PeerLinkServer) -> None:
        super().__init__(0, MAX_HELLO_BYTES)  # a request's bounds once the hello is accepted
        self._server = server
        self._principal: Principal | None = None  # set by the hello
        self._authorization: str | None = None
        self._cert_names: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport = cast(asyncio.Transport, transport)  # see FrameReader.connection_made
        transport.set_write_buffer_limits(high=HIGH_WATER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (2, 10):  # AF_INET / AF_INET6: small answers go out at once
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        for task in list(self._tasks):
            task.cancel()  # the forwarding peer is gone: nobody reads these answers

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # the answers are not read as fast as they are written: stop reading requests until they are
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def _refuse(self, exc: BaseException, call_id: int = 0) -> None:
        """Answer the refusal (the hello's, call id 0, or a call's) and close the connection."""
        transport = self.transport
        assert transport is not None
        self._server.refused += 1
        transport.write(_error_frame(call_id, exc))
        transport.close()

    def bad_frame_length(self, length: int) -> None:
        if self._principal is None:
            self._refuse(InvalidRequest("peer-link hello too large"))
            return
        assert self.transport is not None
        log.warning("peer link: bad frame length %d from %s: closing the connection", length, self.transport.get_extra_info("peername"))
        self.transport.close()

    def _hello(self, body: bytes | bytearray, start: int, stop: int) -> None:
        transport = self.transport
        assert transport is not None
        try:
            self._authorization = self._server.read_hello(bytes(body[start:stop]))
            self._cert_names = cert_names_from_peercert(transport.get_extra_info("peercert"))
            self._principal = self._server.authenticate(self._authorization, self._cert_names)
        except Exception as exc:
            self._refuse(exc)
            return
        transport.write(answer_frame(0, 0, b""))
        self.min_frame_bytes, self.max_frame_bytes = _REQUEST_FIXED, self._server.max_frame_bytes

    def frame_received(self, body: bytes | bytearray, start: int, stop: int) -> None:
        if self._principal is None:
            self._hello(body, start, stop)
            return
        call_id, timeout_ms, mid_len = _CALL.unpack_from(body, start)
        at = start + _REQUEST_FIXED
        mid_end = min(at + mid_len, stop)  # a model id longer than its frame ends with the frame
        mid = bytes(body[at:mid_end]).decode("utf-8", errors="replace")
        payload = bytes(body[mid_end:stop])
        task = asyncio.get_running_loop().create_task(self._answer(call_id, mid, payload, timeout_ms / 1000.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, call_id: int, mid: str, payload: bytes, timeout_s: float) -> None:
        from ._dataplane import RequestContext

        try:
            principal = self._server.authenticate(self._authorization, self._cert_names)
        except Exception as exc:  # revoked since the hello: this call and the connection end
            if self.transport is not None and not self.transport.is_closing():
                self._refuse(exc, call_id)
            return
        ctx = RequestContext(timeout_s=timeout_s, forwarded=True, principal=principal)
        try:
            out = await self._server.dataplane.infer_bytes(mid, payload, ctx)
            frame = answer_frame(call_id, 0, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is answered, as a gRPC status
            frame = _error_frame(call_id, exc)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)


# ---------------------------------------------------------------- the forwarding side


class LinkDown(Exception):
    """The link to a peer cannot be opened (refused, unreachable, TLS or hello failed): the caller
    forwards over gRPC instead."""


class PeerLinkClient(FramedCalls):
    """Calls to one peer over its link; connects on first use and again after a connection is lost.

    ``call`` returns the answer's bytes; it raises ``LinkDown`` when the link cannot be opened
    (nothing was sent), else the ``grpc.aio.AioRpcError`` a gRPC forward would raise."""

    who = "the peer"
    malformed = "peer sent a malformed frame"
    why_closed = "peer link closed"

    def __init__(
        self,
        address: str,
        *,
        authorization: str = "",
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "",
        connect_timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.address = address
        self.authorization = authorization
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout_s = connect_timeout_s
        self.connects = 0

    def lost_reason(self, exc: Exception | None) -> str:
        return f"peer link lost ({type(exc).__name__}: {exc})" if exc else "peer closed the link"

    def _head(self, call_id: int, mid: bytes, payload_len: int, timeout_s: float) -> bytes:
        timeout_ms = min(max(int(timeout_s * 1000), 1), 0xFFFFFFFF)
        return REQUEST_HEAD.pack(_REQUEST_FIXED + len(mid) + payload_len, call_id, timeout_ms, len(mid)) + mid

    async def _connect(self, timeout_s: float) -> AnswerReader:
        """Raises ``LinkDown`` when the link cannot be opened (nothing was sent)."""
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            if self._closed:
                raise LinkDown("peer link closed")
            host, _, port = self.address.rpartition(":")
            host = host.strip("[]")
            loop = asyncio.get_running_loop()
            hello_fut: asyncio.Future[bytes] = loop.create_future()
            try:
                async with asyncio.timeout(max(min(timeout_s, self.connect_timeout_s), 0.001)):
                    hostname = (self.server_hostname or host) if self.ssl_context is not None else None
                    transport, proto = await loop.create_connection(
                        lambda: AnswerReader(self), host, int(port), ssl=self.ssl_context, server_hostname=hostname
                    )
                    self._calls[0] = hello_fut
                    hello = json.dumps({"authorization": self.authorization}).encode()
                    transport.write(_LENGTH.pack(len(hello)) + hello)
                    await hello_fut
            except (OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
                self._calls.pop(0, None)
                raise LinkDown(f"cannot open the peer link to {self.address}: {type(exc).__name__}: {exc}") from exc
            except grpc.aio.AioRpcError as exc:
                self._calls.pop(0, None)
                if not proto.lost:
                    transport.close()
                raise LinkDown(f"peer link to {self.address} refused: {exc.code().name}: {exc.details()}") from exc
            self.connects += 1
            self._proto = proto
            return proto

    def _on_lost(self, proto: AnswerReader, why: str) -> None:
        if self._proto is proto:
            self._proto = None  # the next call reconnects

    async def close(self) -> None:
        self._closed = True
        proto, self._proto = self._proto, None
        if proto is not None:
            self._lost(proto, "peer link closed")
