"""Prometheus metrics of one instance, declared once against an injected registry.

Names follow ModelMesh's where the meaning is the same, so existing dashboards work;
modelmux's own start with ``modelmux_``. No per-model labels unless switched on
(``per_model_labels``): model ids are unbounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_MS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 120000)
_SIZE_BUCKETS = tuple(float(1 << k) for k in range(6, 34, 2))  # 64 B .. 8 GiB


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, per_model_labels: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.per_model_labels = per_model_labels
        r = self.registry
        model = ("modelId",) if per_model_labels else ()
        self.invoke_ms = Histogram("modelmesh_invoke_model_milliseconds", "Inference time of a local copy", model, buckets=_MS_BUCKETS, registry=r)
        self.api_ms = Histogram("modelmesh_api_request_milliseconds", "Time to answer an API request", ("method", "code"), buckets=_MS_BUCKETS, registry=r)
        self.request_bytes = Histogram("modelmesh_request_size_bytes", "Inference request payload size", buckets=_SIZE_BUCKETS, registry=r)
        self.response_bytes = Histogram("modelmesh_response_size_bytes", "Inference response payload size", buckets=_SIZE_BUCKETS, registry=r)
        self.cache_miss_ms = Histogram("modelmesh_cache_miss_milliseconds", "Time a request waited for its model to load", buckets=_MS_BUCKETS, registry=r)
        self.load_ms = Histogram("modelmesh_loadmodel_milliseconds", "Model load time", model, buckets=_MS_BUCKETS, registry=r)
        self.load_failures = Counter("modelmesh_loadmodel_failure", "Failed model loads", model, registry=r)
        self.unload_ms = Histogram("modelmesh_unloadmodel_milliseconds", "Model unload time", model, buckets=_MS_BUCKETS, registry=r)
        self.age_at_eviction_ms = Histogram(
            "modelmesh_age_at_eviction_milliseconds", "Time since last use when a copy was evicted", buckets=(*_MS_BUCKETS, 600000, 3600000), registry=r
        )
        self.loaded_size = Histogram("modelmesh_loaded_model_size_bytes", "Measured size of loaded models", buckets=_SIZE_BUCKETS, registry=r)
        self.models_loaded = Gauge("modelmesh_models_loaded_total", "Models with a loaded copy in the cluster", registry=r)
        self.models_managed = Gauge("modelmesh_models_managed_total", "Registered models", registry=r)
        self.capacity = Gauge("modelmesh_instance_capacity_bytes", "Capacity of this instance", registry=r)
        self.used = Gauge("modelmesh_instance_used_bytes", "Bytes held by loaded and loading copies", registry=r)
        self.instance_models = Gauge("modelmesh_instance_models_total", "Copies loaded on this instance", registry=r)
        self.lru_age = Gauge("modelmesh_instance_lru_age_seconds", "Time since the least recently used copy here was used", registry=r)
        # ours
        self.forwards = Counter("modelmux_forwards_total", "Requests forwarded to another instance", ("result",), registry=r)
        self.local_hits = Counter("modelmux_local_hits_total", "Requests served by a local copy", registry=r)
        self.misses = Counter("modelmux_misses_total", "Requests that found no loaded copy anywhere", registry=r)
        self.decisions = Counter("modelmux_placement_decisions_total", "Placement actions applied by the leader", ("kind", "reason"), registry=r)
        self.puller_bytes = Counter("modelmux_puller_bytes_total", "Artifact bytes staged by the puller", registry=r)
        self.puller_hits = Counter("modelmux_puller_cache_hits_total", "Artifacts served from the local cache", registry=r)

    def labels(self, metric: Histogram | Counter, model_id: str) -> Histogram | Counter:
        return metric.labels(model_id) if self.per_model_labels else metric
