"""Stream events and the pieces of the stream client that need no server: parsing, E order, overlay,
the connection-attempt limiter, back-off and URLs."""

from __future__ import annotations

import json
import random

import pytest

from exporter.parsing import AssetRow, BadResponse, PositionRow, Snapshot
from exporter.secrets import Secret
from exporter.streams.events import StreamState, apply_config_modes, parse_event
from exporter.streams.tuning import AttemptLimiter, Tuning, backoff_delay
from exporter.streams.user import stream_url

KEY = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"


def test_urls_follow_binance_per_market() -> None:
    assert stream_url("wss://fstream.binance.com/private", "usdm", Secret(KEY)) == (
        f"wss://fstream.binance.com/private/ws?listenKey={KEY}"
        "&events=ACCOUNT_UPDATE/MARGIN_CALL/ACCOUNT_CONFIG_UPDATE/listenKeyExpired/ORDER_TRADE_UPDATE")
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
    assert (risk.totals, risk.status) == ({"pm_uni_mmr": 1.99999999, "pm_account_equity": 30.23416728,
                                           "pm_actual_equity": 30.23416728, "pm_account_maint_margin": 15.11708371},
                                          "MARGIN_CALL")
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
        "USDT": {"balance": 20.0, "cross_wallet_balance": 19.0},  # available balance withheld: not in the event
        "BNB": {"balance": 1.0, "cross_wallet_balance": 1.0}}
    assert {(p.symbol, p.side): p.values for p in shown.positions} == {
        ("BTCUSDT", "BOTH"): {"position_amount": 3.0, "position_unrealized_pnl": 4.0},  # no mark of the old amount
        ("ADAUSDT", "BOTH"): {"position_amount": -5.0, "position_entry_price": 0.4}}  # ETH closed; no iw series
    older = parse_event('{"e":"ACCOUNT_UPDATE","E":150,"a":{"B":[{"a":"USDT","wb":"1","cw":"1"}]}}')
    assert not state.apply(older, now=102.0, wall=1.0)  # older than applied: ignored (but counted)
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


# ---- issue 22: order per event type, one coherent state, hostile bounds ------------------------------
WALL = 1_700_000_000.0  # a wall clock for the events below (E must be near it)
E0 = int(WALL * 1000)


def event(data: dict) -> object:
    return parse_event(json.dumps(data))


def update(t: int, assets: list | None = None, positions: list | None = None) -> object:
    return event({"e": "ACCOUNT_UPDATE", "E": t, "a": {"B": assets or [], "P": positions or []}})


def test_margin_calls_and_risk_changes_count_whatever_came_before() -> None:
    """Defect 2: one watermark across event types dropped a margin call older than a balance update."""
    state = StreamState()
    state.connected(now=1.0)
    assert state.apply(update(E0 + 500, [{"a": "USDT", "wb": "5", "cw": "5"}]), now=2.0, wall=WALL)
    assert state.apply(event({"e": "MARGIN_CALL", "E": E0 + 100, "cw": "1"}), now=2.1, wall=WALL)
    risk = event({"e": "riskLevelChange", "E": E0 + 200, "u": "1.08", "s": "FORCE_LIQUIDATION",
                  "eq": "100", "ae": "101", "m": "92.5"})
    assert state.apply(risk, now=2.2, wall=WALL)
    assert state.margin_calls == 2
    shown = state.overlay(Snapshot(totals={"pm_uni_mmr": 5167.92, "pm_account_equity": 9.0}, status="NORMAL"),
                          rest_started=1.5, positions=True)
    assert shown.totals == {"pm_uni_mmr": 1.08, "pm_account_equity": 100.0, "pm_actual_equity": 101.0,
                            "pm_account_maint_margin": 92.5}  # defect 5: eq, ae and m with the uniMMR
    assert shown.status == "FORCE_LIQUIDATION"
    # An ORDER_TRADE_UPDATE (other) with a later E does not drop the fill's ACCOUNT_UPDATE.
    assert not state.apply(event({"e": "ORDER_TRADE_UPDATE", "E": E0 + 900}), now=2.3, wall=WALL)
    assert state.apply(update(E0 + 800, [{"a": "USDT", "wb": "7", "cw": "7"}]), now=2.4, wall=WALL)
    # The same margin call again (same E) is counted once; an older balance update never
    # overwrites the fresher one but is counted.
    assert not state.apply(event({"e": "MARGIN_CALL", "E": E0 + 100, "cw": "1"}), now=2.5, wall=WALL)
    assert state.margin_calls == 2 and state.events["MARGIN_CALL"] == 2
    assert not state.apply(update(E0 + 600, [{"a": "USDT", "wb": "1", "cw": "1"}]), now=2.6, wall=WALL)
    assert state.events["ACCOUNT_UPDATE"] == 3
    usdt = Snapshot(assets=(AssetRow("USDT", {"balance": 0.0, "cross_wallet_balance": 0.0}, True),))
    assert state.overlay(usdt, rest_started=1.5, positions=True).assets[0].values["balance"] == 7.0
    # An older riskLevelChange is counted (a distinct call) but does not overwrite the fresher uniMMR.
    assert state.apply(event({"e": "riskLevelChange", "E": E0 + 150, "u": "3", "s": "NORMAL"}), now=2.7, wall=WALL)
    assert state.margin_calls == 3
    assert state.overlay(Snapshot(), rest_started=1.5, positions=True).totals["pm_uni_mmr"] == 1.08


