"""Live risk end to end (issue 24): the simulator's marks over its market streams, the exporter's /metrics.

Real HTTP and WebSocket on loopback: the simulator ticks every second (its marks are published on the
market streams, its REST answers follow them, crossed accounts are liquidated with ORDER_TRADE_UPDATE);
the exporter runs as the CLI runs it (Engine + web app). After a mark moves, every figure /metrics shows
must equal what the simulator's REST answers at that mark, within 1.5 s, with no REST request of the
exporter; forced closes are counted once per order within 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from exporter import parsing
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.httpserver import serve
from exporter.parsing import Snapshot
from exporter.secrets import Secret
from exporter.signing import HmacSigner
from exporter.simulator import SimAccount, SimPosition, Simulator, balance_row
from exporter.simulator.market import SimMarket
from exporter.web import make_app

KEY = "6f1b8a8f0c2d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f"
SECRET = "8b9c1e3f5b7d9f1b3d5f7a9c1e3f5b7d9f1b3d5f7a9c1e3f5b7d9f1b3d5f7a9c"
HEDGE_KEY = "7a" * 32
HEDGE_SECRET = "9d" * 32
TIMEOUT = 5.0
LIVE_WITHIN_S = 1.5
FORCED_WITHIN_S = 1.0
NS = "binance_futures_"

# Figures live risk leaves at their REST value (README, "Live risk"): initial margins need the leverage,
# available and withdrawable balances Binance's own rules; timestamps are the answer's.
REST_ONLY = {"position_required_initial_margin", "initial_margin", "position_initial_margin", "available_balance",
             "max_withdraw_amount", "balance_update_timestamp_seconds", "account_initial_margin",
             "account_position_initial_margin", "account_available_balance", "account_max_withdraw_amount"}


def one_way() -> SimAccount:
    """USD-M cross one-way (a long and a short in the USDT pool), an isolated position; COIN-M cross."""
    return SimAccount(
        api_key=KEY, api_secret=SECRET,
        balances=[balance_row("USDT", "2000"), balance_row("USDC", "5000")],
        positions=[SimPosition("BTCUSDT", "0.800", "6500", leverage=20),
                   SimPosition("ETHUSDT", "-3.000", "3300", leverage=10),
                   SimPosition("ADAUSDT", "40000", "0.40", leverage=5, isolated=True, isolated_wallet="3300")],
        coinm_balances=[balance_row("BTC", "0.05", coin=True)],
        coinm_positions=[SimPosition("BTCUSD_PERP", "30", "6600", leverage=20)])


def hedge() -> SimAccount:
    """USD-M cross in hedge mode: a LONG and a SHORT leg of one symbol share one price."""
    return SimAccount(
        api_key=HEDGE_KEY, api_secret=HEDGE_SECRET, balances=[balance_row("USDT", "1500")],
        positions=[SimPosition("BTCUSDT", "1.200", "6600", side="LONG", leverage=20),
                   SimPosition("BTCUSDT", "-0.400", "6900", side="SHORT", leverage=20),
                   SimPosition("ETHUSDT", "2.000", "3400", side="LONG", leverage=20)])


class Stack:
    def __init__(self, sim: Simulator, engine: Engine, url: str) -> None:
        self.sim, self.engine, self.url = sim, engine, url

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.url + "/metrics", timeout=TIMEOUT).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def exporter_weight(self) -> int:
        return sum(h.governor.used_last_minute() for h in self.engine.topology.hosts.values())


@pytest.fixture
def stack() -> Iterator[Stack]:
    market = SimMarket(volatility=0.0)  # marks move when a test says so; published every second
    with Simulator([one_way(), hedge()], market=market) as sim:
        sim.auto_liquidate = False
        urls = {k: sim.base_url for k in ("base_url", "coinm_base_url", "pm_base_url")}
        streams = {"user_stream": True, "stream_base_url": sim.stream_url + "/private",
                   "coinm_stream_base_url": sim.stream_url}
        config = parse_config({
            "market_stream_base_url": sim.market_stream_url,
            "coinm_market_stream_base_url": sim.coinm_market_stream_url,
            # Data is fresh for an hour: no scrape below asks for a REST read.
            "defaults": {**urls, **streams, "timeout_seconds": 3, "positions": True, "endpoint": "account",
                         "cache_seconds": 3600},
            "accounts": [{"alias": "oneway", "api_key": KEY, "api_secret": SECRET, "markets": ["usdm", "coinm"]},
                         {"alias": "hedge", "api_key": HEDGE_KEY, "api_secret": HEDGE_SECRET}],
        }, "live.yaml", {})
        engine = Engine(config)
        started = engine.start()
        server = serve(make_app(engine, ready=lambda: all(f.done() for f in started)), "127.0.0.1:0")
        stack = Stack(sim, engine, f"http://127.0.0.1:{server.server_port}")
        try:
            wait_until(lambda: requests.get(stack.url + "/-/ready", timeout=5).status_code == 200)
            stack.metrics()  # the first scrape reads every account by REST (and its brackets)
            wait_until(lambda: all(engine.streams.state(k).up and engine.states[k].last_ok is not None
                                   for k in engine.streams.streams), timeout=10)
            wait_until(lambda: all(state.last_ok is not None for state in engine.states.values()), timeout=10)
            # brackets and contract sizes: metadata reads after the data, in the weight it leaves over
            wait_until(lambda: all(job.read_once for job in engine.meta.values()), timeout=10)
            assert {kind for _, kind in engine.meta} == {"modes", "brackets", "contract_sizes"}
            # stream gaps ask for a REST refresh each; let them finish before the tests count requests
            wait_until(lambda: all(s.inflight is None and not s.queued for s in engine.states.values()))
            wait_until(lambda: stack.metrics().get((NS + "market_stream_up", (("market", "coinm"),))) == 1.0
                       and stack.metrics().get((NS + "market_stream_up", (("market", "usdm"),))) == 1.0)
            yield stack
        finally:
            server.shutdown()
            server.server_close()
            engine.close()


def signed(sim: Simulator, key: str, secret: str, path: str) -> bytes:
    now = sim.server_time_ms()
    query = f"recvWindow=5000&timestamp={now}"
    query += "&signature=" + HmacSigner(Secret(secret)).sign(query)
    resp = requests.get(f"{sim.base_url}{path}?{query}", headers={"X-MBX-APIKEY": key}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.content


def rest(sim: Simulator, market: str, key: str = KEY, secret: str = SECRET) -> Snapshot:
    """What Binance's REST answers now (the simulator's, at its current marks)."""
    if market == "usdm":
        return parsing.parse_usdm_account(signed(sim, key, secret, "/fapi/v3/account")).merge(
            parsing.parse_position_risk(signed(sim, key, secret, "/fapi/v3/positionRisk")))
    return parsing.parse_coinm_account(signed(sim, key, secret, "/dapi/v1/account")).merge(
        parsing.parse_coinm_position_risk(signed(sim, key, secret, "/dapi/v1/positionRisk")))


Expected = dict[tuple[str, tuple[tuple[str, str], ...]], float | None]


def expected(alias: str, market: str, snapshot: Snapshot) -> Expected:
    """The series /metrics must show for these figures (None: must be absent)."""
    acct = {"alias": alias, "market": market}
    out: Expected = {}
    for pos in snapshot.positions:
        labels = tuple(sorted({**acct, "symbol": pos.symbol, "position_side": pos.side}.items()))
        for name, value in pos.values.items():
            if name not in REST_ONLY:
                out[(NS + name, labels)] = value
        if "position_liquidation_price" not in pos.values:
            out[(NS + "position_liquidation_price", labels)] = None
    for row in snapshot.assets:
        labels = tuple(sorted({**acct, "asset": row.asset}.items()))
        for name, value in row.values.items():
            if name not in REST_ONLY:
                out[(NS + name, labels)] = value
    for name, value in snapshot.totals.items():
        if name not in REST_ONLY:
            out[(NS + name, tuple(sorted(acct.items())))] = value
    return out


def close(actual: float, want: float) -> bool:
    """REST answers carry 8 decimals: equal to 1e-9 relative or within their rounding."""
    return abs(actual - want) <= max(abs(want) * 1e-9, 1.5e-8)


def mismatches(got: dict[Any, float], want: Expected) -> list[Any]:
    bad = []
    for series, value in want.items():
        if value is None:
            if series in got:
                bad.append((series, got[series], None))
        elif series not in got or not close(got[series], value):
            bad.append((series, got.get(series), value))
    return bad


def move_and_compare(stack: Stack, marks: dict[str, str], accounts: list[tuple[str, str, str, str]]) -> float:
    """Set marks, publish them once; seconds until /metrics equals REST at those marks (asserting no REST)."""
    sim = stack.sim
    assert sim.market is not None
    weight, sim_weight = stack.exporter_weight(), sim.used_weight("fapi") + sim.used_weight("dapi")
    for symbol, price in marks.items():
        sim.market.set_mark(symbol, price)
    sim.publish_marks()
    started = time.monotonic()
    want: Expected = {}
    for alias, market, key, secret in accounts:
        want.update(expected(alias, market, rest(sim, market, key, secret)))
    test_weight = sim.used_weight("fapi") + sim.used_weight("dapi") - sim_weight
    last: list[Any] = []
    while time.monotonic() - started < LIVE_WITHIN_S + 1.0:
        got = stack.metrics()
        last = mismatches(got, want)
        if not last:
            break
    took = time.monotonic() - started
    assert not last, last[:8]
    assert took <= LIVE_WITHIN_S, took
    assert stack.exporter_weight() == weight, "the exporter sent a REST request"
    assert sim.used_weight("fapi") + sim.used_weight("dapi") == sim_weight + test_weight
    return took


def test_usdm_cross_one_way_and_isolated_follow_the_mark(stack: Stack) -> None:
    before = stack.metrics()
    took = move_and_compare(stack, {"BTCUSDT": "6400.5", "ETHUSDT": "3450.25", "ADAUSDT": "0.35"},
                            [("oneway", "usdm", KEY, SECRET)])
    after = stack.metrics()
    series = (NS + "position_unrealized_pnl", (("alias", "oneway"), ("market", "usdm"), ("position_side", "BOTH"),
                                                ("symbol", "ETHUSDT")))
    assert after[series] != before[series] and after[series] == pytest.approx(-3 * (3450.25 - 3300))
    assert took <= LIVE_WITHIN_S
    # and again, a second move: every mark, not only the first
    move_and_compare(stack, {"BTCUSDT": "6650", "ETHUSDT": "3380.5", "ADAUSDT": "0.41"},
                     [("oneway", "usdm", KEY, SECRET)])


def test_usdm_hedge_mode_follows_the_mark(stack: Stack) -> None:
    move_and_compare(stack, {"BTCUSDT": "6500.75", "ETHUSDT": "3300.5"}, [("hedge", "usdm", HEDGE_KEY, HEDGE_SECRET)])


def test_coinm_follows_the_mark(stack: Stack) -> None:
    move_and_compare(stack, {"BTCUSD_PERP": "6200.1"}, [("oneway", "coinm", KEY, SECRET)])


def test_a_stale_mark_is_not_extrapolated(stack: Stack) -> None:
    """The market stream down: figures go back to what REST last said, never the last mark carried on."""
    sim = stack.sim
    assert sim.market is not None
    pnl = (NS + "position_unrealized_pnl", (("alias", "oneway"), ("market", "usdm"), ("position_side", "BOTH"),
                                            ("symbol", "BTCUSDT")))
    rest_value = stack.metrics()[pnl]
    sim.market.set_mark("BTCUSDT", "6100")
    sim.publish_marks()
    wait_until(lambda: stack.metrics()[pnl] == pytest.approx(0.8 * (6100 - 6500)), timeout=3)
    stack.sim._market_streams.stop()  # the market streams are gone: no more marks (and no reconnect)
    wait_until(lambda: stack.metrics().get((NS + "market_stream_up", (("market", "usdm"),))) == 0.0, timeout=10)
    assert stack.metrics()[pnl] == rest_value


def test_liquidation_and_adl_are_counted_once_within_a_second(stack: Stack) -> None:
    sim = stack.sim
    assert sim.market is not None
    liq = next(p for p in rest(sim, "usdm").positions if p.symbol == "ETHUSDT").values["position_liquidation_price"]
    sim.market.set_mark("ETHUSDT", Decimal(repr(liq)) * Decimal("1.001"))  # past the short's price
    sim.auto_liquidate = True
    wait_until(lambda: sim.liquidations > 0, timeout=5)  # the next tick liquidates: NEW, then FILLED per order
    seen = time.monotonic()

    def count(alias: str, market: str, symbol: str, kind: str) -> float | None:
        return stack.metrics().get((NS + "liquidation_events_total", (("alias", alias), ("kind", kind),
                                                                       ("market", market), ("symbol", symbol))))

    wait_until(lambda: count("oneway", "usdm", "ETHUSDT", "liquidation") == 1.0, timeout=FORCED_WITHIN_S)
    wait_until(lambda: count("oneway", "usdm", "BTCUSDT", "liquidation") == 1.0, timeout=FORCED_WITHIN_S)
    assert time.monotonic() - seen <= FORCED_WITHIN_S + 0.2
    sim.auto_liquidate = False
    pushed = time.monotonic()
    sim.auto_deleverage(HEDGE_KEY, "usdm", "ETHUSDT", side="LONG")
    wait_until(lambda: count("hedge", "usdm", "ETHUSDT", "adl") == 1.0, timeout=FORCED_WITHIN_S)
    assert time.monotonic() - pushed <= FORCED_WITHIN_S + 0.2
    sim.auto_deleverage(KEY, "coinm", "BTCUSD_PERP")
    wait_until(lambda: count("oneway", "coinm", "BTCUSD_PERP", "adl") == 1.0, timeout=FORCED_WITHIN_S)
    # Each order's NEW and FILLED both arrived (counted as `other` events), the order counted once.
    oneway, hedged = (stack.engine.streams.state(("oneway", "usdm")), stack.engine.streams.state(("hedge", "usdm")))
    wait_until(lambda: oneway.events["other"] >= 4 and hedged.events["other"] >= 2, timeout=FORCED_WITHIN_S)
    assert count("oneway", "usdm", "ETHUSDT", "liquidation") == 1.0
    assert count("hedge", "usdm", "ETHUSDT", "adl") == 1.0


def test_market_stream_subscribes_each_symbol_once(stack: Stack) -> None:
    """Two accounts hold BTCUSDT and ETHUSDT: one connection per market, each symbol once."""
    sim = stack.sim
    assert sim.market_connections("usdm") == 1 and sim.market_connections("coinm") == 1
    assert sorted(sim.market_subscriptions("usdm")) == ["adausdt@markPrice@1s", "btcusdt@markPrice@1s",
                                                        "ethusdt@markPrice@1s"]
    assert sim.market_subscriptions("coinm") == ["btcusd_perp@markPrice@1s"]
    sim.auto_deleverage(KEY, "usdm", "ADAUSDT")  # ADA closes (an ACCOUNT_UPDATE): its mark is dropped
    wait_until(lambda: "adausdt@markPrice@1s" not in sim.market_subscriptions("usdm"), timeout=5)
    assert sim.market_connections("usdm") == 1


def test_bracket_tables_are_shared_between_accounts() -> None:
    """Every account reads every symbol's brackets: equal tables are one object (RSS, benchmarks.liverisk)."""
    from exporter.liverisk import shared_tables
    from exporter.simulator.market import USDM_BRACKETS

    first = shared_tables({"BTCUSDT": list(USDM_BRACKETS)})
    second = shared_tables({"BTCUSDT": tuple(USDM_BRACKETS), "ETHUSDT": list(USDM_BRACKETS)})
    assert first["BTCUSDT"] is second["BTCUSDT"] is second["ETHUSDT"]
    assert first["BTCUSDT"] == tuple(USDM_BRACKETS)


def test_demo_shows_risk_moving_every_second() -> None:
    """--demo: `degen`'s SOLUSDT mark, PnL and the USDT margin balance move from one second to the next."""
    from exporter.demo import start_demo

    demo, config = start_demo()
    engine = Engine(config)
    try:
        for future in engine.start():
            future.result(timeout=10)

        def figures() -> tuple[float, float, float] | None:
            result = engine.scrape(["degen"], 5.0)
            snap = result.targets[0].snapshot
            if snap is None or not snap.positions or result.market_streams != [("usdm", True)]:
                return None
            (sol,) = snap.positions
            (usdt,) = (a for a in snap.assets if a.asset == "USDT")
            return (sol.values["position_mark_price"], sol.values["position_unrealized_pnl"],
                    usdt.values["margin_balance"])

        first = wait_until(figures, timeout=15)
        moved = wait_until(lambda: (f := figures()) is not None and all(a != b for a, b in zip(f, first, strict=True)) and f,
                           timeout=3)
        assert moved != first
    finally:
        engine.close()
        demo.stop()
