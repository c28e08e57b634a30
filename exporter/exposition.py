"""The classic text exposition format, byte for byte what prometheus_client's generate_latest writes.

generate_latest validates and escapes every label name and every label value
of every sample. An account's ~30-60 samples repeat the same few label names
and values, and at 500 sub-accounts that per-sample work was 58 % of the
exporter's CPU (py-spy, the sub-account benchmark). This encoder does the same
escaping once per distinct name and value within a scrape, and takes the same
Metric objects from the same registry, so restricted registries (`?name[]=`)
and the OpenMetrics encoder are untouched. tests/test_exposition.py checks that
both give identical bytes, for our families and for arbitrary names, labels and
values; the golden files pin the result.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name, escape_metric_name
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_MUNGED_TYPES = {"counter": ("_total", "counter"), "info": ("_info", "gauge"), "stateset": ("", "gauge"),
                 "gaugehistogram": ("", "histogram"), "unknown": ("", "untyped")}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")


def _value(number: float) -> str:
    """floatToGoString's text, without its work for the common case: a finite float whose repr has no
    exponent to convert (Go writes positive values from 1e6 up with one; repr does too from 1e16)."""
    if number.__class__ is float and -1e6 < number < 1e6:
        return repr(number)
    text: str = floatToGoString(number)
    return text


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_doc(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class Encoder:
    """Escaping done once per distinct metric name, label name and label set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, str] = {}
        self.label_names: dict[str, str] = {}
        self.label_sets: dict[tuple[tuple[str, str], ...], str] = {}
        self.by_id: dict[int, tuple[dict[str, str], str]] = {}

    def metric_name(self, name: str) -> str:
        escaped = self.names.get(name)
        if escaped is None:
            escaped = self.names[name] = escape_metric_name(name, UNDERSCORES)
        return escaped

    def label_str(self, labels: dict[str, str]) -> str:
        # The renderer shares one dict among an account's samples: its id is the cheapest key.
        # The entry holds the dict itself, so no other dict can take its id during this call.
        seen = self.by_id.get(id(labels))
        if seen is not None and seen[0] is labels:
            return seen[1]
        items = tuple(labels.items())
        text = self.label_sets.get(items)
        if text is None:
            key = tuple(sorted(items))
            parts = []
            for name, value in key:
                escaped = self.label_names.get(name)
                if escaped is None:
                    escaped = self.label_names[name] = escape_label_name(name, UNDERSCORES)
                parts.append(f'{escaped}="{_escape_value(value)}"')
            text = self.label_sets[items] = "{" + ",".join(parts) + "}"
        self.by_id[id(labels)] = (labels, text)
        return text

    def sample_line(self, sample: Sample) -> str:
        labels = self.label_str(sample.labels) if sample.labels else ""
        timestamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
        return f"{self.metric_name(sample.name)}{labels} {_value(sample.value)}{timestamp}\n"


Part = tuple[list[tuple[dict[str, str], float]], bytes]  # one target's (labels, value) pairs and their lines


class EncodedFamily(Metric):
    """A family whose samples come in parts (one per target) with their text-format lines already
    encoded: encode_text writes the bytes as they are; other encoders (OpenMetrics) and `name[]`
    filters read the samples, made only when asked for."""

    def __init__(self, name: str, documentation: str, typ: str, sample_name: str, parts: list[Part]) -> None:
        super().__init__(name, documentation, typ)
        self.sample_name = sample_name
        self.parts = parts
        self._joined: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._joined is None:
            name = self.sample_name
            self._joined = [Sample(name, labels, value, None) for part, _ in self.parts for labels, value in part]
        return self._joined

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._joined = value or None

    def _restricted_metric(self, names: Collection[str]) -> Metric | None:
        """`?name[]=`: all samples of the family have one name; keep it whole (and its bytes) or drop it."""
        return self if self.sample_name in names else None


def encode_parts(families: list[tuple[str, list[tuple[dict[str, str], float]]]],
                 encoder: Encoder | None = None) -> list[bytes]:
    """The text-format lines of each family's (labels, value) pairs (one target's parts of the families).

    `encoder`: one kept per target across scrapes (its label strings stay valid: they
    are keyed by the labels themselves), so a changed target costs its values only."""
    encoder = encoder if encoder is not None else Encoder()
    encoder.by_id = {}  # ids are only unique among live objects: valid within one call
    by_id = encoder.by_id
    label_str = encoder.label_str
    out: list[bytes] = []
    for sample_name, pairs in families:
        if not pairs:
            out.append(b"")
            continue
        name = encoder.metric_name(sample_name)
        lines = []
        for labels, value in pairs:
            seen = by_id.get(id(labels))
            text = seen[1] if seen is not None and seen[0] is labels else (label_str(labels) if labels else "")
            cls = value.__class__
            if cls is float and -1e6 < value < 1e6:
                number = repr(value)
            elif cls is int and -1_000_000 < value < 1_000_000:
                number = repr(float(value))
            else:
                number = _value(value)
            lines.append(f"{name}{text} {number}\n")
        out.append("".join(lines).encode("utf-8"))
    return out


def encode_text(registry: Collector) -> bytes:
    """generate_latest(registry) with its default (underscores) escaping, memoised per scrape;
    an EncodedFamily's lines are taken as they are."""
    encoder = Encoder()
    output: list[bytes] = []
    for metric in registry.collect():
        suffix, mtype = _MUNGED_TYPES.get(metric.type, ("", metric.type))
        mname = encoder.metric_name(metric.name + suffix)
        doc = _escape_doc(metric.documentation)
        head = f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n"
        if isinstance(metric, EncodedFamily):
            output.append(head.encode("utf-8"))
            output.extend(text for _, text in metric.parts)
            continue
        lines = [head]
        om_names = {metric.name + s: s for s in _OM_SUFFIXES}
        om_samples: dict[str, list[str]] = {}
        for sample in metric.samples:
            om = om_names.get(sample.name)
            if om is None:
                lines.append(encoder.sample_line(sample))
            else:  # OpenMetrics-only samples go into a gauge of their own, after the family
                om_samples.setdefault(om, []).append(encoder.sample_line(sample))
        for om, om_lines in sorted(om_samples.items()):
            om_name = encoder.metric_name(metric.name + om)
            lines.append(f"# HELP {om_name} {doc}\n# TYPE {om_name} gauge\n")
            lines.extend(om_lines)
        output.append("".join(lines).encode("utf-8"))
    return b"".join(output)
