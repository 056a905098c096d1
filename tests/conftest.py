"""Shared test setup: make the repo root and tests/ importable (model_factory, helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for p in (_TESTS.parent, _TESTS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from etcd_server import check_etcd_marker, etcd_factory, etcd_server, key_prefix, store  # noqa: E402, F401


def pytest_runtest_setup(item):  # type: ignore[no-untyped-def]
    check_etcd_marker(item)
