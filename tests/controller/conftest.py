"""Fixtures: an API-server stand-in, a local mesh (memory store or real etcd) and a controller between them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesh import Store, StoreSettings, build_store
from tests.controller.apiserver import FakeApiServer
from tests.controller.k8s_env import ControllerEnv, stop_controller_parts
from tests.mesh.conftest import cluster_kind, make_cluster  # noqa: F401  (the local mesh fixtures)


@pytest.fixture
async def k8s_env(make_cluster: Any, cluster_kind: str, tmp_path: Path) -> AsyncIterator[ControllerEnv]:  # noqa: F811
    cluster = await make_cluster(2, capacity_bytes=512 << 20)
    own_store = None
    if cluster_kind == "memory":
        store: Store = cluster.store
        prefix = "/modelmux"
    else:
        prefix = cluster.prefix
        own_store = store = build_store(StoreSettings(kind="etcd", endpoints=[cluster.etcd], prefix=prefix))
    api = FakeApiServer()
    api.start()
    env = ControllerEnv(api, cluster, store, prefix)
    try:
        yield env
    finally:
        for entry in list(env.made):
            await stop_controller_parts(*entry)
        api.stop()
        if own_store is not None:
            await own_store.close()
