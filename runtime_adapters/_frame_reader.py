"""The receiving side of length-prefixed frames (``u32 length`` then that many bytes): the frame
server's connections (``_frame_server``), and any other protocol framed the same way (exported
for that)."""

from __future__ import annotations

import asyncio
import struct
from typing import cast

_LENGTH = struct.Struct("<I")


class FrameReader(asyncio.Protocol):
    """Splits one connection's bytes into frames and hands each whole frame to
    :meth:`frame_received` in the callback that read it (no reader task, no copy).

    Only a partial frame is kept between reads: whole frames are parsed straight from the bytes
    received. A length outside ``[min_frame_bytes, max_frame_bytes]`` (which a subclass may change
    between frames, e.g. after a hello) ends the connection through :meth:`bad_frame_length`, and
    so does anything that closes the transport: no frame after that is read.
    """

    def __init__(self, min_frame_bytes: int, max_frame_bytes: int) -> None:
        self.min_frame_bytes = min_frame_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport: no isinstance check)
        self.transport = cast(asyncio.Transport, transport)

    def frame_received(self, body: bytes | bytearray, start: int, stop: int) -> None:
        """One whole frame: ``body[start:stop]``, after its length (valid during this call only)."""
        raise NotImplementedError

    def bad_frame_length(self, length: int) -> None:
        """A frame's length is out of bounds: not our protocol, the connection ends."""
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the usual case: whole frames, parsed without a copy into the buffer
        pos, end = 0, len(view)
        while end - pos >= 4:
            (length,) = _LENGTH.unpack_from(view, pos)
            if length < self.min_frame_bytes or length > self.max_frame_bytes:
                buf.clear()
                self.bad_frame_length(length)
                return
            stop = pos + 4 + length
            if stop > end:
                break
            self.frame_received(view, pos + 4, stop)
            pos = stop
            if transport.is_closing():
                return
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
