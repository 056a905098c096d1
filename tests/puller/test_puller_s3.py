"""S3 against a real S3-compatible server (moto in server mode, child process, loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from puller import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    InvalidStorageRef,
    ObjectSink,
    OverBudget,
    ProviderContext,
    Puller,
    PullProgress,
    S3Provider,
    StorageConfig,
    StorageRef,
    StorageUnavailable,
)
from tests.puller.pullhelp import Counting, MotoProcess, files_under, settings, visible

MiB = 1 << 20


@pytest.fixture
def bucket(moto: MotoProcess) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@contextlib.asynccontextmanager
async def s3_puller(
    cache: Path,
    config: StorageConfig,
    *,
    hook: Callable[[], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Puller, Counting]]:
    s = settings(cache, **overrides)
    with ThreadPoolExecutor(4) as pool:
        counting = Counting(S3Provider(ProviderContext(s, pool, cache / "scratch")), on_first_write=hook)
        puller = Puller(s, config, providers={"s3": counting})
        await puller.start()
        try:
            yield puller, counting
        finally:
            await puller.close()
            await counting.aclose()


def ref(bucket: str, path: str) -> StorageRef:
    return StorageRef(storage_key="s3", storage_uri=f"s3://{bucket}/{path}")


async def test_single_object_and_prefix_with_many_files(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    client = moto.client()
    model = os.urandom(300_000)
    client.put_object(Bucket=bucket, Key="single/model.onnx", Body=model)
    expected = {f"d{i % 4}/f{i}.bin": f"file {i}".encode() * (i + 1) for i in range(120)}
    for rel, body in expected.items():
        client.put_object(Bucket=bucket, Key=f"many/{rel}", Body=body)
    client.put_object(Bucket=bucket, Key="many/d0/", Body=b"")  # a directory marker, skipped
    client.put_object(Bucket=bucket, Key="many-other/x", Body=b"not part of many/")
    cache = tmp_path / "cache"
    seen: list[PullProgress] = []
    async with s3_puller(cache, moto.storage_config(), object_concurrency=6) as (puller, counting):
        single = await puller.stage(ref(bucket, "single/model.onnx"), on_progress=seen.append)
        assert files_under(single.local_path) == {"model.onnx": model}
        assert single.size_bytes == len(model) and single.local_path.is_relative_to(cache)
        assert seen and seen[-1].bytes_done == seen[-1].bytes_total == len(model)
        assert seen[-1].bytes_per_s > 0 and seen[-1].eta_s == 0
        assert seen[-1].source == f"s3://{bucket}/single/model.onnx"

        prefix = await puller.stage(StorageRef(storage_uri=f"s3://{bucket}/many", storage_key="s3"))
        assert files_under(prefix.local_path) == expected
        assert prefix.size_bytes == sum(len(b) for b in expected.values())
        assert sum(counting.fetches.values()) == 121
        usage = puller.cache_usage()
        assert usage.used_bytes == single.size_bytes + prefix.size_bytes
        assert {a.key: a.holds for a in usage.artifacts} == {single.key: 1, prefix.key: 1}
        assert puller.in_progress() == []
    assert visible(cache) == sorted(f"artifacts/{k}" for k in (single.key, prefix.key))


async def test_not_found_is_typed_and_leaves_nothing(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    cache = tmp_path / "cache"
    async with s3_puller(cache, moto.storage_config()) as (puller, counting):
        with pytest.raises(ArtifactNotFound, match=re.escape(f"s3://{bucket}/nothing/here")) as err:
            await puller.stage(ref(bucket, "nothing/here"))
        assert err.value.code == "not_found"
        with pytest.raises(ArtifactNotFound):
            await puller.stage(ref("no-such-bucket-" + bucket, "m.onnx"))
        assert counting.lists == 2  # not retried
    assert visible(cache) == []


async def test_access_denied_and_bad_credentials(tmp_path: Path) -> None:
    # moto with authentication on after the 4 setup calls below
    server = MotoProcess(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        admin = server.client()
        admin.create_bucket(Bucket="locked")
        admin.put_object(Bucket="locked", Key="m.onnx", Body=b"x")
        iam = server.client("iam")
        iam.create_user(UserName="reader")  # a user with no policy: may read nothing
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        denied = server.storage_config("locked", key_id=key["AccessKeyId"], secret=key["SecretAccessKey"])
        async with s3_puller(tmp_path / "c1", denied) as (puller, _):
            with pytest.raises(AccessDenied, match=r"s3://locked/m\.onnx") as err:
                await puller.stage(ref("locked", "m.onnx"))
            assert err.value.code == "permission_denied"
        wrong = server.storage_config("locked", key_id="AKIAUNKNOWN000000000", secret="nope")
        async with s3_puller(tmp_path / "c2", wrong) as (puller, _):
            with pytest.raises(BadCredentials, match="InvalidAccessKeyId") as err2:
                await puller.stage(ref("locked", "m.onnx"))
            assert err2.value.code == "unauthenticated"
            assert "nope" not in str(err2.value)
    finally:
        server.stop()


async def test_concurrent_pulls_download_once(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    body = os.urandom(8 * MiB)
    moto.client().put_object(Bucket=bucket, Key="shared/model.bin", Body=body)
    async with s3_puller(tmp_path / "cache", moto.storage_config()) as (puller, counting):
        results = await asyncio.gather(*(puller.stage(ref(bucket, "shared/model.bin")) for _ in range(8)))
        assert counting.lists == 1 and counting.fetches == {"shared/model.bin": 1}
        assert len({r.local_path for r in results}) == 1
        assert (results[0].local_path / "model.bin").read_bytes() == body
        (info,) = puller.cache_usage().artifacts
        assert info.holds == 8
        # a different reference to the same source shares the same copy
        same = await puller.stage(StorageRef(storage_uri=f"s3://{bucket}/shared/model.bin", storage_key="s3"))
        assert same.key == results[0].key and counting.lists == 1
        for _ in range(9):
            await puller.release(same.key)
        assert puller.cache_usage().artifacts[0].holds == 0


async def test_budget_eviction_lru_and_held(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    client = moto.client()
    for name, size in (("a", 1), ("b", 1), ("c", 2), ("d", 2)):
        client.put_object(Bucket=bucket, Key=f"{name}.bin", Body=bytes([ord(name)]) * (size * MiB))
    cache = tmp_path / "cache"
    async with s3_puller(cache, moto.storage_config(), cache_budget_bytes=3 * MiB) as (puller, _):
        a = await puller.stage(ref(bucket, "a.bin"))
        b = await puller.stage(ref(bucket, "b.bin"))
        await puller.release(a.key)
        await puller.release(b.key)
        again = await puller.stage(ref(bucket, "a.bin"))  # a is now the more recently used
        assert again == a and again.from_cache and not a.from_cache
        await puller.release(a.key)
        c = await puller.stage(ref(bucket, "c.bin"))  # needs 2 MiB: evicts b, the least recently used
        assert not b.local_path.exists() and a.local_path.exists()
        assert {x.key for x in puller.cache_usage().artifacts} == {a.key, c.key}
        # c is held; d (2 MiB) fits only by evicting c: over budget, and nothing is evicted
        with pytest.raises(OverBudget, match="held by loaded models") as err:
            await puller.stage(ref(bucket, "d.bin"))
        assert err.value.code == "resource_exhausted"
        assert a.local_path.exists() and c.local_path.exists()
        assert puller.cache_usage().used_bytes == 3 * MiB
        await puller.release(c.key)
        d = await puller.stage(ref(bucket, "d.bin"))  # LRU first: a (1 MiB) is not enough, c goes too
        assert d.local_path.exists() and not a.local_path.exists() and not c.local_path.exists()
        assert puller.cache_usage().used_bytes == 2 * MiB
    assert len(visible(cache)) == len(puller.cache_usage().artifacts)


async def test_restart_with_a_warm_cache(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    client = moto.client()
    for name in ("x", "y"):
        client.put_object(Bucket=bucket, Key=f"{name}.bin", Body=name.encode() * 1000)
    cache = tmp_path / "cache"
    async with s3_puller(cache, moto.storage_config()) as (puller, _):
        x = await puller.stage(ref(bucket, "x.bin"))
        y = await puller.stage(ref(bucket, "y.bin"))
        await puller.release(x.key)
        await puller.release((await puller.stage(ref(bucket, "x.bin"))).key)  # x used last
    (cache / "staging" / "interrupted.1234").mkdir(parents=True)  # a pull a crash left behind
    (cache / "staging" / "interrupted.1234" / "part").write_bytes(b"partial")
    async with s3_puller(cache, moto.storage_config(), cache_budget_bytes=2500) as (puller, counting):
        assert not (cache / "staging" / "interrupted.1234").exists()
        usage = puller.cache_usage()
        assert [a.key for a in usage.artifacts] == [y.key, x.key]  # LRU order survived
        assert all(a.holds == 0 for a in usage.artifacts) and usage.used_bytes == 2000
        again = await puller.stage(ref(bucket, "x.bin"))
        assert again == x and again.from_cache and counting.lists == 0 and not counting.fetches
        client.put_object(Bucket=bucket, Key="z.bin", Body=b"z" * 1000)
        await puller.stage(ref(bucket, "z.bin"))  # needs 1000 bytes: y (LRU, unheld) goes
        assert not y.local_path.exists() and x.local_path.exists()


async def test_interrupted_download_leaves_nothing_then_retry_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = MotoProcess()
    body = os.urandom(48 * MiB)
    try:
        client = server.client()
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key="big.bin", Body=body)
        cache = tmp_path / "cache"
        # kill -9 the server when the first bytes arrive: mid-transfer, deterministically
        async with s3_puller(cache, server.storage_config(), hook=server.kill, chunk_bytes=256 << 10) as (puller, counting):
            with pytest.raises(StorageUnavailable, match="after 3 attempts") as err:
                await puller.stage(StorageRef(storage_key="s3", path="big.bin"))
            assert err.value.code == "unavailable"
            # the first attempt was cut mid-body, the two retries found the server gone
            assert counting.fetches == {"big.bin": 3}
            assert "IncompleteRead" in caplog.text
            assert visible(cache) == [] and puller.cache_usage().used_bytes == 0
            assert puller.in_progress() == []
            server.start(server.port)  # back on the same port (its data is gone: upload again)
            client = server.client()
            client.create_bucket(Bucket="models")
            client.put_object(Bucket="models", Key="big.bin", Body=body)
            counting.on_first_write = None
            staged = await puller.stage(StorageRef(storage_key="s3", path="big.bin"))
            got = hashlib.sha256((staged.local_path / "big.bin").read_bytes()).digest()
            assert got == hashlib.sha256(body).digest()
    finally:
        server.stop()


class RssSampler:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.005)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


async def test_large_object_streams_with_flat_memory(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    size = 200 * MiB
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:  # sparse: cheap to make, reads as zeros
        f.truncate(size)
    client = moto.client()
    with open(source, "rb") as f:
        client.put_object(Bucket=bucket, Key="big.bin", Body=f)
    client.put_object(Bucket=bucket, Key="warm.bin", Body=b"w")
    source.unlink()
    cache = tmp_path / "cache"
    async with s3_puller(cache, moto.storage_config()) as (puller, _):
        await puller.stage(ref(bucket, "warm.bin"))  # imports and clients warmed before measuring
        gc.collect()
        baseline = psutil.Process().memory_info().rss
        start = time.perf_counter()
        with RssSampler() as sampler:
            staged = await puller.stage(ref(bucket, "big.bin"))
        elapsed = time.perf_counter() - start
    growth = sampler.peak - baseline
    assert staged.size_bytes == size and (staged.local_path / "big.bin").stat().st_size == size
    print(f"200 MiB via S3: {elapsed:.2f}s, {size / elapsed / MiB:.0f} MiB/s, peak RSS growth {growth / MiB:.1f} MiB (baseline {baseline / MiB:.0f} MiB)")
    assert growth < 40 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB while streaming {size / MiB:.0f} MiB"


async def test_archives_and_hostile_object_keys(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("model/model.onnx", b"onnx" * 50), ("model/config.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    client = moto.client()
    client.put_object(Bucket=bucket, Key="packed/model.tar.gz", Body=buf.getvalue())
    client.put_object(Bucket=bucket, Key="hostile/ok.bin", Body=b"ok")
    client.put_object(Bucket=bucket, Key="hostile/../../../../escape.bin", Body=b"evil")
    client.put_object(Bucket=bucket, Key="clash/a", Body=b"file")
    client.put_object(Bucket=bucket, Key="clash/a/b", Body=b"file under the file")
    cache = tmp_path / "cache"
    async with s3_puller(cache, moto.storage_config()) as (puller, counting):
        packed = await puller.stage(ref(bucket, "packed/model.tar.gz"))
        assert files_under(packed.local_path) == {"model/model.onnx": b"onnx" * 50, "model/config.json": b"{}"}
        assert packed.size_bytes == 202  # the unpacked bytes; the archive itself is gone
        with pytest.raises(InvalidStorageRef, match="unsafe name"):
            await puller.stage(ref(bucket, "hostile"))
        with pytest.raises(InvalidStorageRef, match="also a prefix"):
            await puller.stage(ref(bucket, "clash"))
        assert not counting.fetches["hostile/ok.bin"]  # rejected before any download
    assert visible(cache) == [f"artifacts/{packed.key}"]
    assert not list(tmp_path.rglob("escape.bin"))


async def test_each_transfer_is_verified_once(tmp_path: Path, moto: MotoProcess, bucket: str) -> None:
    """A store-side CRC (checked by botocore while streaming) or else the ETag's MD5."""
    import boto3
    from botocore.config import Config

    with_crc = b"crc" * 1000
    moto.client().put_object(Bucket=bucket, Key="crc.bin", Body=with_crc)
    plain = boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required"),
    )
    no_crc = b"md5" * 1000
    plain.put_object(Bucket=bucket, Key="md5.bin", Body=no_crc)
    sinks: dict[str, ObjectSink] = {}
    async with s3_puller(tmp_path / "cache", moto.storage_config()) as (puller, counting):
        inner = counting.fetch

        async def capture(source: Any, obj: Any, sink: ObjectSink) -> None:
            sinks[obj.name] = sink
            await inner(source, obj, sink)

        counting.fetch = capture  # type: ignore[method-assign]
        await puller.stage(ref(bucket, "crc.bin"))
        await puller.stage(ref(bucket, "md5.bin"))
    assert sinks["crc.bin"].expected_md5 is None  # botocore checked the CRC32 instead
    assert sinks["md5.bin"].expected_md5 == hashlib.md5(no_crc).hexdigest()
