"""Pages of the management lists: a bounded ``limit`` and an opaque continuation token.

Every list the management API answers (models, vModels, tenants, instances, the dashboard's model
rows, the decision log, KServe V1's model names) is answered one page at a time, the same way:

* ``limit`` rows at most (default :data:`DEFAULT_LIMIT`, at most :data:`MAX_LIMIT`; anything else
  is INVALID_ARGUMENT / 400 with the reason);
* rows in key order (a list's key is its id: model id, vModel name, tenant, instance id), and
  ``next_page_token`` the last key returned, encoded; the next page is the keys after it. A row
  inserted or deleted between two pages therefore never shifts another: no row is returned twice
  and none present for the whole listing is missed ('' when this is the last page).
* The caller's tenant scope is applied to the keys *before* the page is cut, so a page is full of
  the caller's own rows and nothing about other tenants shows through counts or tokens.

A token is not a secret and confers nothing: it only says where the previous page ended. It carries
the list's name and a checksum, so a token that was edited, truncated or taken from another list is
refused (400) instead of silently starting somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._errors import InvalidRequest

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "MAX_TOKEN_CHARS", "Page", "PageRequest", "decode_token", "encode_token", "page_of"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TOKEN_CHARS = 2048
"""A token longer than this is refused unread (keys are capped far below it)."""

_VERSION = 1
_CHECK_BYTES = 8
_CHECK_KEY = b"modelmux-page-token-v1"  # a checksum key, not a secret: tokens confer nothing

T = TypeVar("T")


def _check(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CHECK_BYTES, key=_CHECK_KEY).digest()


def encode_token(list_name: str, key: Any) -> str:
    """The token for "the page after ``key``" of list ``list_name`` (``key``: any JSON value)."""
    payload = json.dumps([_VERSION, list_name, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _check(payload)).rstrip(b"=").decode("ascii")


def _bad(list_name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"page_token is not a token of the {list_name} list ({why}); list again from the start without it")


def decode_token(list_name: str, token: str) -> Any:
    """The key a token of list ``list_name`` ends after; INVALID_ARGUMENT for anything else."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _bad(list_name, f"longer than {MAX_TOKEN_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _bad(list_name, "not base64url") from exc
    payload, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if len(raw) <= _CHECK_BYTES or _check(payload) != check:
        raise _bad(list_name, "altered or truncated")
    try:
        version, name, key = json.loads(payload)
    except (ValueError, TypeError) as exc:  # cannot happen for a token this module wrote
        raise _bad(list_name, "malformed") from exc
    if version != _VERSION:
        raise _bad(list_name, f"version {version!r}")
    if name != list_name:
        raise _bad(list_name, f"it continues the {name} list")
    return key


def _parse_limit(value: int | str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest(f"limit must be a whole number from 1 to {maximum}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or len(text) > 9:
            raise InvalidRequest(f"limit must be a whole number from 1 to {maximum}, got {value[:20]!r}")
        value = int(text)
    if value < 1:
        raise InvalidRequest(f"limit must be at least 1, got {value}")
    if value > maximum:
        raise InvalidRequest(f"limit {value} is above the maximum of {maximum}: page through with page_token")
    return value


@dataclass(frozen=True)
class PageRequest:
    """One page asked of list ``list_name``: at most ``limit`` rows after key ``after`` (None: from the start)."""

    list_name: str
    limit: int = DEFAULT_LIMIT
    after: Any = None

    @classmethod
    def parse(
        cls, list_name: str, limit: int | str | None = None, page_token: str | None = None, *,
        default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT,
    ) -> PageRequest:
        """From the wire: ``limit`` (None or '': ``default``) and ``page_token`` (None or '': the first page)."""
        after = decode_token(list_name, page_token) if page_token else None
        return cls(list_name, _parse_limit(limit, default, maximum), after)

    def token_after(self, key: Any) -> str:
        return encode_token(self.list_name, key)


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of rows; ``next_page_token`` '' when it is the last; ``total``: rows in the whole
    (already scoped) list."""

    items: list[T]
    next_page_token: str = ""
    total: int = 0


def page_of(keys: Iterable[str], req: PageRequest) -> Page[str]:
    """The page of ``keys`` (already scoped to the caller; unique) that ``req`` asks for: the
    ``req.limit`` smallest keys after ``req.after``, ascending, and the token for the next page.
    O(n log limit): the whole list is never sorted."""
    after = req.after
    if after is not None and not isinstance(after, str):
        raise _bad(req.list_name, "not a key of this list")
    total = 0
    rest: list[str] = []
    for k in keys:
        total += 1
        if after is None or k > after:
            rest.append(k)
    chosen = heapq.nsmallest(req.limit + 1, rest)
    more = len(chosen) > req.limit
    chosen = chosen[: req.limit]
    return Page(chosen, req.token_after(chosen[-1]) if more else "", total)
