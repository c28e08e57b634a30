"""Stream events and the pieces of the stream client that need no server: parsing, E order, overlay,
the connection-attempt limiter, back-off and URLs."""

from __future__ import annotations

import json
import random

import pytest

from exporter.parsing import AssetRow, BadResponse, PositionRow, Snapshot
from exporter.secrets import Secret
from exporter.stream_events import StreamState, apply_config_modes, parse_event
from exporter.streams import AttemptLimiter, Tuning, backoff_delay, stream_url

KEY = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"


def test_urls_follow_binance_per_market() -> None:
    assert stream_url("wss://fstream.binance.com/private", "usdm", Secret(KEY)) == (
        f"wss://fstream.binance.com/private/ws?listenKey={KEY}"
        "&events=ACCOUNT_UPDATE/MARGIN_CALL/ACCOUNT_CONFIG_UPDATE/listenKeyExpired")
    assert stream_url("wss://dstream.binance.com", "coinm", Secret(KEY)) == f"wss://dstream.binance.com/ws/{KEY}"
    assert stream_url("wss://fstream.binance.com/pm", "pm", Secret(KEY)) == f"wss://fstream.binance.com/pm/ws/{KEY}"


def test_parse_binance_examples() -> None:
    # Binance's documented examples (listenKeyExpired sends E as a string).
    expired = parse_event(json.dumps({"e": "listenKeyExpired", "E": "1736996475556", "listenKey": KEY}))
    assert (expired.kind, expired.time_ms, expired.listen_key) == ("listenKeyExpired", 1736996475556, KEY)
    update = parse_event(json.dumps({"e": "ACCOUNT_UPDATE", "E": 1564745798939, "T": 1564745798938, "a": {
        "m": "ORDER", "B": [{"a": "USDT", "wb": "122624.12345678", "cw": "100.12345678", "bc": "50.12345678"}],
        "P": [{"s": "BTCUSDT", "pa": "0", "ep": "0.00000", "bep": "0", "cr": "200", "up": "0", "mt": "isolated",
               "iw": "0.00000000", "ps": "BOTH"}]}}))
    assert update.assets == {"USDT": {"balance": 122624.12345678, "cross_wallet_balance": 100.12345678}}
    assert update.positions[("BTCUSDT", "BOTH")]["position_amount"] == 0.0
    risk = parse_event('{"e":"riskLevelChange","E":1587727187525,"u":"1.99999999","s":"MARGIN_CALL",'
                       '"eq":"30.23416728","ae":"30.23416728","m":"15.11708371"}')
    assert (risk.totals, risk.status) == ({"pm_uni_mmr": 1.99999999}, "MARGIN_CALL")
    config = parse_event('{"e":"ACCOUNT_CONFIG_UPDATE","E":1611646737479,"T":1611646737476,"ai":{"j":true}}')
    assert config.modes == {"multi_assets_mode": 1.0}
    wrapped = parse_event(json.dumps({"stream": KEY, "data": {"e": "TRADE_LITE", "E": 5}}))
    assert wrapped.kind == "other"


@pytest.mark.parametrize("message", [
    b'{"e":"ACCOUNT_UPDATE"}', "{not json", "[1]", '{"E": 1}', '{"e":"MARGIN_CALL","E":-1}',
    '{"e":"MARGIN_CALL","E":true}', '{"e":"MARGIN_CALL","E":1,"cw":"NaN"}',
    '{"e":"ACCOUNT_UPDATE","E":1,"a":{"B":[{"a":"USDT","wb":"1e400"}]}}',
    '{"e":"ACCOUNT_UPDATE","E":1,"a":{"B":[{"a":"US DT","wb":"1"}]}}',
    '{"e":"ACCOUNT_UPDATE","E":1,"a":{"P":[{"s":"BTCUSDT","pa":"1","ps":"SIDEWAYS"}]}}',
    '{"e":"ACCOUNT_CONFIG_UPDATE","E":1,"ai":{"j":"yes"}}', "[" * 100_000,
    # Only ASCII digits (issue 23): a string E or a decimal in another script is a bad event.
    '{"e":"listenKeyExpired","E":"\u0661\u0667\u0663\u0666\u0669\u0669\u0666\u0664\u0667\u0665\u0665\u0665\u0666"}',
    '{"e":"ACCOUNT_UPDATE","E":1,"a":{"B":[{"a":"USDT","wb":"\u0661\u0662"}]}}',
    '{"e":"MARGIN_CALL","E":1,"cw":"\uff11"}',
])
def test_malformed_events_are_bad(message) -> None:
    with pytest.raises(BadResponse):
        parse_event(message)


