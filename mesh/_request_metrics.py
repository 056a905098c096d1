"""Request metrics, timed in one place: a client's request where it entered the mesh (``api``), and
one call into a local runtime (``invoke``). The data plane opens the first, the router the second."""

from __future__ import annotations

import time
from types import TracebackType

from ._cluster_mirror import ClusterMirror
from ._metrics import Metrics, code_name

_NO_MODEL = ("", "")


class RequestTimer:
    """Times a block and records it on exit with the status it ended with. The caller may fill in
    ``request_bytes`` / ``response_bytes`` (left < 0: not recorded)."""

    __slots__ = ("_external", "_metrics", "_model", "_t0", "request_bytes", "response_bytes")

    def __init__(self, metrics: Metrics, external: bool, model: tuple[str, str]) -> None:
        self._metrics = metrics
        self._external = external
        self._model = model  # (model id, vModel id): labels only with per-model labels on
        self._t0 = 0.0
        self.request_bytes = -1
        self.response_bytes = -1

    def __enter__(self) -> RequestTimer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._metrics.record(
            self._external,
            "OK" if exc is None else code_name(exc),
            self._model,
            (time.perf_counter() - self._t0) * 1000,
            self.request_bytes,
            self.response_bytes if exc is None else -1,
        )


class RequestMetrics:
    def __init__(self, metrics: Metrics, mirror: ClusterMirror) -> None:
        self.metrics = metrics
        self.mirror = mirror

    def label_ids(self, name: str) -> tuple[str, str]:
        """(model id, vModel id) of a requested name: per-model labels' values (unused, and not looked up, unless they are on)."""
        if not self.metrics.per_model_labels:
            return _NO_MODEL
        vm = self.mirror.vmodels.items.get(name)
        return (vm.active, name) if vm is not None else (name, "")

    def api(self, name: str) -> RequestTimer:
        """A client's inference request (not one forwarded by a peer)."""
        return RequestTimer(self.metrics, True, self.label_ids(name))

    def invoke(self, model_id: str, name: str) -> RequestTimer:
        """One inference call into a copy loaded on this instance."""
        return RequestTimer(self.metrics, False, (model_id, name if name != model_id else ""))

    # The gRPC local hit's path records its two timings with these, from its own clock readings,
    # rather than through two RequestTimer blocks (an object and three calls each, per request).

    def api_done(self, name: str, t0: float, request_bytes: int, response_bytes: int, exc: BaseException | None = None) -> None:
        """What :meth:`api`'s timer records for a request that started at ``perf_counter()`` ``t0``
        and ended now, OK or with ``exc``."""
        self.metrics.record(
            True, "OK" if exc is None else code_name(exc), self.label_ids(name),
            (time.perf_counter() - t0) * 1000, request_bytes, response_bytes if exc is None else -1,
        )

    def invoke_done(self, model_id: str, name: str, t0: float, t1: float, exc: BaseException | None = None) -> None:
        """What :meth:`invoke`'s timer records for a call from ``t0`` to ``t1`` (``perf_counter()``)."""
        model = (model_id, name if name != model_id else "") if self.metrics.per_model_labels else _NO_MODEL
        self.metrics.record(False, "OK" if exc is None else code_name(exc), model, (t1 - t0) * 1000)
