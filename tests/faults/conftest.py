"""Fixtures of the fault tests: process clusters over real etcd, a management client, models.

Every test here runs ``modelmux serve`` processes over a real etcd (``etcd`` mark), kills /
pauses / restarts them under steady traffic (``traffic.Traffic``) and asserts counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.faulthelp import LEASE_TTL_S
from tests.mesh.cluster import ProcessCluster


@pytest.fixture
async def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """``await make_cluster(n, etcd=None, capacity_bytes=..., env={...}, **instance_overrides)``."""
    made: list[ProcessCluster] = []

    async def make(
        n: int = 3, *, etcd: Any = None, capacity_bytes: int = 256 << 20, env: dict[str, str] | None = None, **overrides: Any
    ) -> ProcessCluster:
        if etcd is None:
            etcd = request.getfixturevalue("etcd_server")
        prefix = request.getfixturevalue("key_prefix")
        c = ProcessCluster(
            n,
            tmp_path,
            etcd.endpoint,
            prefix.rstrip("/"),
            capacity_bytes=capacity_bytes,
            overrides={"lease_ttl_s": LEASE_TTL_S, **overrides},
            env=env,
        )
        made.append(c)
        await c.start()
        return c

    yield make
    for c in made:
        await c.close()
