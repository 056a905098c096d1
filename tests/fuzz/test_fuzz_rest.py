"""Generated bad input on the REST edge: V2 JSON bodies, weird ids in paths, the /v1 management API.

Every answer is 2xx or a 4xx with a JSON error body; a 5xx or a missed deadline fails. The
``canary`` fixture checks that good traffic kept being served meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.fuzz.fuzzhelp import (
    CALL_TIMEOUT_S,
    GOOD_MODEL,
    Canary,
    Mesh,
    fuzz_settings,
    hostile_key_fields,
)

GOOD_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(1 << 80), 1 << 80), st.floats(), st.text(max_size=8))
TREE = st.recursive(LEAF, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=12)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=CALL_TIMEOUT_S) as client:
        yield client


def _assert_client_fault(r: httpx.Response, what: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300], what)
    if r.status_code >= 400:
        body = r.json()  # a JSON error body, never an HTML page or a bare string
        assert isinstance(body, dict) and (body.get("error") or body.get("detail")), (r.status_code, r.text[:300])


def _send(http: httpx.Client, method: str, url: str, content: bytes | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"} if content is not None else None
    return http.request(method, url, content=content, headers=headers)


# ---------------------------------------------------------------- V2 infer bodies


def _field(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(right, TREE)  # mostly the right type, sometimes anything


@st.composite
def v2_bodies(draw: st.DrawFn) -> Any:
    shape = st.lists(st.one_of(st.integers(-2, 6), st.integers(-(1 << 63), 1 << 64), st.floats(), st.booleans()), max_size=4)
    tensor = st.fixed_dictionaries(
        {},
        optional={
            "name": _field(st.sampled_from(["x", "y", ""])),
            "datatype": _field(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "BF16", "nope"])),
            "shape": _field(st.one_of(st.just([1, 4]), shape)),
            "data": _field(st.one_of(st.just([1, 2, 3, 4]), st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.dictionaries(st.just("b64"), st.text(max_size=6))), max_size=8))),
            "parameters": TREE,
        },
    )
    body = draw(st.fixed_dictionaries({}, optional={
        "inputs": _field(st.lists(st.one_of(tensor, TREE), max_size=3)),
        "outputs": _field(st.lists(st.one_of(st.fixed_dictionaries({"name": _field(st.just("y"))}), TREE), max_size=2)),
        "id": TREE,
        "parameters": TREE,
    }))
    return draw(st.one_of(st.just(body), TREE))


@fuzz_settings(100)
@given(body=v2_bodies(), instance=st.integers(0, 1), model=st.sampled_from([GOOD_MODEL, GOOD_MODEL, "missing-model"]))
def test_v2_json_bodies(mesh: Mesh, canary: Canary, http: httpx.Client, body: Any, instance: int, model: str) -> None:
    content = json.dumps(body).encode()  # NaN / Infinity included, as Python writes them
    r = _send(http, "POST", f"{mesh.rest[instance]}/v2/models/{model}/infer", content)
    _assert_client_fault(r, body)
    if r.status_code == 200:
        out = r.json()["outputs"][0]
        assert out["name"] == "y" and out["shape"][1] == 3 and len(out["data"]) == out["shape"][0] * 3


@fuzz_settings(30)
@given(
    depth=st.integers(50, 200_000),
    opener=st.sampled_from(["[", '{"a":', '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":']),
    instance=st.integers(0, 1),
)
def test_deep_json(mesh: Mesh, canary: Canary, http: httpx.Client, depth: int, opener: str, instance: int) -> None:
    if opener.startswith('{"inputs"'):
        text = opener + "[" * depth + "1" + "]" * depth + "}]}"
    else:
        closer = "]" if opener == "[" else "}"
        text = opener * depth + "1" + closer * depth
    r = _send(http, "POST", f"{mesh.rest[instance]}/v2/models/{GOOD_MODEL}/infer", text.encode())
    _assert_client_fault(r, (opener, depth))
    assert r.status_code in (400, 413), r.text[:200]


@fuzz_settings(40)
@given(body=st.binary(max_size=200), instance=st.integers(0, 1))
def test_random_bytes_body(mesh: Mesh, canary: Canary, http: httpx.Client, body: bytes, instance: int) -> None:
    r = _send(http, "POST", f"{mesh.rest[instance]}/v2/models/{GOOD_MODEL}/infer", body)
    _assert_client_fault(r, body)


# ---------------------------------------------------------------- weird ids in paths


def _segments() -> st.SearchStrategy[str]:
    """A path segment: percent-encoded text (any code point), or bytes that are not UTF-8."""
    return st.one_of(
        st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe="")),
        st.binary(min_size=1, max_size=12).map(lambda b: quote(b, safe="")),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), min_size=1, max_size=300),
    )


PATH_CALLS = [
    ("GET", "/v2/models/{}"), ("GET", "/v2/models/{}/ready"), ("GET", "/v2/models/{}/versions/1"),
    ("POST", "/v2/models/{}/infer"), ("GET", "/api/v1/models/{}"), ("POST", "/api/v1/models/{}"), ("DELETE", "/api/v1/models/{}"),
    ("POST", "/api/v1/models/{}/load"), ("GET", "/api/v1/vmodels/{}"), ("PUT", "/api/v1/vmodels/{}"), ("DELETE", "/api/v1/vmodels/{}"),
    ("GET", "/api/v1/tenants/{}"), ("PUT", "/api/v1/tenants/{}"), ("DELETE", "/api/v1/tenants/{}"),
]


@fuzz_settings(80)
@given(segment=_segments(), call=st.sampled_from(PATH_CALLS), instance=st.integers(0, 1))
def test_weird_ids_in_paths(mesh: Mesh, canary: Canary, http: httpx.Client, segment: str, call: tuple[str, str], instance: int) -> None:
    assume(segment not in (GOOD_MODEL, ".", ".."))
    method, template = call
    bodies = {"POST /v2": GOOD_BODY, "POST /api/v1": {"modelInfo": {"type": "onnx", "path": "/nonexistent.onnx"}},
              "PUT /api/v1/vmodels": {"targetModelId": GOOD_MODEL}, "PUT /api/v1/tenants": {"maxBytes": "1Gi"}}
    body = next((b for k, b in bodies.items() if f"{method} {template}".startswith(k)), None)
    if template.endswith("/load"):
        body = None
    url = mesh.rest[instance] + template.format(segment)
    r = _send(http, method, url, json.dumps(body).encode() if body else None)
    _assert_client_fault(r, (method, template, segment))
    if r.status_code == 200 and method in ("POST", "PUT") and template.startswith("/api/v1/"):
        # registered: remove it, or a later example's metadata call would try to load a missing artifact
        # (a load failure is a 500 by design, not a decoding fault)
        _assert_client_fault(_send(http, "DELETE", url), (method, template, segment))


# ---------------------------------------------------------------- management bodies


@fuzz_settings(80)
@given(
    which=st.sampled_from(["model", "vmodel", "tenant"]),
    name=st.sampled_from(["fz-model", "fz-vmodel", "fz-tenant"]),
    body=st.one_of(
        TREE,
        st.fixed_dictionaries({}, optional={
            "modelInfo": st.one_of(TREE, st.fixed_dictionaries({}, optional={
                "type": _field(st.just("onnx")), "path": _field(st.just("/nonexistent.onnx")),
                "key": st.one_of(hostile_key_fields(), hostile_key_fields(), TREE),
            })),
            "sync": TREE,
        }),
        st.fixed_dictionaries({}, optional={
            "targetModelId": _field(st.sampled_from([GOOD_MODEL, "fz-model"])), "owner": TREE, "updateOnly": TREE,
            "expectedTargetModelId": TREE, "force": TREE, "modelInfo": TREE,
        }),
        st.fixed_dictionaries({"maxBytes": st.one_of(TREE, st.sampled_from(["1Gi", "8E", "99999999999999999999Ei", "-1", "1e999", "0x10"]))}),
    ),
)
def test_management_bodies(mesh: Mesh, canary: Canary, http: httpx.Client, which: str, name: str, body: Any) -> None:
    if isinstance(body, dict):
        body.pop("loadNow", None)  # loading a nonexistent artifact would fail as it should (500), not a fuzz finding
    url = {"model": f"/api/v1/models/{name}", "vmodel": f"/api/v1/vmodels/{name}", "tenant": f"/api/v1/tenants/{name}"}[which]
    method = "POST" if which == "model" else "PUT"
    r = _send(http, method, mesh.rest[0] + url, json.dumps(body).encode())
    _assert_client_fault(r, body)
    _send(http, "DELETE", mesh.rest[0] + url)  # keep the next example independent (a 404 when it was refused)


# ---------------------------------------------------------------- size limit


def test_64mb_and_limit_boundary_rest(mesh: Mesh, canary: Canary, http: httpx.Client) -> None:
    """413 for 64 MiB bodies, with and without a content-length; a body of exactly the limit is served."""
    big = b"[" + b"0," * (32 << 20) + b"0]"
    for rest in mesh.rest:
        r = _send(http, "POST", f"{rest}/v2/models/{GOOD_MODEL}/infer", big)
        assert r.status_code == 413, r.text[:200]

        def chunks() -> Iterator[bytes]:
            for _ in range(64):
                yield b" " * (1 << 20)

        r = http.post(f"{rest}/v2/models/{GOOD_MODEL}/infer", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"], r.text[:200]
        good = json.dumps(GOOD_BODY).encode()
        exact = good + b" " * (mesh.limit_bytes - len(good))  # JSON allows trailing white space
        r = _send(http, "POST", f"{rest}/v2/models/{GOOD_MODEL}/infer", exact)
        assert r.status_code == 200, r.text[:200]
        r = _send(http, "POST", f"{rest}/v2/models/{GOOD_MODEL}/infer", exact + b" ")
        assert r.status_code == 413, r.text[:200]
