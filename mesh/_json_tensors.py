"""V2 JSON inference bodies decoded in bounded memory.

``json.loads`` turns every number of a tensor into a Python object (a float is 24 bytes plus an
8-byte list slot), so a 32 MiB body of ``0.0,`` grows to ~300 MB before the model sees it. Here
each numeric ``inputs[i].data`` array is cut out of the text before parsing (the rest is parsed
by ``json.loads`` as usual) and later read, in windows of ~1 MiB, straight into one array of
the input's datatype: the memory is the body plus the tensor itself.

Whatever is not a plain numeric array (booleans, strings, NaN, numbers too long for int64, odd
nesting) is left to ``json.loads`` and to the usual checks, so the answers do not change. What
``json.loads`` does parse is bounded by an estimate of its object count (``max_object_cost``):
a body of tiny strings or parameters costs far more than its size and is refused with 413.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import numpy as np

from runtime_adapters import InferRequest, numpy_dtype

from . import _codec
from ._errors import InvalidRequest, PayloadTooLarge

_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
_STRUCT = re.compile(rb'[\[\]"{}]')
_LONG_NUMBER = re.compile(rb"[0-9]{19}")  # may not fit int64: json.loads reads it exactly
_NUMBER_CHARS = b"0123456789+-.eE,[] \t\n\r"
_WINDOW = 1 << 20
# what json.loads builds per value (object + container slot), charged per ',' or ':'
_COST_PER_VALUE = 80
MIN_OBJECT_COST = 64 << 20
PLAIN_MAX_BYTES = 64 << 10
"""bodies up to this size are parsed by json.loads whole (at most ~16k numbers: ~0.5 MB of objects)"""

_FLOATS: dict[str, np.dtype[Any]] = {"FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BF16": np.dtype("<f4")}
# the integer types read straight into their V2 storage dtype (the one table in runtime_adapters)
_INTS: dict[str, np.dtype[Any]] = {t: numpy_dtype(t) for t in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")}


def _preceded_by_odd_backslashes(text: bytes | bytearray, pos: int) -> bool:
    n = 0
    while pos - n - 1 >= 0 and text[pos - n - 1] == 0x5C:
        n += 1
    return n % 2 == 1


def _array_end(text: bytes | bytearray, start: int) -> int:
    """Index after the numeric array opening at ``start``; -1 when it holds anything else."""
    depth = 0
    for m in _STRUCT.finditer(text, start):
        c = text[m.start()]
        if c == 0x5B:  # [
            depth += 1
        elif c == 0x5D:  # ]
            depth -= 1
            if depth == 0:
                return m.end()
        else:  # a string or an object inside: not a numeric array
            return -1
    return -1


class _Span:
    """A numeric array's text in the body, read once its datatype is known."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end


def _cut_numeric_arrays(body: bytes | bytearray) -> tuple[bytes, str, list[_Span]]:
    """The body with each numeric "data" array replaced by a sentinel string, the sentinel
    prefix, and the arrays' spans (in sentinel order)."""
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: list[_Span] = []
    pos = 0
    for m in _DATA_KEY.finditer(body):
        if m.start() < pos or _preceded_by_odd_backslashes(body, m.start()):
            continue  # inside an earlier cut, or inside a string
        start = m.end() - 1
        end = _array_end(body, start)
        if end < 0:
            continue
        span = body[start:end]
        if span.translate(None, _NUMBER_CHARS) or end - start < 64:
            continue  # not plain numbers (or too short to matter): json.loads reads it
        del span
        pieces.append(bytes(body[pos:start]))
        pieces.append(b'"\\u0000%s:%d"' % (nonce.encode(), len(spans)))
        spans.append(_Span(start, end))
        pos = end
    if not spans:
        return bytes(body), "", []
    pieces.append(bytes(body[pos:]))
    return b"".join(pieces), "\x00" + nonce + ":", spans


def _restore(obj: Any, prefix: str, body: bytes | bytearray, spans: list[_Span], skip: frozenset[int] = frozenset()) -> Any:
    """Put back, as json.loads would have read them, cut arrays that are not read as tensors
    (the "data" of the objects in ``skip`` is left for the caller to fill)."""
    if isinstance(obj, str) and obj.startswith(prefix):
        sp = spans[int(obj[len(prefix):])]
        return json.loads(body[sp.start : sp.end])
    if isinstance(obj, list):
        return [_restore(x, prefix, body, spans, skip) for x in obj]
    if isinstance(obj, dict):
        keep = id(obj) in skip
        return {k: (v if keep and k == "data" else _restore(v, prefix, body, spans, skip)) for k, v in obj.items()}
    return obj


