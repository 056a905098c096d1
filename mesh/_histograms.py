"""Histograms for the per-request path: one bisect and two list increments per observation.

prometheus-client's ``Histogram.observe`` takes two locks and walks its buckets in a loop,
~1.5 us an observation; a local hit records six of them (request time, both payload sizes,
the runtime call's time, its batch's size and queue time), a sizable share of what the mesh adds to a
sub-millisecond inference. A :class:`HotHistogram` keeps, per label set, a plain list of
bucket counts with the sum at its end, written by one thread (the event loop, where every
request is timed) without a lock, and read by the scrape from any thread as a snapshot
(copying a list is one step under the GIL: a snapshot's buckets and count always agree, and
its sum may miss the one observation in progress, as prometheus-client's may).

It is exposed as prometheus-client exposes a ``Histogram``: the same ``_bucket`` (cumulative,
``le`` spelled as prometheus-client spells it), ``_count`` and ``_sum`` samples, and an
unlabelled histogram is present before its first observation. It leaves out ``_created``,
as ModelMesh does.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class HotChild:
    """One label set's histogram: ``observe`` from a single thread only (see the module docstring)."""

    __slots__ = ("_bounds", "_counts")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts: list[float] = [0] * (len(bounds) + 2)  # a bucket per bound, +Inf, then the sum

    def observe(self, value: float) -> None:
        counts = self._counts
        counts[bisect_left(self._bounds, value)] += 1  # first bound >= value: le is inclusive
        counts[-1] += value

    def snapshot(self) -> tuple[list[float], float]:
        """Cumulative bucket counts (the last one is the count) and the sum, from one copy."""
        counts = list(self._counts)
        cumulative: list[float] = []
        total = 0.0
        for c in counts[:-1]:
            total += c
            cumulative.append(total)
        return cumulative, counts[-1]


class HotHistogram(Collector):
    """A histogram metric whose children are :class:`HotChild`; registered with ``registry``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be strictly increasing")
        if bounds and bounds[-1] == float("inf"):
            bounds = bounds[:-1]
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HotChild] = {}
        self._lock = threading.Lock()  # taken only to add a label set
        if not self.labelnames:
            self._children[()] = HotChild(bounds)
        registry.register(self)

    def labels(self, *values: str) -> HotChild:
        """The child of one label set (made on first use; keep it rather than looking it up per call)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, HotChild(self._bounds))
        return child

    def observe(self, value: float) -> None:
        """Observe on the unlabelled histogram."""
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: observe on .labels(...)")
        self._children[()].observe(value)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            cumulative, total = child.snapshot()
            family.add_metric(list(key), list(zip(self._les, cumulative, strict=True)), total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class HotCounter(Collector):
    """A counter without labels for the per-request path: ``inc`` is one addition, from a single
    thread (the event loop), read by the scrape from any thread. prometheus-client's ``Counter.inc``
    takes a lock and goes through four calls. Exposed as prometheus-client exposes a ``Counter``
    (``<name>_total``), without ``_created``."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up (inc by {amount})")
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)
