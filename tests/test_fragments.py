"""Each target's exposition encoded once per change of its data, its bytes reused until then (issue 25)."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from conftest import ACCOUNTS, config_dict, parse_metrics, value
from exporter import render
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.exposition import encode_text
from exporter.web import ScrapeCollector, scrape_registry
from testkit import Simulator

TEXT = {"Accept": "text/plain;version=0.0.4"}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many targets were encoded, per call of the renderer's encoder."""
    calls: list[int] = []
    real = render.encode_parts

    def counting(families, encoder=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(families, encoder)

    monkeypatch.setattr(render, "encode_parts", counting)
    return calls


def test_unchanged_targets_reuse_their_bytes_in_every_format_and_filter(sim: Simulator, make_harness,
                                                                          encodes: list[int]) -> None:
    h = make_harness(config_dict(sim.base_url, cache_seconds=3600))
    first = h.get(headers=TEXT).text
    assert len(encodes) == len(ACCOUNTS)  # one encoding per target
    second = h.get(headers=TEXT).text
    om = h.get(headers=OPENMETRICS).text
    only_up = h.get("/metrics?name[]=binance_futures_up", headers=TEXT).text
    probe = h.get(f"/probe?target={ACCOUNTS[0].alias}", headers=TEXT).text
    assert len(encodes) == len(ACCOUNTS)  # nothing changed: nothing encoded again
    for text in (first, second, probe):
        assert value(parse_metrics(text), "binance_futures_up", alias=ACCOUNTS[0].alias, market="usdm") == 1

    def targets_part(text: str) -> list[str]:  # the per-account families, not the host and process ones
        return [line for line in text.splitlines() if 'alias="' in line]

    assert targets_part(first) == targets_part(second)
    assert [line.split(" ")[0] for line in only_up.splitlines() if not line.startswith("#")] == [
        f'binance_futures_up{{alias="{a.alias}",market="usdm"}}' for a in ACCOUNTS]
    parsed = {f.name: f for f in parse_openmetrics(om)}
    assert om.endswith("# EOF\n") and "binance_futures_scrape_errors" in parsed
    assert {s.labels["alias"] for s in parsed["binance_futures_up"].samples} == {a.alias for a in ACCOUNTS}


def test_a_new_fetch_encodes_its_target_again(sim: Simulator, make_harness, encodes: list[int]) -> None:
    h = make_harness(config_dict(sim.base_url, cache_seconds=0))
    h.get(headers=TEXT)
    h.get(headers=TEXT)
    assert len(encodes) == 2 * len(ACCOUNTS)


def test_reused_bytes_are_what_encoding_afresh_gives(sim: Simulator) -> None:
    """The cached path against prometheus_client's own encoders on the same families, made without a cache."""
    engine = Engine(parse_config(config_dict(sim.base_url, cache_seconds=3600), "test.yaml", {}))
    try:
        fragments = render.Fragments()
        engine.scrape(engine.aliases(), None)

        def registry(cache: render.Fragments | None):  # type: ignore[no-untyped-def]
            return scrape_registry(ScrapeCollector(engine, engine.aliases(), None, False, cache))

        encode_text(registry(fragments))  # fills the cache
        cached_text = encode_text(registry(fragments))
        fresh_text = encode_text(registry(None))
        strip = [line for line in cached_text.decode().splitlines() if "weight" not in line]
        assert strip == [line for line in fresh_text.decode().splitlines() if "weight" not in line]
        # prometheus_client's text encoder, from the samples alone, agrees byte for byte
        library_text = generate_latest(registry(fragments)).decode()
        assert [line for line in library_text.splitlines() if "weight" not in line] == strip
        cached_om = generate_openmetrics(registry(fragments)).decode()
        fresh_om = generate_openmetrics(registry(None)).decode()
        assert [line for line in cached_om.splitlines() if "weight" not in line] == \
            [line for line in fresh_om.splitlines() if "weight" not in line]
        assert len(fragments) == len(engine.states)
    finally:
        engine.close()


def test_the_cache_keeps_within_its_bound(sim: Simulator) -> None:
    """Past `max_bytes`, targets are encoded at every scrape (right, only not reused)."""
    engine = Engine(parse_config(config_dict(sim.base_url, cache_seconds=3600), "test.yaml", {}))
    try:
        result = engine.scrape(engine.aliases(), None)
        small = render.Fragments(max_bytes=1)
        first = [small.get(view, False) for view in result.targets]
        again = [small.get(view, False) for view in engine.scrape(engine.aliases(), None).targets]
        assert len(small) == 0 and all(a is not b and a == b for a, b in zip(first, again, strict=True))
        roomy = render.Fragments()
        first = [roomy.get(view, False) for view in result.targets]
        again = [roomy.get(view, False) for view in engine.scrape(engine.aliases(), None).targets]
        assert len(roomy) == len(ACCOUNTS) and all(a is b for a, b in zip(first, again, strict=True))
    finally:
        engine.close()
