"""Our text encoder writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from exporter.exposition import encode_text


class Fixed(Collector):
    def __init__(self, metrics: list) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics


def registry(*metrics) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    reg.register(Fixed(list(metrics)))
    return reg


text = st.text(max_size=12)  # any unicode, quotes, backslashes, newlines, surrogates excluded below
names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:.\-]{0,15}", fullmatch=True)
values = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)
          | st.sampled_from([0.0, -0.0, 1e-7, 999999.9999999, 1e6, -1e6, 123456789.123, -5e15, 1e16, 2.5e22]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, text, st.lists(names, max_size=3, unique=True),
                          st.lists(st.tuples(st.lists(st.text(max_size=8), min_size=3, max_size=3), values),
                                   max_size=4), st.booleans()), max_size=4))
def test_identical_bytes_for_arbitrary_families(families) -> None:
    metrics = []
    for name, doc, labels, samples, counter in families:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels)
        for label_values, value in samples:
            family.add_metric(label_values[: len(labels)], value, timestamp=1.5 if counter else None)
        metrics.append(family)
    reg = registry(*metrics)
    assert encode_text(reg) == generate_latest(reg)


def test_identical_bytes_for_every_kind_of_family() -> None:
    info = InfoMetricFamily("build", "b", labels=["a"])
    info.add_metric(["x"], {"version": "1"})
    state = StateSetMetricFamily("state", "s", labels=["a"])
    state.add_metric(["x"], {"on": True, "off": False})
    summary = SummaryMetricFamily("lat", "l", labels=["a"])
    summary.add_metric(["x"], count_value=3, sum_value=1.5)
    gh = GaugeHistogramMetricFamily("gh", "g", labels=["a"])
    gh.add_metric(["x"], [("1", 2), ("+Inf", 3)], gsum_value=4)
    counter = CounterMetricFamily("c", "c", labels=["a"], created=123.0)
    counter.add_metric(["x"], 1, created=10.0)
    client = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=client)
    # Collected once, so both encoders see the same values.
    reg = registry(info, state, summary, gh, counter, GaugeMetricFamily("empty", "no samples"), *client.collect())
    assert encode_text(reg) == generate_latest(reg)


class Lazy(Collector):
    """Families built as they are yielded, their label dicts shared by samples and freed afterwards:
    the encoder's per-dict memo must never mistake a new dict for a freed one with the same id."""

    def collect(self):
        from prometheus_client.samples import Sample

        for i in range(200):
            family = GaugeMetricFamily(f"lazy_{i % 7}_{i}", "x", labels=["alias", "market"])
            labels = {"alias": f"a{i}", "market": "usdm" if i % 2 else "coinm"}
            for j in range(3):
                family.samples.append(Sample(family.name, labels, float(i * j), None))
            yield family


def test_shared_label_dicts_of_freed_families_are_not_confused() -> None:
    reg = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    reg.register(Lazy())
    assert encode_text(reg) == generate_latest(reg)
