"""Prometheus metrics of one instance, declared once against an injected registry.

Names, label names, units and bucket bounds follow ModelMesh's where the meaning is the
same, so existing ModelMesh dashboards and alerts work unchanged:

* request metrics (``modelmesh_api_request_milliseconds`` for requests from clients,
  ``modelmesh_invoke_model_milliseconds`` for calls into a local runtime, and the payload
  sizes) carry ``method`` (the short RPC name, e.g. ``ModelInfer``) and ``code`` (the gRPC
  status name, ``OK`` on success);
* the other event metrics carry no labels;
* with ``per_model_labels`` every histogram also gets ``modelId`` and ``vModelId`` (off by
  default: model ids are unbounded). Counters and gauges never do.
* ``modelmesh_models_loaded_total`` / ``_managed_total`` / ``_with_failure_total`` describe the
  whole cluster and are exported by one instance at a time (the placement leader), as
  ModelMesh exports its "Deployment"-scoped gauges, so that ``sum()`` over pods is right.

Counters are exposed with prometheus-client's ``_total`` suffix (``modelmesh_loadmodel_failure``
is scraped as ``modelmesh_loadmodel_failure_total``). modelmux's own metrics start with
``modelmux_``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._errors import status_for
from ._histograms import HotChild, HotCounter, HotHistogram

_MIN, _H, _D = 60_000, 3_600_000, 86_400_000
# ModelMesh's bounds (milliseconds / bytes)
MS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 300000)
AGE_BUCKETS = (30_000, 5 * _MIN, 15 * _MIN, _H, 4 * _H, 12 * _H, _D, 7 * _D, 30 * _D, 90 * _D)
MODEL_SIZE_BUCKETS = tuple(float((256 << 10) * 4**k) for k in range(8))  # 256 KiB .. 4 GiB
MESSAGE_SIZE_BUCKETS = tuple(float(128 * 4**k) for k in range(8))  # 128 B .. 2 MiB
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
QUEUE_MS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 500)

INFER_METHOD = "ModelInfer"


def code_name(exc: BaseException | None) -> str:
    """The gRPC status name a request ended with (``OK`` for None), as ModelMesh labels ``code``."""
    if exc is None:
        return "OK"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, grpc.aio.AioRpcError):  # a forwarded call's own status
        return str(exc.code().name)
    return str(status_for(exc)[0].grpc.name)


@dataclass(frozen=True)
class ClusterCounts:
    """Cluster-wide model counts, exported only by the instance that reports for the cluster."""

    loaded: int
    with_failure: int
    managed: int


class _ClusterGauges(Collector):
    """The "Deployment"-scoped gauges: present only while ``reporting()`` holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: ClusterCounts | None = None
        self.reporting: Callable[[], bool] = lambda: False

    def set(self, counts: ClusterCounts | None) -> None:
        with self._lock:
            self._counts = counts

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = self._counts
        if counts is None or not self.reporting():
            return
        yield GaugeMetricFamily("modelmesh_models_loaded_total", "Total number of models with at least one loaded copy", value=counts.loaded)
        yield GaugeMetricFamily(
            "modelmesh_models_with_failure_total", "Total number of models with one or more recent load failures", value=counts.with_failure
        )
        yield GaugeMetricFamily("modelmesh_models_managed_total", "Total number of models managed", value=counts.managed)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are not fixed at registration (present only while reporting)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, per_model_labels: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.per_model_labels = per_model_labels
        r = self.registry
        model = ("modelId", "vModelId") if per_model_labels else ()
        req = ("method", "code", *model)

        def ms(name: str, doc: str, labels: tuple[str, ...] = model, buckets: tuple[float, ...] = MS_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        def hot(name: str, doc: str, labels: tuple[str, ...] = model, buckets: tuple[float, ...] = MS_BUCKETS) -> HotHistogram:
            # observed per request, on the event loop (mesh._histograms)
            return HotHistogram(name, doc, labels, buckets=buckets, registry=r)

        # ---- ModelMesh's
        self.api_ms = hot("modelmesh_api_request_milliseconds", "External inference request time", req)
        self.invoke_ms = hot("modelmesh_invoke_model_milliseconds", "Internal model server inference request time", req)
        self.request_bytes = hot("modelmesh_request_size_bytes", "Inference request payload size", req, MESSAGE_SIZE_BUCKETS)
        self.response_bytes = hot("modelmesh_response_size_bytes", "Inference response payload size", req, MESSAGE_SIZE_BUCKETS)
        self.cache_miss_ms = ms("modelmesh_cache_miss_milliseconds", "Cache miss delay")
        self.load_ms = ms("modelmesh_loadmodel_milliseconds", "Time taken to load model")
        self.load_failures = Counter("modelmesh_loadmodel_failure", "Model load failures", registry=r)
        self.unload_ms = ms("modelmesh_unloadmodel_milliseconds", "Time taken to unload model")
        self.unload_failures = Counter(
            "modelmesh_unloadmodel_failure", "Unload model failures (not counting multiple attempts for same copy)", registry=r
        )
        self.loading_queue_ms = ms("modelmesh_loading_queue_delay_milliseconds", "Time spent in model loading queue")
        self.age_at_eviction_ms = ms(
            "modelmesh_age_at_eviction_milliseconds", "Time since model was last used when evicted", buckets=AGE_BUCKETS
        )
        self.loaded_size = ms("modelmesh_loaded_model_size_bytes", "Reported size of loaded model", buckets=MODEL_SIZE_BUCKETS)
        self.capacity = Gauge("modelmesh_instance_capacity_bytes", "Effective model capacity of pod excluding unload buffer", registry=r)
        self.used = Gauge("modelmesh_instance_used_bytes", "Amount of capacity currently in use by loaded models", registry=r)
        self.used_bps = Gauge("modelmesh_instance_used_bps", "Amount of capacity used in basis points (100ths of percent)", registry=r)
        self.instance_models = Gauge("modelmesh_instance_models_total", "Number of model copies loaded in pod", registry=r)
        self.lru_age = Gauge("modelmesh_instance_lru_age_seconds", "Last used age of least recently used model in pod (secs ago)", registry=r)
        self.lru_time = Gauge(
            "modelmesh_instance_lru_seconds", "Last used time of least recently used model in pod (in secs since epoch)", registry=r
        )
        self._request_children: dict[tuple[object, ...], tuple[HotChild, HotChild, HotChild]] = {}
        self._batch_children: dict[str, tuple[HotChild, HotChild]] = {}
        self._cluster = _ClusterGauges()
        r.register(self._cluster)
        # ---- modelmux's
        self.forwards = Counter("modelmux_forwards", "Requests forwarded to another instance, by outcome", ("result",), registry=r)
        self.local_hits = HotCounter("modelmux_local_hits", "Requests served by a copy on this instance", registry=r)
        self.misses = Counter("modelmux_misses", "Model loads requested by this instance's router (no loaded copy anywhere)", registry=r)
        # the store's own size against its quota (registrations are refused past its high-water mark)
        self.store_used = Gauge("modelmux_store_used_bytes", "Bytes the store holds against its quota", registry=r)
        self.store_quota = Gauge("modelmux_store_quota_bytes", "The store's quota (etcd: --quota-backend-bytes)", registry=r)
        self.store_used_ratio = Gauge("modelmux_store_used_ratio", "Fraction of the store's quota in use", registry=r)
        self.decisions = Counter(
            "modelmux_placement_decisions", "Placement actions applied by the leader, by kind and reason", ("kind", "reason"), registry=r
        )
        self.puller_bytes = Counter("modelmux_puller_bytes", "Artifact bytes downloaded (staged) by the puller", registry=r)
        self.puller_pulls = Counter("modelmux_puller_pulls", "Artifacts staged by a download", registry=r)
        # traffic split on vModels: labelled by vModel and target, only for vModels that have a split (few)
        self.split_requests = Counter(
            "modelmux_vmodel_split_requests", "Requests to a split vModel, by the target that served them", ("vmodel", "target"), registry=r
        )
        self.shadow_requests = Counter(
            "modelmux_vmodel_shadow_requests", "Shadow copies of split-vModel requests, by outcome (ok, error, dropped)",
            ("vmodel", "result"), registry=r,
        )
        self.puller_hits = Counter("modelmux_puller_cache_hits", "Artifacts staged from the local cache (no download)", registry=r)
        # admission refusals (RESOURCE_EXHAUSTED / 429): instance_queue, tenant_queue or tenant_rate
        self.admission_refusals = Counter(
            "modelmux_admission_refusals", "Requests refused by admission, by reason", ("reason",), registry=r
        )
        self.batch_size = hot(
            "modelmux_batch_size", "Requests merged into one framework call (1: ran alone)", buckets=BATCH_SIZE_BUCKETS
        )
        self.batch_queue_ms = hot(
            "modelmux_batch_queue_milliseconds", "Time a request waited for its batch to start", buckets=QUEUE_MS_BUCKETS
        )

    # ------------------------------------------------------------ helpers

    def model(self, metric: Histogram, model_id: str, vmodel_id: str = "") -> Histogram:
        """The metric's child for a model (the metric itself unless per-model labels are on)."""
        return metric.labels(model_id, vmodel_id) if self.per_model_labels else metric

    def request(
        self,
        *,
        external: bool,
        code: str,
        elapsed_ms: float,
        request_bytes: int = -1,
        response_bytes: int = -1,
        method: str = INFER_METHOD,
        model_id: str = "",
        vmodel_id: str = "",
    ) -> None:
        """One inference request: from a client (``external``) or into a local runtime; sizes < 0: not recorded."""
        self.record(external, code, (model_id, vmodel_id), elapsed_ms, request_bytes, response_bytes, method)

    def record(
        self,
        external: bool,
        code: str,
        model: tuple[str, str],
        elapsed_ms: float,
        request_bytes: int = -1,
        response_bytes: int = -1,
        method: str = INFER_METHOD,
    ) -> None:
        """:meth:`request`, positional (the per-request path: :class:`mesh._request_metrics.RequestTimer`);
        ``model`` is (model id, vModel id), used only with per-model labels."""
        key = (external, method, code, model) if self.per_model_labels else (external, method, code)
        children = self._request_children.get(key)
        if children is None:  # once per label set, not per request
            labels = (method, code, *model) if self.per_model_labels else (method, code)
            children = self._request_children[key] = (
                (self.api_ms if external else self.invoke_ms).labels(*labels),
                self.request_bytes.labels(*labels),
                self.response_bytes.labels(*labels),
            )
        children[0].observe(elapsed_ms)
        if request_bytes >= 0:
            children[1].observe(request_bytes)
        if response_bytes >= 0:
            children[2].observe(response_bytes)

    def batch_ran(self, model_id: str, size: int, queue_times_s: Sequence[float]) -> None:
        """:class:`runtime_adapters.BatchObserver`: one framework call of ``size`` requests."""
        key = model_id if self.per_model_labels else ""  # one entry without per-model labels
        children = self._batch_children.get(key)
        if children is None:
            labels = (model_id, "") if self.per_model_labels else ()
            children = self._batch_children[key] = (self.batch_size.labels(*labels), self.batch_queue_ms.labels(*labels))
        children[0].observe(size)
        queue = children[1]
        for q in queue_times_s:
            queue.observe(q * 1000)

    def set_store_usage(self, used_bytes: int, quota_bytes: int) -> None:
        self.store_used.set(used_bytes)
        self.store_quota.set(quota_bytes)
        self.store_used_ratio.set(used_bytes / quota_bytes if quota_bytes > 0 else 0.0)

    def report_cluster(self, reporting: Callable[[], bool]) -> None:
        """Export the cluster-wide gauges while ``reporting()`` holds (wired to leadership)."""
        self._cluster.reporting = reporting

    @property
    def reports_cluster(self) -> bool:
        return self._cluster.reporting()

    def set_cluster(self, counts: ClusterCounts) -> None:
        self._cluster.set(counts)
