"""The set of adapters a process serves with, keyed by model type."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ._base import FrameworkAdapter, RuntimeAdapter, WorkerPools
from ._errors import UnsupportedModelType
from ._onnx import OnnxAdapter
from ._settings import AdapterSettings
from ._torch import TorchAdapter
from ._xgboost import XGBoostAdapter

log = logging.getLogger(__name__)

FRAMEWORK_ADAPTERS: tuple[type[FrameworkAdapter], ...] = (OnnxAdapter, TorchAdapter, XGBoostAdapter)


class AdapterRegistry:
    """Adapters by model type (case-insensitive).

    With ``adapters=None`` it builds one adapter per installed framework (ONNX Runtime,
    torch, XGBoost; a missing one is skipped) sharing one set of worker pools, which
    :meth:`close` shuts down. Given adapters are used as they are and closed by :meth:`close`.
    Frameworks are found without importing them; each is imported on its first load.
    """

    def __init__(self, settings: AdapterSettings, adapters: Sequence[RuntimeAdapter] | None = None) -> None:
        self.settings = settings
        self._pools: WorkerPools | None = None
        if adapters is None:
            self._pools = WorkerPools(settings)
            built: list[RuntimeAdapter] = []
            for cls in FRAMEWORK_ADAPTERS:
                if cls.available():
                    built.append(cls(settings, self._pools))
                else:
                    log.info("%s is not installed: %s models are not served", cls.module, cls.name)
            adapters = built
        self._adapters: tuple[RuntimeAdapter, ...] = tuple(adapters)
        self._by_type: dict[str, RuntimeAdapter] = {}
        for adapter in self._adapters:
            for mtype in adapter.model_types:
                self._by_type.setdefault(mtype.lower(), adapter)

    @property
    def adapters(self) -> tuple[RuntimeAdapter, ...]:
        return self._adapters

    @property
    def model_types(self) -> tuple[str, ...]:
        """Every model type some adapter serves (lower-case)."""
        return tuple(self._by_type)

    def for_type(self, model_type: str) -> RuntimeAdapter:
        adapter = self._by_type.get(model_type.strip().lower())
        if adapter is None:
            known = ", ".join(self._by_type) or "none"
            raise UnsupportedModelType(f"model type '{model_type}' is not supported here (supported: {known})")
        return adapter

    async def close(self) -> None:
        """Shut the executors down (waits for work in flight)."""
        for adapter in self._adapters:
            await adapter.close()
        if self._pools is not None:
            await self._pools.close()


def build_registry(settings: AdapterSettings) -> AdapterRegistry:
    """A registry with every installed framework (see :class:`AdapterRegistry`)."""
    return AdapterRegistry(settings)
