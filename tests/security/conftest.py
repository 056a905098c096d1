"""Fixtures of the security tests: one moto S3 server (child process) for the folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.puller.pullhelp import MotoProcess


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoProcess]:
    server = MotoProcess()
    try:
        yield server
    finally:
        server.stop()