def losing_long() -> Snapshot:
    """Single-asset USD-M: a cross long of 1 BTC at -900, the only position; REST's figures."""
    return Snapshot(
        assets=(AssetRow("USDT", {"balance": 1500.0, "cross_wallet_balance": 1500.0, "available_balance": 100.0,
                                  "cross_unrealized_pnl": -900.0, "unrealized_pnl": -900.0,
                                  "margin_balance": 600.0, "maint_margin": 886.5, "isolated_maint_margin": 0.0},
                         False),),
        positions=(PositionRow("BTCUSDT", "BOTH", {"position_amount": 1.0, "position_entry_price": 60900.0,
                                                   "position_mark_price": 60000.0,
                                                   "position_liquidation_price": 59700.0,
                                                   "position_unrealized_pnl": -900.0,
                                                   "position_maint_margin": 886.5}, "cross", "USDT"),),
        totals={"multi_assets_mode": 0.0, "account_wallet_balance": 1500.0, "account_cross_wallet_balance": 1500.0,
                "account_cross_unrealized_pnl": -900.0, "account_unrealized_pnl": -900.0,
                "account_margin_balance": 600.0, "account_maint_margin": 886.5,
                "account_isolated_maint_margin": 0.0, "account_available_balance": 100.0})


def pool_ratio(values: dict, prefix: str = "") -> float:
    """prometheus/rules.yml's pool margin ratio: cross maintenance / (cross wallet + cross unrealized PnL)."""
    maint = values[f"{prefix}maint_margin"] - values[f"{prefix}isolated_maint_margin"]
    return maint / (values[f"{prefix}cross_wallet_balance"] + values[f"{prefix}cross_unrealized_pnl"])


def test_closing_a_losing_long_shows_the_closed_state_not_a_mix() -> None:
    """Defect 3: the closed long's REST maintenance margin and PnL beside the new wallet read 1.4775."""
    state = StreamState()
    state.connected(now=1.0)
    assert state.apply(update(E0, [{"a": "USDT", "wb": "600", "cw": "600"}],
                              [{"s": "BTCUSDT", "pa": "0", "ep": "0", "bep": "0", "up": "0", "mt": "cross",
                                "iw": "0", "ps": "BOTH"}]), now=2.0, wall=WALL)
    shown = state.overlay(losing_long(), rest_started=1.5, positions=True)
    usdt = shown.assets[0].values
    assert shown.positions == ()
    assert usdt["cross_unrealized_pnl"] == 0.0 and usdt["maint_margin"] == 0.0 and usdt["margin_balance"] == 600.0
    assert pool_ratio(usdt) == 0.0  # the truth: nothing open
    assert "available_balance" not in usdt  # not in the event and not computable: withheld
    assert pool_ratio(shown.totals, "account_") == 0.0  # single-asset totals are USDT's
    assert "account_available_balance" not in shown.totals


def test_a_flipped_position_shows_no_liquidation_price_of_the_old_one() -> None:
    """Defect 3: a long flipped into a short kept the long's liquidation price ("mark past liquidation")."""
    state = StreamState()
    state.connected(now=1.0)
    assert state.apply(update(E0, [{"a": "USDT", "wb": "1400", "cw": "1400"}],
                              [{"s": "BTCUSDT", "pa": "-1", "ep": "60000", "bep": "60000", "up": "0", "mt": "cross",
                                "iw": "0", "ps": "BOTH"}]), now=2.0, wall=WALL)
    shown = state.overlay(losing_long(), rest_started=1.5, positions=True)
    (pos,) = shown.positions
    assert pos.values["position_amount"] == -1.0
    assert "position_liquidation_price" not in pos.values and "position_maint_margin" not in pos.values
    assert "position_mark_price" not in pos.values
    usdt = shown.assets[0].values
    assert usdt["cross_unrealized_pnl"] == 0.0 and usdt["margin_balance"] == 1400.0
    assert "maint_margin" not in usdt and "account_maint_margin" not in shown.totals  # needs brackets: withheld
    # A funding event that leaves the amount as it was keeps REST's figures of the position.
    state2 = StreamState()
    state2.connected(now=1.0)
    state2.apply(update(E0, [{"a": "USDT", "wb": "1499", "cw": "1499"}]), now=2.0, wall=WALL)
    same = state2.overlay(losing_long(), rest_started=1.5, positions=True)
    assert same.positions == losing_long().positions
    assert same.assets[0].values["maint_margin"] == 886.5 and same.assets[0].values["margin_balance"] == 599.0


