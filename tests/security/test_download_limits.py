"""Hostile sources try to exhaust the cache or the download slots: a declared size beyond the
budget, a body with no length that never stops growing, a body longer than it declared, a
trickle that never ends, and a slow host holding every slot. Each is cut off, its partial
download removed, and a victim's staged artifact stays."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from puller import (
    IntegrityError,
    Meter,
    ObjectSink,
    OverBudget,
    Puller,
    PullTimeout,
    RemoteObject,
    StorageRef,
)
from tests.mesh.cluster import wait_until
from tests.puller.pullhelp import files_under, settings, visible
from tests.security.sechelp import recorders

MiB = 1 << 20


async def test_budget_reserved_before_and_enforced_during_download(tmp_path: Path) -> None:
    with recorders(1) as (server,):
        server.files["/victim.bin"] = b"v" * 1000
        server.files["/held.bin"] = b"h" * 1000
        server.lies["/declares-huge"] = (64 * MiB, b"x" * 1000)  # Content-Length beyond the budget
        server.chunked["/endless"] = (b"y" * (64 << 10), 200)  # no length, 12.5 MiB
        cache = tmp_path / "cache"
        puller = Puller(settings(cache, cache_budget_bytes=2 * MiB, retries=0))
        try:
            held = await puller.stage(StorageRef(storage_uri=server.url("/held.bin")))
            victim = await puller.stage(StorageRef(storage_uri=server.url("/victim.bin")))
            await puller.release(victim.key)  # unheld: evictable, if eviction could help
            with pytest.raises(OverBudget):
                await puller.stage(StorageRef(storage_uri=server.url("/declares-huge")))
            with pytest.raises(OverBudget):
                await puller.stage(StorageRef(storage_uri=server.url("/endless")))
            usage = puller.cache_usage()
            assert usage.used_bytes == 2000 and puller._cache.reserved_bytes == 0
        finally:
            await puller.close()
        # the chunked body was cut off near the budget, not read to its end
        assert server.sent["/endless"] < 200 * (64 << 10)
        assert visible(cache) == sorted([f"artifacts/{held.key}", f"artifacts/{victim.key}"])
        assert list((cache / "staging").iterdir()) == []
        assert files_under(victim.local_path) == {"victim.bin": b"v" * 1000}


async def test_body_longer_than_declared_is_cut_off(tmp_path: Path) -> None:
    with recorders(1) as (server,):
        server.lies["/liar.bin"] = (1000, b"z" * 500_000)
        cache = tmp_path / "cache"
        puller = Puller(settings(cache, retries=1))
        try:
            staged = await puller.stage(StorageRef(storage_uri=server.url("/liar.bin")))
        finally:
            await puller.close()
        # HTTP: the body ends where Content-Length says; the rest is never written
        assert files_under(staged.local_path) == {"liar.bin": b"z" * 1000}
        assert staged.size_bytes == 1000
    # any provider (S3 and Azure stream through here): the sink refuses the excess before writing it
    target = tmp_path / "obj.bin"
    with ThreadPoolExecutor(1) as pool:
        sink = ObjectSink(target, RemoteObject("obj.bin", "obj.bin", size_bytes=1000), Meter(), pool, what="obj")
        sink.write(b"a" * 600)
        with pytest.raises(IntegrityError, match="more than the expected 1000 bytes"):
            sink.write(b"b" * 600)
        sink.abort()
    assert target.stat().st_size == 600


async def test_every_pull_has_an_overall_deadline(tmp_path: Path) -> None:
    with recorders(1) as (server,):
        server.trickle["/slow.bin"] = 100  # 2 KB/s, forever: never a read timeout
        cache = tmp_path / "cache"
        puller = Puller(settings(cache, pull_deadline_s=1.0, request_timeout_s=30))
        try:
            start = time.monotonic()
            with pytest.raises(PullTimeout) as timed_out:
                await puller.stage(StorageRef(storage_uri=server.url("/slow.bin")))
            assert time.monotonic() - start < 15
            assert timed_out.value.code == "deadline_exceeded"
            assert puller._cache.reserved_bytes == 0
        finally:
            await puller.close()
        await wait_until(lambda: not any((cache / "staging").iterdir()), 10, "staging removed")
        assert visible(cache) == []


async def test_a_slow_host_cannot_hold_every_slot(tmp_path: Path) -> None:
    with recorders(2) as (slow, fast):
        for i in range(3):
            slow.trickle[f"/s{i}.bin"] = 10
        fast.files["/f.bin"] = b"fast"
        puller = Puller(settings(tmp_path / "cache", max_concurrent_pulls=2, max_pulls_per_source=1))
        try:
            stuck = [
                asyncio.create_task(puller.stage(StorageRef(storage_uri=slow.url(f"/s{i}.bin")))) for i in range(3)
            ]
            await wait_until(lambda: len(slow.seen) >= 1, 10, "the slow host is being read")
            staged = await asyncio.wait_for(puller.stage(StorageRef(storage_uri=fast.url("/f.bin"))), 10)
            assert files_under(staged.local_path) == {"f.bin": b"fast"}
            assert len(slow.seen) == 1  # the other two wait for the host's slot, holding none of the puller's
            assert not any(t.done() for t in stuck)
            for t in stuck:
                t.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        finally:
            await puller.close()
