"""Read one string field out of a serialized protobuf message without parsing it.

The router needs only the model name of a V2 request (field 1 of
``ModelInferRequest``, ``model_name``) to route it; the payload itself is
forwarded unparsed. Fields are scanned by tag and skipped by wire type, so the
cost does not depend on the size of the tensors that follow.
"""

from __future__ import annotations


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""

    code = "invalid_argument"


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def read_string_field(buf: bytes, field_number: int) -> str | None:
    """The last value of string field ``field_number`` (protobuf's "last wins"), or None."""
    pos = 0
    n = len(buf)
    found: str | None = None
    while pos < n:
        key = buf[pos]
        if key < 0x80:  # one-byte varints (fields 1-15, lengths < 128) inline: this runs per request
            pos += 1
        else:
            key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum == 0:
            raise WireError("field number 0")
        if wtype == 0:
            _, pos = _varint(buf, pos)
        elif wtype == 1:
            pos += 8
        elif wtype == 2:
            if pos < n and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = _varint(buf, pos)
            end = pos + length
            if end > n:
                raise WireError("truncated length-delimited field")
            if fnum == field_number:
                try:
                    found = buf[pos:end].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise WireError(f"field {field_number} is not valid UTF-8") from exc
            pos = end
        elif wtype == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wtype}")
        if pos > n:
            raise WireError("truncated field")
    return found
