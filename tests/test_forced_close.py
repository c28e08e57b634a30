"""Forced-close classification of ORDER_TRADE_UPDATE events, the cheap pre-filter, and once-per-order counting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.forced_close import ForcedClose, OnceSet, classify, may_be_forced_close, new_forced_close

# Binance's example ORDER_TRADE_UPDATE (Event Order Update page), an ordinary trailing stop.
ORDINARY: dict[str, Any] = {
    "e": "ORDER_TRADE_UPDATE", "E": 1568879465651, "T": 1568879465650,
    "o": {"s": "BTCUSDT", "c": "TEST", "S": "SELL", "o": "TRAILING_STOP_MARKET", "f": "GTC", "q": "0.001",
          "p": "0", "ap": "0", "sp": "7103.04", "x": "NEW", "X": "NEW", "i": 8886774, "l": "0", "z": "0",
          "L": "0", "N": "USDT", "n": "0", "T": 1568879465650, "t": 0, "b": "0", "a": "9.91", "m": False,
          "R": False, "wt": "CONTRACT_PRICE", "ot": "TRAILING_STOP_MARKET", "ps": "LONG", "cp": False,
          "AP": "7476.89", "cr": "5.0", "pP": False, "si": 0, "ss": 0, "rp": "0", "V": "EXPIRE_TAKER",
          "pm": "OPPONENT", "gtd": 0}}


def event(**order: Any) -> dict[str, Any]:
    return {**ORDINARY, "o": {**ORDINARY["o"], **order}}


LIQUIDATION = event(c="autoclose-1568879465650123", o="LIQUIDATION", x="CALCULATED", X="FILLED", i=42,
                    ot="LIQUIDATION", S="SELL", ps="BOTH")
ADL = event(c="adl_autoclose", o="LIQUIDATION", x="CALCULATED", X="FILLED", i=43, s="ETHUSDT")
SETTLEMENT = event(c="settlement_autoclose-1568879465650", o="MARKET", x="TRADE", X="FILLED", i=44)


@pytest.mark.parametrize(("payload", "expected"), [
    (LIQUIDATION, ForcedClose("liquidation", "BTCUSDT", 42)),
    (ADL, ForcedClose("adl", "ETHUSDT", 43)),  # adl_autoclose wins over the LIQUIDATION type
    (event(c="autoclose-1", o="MARKET", x="TRADE", i=7), ForcedClose("liquidation", "BTCUSDT", 7)),
    (event(c="web_x", o="LIQUIDATION", x="TRADE", i=8), ForcedClose("liquidation", "BTCUSDT", 8)),
    (event(c="web_x", o="MARKET", x="CALCULATED", i=9), ForcedClose("liquidation", "BTCUSDT", 9)),
    (SETTLEMENT, None),
    (ORDINARY, None),
    (event(c="my-autoclose-bot", o="LIMIT", x="NEW"), None),  # passes the pre-filter, not a forced close
])
def test_classify(payload: dict[str, Any], expected: ForcedClose | None) -> None:
    assert classify(payload) == expected
    if expected is not None:
        assert may_be_forced_close(json.dumps(payload)) and may_be_forced_close(json.dumps(payload).encode())


@pytest.mark.parametrize("bad", [
    {"e": "ACCOUNT_UPDATE", "o": LIQUIDATION["o"]},
    {"e": "ORDER_TRADE_UPDATE", "o": "autoclose-1"},
    {"e": "ORDER_TRADE_UPDATE"},
    event(c="autoclose-1", i="42"), event(c="autoclose-1", i=True), event(c="autoclose-1", i=-1),
    event(c="autoclose-1", i=2**63), event(c="autoclose-1", s="BTC USDT"), event(c="autoclose-1", s=None),
    event(c=None, o=None, x=None), event(c=17, o="LIMIT"),
])
def test_malformed_events_are_not_forced_closes(bad: dict[str, Any]) -> None:
    assert classify(bad) is None


def test_prefilter_drops_ordinary_order_events_unparsed() -> None:
    for order in (ORDINARY, event(o="LIMIT", x="TRADE", X="PARTIALLY_FILLED"), event(o="MARKET", X="FILLED")):
        text = json.dumps(order, separators=(",", ":"))
        assert not may_be_forced_close(text)
        assert not may_be_forced_close(text.encode())


def test_each_order_counted_once_across_its_updates() -> None:
    once = OnceSet()
    updates = [classify(event(c="autoclose-9", o="LIQUIDATION", x=x, X=status, i=77))
               for x, status in (("NEW", "NEW"), ("CALCULATED", "PARTIALLY_FILLED"), ("CALCULATED", "FILLED"))]
    assert [once.first(u) for u in updates if u is not None] == [True, False, False]
    assert once.first(ForcedClose("liquidation", "ETHUSDT", 77))  # order ids are per symbol


def test_once_set_is_bounded() -> None:
    once = OnceSet(capacity=3)
    closes = [ForcedClose("adl", "BTCUSDT", i) for i in range(5)]
    assert all(once.first(c) for c in closes)
    assert len(once) == 3
    assert not once.first(closes[4]) and once.first(closes[0])  # the oldest was forgotten
    with pytest.raises(ValueError):
        OnceSet(capacity=0)


def test_risk_families_render_with_their_contract_names() -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from exporter.render import risk_families

    class Collector:
        def collect(self) -> Any:
            yield from risk_families([("hedge", "usdm", "ETHUSDT", "liquidation", 1.0),
                                      ("main", "coinm", "BTCUSD_PERP", "adl", 2.0)],
                                     [("usdm", True), ("coinm", False)])

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("binance_futures_liquidation_events_total", (("alias", "hedge"), ("kind", "liquidation"),
                                                                 ("market", "usdm"), ("symbol", "ETHUSDT")))] == 1.0
    assert samples[("binance_futures_liquidation_events_total", (("alias", "main"), ("kind", "adl"),
                                                                 ("market", "coinm"),
                                                                 ("symbol", "BTCUSD_PERP")))] == 2.0
    assert samples[("binance_futures_market_stream_up", (("market", "coinm"),))] == 0.0
    assert samples[("binance_futures_market_stream_up", (("market", "usdm"),))] == 1.0


def test_new_forced_close_whole_path() -> None:
    once = OnceSet()
    text = json.dumps(LIQUIDATION)
    assert new_forced_close(text, once) == ForcedClose("liquidation", "BTCUSDT", 42)
    assert new_forced_close(text.encode(), once) is None  # the same order again: counted once
    wrapped = json.dumps({"stream": "key1", "data": ADL})
    assert new_forced_close(wrapped, once) == ForcedClose("adl", "ETHUSDT", 43)
    for other in (json.dumps(ORDINARY), json.dumps(SETTLEMENT), '{"e": "autoclose-', b"\xff autoclose-",
                  "[" * 100000 + "autoclose", json.dumps(["autoclose-1"])):
        assert new_forced_close(other, once) is None
