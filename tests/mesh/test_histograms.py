"""The per-request histograms and counter (mesh._histograms) are scraped exactly as prometheus-client's own."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh._histograms import HotCounter, HotHistogram
from mesh._metrics import MESSAGE_SIZE_BUCKETS, MS_BUCKETS


def _samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry).decode()
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.name.endswith("_created")
    )


# values on, just under and just over bounds, zero, negative, beyond the last bound
VALUES = [0.0, -1.0, 0.5, 0.50001, 1, 1.999, 2, 75, 120000, 300000, 300000.5, 1e9, 3.25, 0.25, 10, 10]


@pytest.mark.parametrize("labels", [(), ("method", "code")])
def test_exposition_equals_prometheus_clients_histogram(labels: tuple[str, ...]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("m_ms", "doc", labels, buckets=MS_BUCKETS, registry=ours)
    ref = Histogram("m_ms", "doc", labels, buckets=MS_BUCKETS, registry=theirs)
    if not labels:  # an unlabelled histogram is there before its first observation
        assert _samples(ours) == _samples(theirs)
    for i, v in enumerate(VALUES):
        values = ("ModelInfer", "OK" if i % 3 else "NOT_FOUND") if labels else ()
        (hot.labels(*values) if labels else hot).observe(v)
        (ref.labels(*values) if labels else ref).observe(v)
    got = _samples(ours)
    assert got == _samples(theirs)
    assert any(name == "m_ms_bucket" and dict(lab)["le"] == "+Inf" for name, lab, _ in got)


def test_byte_buckets_and_describe() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("b", "bytes", ("code",), buckets=MESSAGE_SIZE_BUCKETS, registry=ours)
    ref = Histogram("b", "bytes", ("code",), buckets=MESSAGE_SIZE_BUCKETS, registry=theirs)
    for v in (0, 127, 128, 129, 2 << 20, (2 << 20) + 1, 5000):
        hot.labels("OK").observe(v)
        ref.labels("OK").observe(v)
    assert _samples(ours) == _samples(theirs)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # its name is claimed at registration
        Histogram("b", "again", registry=ours)


def test_counter_exposition_equals_prometheus_clients_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("hits", "Requests served here", registry=ours)
    ref = Counter("hits", "Requests served here", registry=theirs)
    assert _samples(ours) == _samples(theirs)  # there, at 0, before the first increment
    for amount in (1, 1, 2.5, 0):
        hot.inc(amount)
        ref.inc(amount)
    assert _samples(ours) == _samples(theirs) == [("hits_total", (), 4.5)]
    assert "# TYPE hits_total counter" in generate_latest(ours).decode()
    with pytest.raises(ValueError, match="only goes up"):
        hot.inc(-1)
    assert _samples(ours) == [("hits_total", (), 4.5)]  # the refused decrement changed nothing
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("hits", "again", registry=ours)


def test_misuse_is_refused() -> None:
    r = CollectorRegistry()
    h = HotHistogram("h", "doc", ("a",), buckets=(1, 2), registry=r)
    with pytest.raises(ValueError, match="expected 1 label"):
        h.labels("x", "y")
    with pytest.raises(ValueError, match="has labels"):
        h.observe(1)
    with pytest.raises(ValueError, match="increasing"):
        HotHistogram("g", "doc", buckets=(2, 1), registry=r)


def test_a_scrape_during_observations_is_consistent() -> None:
    """Observed on one thread, scraped on another: every snapshot's count equals its +Inf bucket,
    its buckets never decrease and its sum is at most the observation in progress behind."""
    r = CollectorRegistry()
    h = HotHistogram("c", "doc", buckets=(1, 2, 5), registry=r)
    done = threading.Event()
    bad: list[str] = []

    def scrape() -> None:
        while not done.is_set():
            fam = next(iter(h.collect()))
            buckets = [s.value for s in fam.samples if s.name == "c_bucket"]
            count = next(s.value for s in fam.samples if s.name == "c_count")
            total = next(s.value for s in fam.samples if s.name == "c_sum")
            if buckets != sorted(buckets) or buckets[-1] != count or total not in (count * 3, count * 3 - 3):
                bad.append(f"{buckets} {count} {total}")

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for _ in range(200_000):
            h.observe(3)
    finally:
        done.set()
        t.join()
    assert bad == []
    assert r.get_sample_value("c_count") == 200_000
    assert r.get_sample_value("c_bucket", {"le": "5.0"}) == 200_000
    assert r.get_sample_value("c_bucket", {"le": "2.0"}) == 0
