"""Fixtures for the runtime-adapter tests: a fresh registry per test, models built once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from runtime_adapters import AdapterRegistry, AdapterSettings, build_registry
from tests import model_factory as mf


@pytest.fixture
def settings() -> AdapterSettings:
    return AdapterSettings(infer_workers=4, load_workers=2)


@pytest.fixture
async def registry(settings: AdapterSettings) -> AsyncIterator[AdapterRegistry]:
    reg = build_registry(settings)
    yield reg
    await reg.close()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``built(maker_name, **kwargs)``: a model file made once per session per arguments."""
    cache: dict[tuple[str, tuple[tuple[str, object], ...]], Path] = {}
    root = tmp_path_factory.mktemp("models")

    def get(maker: str, **kwargs: object) -> Path:
        key = (maker, tuple(sorted(kwargs.items())))
        if key not in cache:
            target = root / f"m{len(cache)}"
            cache[key] = getattr(mf, maker)(target, **kwargs)
        return cache[key]

    return get
