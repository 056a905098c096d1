from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mesh.cluster import MemoryCluster, ProcessCluster

CLUSTER_KINDS = [pytest.param("memory", id="memory"), pytest.param("etcd", id="etcd", marks=pytest.mark.etcd)]


@pytest.fixture(params=CLUSTER_KINDS)
def cluster_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_cluster(
    cluster_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    made: list[Any] = []

    async def make(n: int = 3, *, capacity_bytes: int = 256 << 20, etcd: Any = None, **overrides: Any) -> Any:
        if cluster_kind == "memory":
            c: Any = MemoryCluster(n, tmp_path, capacity_bytes=capacity_bytes, overrides=overrides)
        else:
            if etcd is None:
                etcd = request.getfixturevalue("etcd_server")
            prefix = request.getfixturevalue("key_prefix")
            c = ProcessCluster(n, tmp_path, etcd.endpoint, prefix.rstrip("/"), capacity_bytes=capacity_bytes, overrides=overrides)
        made.append(c)
        await c.start()
        return c

    yield make
    for c in made:
        await c.close()
