"""A hostile tenant tries to use, or steer, storage credentials that are not its own.

Each test shows the refusal AND that nothing else happened: the server that would have
received the secret saw no request (or saw none carrying it), and the victim's staged
artifacts are still there, unchanged."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from puller import (
    AccessDenied,
    ArtifactNotFound,
    ForbiddenStorageParameter,
    InvalidStorageRef,
    ProviderContext,
    Puller,
    S3Provider,
    StorageConfig,
    StorageRef,
    UnknownStorageKey,
)
from tests.puller.pullhelp import Counting, MotoProcess, files_under, settings, visible
from tests.security.sechelp import Recorder, recorders

SECRET = "Bearer victim-secret-0123456789"


@pytest.fixture
def bucket(moto: MotoProcess) -> Iterator[str]:
    name = f"sec-{uuid.uuid4().hex[:10]}"
    moto.client().create_bucket(Bucket=name)
    yield name


def s3_key(moto: MotoProcess, bucket: str, **extra: object) -> str:
    return json.dumps(
        {
            "type": "s3",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "endpoint_url": moto.endpoint,
            "region": "us-east-1",
            "bucket": bucket,
            **extra,
        }
    )


async def test_key_bound_to_a_tenant_serves_only_that_tenant(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    body = os.urandom(50_000)
    moto.client().put_object(Bucket=bucket, Key="a/model.onnx", Body=body)
    config = StorageConfig.from_mapping(
        {"team-a-s3": s3_key(moto, bucket, tenants=["team-a"]), "shared": s3_key(moto, bucket)}
    )
    cache = tmp_path / "cache"
    s = settings(cache)
    with ThreadPoolExecutor(2) as pool:
        counting = Counting(S3Provider(ProviderContext(s, pool, cache / "scratch")))
        puller = Puller(s, config, providers={"s3": counting})
        try:
            ref = StorageRef(storage_key="team-a-s3", path="a/model.onnx")
            victim = await puller.stage(ref, tenant="team-a")
            assert files_under(victim.local_path) == {"model.onnx": body}
            lists_before = counting.lists
            # another tenant, and a reference with no tenant: refused exactly like a key that does not exist
            for tenant in ("team-b", None, ""):
                with pytest.raises(UnknownStorageKey) as refused:
                    await puller.stage(ref, tenant=tenant)
                assert "not in the storage config or not available" in refused.value.message
                assert "team-a-s3" not in refused.value.message.split("keys available:")[1]
                with pytest.raises(UnknownStorageKey) as missing:
                    await puller.stage(StorageRef(storage_key="no-such-key", path="a/model.onnx"), tenant=tenant)
                # indistinguishable from a key that does not exist
                assert missing.value.code == refused.value.code
                assert missing.value.message.replace("no-such-key", "team-a-s3") == refused.value.message
            # nothing was asked of the store for the refused references, nothing new cached
            assert counting.lists == lists_before
            assert visible(cache) == [f"artifacts/{victim.key}"]
            # an unbound key still serves everyone
            shared = await puller.stage(StorageRef(storage_key="shared", path="a/model.onnx"), tenant="team-b")
            assert files_under(shared.local_path) == {"model.onnx": body}
            assert files_under(victim.local_path) == {"model.onnx": body}
        finally:
            await puller.close()
            await counting.aclose()


async def test_bound_default_applies_only_to_its_tenants(tmp_path: Path) -> None:
    with recorders(1) as (store,):
        store.files["/m.bin"] = b"model"
        config = StorageConfig.from_mapping(
            {"default_http": json.dumps({"type": "http", "url": store.url("/"), "headers": {"Authorization": SECRET}, "tenants": ["team-a"]})}
        )
        puller = Puller(settings(tmp_path / "cache"), config)
        try:
            await puller.stage(StorageRef(storage_uri=store.url("/m.bin")), tenant="team-b")
            await puller.stage(StorageRef(storage_uri=store.url("/m.bin")), tenant="team-a")
        finally:
            await puller.close()
        # team-b fetched anonymously; only team-a's request carried the default's secret
        assert store.header_values("Authorization") == [None, SECRET]


HOSTILE_PARAMETERS = [
    {"endpoint_url": "http://127.0.0.1:{evil}"},
    {"url": "http://127.0.0.1:{evil}/"},
    {"bucket": "attacker-bucket"},
    {"default_bucket": "attacker-bucket"},
    {"certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"},
    {"insecure": "true"},
    {"headers": "{}"},
    {"region": "x.127.0.0.1:{evil}#"},
    {"region": "eu-west-1"},  # a plain region, but the key names its own
    {"account_name": "attacker"},
    {"connection_string": "BlobEndpoint=http://127.0.0.1:{evil}"},
    {"access_key_id": "x"},
    {"secret_access_key": "x"},
    {"addressing_style": "virtual"},
    {"type": "http"},
    {"tenants": "team-b"},
]


@pytest.mark.parametrize("hostile", HOSTILE_PARAMETERS, ids=lambda p: next(iter(p)))
async def test_storage_params_cannot_move_credentials(
    tmp_path: Path, moto: MotoProcess, bucket: str, hostile: dict[str, str]
) -> None:
    moto.client().put_object(Bucket=bucket, Key="m/model.onnx", Body=b"victim model")
    with recorders(1) as (evil,):
        params = {k: v.replace("{evil}", str(evil.port)) for k, v in hostile.items()}
        config = StorageConfig.from_mapping({"s3": s3_key(moto, bucket)})
        cache = tmp_path / "cache"
        puller = Puller(settings(cache), config)
        try:
            victim = await puller.stage(StorageRef(storage_key="s3", path="m/model.onnx"))
            for ref in (
                StorageRef(storage_key="s3", path="m/model.onnx", parameters=params),
                StorageRef(storage_key="s3", storage_uri=f"s3://{bucket}/m/model.onnx", parameters=params),
            ):
                with pytest.raises(ForbiddenStorageParameter) as refused:
                    await puller.stage(ref)
                assert refused.value.code == "invalid_argument"
            assert "testing" not in refused.value.message
            assert evil.seen == []
            assert visible(cache) == [f"artifacts/{victim.key}"]
            assert files_under(victim.local_path) == {"model.onnx": b"victim model"}
        finally:
            await puller.close()


async def test_unkeyed_parameters_cannot_pick_an_endpoint(tmp_path: Path) -> None:
    """No key at all: an endpoint would still receive the SDK's own credential chain."""
    with recorders(1) as (evil,):
        puller = Puller(settings(tmp_path / "cache"))
        try:
            for params in ({"endpoint_url": evil.url("/")}, {"type": "s3", "endpoint_url": evil.url("/")}):
                with pytest.raises(ForbiddenStorageParameter):
                    await puller.stage(StorageRef(storage_uri="s3://b/m.onnx", parameters=params))
        finally:
            await puller.close()
        assert evil.seen == []


