"""The paging helper (mesh._paging): key order, tokens that continue where the last page ended
(stable under inserts and deletes between pages), limits and tokens refused with a clear 400."""

from __future__ import annotations

import base64

import pytest

from mesh._errors import InvalidRequest, status_for
from mesh._paging import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_TOKEN_CHARS,
    PageRequest,
    decode_token,
    encode_token,
    page_of,
)


def pages(keys: set[str], limit: int, list_name: str = "models") -> list[list[str]]:
    out: list[list[str]] = []
    token = ""
    while True:
        page = page_of(keys, PageRequest.parse(list_name, limit, token))
        out.append(page.items)
        token = page.next_page_token
        if not token:
            return out


def test_pages_are_key_ordered_full_and_cover_everything_once() -> None:
    keys = {f"m{i:04d}" for i in range(95)}
    got = pages(keys, 10)
    assert [len(p) for p in got] == [10] * 9 + [5]
    flat = [k for p in got for k in p]
    assert flat == sorted(keys)  # every key once, in order


def test_exact_multiple_ends_without_an_empty_page() -> None:
    got = pages({f"k{i}" for i in range(20)}, 10)
    assert [len(p) for p in got] == [10, 10]


def test_empty_list_is_one_empty_last_page() -> None:
    page = page_of([], PageRequest.parse("models"))
    assert page.items == [] and page.next_page_token == "" and page.total == 0


def test_total_counts_the_whole_list_given() -> None:
    page = page_of([f"k{i}" for i in range(30)], PageRequest.parse("models", 7))
    assert page.total == 30 and len(page.items) == 7


def test_token_is_opaque_and_round_trips_its_key() -> None:
    token = encode_token("models", "team-a/model 1")
    assert "team-a" not in token and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_token("models", token) == "team-a/model 1"
    assert decode_token("decisions", encode_token("decisions", [12, 3])) == [12, 3]


def test_inserts_and_deletes_between_pages_shift_nothing() -> None:
    keys = {f"m{i:03d}" for i in range(0, 100, 2)}  # even numbers
    first = page_of(keys, PageRequest.parse("models", 10))
    assert first.items[-1] == "m018"
    # meanwhile: one key before the cursor and one after are deleted, keys are inserted on both sides
    keys -= {"m004", "m030"}
    keys |= {"m001", "m019", "m021", "m099"}
    second = page_of(keys, PageRequest.parse("models", 10, first.next_page_token))
    assert second.items == ["m019", "m020", "m021", "m022", "m024", "m026", "m028", "m032", "m034", "m036"]
    rest = [k for p in pages_from(keys, second.next_page_token) for k in p]
    seen = first.items + second.items + rest
    assert len(seen) == len(set(seen))  # no key twice
    present_throughout = {f"m{i:03d}" for i in range(0, 100, 2)} - {"m004", "m030"}
    assert present_throughout <= set(seen)  # none missed that was there all along
    assert "m001" not in seen  # inserted behind the cursor: the next listing shows it


def pages_from(keys: set[str], token: str) -> list[list[str]]:
    out = []
    while token:
        page = page_of(keys, PageRequest.parse("models", 10, token))
        out.append(page.items)
        token = page.next_page_token
    return out


def test_the_cursor_key_itself_deleted_still_continues_after_it() -> None:
    keys = {f"k{i:02d}" for i in range(30)}
    first = page_of(keys, PageRequest.parse("models", 10))
    keys.discard(first.items[-1])
    second = page_of(keys, PageRequest.parse("models", 10, first.next_page_token))
    assert second.items[0] == "k10"


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (0, "at least 1"),
        (-5, "at least 1"),
        ("0", "at least 1"),
        ("-1", "whole number"),
        ("abc", "whole number"),
        ("1.5", "whole number"),
        ("99999999999999999999", "whole number"),
        (MAX_LIMIT + 1, f"maximum of {MAX_LIMIT}"),
        (str(MAX_LIMIT + 1), f"maximum of {MAX_LIMIT}"),
        (True, "whole number"),
    ],
)
def test_bad_limits_are_invalid_argument_with_the_reason(limit: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        PageRequest.parse("models", limit)  # type: ignore[arg-type]
    assert status_for(info.value)[0].http == 400


def test_limit_defaults_and_bounds() -> None:
    assert PageRequest.parse("models").limit == DEFAULT_LIMIT
    assert PageRequest.parse("models", "").limit == DEFAULT_LIMIT
    assert PageRequest.parse("models", " 7 ").limit == 7
    assert PageRequest.parse("models", MAX_LIMIT).limit == MAX_LIMIT
    assert PageRequest.parse("models", None, default=50, maximum=5000).limit == 50
    assert PageRequest.parse("decisions", 5000, maximum=5000).limit == 5000


def _flip(token: str, i: int) -> str:
    c = token[i]
    return token[:i] + ("A" if c != "A" else "B") + token[i + 1 :]


def tampered(token: str) -> list[str]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged_payload = raw.replace(b"m009", b"m050")  # the key edited, checksum kept
    return [
        _flip(token, 3),  # a character of the key changed
        _flip(token, len(token) - 2),  # a character of the checksum changed
        token[:-4],  # truncated
        token + "AAAA",  # extended
        base64.urlsafe_b64encode(forged_payload).decode().rstrip("="),
        "not a token!",  # not base64url
        "=" * 8,
        "A",
        "A" * (MAX_TOKEN_CHARS + 1),
        base64.urlsafe_b64encode(b'[1,"models","m050"]').decode(),  # a plausible token without a checksum
    ]


def test_tampered_tokens_are_refused_with_a_clear_400() -> None:
    token = page_of({f"m{i:03d}" for i in range(20)}, PageRequest.parse("models", 10)).next_page_token
    assert decode_token("models", token) == "m009"
    for bad in tampered(token):
        with pytest.raises(InvalidRequest, match="page_token is not a token of the models list") as info:
            PageRequest.parse("models", 10, bad)
        assert status_for(info.value)[0].http == 400, bad


def test_a_token_of_another_list_is_refused() -> None:
    token = encode_token("tenants", "team-a")
    with pytest.raises(InvalidRequest, match="continues the tenants list"):
        PageRequest.parse("models", 10, token)


def test_a_token_whose_key_has_the_wrong_type_is_refused() -> None:
    token = encode_token("models", [1, 2])
    with pytest.raises(InvalidRequest, match="not a key of this list"):
        page_of(["a"], PageRequest.parse("models", 10, token))
