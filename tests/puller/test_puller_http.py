"""HTTP(S) sources against a local server that can fail, stall and die mid-transfer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from puller import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    IntegrityError,
    Puller,
    PullerClosed,
    PullProgress,
    StorageConfig,
    StorageRef,
    StorageTlsError,
    StorageUnavailable,
)
from tests.puller.pullhelp import FileServer, files_under, make_tls, md5_b64, settings, visible

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    srv = FileServer()
    try:
        yield srv
    finally:
        await asyncio.to_thread(srv.kill)


async def test_single_file_headers_and_status_errors(tmp_path: Path, server: FileServer) -> None:
    body = os.urandom(3 * MiB + 17)
    server.files["/m/model.onnx"] = body
    server.content_md5["/m/model.onnx"] = [md5_b64(body)]
    server.required_headers = {"Authorization": "Bearer t0ken"}
    config = StorageConfig.from_mapping(
        {"web": json.dumps({"type": "http", "url": server.url("/"), "headers": {"Authorization": "Bearer t0ken"}})}
    )
    cache = tmp_path / "cache"
    puller = Puller(settings(cache), config)
    try:
        seen: list[PullProgress] = []
        staged = await puller.stage(StorageRef(storage_key="web", path="m/model.onnx"), on_progress=seen.append)
        assert files_under(staged.local_path) == {"model.onnx": body}
        assert staged.size_bytes == len(body)
        assert seen[-1].bytes_done == seen[-1].bytes_total == len(body)
        # the same URL without the key's headers: the server says 401
        with pytest.raises(BadCredentials, match="HTTP 401"):
            await puller.stage(StorageRef(storage_uri=server.url("/m/model.onnx")))
        server.required_headers = {}
        server.status["/forbidden.bin"] = 403
        with pytest.raises(AccessDenied, match=r"/forbidden\.bin"):
            await puller.stage(StorageRef(storage_uri=server.url("/forbidden.bin")))
        with pytest.raises(ArtifactNotFound, match="HTTP 404"):
            await puller.stage(StorageRef(storage_uri=server.url("/missing.bin")))
        server.status["/flaky.bin"] = 503
        with pytest.raises(StorageUnavailable, match=r"HTTP 503.*after 3 attempts"):
            await puller.stage(StorageRef(storage_uri=server.url("/flaky.bin")))
        assert server.requests["/flaky.bin"] == 3 and server.requests["/missing.bin"] == 1
    finally:
        await puller.close()
    assert visible(cache) == [f"artifacts/{staged.key}"]


async def test_checksum_mismatch_is_retried_then_fails_cleanly(tmp_path: Path, server: FileServer) -> None:
    body = b"model bytes" * 1000
    server.files["/a.bin"] = body
    server.content_md5["/a.bin"] = [md5_b64(b"something else"), md5_b64(body)]  # wrong once, then right
    server.files["/b.bin"] = body
    server.content_md5["/b.bin"] = [md5_b64(b"always wrong")]
    cache = tmp_path / "cache"
    puller = Puller(settings(cache))
    try:
        staged = await puller.stage(StorageRef(storage_uri=server.url("/a.bin")))
        assert (staged.local_path / "a.bin").read_bytes() == body and server.requests["/a.bin"] == 2
        with pytest.raises(IntegrityError, match="MD5") as err:
            await puller.stage(StorageRef(storage_uri=server.url("/b.bin")))
        assert err.value.code == "unavailable"
    finally:
        await puller.close()
    assert visible(cache) == [f"artifacts/{staged.key}"]


async def test_dropped_connection_is_retried(tmp_path: Path, server: FileServer) -> None:
    body = os.urandom(4 * MiB)
    server.files["/model.bin"] = body
    server.drop_after["/model.bin"] = MiB + 5  # first response cut after ~1 MiB
    puller = Puller(settings(tmp_path / "cache"))
    try:
        staged = await puller.stage(StorageRef(storage_uri=server.url("/model.bin")))
        assert (staged.local_path / "model.bin").read_bytes() == body
        assert server.requests["/model.bin"] == 2
    finally:
        await puller.close()


async def test_server_killed_mid_transfer_leaves_nothing_and_retry_succeeds(tmp_path: Path, server: FileServer) -> None:
    body = os.urandom(6 * MiB)
    server.files["/big.bin"] = body
    server.stall_after["/big.bin"] = 2 * MiB
    cache = tmp_path / "cache"
    puller = Puller(settings(cache))
    try:
        pull = asyncio.ensure_future(puller.stage(StorageRef(storage_uri=server.url("/big.bin"))))
        assert await asyncio.to_thread(server.stalled.wait, 10)
        deadline = asyncio.get_running_loop().time() + 10
        while not puller.in_progress() or puller.in_progress()[0].bytes_done == 0:  # bytes arrived
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        (progress,) = puller.in_progress()
        assert progress.bytes_total == len(body) and 0 < progress.bytes_done <= 2 * MiB
        assert progress.eta_s is not None and progress.eta_s > 0
        assert visible(cache)[0].startswith("staging/")  # in progress: only the staging dir
        await asyncio.to_thread(server.kill)
        with pytest.raises(StorageUnavailable):
            await pull
        assert visible(cache) == [] and puller.in_progress() == []
        del server.stall_after["/big.bin"]
        await asyncio.to_thread(server.restart)
        staged = await puller.stage(StorageRef(storage_uri=server.url("/big.bin")))
        assert hashlib.sha256((staged.local_path / "big.bin").read_bytes()).digest() == hashlib.sha256(body).digest()
        assert visible(cache) == [f"artifacts/{staged.key}"]
    finally:
        await puller.close()


async def test_single_flight_and_waiter_cancellation(tmp_path: Path, server: FileServer) -> None:
    body = os.urandom(2 * MiB)
    server.files["/shared.bin"] = body
    server.stall_after["/shared.bin"] = MiB
    puller = Puller(settings(tmp_path / "cache"))
    ref = StorageRef(storage_uri=server.url("/shared.bin"))
    try:
        waiters = [asyncio.ensure_future(puller.stage(ref)) for _ in range(5)]
        assert await asyncio.to_thread(server.stalled.wait, 10)
        waiters[0].cancel()  # one caller gives up: the others keep the pull going
        server.stall_after.pop("/shared.bin")
        server.unstall.set()  # the stalled response is cut; the retry completes
        results = await asyncio.gather(*waiters[1:])
        assert waiters[0].cancelled()
        assert {r.local_path for r in results} == {results[0].local_path}
        assert server.requests["/shared.bin"] == 2  # one download (+ one retry after the cut), not five
        assert puller.cache_usage().artifacts[0].holds == 4
        # every caller cancelling cancels the pull itself: nothing is left behind
        server.files["/other.bin"] = body
        server.stall_after["/other.bin"] = MiB
        server.stalled.clear()
        server.unstall.clear()
        lone = asyncio.ensure_future(puller.stage(StorageRef(storage_uri=server.url("/other.bin"))))
        assert await asyncio.to_thread(server.stalled.wait, 10)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        assert puller.in_progress() == []
        assert [a.key for a in puller.cache_usage().artifacts] == [results[0].key]
    finally:
        server.unstall.set()
        await puller.close()
    assert not any((tmp_path / "cache" / "staging").iterdir())


async def test_close_fails_pending_pulls(tmp_path: Path, server: FileServer) -> None:
    server.files["/slow.bin"] = b"x" * (2 * MiB)
    server.stall_after["/slow.bin"] = MiB
    puller = Puller(settings(tmp_path / "cache"))
    pull = asyncio.ensure_future(puller.stage(StorageRef(storage_uri=server.url("/slow.bin"))))
    assert await asyncio.to_thread(server.stalled.wait, 10)
    await puller.close()
    server.unstall.set()
    with pytest.raises(PullerClosed):
        await pull
    with pytest.raises(PullerClosed):
        await puller.stage(StorageRef(storage_uri=server.url("/slow.bin")))


async def test_custom_ca(tmp_path: Path) -> None:
    context, ca_pem = await asyncio.to_thread(make_tls, tmp_path)
    srv = FileServer({"/secure/model.bin": b"tls payload"}, tls=context)
    try:
        config = StorageConfig.from_mapping(
            {"tls": json.dumps({"type": "https", "url": srv.url("/secure"), "certificate": ca_pem})}
        )
        puller = Puller(settings(tmp_path / "cache"), config)
        try:
            staged = await puller.stage(StorageRef(storage_key="tls", path="model.bin"))
            assert (staged.local_path / "model.bin").read_bytes() == b"tls payload"
            with pytest.raises(StorageTlsError, match="TLS verification failed"):  # no CA: rejected, not retried
                await puller.stage(StorageRef(storage_uri=srv.url("/secure/model.bin?no-ca")))
            assert srv.requests["/secure/model.bin?no-ca"] == 0
        finally:
            await puller.close()
    finally:
        await asyncio.to_thread(srv.kill)


CRASHER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from puller import Puller, PullerSettings, StorageRef

    async def main() -> None:
        puller = Puller(PullerSettings(cache_dir=Path(sys.argv[1]), http_allow_private=["127.0.0.1/32"]))
        await puller.start()
        await puller.stage(StorageRef(storage_uri=sys.argv[2]))

    asyncio.run(main())
    """
)