async def test_http_key_credentials_stay_on_its_origin(tmp_path: Path) -> None:
    with recorders(2) as (store, evil):
        store.files["/m/model.bin"] = b"victim"
        evil.files["/steal"] = b"x"
        config = StorageConfig.from_mapping(
            {
                "web": json.dumps({"type": "http", "url": store.url("/m/"), "headers": {"Authorization": SECRET}}),
                "nourl": json.dumps({"type": "http", "headers": {"Authorization": SECRET}}),
            }
        )
        cache = tmp_path / "cache"
        puller = Puller(settings(cache), config)
        try:
            victim = await puller.stage(StorageRef(storage_key="web", path="model.bin"))
            hostile = [
                StorageRef(storage_key="web", storage_uri=evil.url("/steal")),
                StorageRef(storage_key="web", storage_uri=store.url("/steal", host="localhost")),  # another host name
                StorageRef(storage_key="nourl", storage_uri=evil.url("/steal")),
            ]
            for ref in hostile:
                with pytest.raises(InvalidStorageRef):
                    await puller.stage(ref)
            # a key's path that looks like a host stays a path on the key's own host
            for path in (f"//127.0.0.1:{evil.port}/steal", f"@127.0.0.1:{evil.port}/steal"):
                with pytest.raises(ArtifactNotFound):
                    await puller.stage(StorageRef(storage_key="web", path=path))
            # same origin, another path: allowed (the key's host chose to serve it)
            with pytest.raises(Exception, match="404"):
                await puller.stage(StorageRef(storage_key="web", storage_uri=store.url("/other.bin")))
        finally:
            await puller.close()
        assert evil.seen == []
        assert store.paths() == [
            "/m/model.bin",
            f"/m/127.0.0.1:{evil.port}/steal",
            f"/m/@127.0.0.1:{evil.port}/steal",
            "/other.bin",
        ]
        assert visible(cache) == [f"artifacts/{victim.key}"]


