"""The metric catalogue: every family declared once, the reference generated from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from exporter import schema
from exporter.catalogue import ALL_MARKETS, ENDPOINT_LAYOUTS, FAMILIES, SECTIONS, reference

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("generate_docs", REPO / "docs" / "generate_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_metrics_is_generated_from_the_catalogue() -> None:
    """`make docs` has been run since a family's declaration last changed."""
    generate = _generator()
    page = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert generate.render(page, "metrics", reference()) == page
    for family in FAMILIES.values():
        assert f"| `{family.full_name}" in page


def test_every_field_feeds_a_declared_family() -> None:
    """A layout naming a family the catalogue does not declare would export an undocumented series."""
    layouts = [getattr(schema, name) for name in dir(schema) if name.isupper()]
    fields = [f for layout in layouts if isinstance(layout, tuple) for f in layout if isinstance(f, schema.Field)]
    assert fields
    for field in fields:
        assert field.metric is None or field.metric in FAMILIES, field


def test_every_family_says_where_it_comes_from_and_how_fresh_it_is() -> None:
    for family in FAMILIES.values():
        assert family.sources, f"{family.name}: no endpoint feeds it and none is declared"
        assert family.freshness in ("rest", "event-fresh", "live")
        assert family.type in ("gauge", "counter")
        if "market" in family.labels:
            assert family.markets and set(family.markets) <= set(ALL_MARKETS), family.name
    assert {path for _, path, _ in ENDPOINT_LAYOUTS} >= {"/fapi/v3/balance", "/dapi/v1/balance", "/papi/v1/account"}
    assert sum(len(section) for _, section in SECTIONS) == len(FAMILIES)


def test_label_values_are_declared_once_on_the_families_that_carry_them() -> None:
    from exporter import labelvalues
    from exporter.streams import events

    carried = {(f.name, label): values for f in FAMILIES.values() for label, values in f.label_values}
    for (name, label), values in carried.items():
        assert label in FAMILIES[name].labels, (name, label)
        assert values and len(set(values)) == len(values), (name, label)
    assert carried[("scrape_errors", "reason")] is labelvalues.SCRAPE_ERROR_REASONS
    assert carried[("sub_account_discovery_errors", "reason")] is labelvalues.SCRAPE_ERROR_REASONS
    assert carried[("down_reason", "reason")][:len(labelvalues.SCRAPE_ERROR_REASONS)] == labelvalues.SCRAPE_ERROR_REASONS
    assert carried[("stream_events", "event")] is labelvalues.STREAM_EVENT_KINDS
    # the stream layer counts by the declared set, and every value shows in the reference
    assert tuple(events.StreamState().events) == labelvalues.STREAM_EVENT_KINDS
    text = reference()
    for values in carried.values():
        for value in values:
            assert f"`{value}`" in text
