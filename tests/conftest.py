"""Shared test setup: tests/ is a package (``from tests.mesh.cluster import ...``); etcd fixtures."""

from __future__ import annotations

import os

# before anything imports gRPC (see mesh/__init__.py): the suite forks only to exec
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from tests.etcd_server import check_etcd_marker, etcd_factory, etcd_server, key_prefix, store  # noqa: F401


def pytest_runtest_setup(item):  # type: ignore[no-untyped-def]
    check_etcd_marker(item)