async def test_crash_mid_download_is_cleaned_at_start(tmp_path: Path, server: FileServer) -> None:
    server.files["/crash.bin"] = os.urandom(2 * MiB)
    server.stall_after["/crash.bin"] = MiB
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(cache), server.url("/crash.bin")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert await asyncio.to_thread(server.stalled.wait, 30)
    finally:
        proc.kill()  # kill -9 in the middle of the download
        await asyncio.to_thread(proc.wait)
    leftovers = visible(cache)
    assert leftovers and all(p.startswith("staging/") for p in leftovers)  # a partial pull, not published
    puller = Puller(settings(cache))
    try:
        await puller.start()
        assert visible(cache) == [] and puller.cache_usage().artifacts == ()
    finally:
        await puller.close()


async def test_progress_rate_and_eta_from_the_injected_clock(tmp_path: Path, server: FileServer) -> None:
    now = [100.0]
    server.files["/p.bin"] = os.urandom(4 * MiB)
    server.stall_after["/p.bin"] = MiB
    puller = Puller(settings(tmp_path / "cache", progress_interval_s=5.0), clock=lambda: now[0])
    seen: list[PullProgress] = []
    try:
        pull = asyncio.ensure_future(puller.stage(StorageRef(storage_uri=server.url("/p.bin")), on_progress=seen.append))
        assert await asyncio.to_thread(server.stalled.wait, 10)
        deadline = asyncio.get_running_loop().time() + 10
        while not puller.in_progress() or puller.in_progress()[0].bytes_done < MiB:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        now[0] = 104.0  # 1 MiB in 4 s: 0.25 MiB/s, 3 MiB to go: 12 s
        (p,) = puller.in_progress()
        assert (p.bytes_done, p.bytes_total) == (MiB, 4 * MiB)
        assert p.bytes_per_s == MiB / 4 and p.eta_s == 12.0
        assert len(seen) <= 1  # reports are rate-limited by the interval (5 s on this clock)
        del server.stall_after["/p.bin"]
        server.unstall.set()
        await pull
        assert seen[-1].bytes_done == seen[-1].bytes_total == 4 * MiB and seen[-1].eta_s == 0
    finally:
        await puller.close()