async def test_default_http_credentials_go_only_to_their_host(tmp_path: Path) -> None:
    with recorders(2) as (store, other):
        store.files["/m.bin"] = b"mine"
        other.files["/m.bin"] = b"theirs"
        config = StorageConfig.from_mapping(
            {"default_http": json.dumps({"type": "http", "url": store.url("/"), "headers": {"Authorization": SECRET}})}
        )
        puller = Puller(settings(tmp_path / "cache"), config)
        try:
            mine = await puller.stage(StorageRef(storage_uri=store.url("/m.bin")))
            theirs = await puller.stage(StorageRef(storage_uri=other.url("/m.bin")))
        finally:
            await puller.close()
        assert files_under(mine.local_path) == {"m.bin": b"mine"}
        assert files_under(theirs.local_path) == {"m.bin": b"theirs"}
        assert store.header_values("Authorization") == [SECRET]
        assert other.header_values("Authorization") == [None]


async def test_redirects_never_carry_the_keys_headers_elsewhere(tmp_path: Path) -> None:
    with recorders(2) as (store, evil):
        store.redirects["/m/model.bin"] = evil.url("/landing")
        store.redirects["/m/moved.bin"] = "/m/real.bin"  # same origin: keeps its headers
        store.files["/m/real.bin"] = b"real"
        evil.files["/landing"] = b"evil bytes"
        config = StorageConfig.from_mapping(
            {"web": json.dumps({"type": "http", "url": store.url("/m/"), "headers": {"Authorization": SECRET}})}
        )
        puller = Puller(settings(tmp_path / "cache"), config)
        try:
            moved = await puller.stage(StorageRef(storage_key="web", path="moved.bin"))
            assert files_under(moved.local_path) == {"moved.bin": b"real"}
            # cross-origin: followed (loopback is allow-listed here) but without the secret
            await puller.stage(StorageRef(storage_key="web", path="model.bin"))
        finally:
            await puller.close()
        assert store.header_values("Authorization") == [SECRET, SECRET, SECRET]
        assert evil.paths() == ["/landing"] and evil.header_values("Authorization") == [None]


async def test_pvc_claim_bound_to_a_tenant(tmp_path: Path) -> None:
    pvc = tmp_path / "pvc"
    (pvc / "team-a-claim" / "m").mkdir(parents=True)
    (pvc / "team-a-claim" / "m" / "model.onnx").write_bytes(b"a's model")
    (pvc / "open-claim").mkdir()
    (pvc / "open-claim" / "model.onnx").write_bytes(b"open")
    puller = Puller(settings(tmp_path / "cache", pvc_root=pvc, pvc_claim_tenants={"team-a-claim": ["team-a"]}))
    try:
        mine = await puller.stage(StorageRef(storage_uri="pvc://team-a-claim/m"), tenant="team-a")
        for tenant in ("team-b", None):
            with pytest.raises(AccessDenied, match="not available"):
                await puller.stage(StorageRef(storage_uri="pvc://team-a-claim/m"), tenant=tenant)
            with pytest.raises(AccessDenied):
                await puller.local_size(StorageRef(storage_uri="pvc://team-a-claim/m/model.onnx"), tenant=tenant)
        # storage-config keys of type pvc are held to the same binding
        keyed = Puller(
            settings(tmp_path / "cache2", pvc_root=pvc, pvc_claim_tenants={"team-a-claim": ["team-a"]}),
            StorageConfig.from_mapping({"pvc": '{"type": "pvc"}'}),
        )
        try:
            with pytest.raises(AccessDenied):
                await keyed.stage(StorageRef(storage_key="pvc", path="team-a-claim/m"), tenant="team-b")
        finally:
            await keyed.close()
        opened = await puller.stage(StorageRef(storage_uri="pvc://open-claim"), tenant="team-b")
        assert files_under(opened.local_path) == {"model.onnx": b"open"}
        assert files_under(mine.local_path) == {"model.onnx": b"a's model"}
    finally:
        await puller.close()


def test_recorder_is_reachable() -> None:
    """The recorder itself answers (so ``seen == []`` above means 'not asked', not 'down')."""
    import urllib.request

    server = Recorder()
    try:
        server.files["/x"] = b"ok"
        with urllib.request.urlopen(server.url("/x"), timeout=5) as response:
            assert response.read() == b"ok"
        assert server.paths() == ["/x"]
    finally:
        server.close()