def snapshot() -> Snapshot:
    return Snapshot(assets=(AssetRow("USDT", {"balance": 10.0, "cross_wallet_balance": 9.0,
                                              "available_balance": 8.0}, False),),
                    positions=(PositionRow("BTCUSDT", "BOTH", {"position_amount": 1.0, "position_mark_price": 5.0}),
                               PositionRow("ETHUSDT", "LONG", {"position_amount": 2.0})),
                    totals={"multi_assets_mode": 0.0})


def test_overlay_only_after_a_rest_fetch_past_the_gap_and_in_e_order() -> None:
    state = StreamState()
    event = parse_event(json.dumps({"e": "ACCOUNT_UPDATE", "E": 200, "a": {
        "B": [{"a": "USDT", "wb": "20", "cw": "19"}, {"a": "BNB", "wb": "1", "cw": "1"}],
        "P": [{"s": "BTCUSDT", "pa": "3", "up": "4", "ps": "BOTH"}, {"s": "ETHUSDT", "pa": "0", "ps": "LONG"},
              {"s": "ADAUSDT", "pa": "-5", "ep": "0.4", "ps": "BOTH", "iw": "1"}]}}))
    state.connected(now=100.0)
    assert state.apply(event, now=101.0, wall=1.0)
    assert state.overlay(snapshot(), rest_started=99.0, positions=True) == snapshot()  # REST predates the gap
    shown = state.overlay(snapshot(), rest_started=100.5, positions=True)
    assert {r.asset: r.values for r in shown.assets} == {
        "USDT": {"balance": 20.0, "cross_wallet_balance": 19.0, "available_balance": 8.0},
        "BNB": {"balance": 1.0, "cross_wallet_balance": 1.0}}
    assert {(p.symbol, p.side): p.values for p in shown.positions} == {
        ("BTCUSDT", "BOTH"): {"position_amount": 3.0, "position_mark_price": 5.0, "position_unrealized_pnl": 4.0},
        ("ADAUSDT", "BOTH"): {"position_amount": -5.0, "position_entry_price": 0.4}}  # ETH closed; no iw series
    older = parse_event('{"e":"ACCOUNT_UPDATE","E":150,"a":{"B":[{"a":"USDT","wb":"1","cw":"1"}]}}')
    assert not state.apply(older, now=102.0, wall=2.0)  # older than applied: ignored (but counted)
    assert state.events["ACCOUNT_UPDATE"] == 2
    assert state.overlay(snapshot(), rest_started=100.5, positions=False).positions == snapshot().positions
    assert state.overlay(snapshot(), rest_started=101.5, positions=True) == snapshot()  # REST has it now
    state.disconnected()
    assert state.overlay(snapshot(), rest_started=200.0, positions=True) == snapshot()


def test_config_modes_hook_touches_only_exported_modes() -> None:
    assert apply_config_modes(snapshot(), {"multi_assets_mode": 1.0}).totals == {"multi_assets_mode": 1.0}
    assert apply_config_modes(snapshot(), {"hedge_mode": 1.0}) == snapshot()


def test_attempt_limiter_holds_to_its_window() -> None:
    limiter = AttemptLimiter(3, window_s=300.0)
    for t in (0.0, 1.0, 2.0):
        assert limiter.wait_time(t) == 0.0
        limiter._times.append(t)
    assert limiter.wait_time(10.0) == pytest.approx(290.0)
    assert limiter.wait_time(300.5) == 0.0  # the first attempt left the window


def test_backoff_grows_with_jitter_and_a_ceiling() -> None:
    tuning, rng = Tuning(), random.Random(1)
    for failures, low, high in ((1, 0.5, 1.0), (2, 1.0, 2.0), (5, 8.0, 16.0), (30, 150.0, 300.0)):
        delays = {backoff_delay(failures, tuning, rng) for _ in range(50)}
        assert all(low <= d <= high for d in delays) and len(delays) > 40
