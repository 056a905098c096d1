"""Shared test setup: tests/ is a package (``from tests.mesh.cluster import ...``); etcd fixtures."""

from __future__ import annotations

from tests.etcd_server import check_etcd_marker, etcd_factory, etcd_server, key_prefix, store  # noqa: F401


def pytest_runtest_setup(item):  # type: ignore[no-untyped-def]
    check_etcd_marker(item)
