"""Request metrics, timed in one place: a client's request where it entered the mesh (``api``), and
one call into a local runtime (``invoke``). The data plane opens the first, the router the second."""

from __future__ import annotations

import time
from types import TracebackType

from ._cluster_mirror import ClusterMirror
from ._metrics import Metrics, code_name


class RequestTimer:
    """Times a block and records it on exit with the status it ended with. The caller may fill in
    ``request_bytes`` / ``response_bytes`` (left < 0: not recorded)."""

    __slots__ = ("_external", "_labels", "_metrics", "_t0", "request_bytes", "response_bytes")

    def __init__(self, metrics: Metrics, external: bool, labels: dict[str, str]) -> None:
        self._metrics = metrics
        self._external = external
        self._labels = labels
        self._t0 = 0.0
        self.request_bytes = -1
        self.response_bytes = -1

    def __enter__(self) -> RequestTimer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._metrics.request(
            external=self._external,
            code=code_name(exc),
            elapsed_ms=(time.perf_counter() - self._t0) * 1000,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes if exc is None else -1,
            **self._labels,
        )


class RequestMetrics:
    def __init__(self, metrics: Metrics, mirror: ClusterMirror) -> None:
        self.metrics = metrics
        self.mirror = mirror

    def label_ids(self, name: str) -> dict[str, str]:
        """``model_id`` / ``vmodel_id`` labels of a requested name (empty unless per-model labels are on)."""
        if not self.metrics.per_model_labels:
            return {}
        vm = self.mirror.vmodels.items.get(name)
        return {"model_id": vm.active, "vmodel_id": name} if vm is not None else {"model_id": name, "vmodel_id": ""}

    def api(self, name: str) -> RequestTimer:
        """A client's inference request (not one forwarded by a peer)."""
        return RequestTimer(self.metrics, True, self.label_ids(name))

    def invoke(self, model_id: str, name: str) -> RequestTimer:
        """One inference call into a copy loaded on this instance."""
        return RequestTimer(self.metrics, False, {"model_id": model_id, "vmodel_id": name if name != model_id else ""})