def test_event_time_far_from_the_clock_is_invalid_and_none_survives_a_reconnect() -> None:
    """Defect 4: E = 2^53 - 2 froze the account's stream until a restart."""
    state = StreamState()
    state.connected(now=1.0)
    assert not state.apply(event({"e": "MARGIN_CALL", "E": 2**53 - 2}), now=2.0, wall=WALL)
    assert state.events["invalid"] == 1 and state.margin_calls == 0
    assert not state.apply(event({"e": "MARGIN_CALL", "E": E0 - 7200_000}), now=2.0, wall=WALL)  # 2 h old
    # Within the bound, a future E blocks older events of its type only until the next reconnect.
    assert state.apply(update(E0 + 200_000, [{"a": "USDT", "wb": "1", "cw": "1"}]), now=2.0, wall=WALL)
    assert not state.apply(update(E0, [{"a": "USDT", "wb": "2", "cw": "2"}]), now=2.1, wall=WALL)
    state.disconnected()
    state.connected(now=3.0)
    assert state.apply(update(E0 + 1, [{"a": "USDT", "wb": "3", "cw": "3"}]), now=4.0, wall=WALL)
    for i in range(38):
        assert state.apply(event({"e": "MARGIN_CALL", "E": E0 + 10 + i}), now=4.0, wall=WALL)
    assert state.margin_calls == 38


def test_events_add_assets_and_positions_only_within_a_bound_pruned_on_apply() -> None:
    """Defect 4: events naming thousands of new assets and symbols built a 130 MB /metrics."""
    from exporter.streams.events import MAX_ADDED_ASSETS, MAX_ADDED_POSITIONS
    state = StreamState()
    state.connected(now=1.0)
    state.rest_read(1.5, losing_long())
    for i in range(MAX_ADDED_ASSETS):
        assert state.apply(update(E0 + i, [{"a": f"X{i}", "wb": "1", "cw": "1"}]), now=2.0, wall=WALL)
    assert not state.apply(update(E0 + 99, [{"a": "ONEMORE", "wb": "1", "cw": "1"}]), now=2.0, wall=WALL)
    assert state.events["invalid"] == 1
    assert state.apply(update(E0 + 100, [{"a": "USDT", "wb": "1", "cw": "1"}]), now=2.0, wall=WALL)  # known
    many = [{"s": f"S{i}USDT", "pa": "1", "ps": "BOTH"} for i in range(MAX_ADDED_POSITIONS + 1)]
    assert not state.apply(update(E0 + 101, positions=many), now=2.0, wall=WALL)
    assert len(state.assets) == MAX_ADDED_ASSETS + 1 and not state.positions  # never half-applied
    # A REST read that started after them has them: pruned when the next event is applied, not at scrape.
    state.rest_read(3.0, Snapshot(assets=(AssetRow("USDT", {}, True),)))
    assert state.apply(update(E0 + 102, [{"a": "ONEMORE", "wb": "1", "cw": "1"}]), now=4.0, wall=WALL)
    assert list(state.assets) == ["ONEMORE"]


def test_the_docs_say_per_figure_how_fresh_it_is() -> None:
    """docs/operations.md's freshness table agrees with FRESHNESS, the one declaration the overlay follows."""
    from pathlib import Path

    from exporter.streams.events import FRESHNESS
    readme = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `") and "event-fresh" in line
            or line.startswith("| `") and "recomputed" in line or line.startswith("| `") and "REST-only" in line]
    words = {"event": "event-fresh", "recomputed": "recomputed"}
    for name, kind in FRESHNESS.items():
        row = next((r for r in rows if f"`{name}`" in r.split("|")[1]), None)
        assert row is not None, name
        assert words[kind] in row.split("|")[2], name


def test_an_account_read_without_positions_never_mixes_rest_pnl_with_a_fill() -> None:
    """Defect 3 for `positions: false`: the event moved a position the snapshot does not have, so the
    asset's REST unrealized PnL and maintenance margin no longer describe the account: withheld."""
    rest = Snapshot(assets=(AssetRow("USDT", {"balance": 1500.0, "cross_wallet_balance": 1500.0,
                                              "cross_unrealized_pnl": -900.0, "available_balance": 100.0}, False),))
    state = StreamState()
    state.connected(now=1.0)
    state.apply(update(E0, [{"a": "USDT", "wb": "600", "cw": "600"}],
                       [{"s": "BTCUSDT", "pa": "0", "up": "0", "mt": "cross", "ps": "BOTH"}]), now=2.0, wall=WALL)
    shown = state.overlay(rest, rest_started=1.5, positions=False)
    assert shown.positions == ()
    assert shown.assets[0].values == {"balance": 600.0, "cross_wallet_balance": 600.0}
    # A funding fee (wallet only, no position) keeps what depends on the positions.
    state2 = StreamState()
    state2.connected(now=1.0)
    state2.apply(update(E0, [{"a": "USDT", "wb": "1499", "cw": "1499"}]), now=2.0, wall=WALL)
    assert state2.overlay(rest, rest_started=1.5, positions=False).assets[0].values["cross_unrealized_pnl"] == -900.0
