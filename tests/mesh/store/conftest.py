"""Fixtures for the store tests: every test taking ``store`` runs against memory, the durable
SQLite store and etcd.

The memory and sqlite variants here runs on a manual clock (``clock`` fixture) so lease expiry is
driven by the test; ``expire_lease`` makes a lease lapse on either kind (etcd: real time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mesh._store import EtcdStore, MemoryStore, SqliteStore, Store, WatchEvent
from tests.etcd_server import (  # noqa: F401
    EtcdServer,
    check_etcd_marker,
    etcd_factory,
    etcd_server,
    key_prefix,
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_etcd_marker(item)


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store(
    request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "store", clock=clock)
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        s = EtcdStore([("127.0.0.1", server.client_port)], op_timeout_s=2.0)
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            await s.close()


@pytest.fixture
def expire_lease(clock: ManualClock) -> Callable[[Store, int], Awaitable[None]]:
    """Make a lease lapse: memory advances the clock past the TTL; etcd lets real time pass
    (the caller then waits for the resulting delete events with a deadline)."""

    async def expire(store: Store, ttl_s: int) -> None:
        if isinstance(store, SqliteStore):
            clock.advance(ttl_s + 1)
            await store.expire_leases()
        elif isinstance(store, MemoryStore):
            clock.advance(ttl_s + 1)
            store.expire_leases_now()

    return expire


async def collect(
    watch: AsyncGenerator[list[WatchEvent], None], n_events: int, timeout_s: float = 10.0
) -> list[WatchEvent]:
    """Read batches until at least ``n_events`` events arrived (fails after ``timeout_s``)."""
    events: list[WatchEvent] = []
    async with asyncio.timeout(timeout_s):
        while len(events) < n_events:
            events.extend(await anext(watch))
    return events


@pytest.fixture
def collect_events() -> Callable[..., Awaitable[list[WatchEvent]]]:
    return collect
