"""Live risk against the simulator over real HTTP and WebSocket: brackets and contract sizes through the
exporter's client, REST answers that follow the market's marks (and equal risk.recompute of an older
answer), the market streams, and liquidations / ADL as ORDER_TRADE_UPDATE on the user data stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from exporter import parsing, risk
from exporter.client import Skipped, fetch_brackets, fetch_contract_sizes
from exporter.config import AccountConfig, Config
from exporter.forced_close import classify, may_be_forced_close
from exporter.parsing import BadResponse, Bracket, Snapshot
from exporter.secrets import Secret
from exporter.signing import HmacSigner
from exporter.simulator import SimAccount, SimPosition, Simulator, balance_row
from exporter.simulator.market import BTCUSDT_BRACKETS, COINM_BRACKETS, USDM_BRACKETS, SimMarket
from exporter.targets import Topology
from exporter.transport import Pools

KEY = "5e1b8a8f0c2d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f"
SECRET = "7a9c1e3f5b7d9f1b3d5f7a9c1e3f5b7d9f1b3d5f7a9c1e3f5b7d9f1b3d5f7a9c"
TIMEOUT = 5.0


def account(**changes: Any) -> SimAccount:
    fields: dict[str, Any] = {
        "api_key": KEY, "api_secret": SECRET,
        "balances": [balance_row("USDT", "2000"), balance_row("USDC", "5000")],
        "positions": [
            SimPosition("BTCUSDT", "0.800", "6500", leverage=20),  # cross, one-way
            SimPosition("ETHUSDT", "-3.000", "3300", leverage=10),
            SimPosition("ADAUSDT", "40000", "0.40", leverage=5, isolated=True, isolated_wallet="3300"),
        ],
        "coinm_balances": [balance_row("BTC", "0.05", coin=True)],
        "coinm_positions": [SimPosition("BTCUSD_PERP", "30", "6600", leverage=20)],
    }
    return SimAccount(**{**fields, **changes})


@pytest.fixture
def sim() -> Iterator[Simulator]:
    market = SimMarket(volatility=0.0)  # marks move only when a test says so
    with Simulator([account()], market=market) as simulator:
        simulator.auto_liquidate = False  # the risk loop must not act on its own: tests call tick()
        yield simulator


def get(sim: Simulator, path: str, params: str = "") -> bytes:
    """A signed GET through the exporter's own signer."""
    now = sim.server_time_ms()
    query = (params + "&" if params else "") + f"recvWindow=5000&timestamp={now}"
    query += "&signature=" + HmacSigner(Secret(SECRET)).sign(query)
    resp = requests.get(f"{sim.base_url}{path}?{query}", headers={"X-MBX-APIKEY": KEY}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.content


def usdm_snapshot(sim: Simulator) -> Snapshot:
    return parsing.parse_usdm_account(get(sim, "/fapi/v3/account")).merge(
        parsing.parse_position_risk(get(sim, "/fapi/v3/positionRisk")))


def coinm_snapshot(sim: Simulator) -> Snapshot:
    return parsing.parse_coinm_account(get(sim, "/dapi/v1/account")).merge(
        parsing.parse_coinm_position_risk(get(sim, "/dapi/v1/positionRisk")))


# ---- brackets and contract sizes through the exporter's client --------------------------------
def test_client_reads_brackets_and_contract_sizes(sim: Simulator) -> None:
    config = Config(source="test", accounts=(AccountConfig(
        alias="a", api_key=Secret(KEY), signer=HmacSigner(Secret(SECRET)), base_url=sim.base_url,
        coinm_base_url=sim.base_url, pm_base_url=sim.base_url),))
    pools = Pools(config.max_concurrency)
    topology = Topology(config, pools)
    acct = config.accounts[0]
    deadline = time.monotonic() + TIMEOUT
    usdm = fetch_brackets(topology.client(acct, topology.host(acct, "usdm")), "usdm", deadline)
    assert usdm["BTCUSDT"] == BTCUSDT_BRACKETS and usdm["ADAUSDT"] == USDM_BRACKETS
    coinm_host = topology.host(acct, "coinm")
    coinm = fetch_brackets(topology.client(acct, coinm_host), "coinm", deadline)
    assert coinm["BTCUSD_PERP"] == COINM_BRACKETS
    pm = fetch_brackets(topology.client(acct, topology.host(acct, "pm")), "pm", deadline)
    assert "BTCUSDT" in pm
    before, ours = sim.used_weight("dapi"), coinm_host.governor.used_last_minute()
    sizes = fetch_contract_sizes(coinm_host, pools.get(coinm_host.base_url), deadline)
    assert sizes["BTCUSD_PERP"] == Decimal(100) and sizes["ETHUSD_PERP"] == Decimal(10)
    assert sim.used_weight("dapi") == before + 1  # weight 1, counted by Binance's stand-in
    assert coinm_host.governor.used_last_minute() == ours + 1  # and charged to our budget first
    coinm_host.backoff.note(429, "5", None, time.monotonic())
    with pytest.raises(Skipped):  # paused host: not sent
        fetch_contract_sizes(coinm_host, pools.get(coinm_host.base_url), deadline)


# ---- REST follows the marks, and equals recompute of an older answer ---------------------------
def within(actual: float, expected: float) -> bool:
    """REST answers carry 8 decimals: equal to 1e-9 relative or within their rounding."""
    return abs(actual - expected) <= max(abs(expected) * 1e-9, 1.5e-8)


# Figures recompute leaves at their REST value: initial margins need the leverage (not in v3 answers),
# available and withdrawable balances Binance's own rules; timestamps are the answer's.
REST_ONLY = {"position_required_initial_margin", "initial_margin", "position_initial_margin", "available_balance",
             "max_withdraw_amount", "balance_update_timestamp_seconds", "account_initial_margin",
             "account_position_initial_margin", "account_available_balance", "account_max_withdraw_amount"}


def assert_same(live: Snapshot, rest: Snapshot) -> None:
    compared = 0
    for got, want in zip(live.positions, rest.positions, strict=True):
        assert (got.symbol, got.side) == (want.symbol, want.side)
        assert got.values.keys() == want.values.keys(), got.symbol
        for name, value in want.values.items():
            if name not in REST_ONLY:
                assert within(got.values[name], value), (got.symbol, name, got.values[name], value)
                compared += 1
    for got_asset, want_asset in zip(live.assets, rest.assets, strict=True):
        for name, value in want_asset.values.items():
            if name not in REST_ONLY:
                assert within(got_asset.values[name], value), (got_asset.asset, name, got_asset.values[name], value)
                compared += 1
    for name, value in rest.totals.items():
        if name not in REST_ONLY:
            assert within(live.totals[name], value), (name, live.totals[name], value)
            compared += 1
    assert compared > 10


def test_usdm_rest_at_new_marks_equals_recompute(sim: Simulator) -> None:
    assert sim.market is not None
    before = usdm_snapshot(sim)
    btc = next(p for p in before.positions if p.symbol == "BTCUSDT")
    assert btc.values["position_mark_price"] == float(sim.market.mark("BTCUSDT") or 0)
    assert "position_liquidation_price" in btc.values  # computed from the cross wallet, not stored
    for symbol, price in (("BTCUSDT", "6400.5"), ("ETHUSDT", "3450.25"), ("ADAUSDT", "0.35")):
        sim.market.set_mark(symbol, price)
    after = usdm_snapshot(sim)
    brackets = parsing.parse_leverage_brackets(get(sim, "/fapi/v1/leverageBracket"))
    live = risk.recompute(before, "usdm", brackets, {}, sim.market.current())
    assert_same(live, after)
    assert live.positions[0].values != before.positions[0].values


def test_coinm_rest_at_new_marks_equals_recompute(sim: Simulator) -> None:
    assert sim.market is not None
    before = coinm_snapshot(sim)
    sim.market.set_mark("BTCUSD_PERP", "6200.1")
    after = coinm_snapshot(sim)
    brackets = parsing.parse_coinm_leverage_brackets(get(sim, "/dapi/v2/leverageBracket"))
    sizes = parsing.parse_contract_sizes(requests.get(sim.base_url + "/dapi/v1/exchangeInfo", timeout=TIMEOUT).content)
    live = risk.recompute(before, "coinm", brackets, sizes, sim.market.current())
    assert_same(live, after)


# ---- parsing of brackets and exchange info ----------------------------------------------------
USDM_EXAMPLE = b"""[{"symbol": "ETHUSDT", "notionalCoef": 1.50, "brackets": [
  {"bracket": 1, "initialLeverage": 75, "notionalCap": 10000, "notionalFloor": 0, "maintMarginRatio": 0.0065,
   "cum": 0}]}]"""
COINM_EXAMPLE = b"""[{"symbol": "BTCUSD_PERP", "notionalCoef": 1.50, "brackets": [
  {"bracket": 1, "initialLeverage": 125, "qtyCap": 50, "qtylFloor": 0, "maintMarginRatio": 0.004, "cum": 0.0},
  {"bracket": 2, "initialLeverage": 100, "qtyCap": 100, "qtylFloor": 50, "maintMarginRatio": 0.005}]}]"""


def test_parse_official_bracket_examples() -> None:
    assert parsing.parse_leverage_brackets(USDM_EXAMPLE) == {
        "ETHUSDT": (Bracket(Decimal(0), Decimal(10000), Decimal("0.0065"), Decimal(0)),)}
    one = parsing.parse_leverage_brackets(json.dumps(json.loads(USDM_EXAMPLE)[0]).encode())  # ?symbol= answer
    assert list(one) == ["ETHUSDT"]
    (table,) = parsing.parse_coinm_leverage_brackets(COINM_EXAMPLE).values()
    assert table[0].mmr == Decimal("0.004")  # exact, not 0.004000000000000000083
    assert table[1].cum == Decimal("0.050")  # cum left out: Binance's rule, 50 x (0.5 % - 0.4 %)


@pytest.mark.parametrize("body", [
    b"{", b"[1]", b'{"symbol": "X"}', b'[{"symbol": "A B", "brackets": []}]',
    b'[{"symbol": "X", "brackets": []}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 20, "maintMarginRatio": 0.1, "cum": 0}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 0, "maintMarginRatio": 1, "cum": 0}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 0, "maintMarginRatio": -0.1, "cum": 0}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": NaN, "notionalFloor": 0, "maintMarginRatio": 0.1, "cum": 0}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": "1e999", "notionalFloor": 0, "maintMarginRatio": 0.1}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": true, "notionalFloor": 0, "maintMarginRatio": 0.1}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 0, "maintMarginRatio": 0.1, "cum": 0},'
    b' {"notionalCap": 20, "notionalFloor": 5, "maintMarginRatio": 0.2, "cum": 0}]}]',
    b'[{"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 0, "maintMarginRatio": 0.1}]},'
    b' {"symbol": "X", "brackets": [{"notionalCap": 10, "notionalFloor": 0, "maintMarginRatio": 0.1}]}]',
])
def test_bad_bracket_answers_are_values(body: bytes) -> None:
    with pytest.raises(BadResponse):
        parsing.parse_leverage_brackets(body)


def test_contract_sizes_parse_and_refuse() -> None:
    assert parsing.parse_contract_sizes(b'{"symbols": [{"symbol": "BTCUSD_PERP", "contractSize": 100},'
                                        b' {"symbol": "X"}]}') == {"BTCUSD_PERP": Decimal(100)}
    for bad in (b'{"symbols": [{"symbol": "A", "contractSize": 0}]}', b'{"symbols": 1}',
                b'{"symbols": [{"symbol": "A", "contractSize": "ten"}]}', b"[]"):
        with pytest.raises(BadResponse):
            parsing.parse_contract_sizes(bad)


# ---- market streams ---------------------------------------------------------------------------
def receive(ws: ClientConnection, sim: Simulator, seconds: float = TIMEOUT) -> Any:
    """The next message, ticking the market (marks without a step) until one arrives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sim.publish_marks()
        try:
            return json.loads(ws.recv(timeout=0.3))
        except TimeoutError:
            continue
    raise AssertionError("no message")


def request(ws: ClientConnection, method: str, params: list[str] | None = None, ident: int = 1) -> Any:
    ws.send(json.dumps({"method": method, **({"params": params} if params is not None else {}), "id": ident}))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=TIMEOUT))
        if isinstance(message, dict) and "id" in message:
            return message
    raise AssertionError("no answer")


def test_usdm_raw_stream_and_methods(sim: Simulator) -> None:
    assert sim.market is not None
    sim.market.set_mark("BTCUSDT", "6543.21")
    with connect(sim.market_stream_url + "/ws/btcusdt@markPrice@1s", open_timeout=TIMEOUT) as ws:
        update = receive(ws, sim)
        assert update["e"] == "markPriceUpdate" and update["s"] == "BTCUSDT" and update["p"] == "6543.21000000"
        assert request(ws, "SUBSCRIBE", ["ethusdt@markPrice@1s"]) == {"result": None, "id": 1}
        assert request(ws, "LIST_SUBSCRIPTIONS", ident=2) == {"result": ["btcusdt@markPrice@1s",
                                                                         "ethusdt@markPrice@1s"], "id": 2}
        assert sim.market_subscriptions("usdm") == ["btcusdt@markPrice@1s", "ethusdt@markPrice@1s"]
        assert request(ws, "UNSUBSCRIBE", ["btcusdt@markPrice@1s"], 3) == {"result": None, "id": 3}
        assert request(ws, "SUBSCRIBE", ["BTCUSDT@markPrice"], 4)["error"]["code"] == 2  # upper-case symbol
        symbols = {receive(ws, sim)["s"] for _ in range(4)}
        assert symbols == {"ETHUSDT"}


def test_usdm_combined_and_all_marks(sim: Simulator) -> None:
    with connect(sim.market_stream_url + "/stream?streams=!markPrice@arr@1s/adausdt@markPrice@1s",
                 open_timeout=TIMEOUT) as ws:
        seen: dict[str, Any] = {}
        while len(seen) < 2:
            message = receive(ws, sim)
            seen[message["stream"]] = message["data"]
        assert {p["s"] for p in seen["!markPrice@arr@1s"]} == {"BTCUSDT", "ETHUSDT", "ADAUSDT"}
        assert seen["adausdt@markPrice@1s"]["s"] == "ADAUSDT"


def test_coinm_stream_at_the_root_with_pair_streams(sim: Simulator) -> None:
    with connect(sim.coinm_market_stream_url + "/stream?streams=btcusd@markPrice@1s", open_timeout=TIMEOUT) as ws:
        message = receive(ws, sim)
        assert message["stream"] == "btcusd@markPrice@1s" and [p["s"] for p in message["data"]] == ["BTCUSD_PERP"]
    with pytest.raises(Exception, match="404"):
        connect(sim.coinm_market_stream_url + "/private/ws", open_timeout=TIMEOUT)


def test_marks_walk_every_tick_and_the_stream_follows(sim: Simulator) -> None:
    assert sim.market is not None
    sim.market.volatility = 0.01
    with connect(sim.market_stream_url + "/ws/btcusdt@markPrice@1s", open_timeout=TIMEOUT) as ws:
        prices = []
        for _ in range(3):
            sim.tick()
            prices.append(json.loads(ws.recv(timeout=TIMEOUT))["p"])
        assert len(set(prices)) == 3
        assert prices[-1] == f"{sim.market.mark('BTCUSDT'):.8f}"


def test_market_stream_limits(sim: Simulator) -> None:
    with connect(sim.market_stream_url + "/ws", open_timeout=TIMEOUT) as ws:
        names = [f"s{i}usdt@markPrice@1s" for i in range(1025)]
        assert request(ws, "SUBSCRIBE", names[:1024])["result"] is None
        assert request(ws, "SUBSCRIBE", names[1024:], 2)["error"]["code"] == 2
    with connect(sim.market_stream_url + "/ws", open_timeout=TIMEOUT) as ws:
        for i in range(11):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        with pytest.raises(ConnectionClosed):
            for _ in range(20):
                ws.recv(timeout=TIMEOUT)


# ---- liquidation and ADL on the user data stream ------------------------------------------------
def user_stream(sim: Simulator) -> ClientConnection:
    key = requests.post(sim.base_url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY},
                        timeout=TIMEOUT).json()["listenKey"]
    return connect(f"{sim.stream_url}/private/ws?listenKey={key}&events=ORDER_TRADE_UPDATE/ACCOUNT_UPDATE",
                   open_timeout=TIMEOUT)


def forced_closes(ws: ClientConnection, count: int) -> list[Any]:
    found = []
    deadline = time.monotonic() + TIMEOUT
    while len(found) < count and time.monotonic() < deadline:
        text = ws.recv(timeout=TIMEOUT)
        if may_be_forced_close(text):
            found.append(json.loads(text))
    return found


def test_crossing_the_liquidation_price_liquidates(sim: Simulator) -> None:
    """The ETH short's mark past its price: the USDT cross pool is under its maintenance margin, so
    every cross position of it goes (one liquidation order each, NEW then FILLED); the isolated stays."""
    assert sim.market is not None
    liq = next(p for p in usdm_snapshot(sim).positions if p.symbol == "ETHUSDT").values["position_liquidation_price"]
    with user_stream(sim) as ws:
        sim.market.set_mark("ETHUSDT", Decimal(repr(liq)) * Decimal("1.001"))  # the short's price is above
        sim.auto_liquidate = True
        sim.tick()
        events = forced_closes(ws, 4)
    closes = [classify(e) for e in events]
    assert all(c is not None and c.kind == "liquidation" for c in closes)
    by_order: dict[int, list[str]] = {}
    for event, close in zip(events, closes, strict=True):
        assert close is not None
        by_order.setdefault(close.order_id, []).append(event["o"]["X"])
    assert list(by_order.values()) == [["NEW", "FILLED"], ["NEW", "FILLED"]]
    assert {c.symbol for c in closes if c} == {"BTCUSDT", "ETHUSDT"}
    assert {p.symbol for p in usdm_snapshot(sim).positions} == {"ADAUSDT"}
    (usdt,) = (a for a in usdm_snapshot(sim).assets if a.asset == "USDT")
    assert usdt.values["cross_wallet_balance"] < 2000  # the losses left the wallet


def test_auto_deleverage_pushes_adl(sim: Simulator) -> None:
    with user_stream(sim) as ws:
        sim.auto_deleverage(KEY, "usdm", "BTCUSDT")
        events = forced_closes(ws, 2)
    assert [classify(e).kind for e in events if classify(e)] == ["adl", "adl"]
    assert "BTCUSDT" not in {p.symbol for p in usdm_snapshot(sim).positions}


def test_demo_account_is_liquidated_within_minutes_and_comes_back() -> None:
    """--demo: `degen`'s SOLUSDT long meets its liquidation price within a few simulated minutes."""
    from exporter.demo import start_demo

    demo, config = start_demo()
    try:
        assert config.market_stream_base_url == demo.market_stream_url
        degen = next(a for a in config.accounts if a.alias == "degen")
        assert degen.live_risk_on
        key = degen.api_key.reveal()
        demo.reopen_after_s = 0.0  # back in the same tick
        steps = 0
        while steps < 300 and not demo.liquidations:
            demo.tick()
            steps += 1
        assert steps < 300, "not liquidated within 5 simulated minutes"
        assert demo.liquidations == 1
        (back,) = (demo.stored_account(key) or account()).positions
        assert back.symbol == "SOLUSDT" and back.entry_price != "150"  # reopened at the mark of the moment
    finally:
        demo.stop()


def test_usdm_hedge_mode_rest_equals_recompute() -> None:
    """Hedge mode: a LONG and a SHORT leg of BTCUSDT in one cross pool share one price, at every mark."""
    hedge = account(positions=[SimPosition("BTCUSDT", "1.200", "6600", side="LONG", leverage=20),
                               SimPosition("BTCUSDT", "-0.400", "6900", side="SHORT", leverage=20),
                               SimPosition("ETHUSDT", "2.000", "3400", side="LONG", leverage=20)],
                    balances=[balance_row("USDT", "1500")])
    with Simulator([hedge], market=SimMarket(volatility=0.0)) as simulator:
        simulator.auto_liquidate = False
        assert simulator.market is not None
        before = usdm_snapshot(simulator)
        long, short = (p for p in before.positions if p.symbol == "BTCUSDT")
        assert long.values["position_liquidation_price"] == short.values["position_liquidation_price"]
        simulator.market.set_mark("BTCUSDT", "6500.75")
        simulator.market.set_mark("ETHUSDT", "3300.5")
        brackets = parsing.parse_leverage_brackets(get(simulator, "/fapi/v1/leverageBracket"))
        assert_same(risk.recompute(before, "usdm", brackets, {}, simulator.market.current()),
                    usdm_snapshot(simulator))


def test_portfolio_margin_positions_follow_the_marks() -> None:
    """Portfolio Margin: mark, PnL and notional recompute; the liquidation price keeps Binance's figure."""
    from exporter.simulator import SimPortfolio

    pm = SimPortfolio(um_positions=[SimPosition("BTCUSDT", "0.500", "6500", liquidation_price="4000")])
    with Simulator([account(pm=pm)], market=SimMarket(volatility=0.0)) as simulator:
        assert simulator.market is not None
        before = parsing.parse_pm_position_risk(get(simulator, "/papi/v1/um/positionRisk"), coin=False)
        simulator.market.set_mark("BTCUSDT", "6800.5")
        after = parsing.parse_pm_position_risk(get(simulator, "/papi/v1/um/positionRisk"), coin=False)
        live = risk.recompute(before, "pm", {}, {}, simulator.market.current())
        (got,), (want,) = live.positions, after.positions
        assert got.values == pytest.approx(want.values, rel=1e-9, abs=1.5e-8)
        assert want.values["position_mark_price"] == 6800.5 and want.values["position_liquidation_price"] == 4000
