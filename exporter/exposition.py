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


def encode_text(registry: Collector) -> bytes:
    """generate_latest(registry) with its default (underscores) escaping, memoised per scrape."""
    names: dict[str, str] = {}
    label_names: dict[str, str] = {}
    label_sets: dict[tuple[tuple[str, str], ...], str] = {}
    by_id: dict[int, tuple[dict[str, str], str]] = {}
    output: list[str] = []

    def metric_name(name: str) -> str:
        escaped = names.get(name)
        if escaped is None:
            escaped = names[name] = escape_metric_name(name, UNDERSCORES)
        return escaped

    def label_str(labels: dict[str, str]) -> str:
        # The renderer shares one dict among an account's samples: its id is the cheapest key.
        # The entry holds the dict itself, so no other dict can take its id during this call.
        seen = by_id.get(id(labels))
        if seen is not None and seen[0] is labels:
            return seen[1]
        key = tuple(sorted(labels.items()))
        text = label_sets.get(key)
        if text is None:
            parts = []
            for name, value in key:
                escaped = label_names.get(name)
                if escaped is None:
                    escaped = label_names[name] = escape_label_name(name, UNDERSCORES)
                parts.append(f'{escaped}="{_escape_value(value)}"')
            text = label_sets[key] = "{" + ",".join(parts) + "}"
        by_id[id(labels)] = (labels, text)
        return text

    def sample_line(sample: Sample) -> str:
        labels = label_str(sample.labels) if sample.labels else ""
        timestamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
        return f"{metric_name(sample.name)}{labels} {_value(sample.value)}{timestamp}\n"

    for metric in registry.collect():
        suffix, mtype = _MUNGED_TYPES.get(metric.type, ("", metric.type))
        mname = metric_name(metric.name + suffix)
        doc = _escape_doc(metric.documentation)
        output.append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
        om_names = {metric.name + s: s for s in _OM_SUFFIXES}
        om_samples: dict[str, list[str]] = {}
        for sample in metric.samples:
            om = om_names.get(sample.name)
            if om is None:
                output.append(sample_line(sample))
            else:  # OpenMetrics-only samples go into a gauge of their own, after the family
                om_samples.setdefault(om, []).append(sample_line(sample))
        for om, lines in sorted(om_samples.items()):
            om_name = metric_name(metric.name + om)
            output.append(f"# HELP {om_name} {doc}\n# TYPE {om_name} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