def _read_numbers(text: bytes | bytearray, sp: _Span, datatype: str, name: str) -> np.ndarray | None:
    """The span's numbers as one flat array of ``datatype``; None when it must be read by json.loads
    (so that the usual checks give the usual answer)."""
    is_float = datatype in _FLOATS
    target = _FLOATS.get(datatype) or _INTS.get(datatype)
    if target is None:
        return None
    count = text.count(b",", sp.start, sp.end) + 1
    out = np.empty(count, dtype=target)
    filled = 0
    i = sp.start
    while i < sp.end:
        j = min(i + _WINDOW, sp.end)
        if j < sp.end:  # end the window just after a separator
            k = text.find(b",", j, sp.end)
            j = sp.end if k < 0 else k + 1
        chunk = bytes(text[i:j]).translate(None, b"[]").strip().rstrip(b",")
        i = j
        if not chunk:
            continue
        if not is_float and (b"." in chunk or b"e" in chunk or b"E" in chunk):
            raise InvalidRequest(f"input '{name}': {datatype} contents must be integers, got floats")
        if b"-," in chunk or chunk.endswith(b"-") or (not is_float and (b"+" in chunk or _LONG_NUMBER.search(chunk))):
            return None
        try:
            part = np.fromstring(chunk, dtype=np.float64 if is_float else np.int64, sep=",")  # type: ignore[call-overload]
        except ValueError:
            return None
        if len(part) != chunk.count(b",") + 1 or filled + len(part) > count:
            return None
        if is_float:
            if target.itemsize < 8:
                finite = part[np.isfinite(part)]
                if finite.size and float(np.abs(finite).max()) > float(np.finfo(target).max):
                    raise InvalidRequest(f"input '{name}': value out of range for {datatype}")
        elif target != np.int64 and len(part):
            info = np.iinfo(target)
            if part.min() < info.min or part.max() > info.max:
                raise InvalidRequest(f"input '{name}': value out of range for {datatype} [{info.min}, {info.max}]")
        out[filled : filled + len(part)] = part
        filled += len(part)
    if filled != count:
        return None
    return out


def _object_cost(text: bytes | bytearray, start: int = 0, end: int | None = None) -> int:
    end = len(text) if end is None else end
    return end - start + _COST_PER_VALUE * (text.count(b",", start, end) + text.count(b":", start, end) + 1)


def loads_infer_request(model_name: str, body: bytes | bytearray, *, max_object_cost: int | None = None) -> InferRequest:
    """A V2 JSON inference body (bytes) as an :class:`InferRequest`, in bounded memory (module doc)."""
    if not body:
        raise InvalidRequest("empty request body")
    limit = max_object_cost if max_object_cost is not None else max(MIN_OBJECT_COST, 2 * len(body))
    if len(body) <= PLAIN_MAX_BYTES and _object_cost(body) <= limit:
        # small: what json.loads makes of it is bounded by the body itself, and it is 1.1-3x faster
        # than cutting and reading the arrays (the same path arrays too short to cut take)
        reduced, prefix, spans = bytes(body), "", list[_Span]()
    else:
        reduced, prefix, spans = _cut_numeric_arrays(body)
    cost = _object_cost(reduced)
    _check_cost(cost, limit)
    try:
        doc = json.loads(reduced)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    del reduced
    if spans:
        data = _tensors(doc, prefix, body, spans)
        used = {id(spans[i]) for i, _ in data.values()}
        _check_cost(cost + sum(_object_cost(body, sp.start, sp.end) for sp in spans if id(sp) not in used), limit)
        doc = _restore(doc, prefix, body, spans, skip=frozenset(id(doc["inputs"][n]) for n in data))
        for n, (_, arr) in data.items():
            doc["inputs"][n]["data"] = arr
    return _codec.infer_request_from_json(model_name, doc)


def _check_cost(cost: int, limit: int) -> None:
    if cost > limit:
        raise PayloadTooLarge(
            "request body holds too many JSON values outside numeric tensors to decode in bounded memory; "
            "send large BYTES or parameter data with the binary extension or over gRPC"
        )


def _tensors(doc: Any, prefix: str, body: bytes | bytearray, spans: list[_Span]) -> dict[int, tuple[int, np.ndarray]]:
    """input index -> (span index, array) for every input whose cut data reads as its datatype."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    out: dict[int, tuple[int, np.ndarray]] = {}
    if not isinstance(inputs, list):
        return out
    for n, t in enumerate(inputs):
        raw = t.get("data") if isinstance(t, dict) else None
        if not (isinstance(raw, str) and raw.startswith(prefix)):
            continue
        i = int(raw[len(prefix):])
        dt = t.get("datatype")
        name = t["name"] if isinstance(t.get("name"), str) else f"inputs[{n}]"
        if dt == "BYTES":
            raise InvalidRequest(f"input '{name}': BYTES elements must be strings or {{\"b64\": ...}}")
        arr = _read_numbers(body, spans[i], dt, name) if isinstance(dt, str) else None
        if arr is not None:
            out[n] = (i, arr)
    return out
