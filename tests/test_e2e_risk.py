"""Risk in every margin mode, end to end: Binance-like accounts, the exporter, a real Prometheus, our rules.

One simulated account per case of issue 15 (all static: no drift), read by the
exporter as a process with `endpoint: account` and `positions: true`, scraped
by Prometheus running prometheus/rules.yml and alerts.yml (every `for:`
shortened to 1s, as in test_e2e_prometheus). It checks each figure and that
exactly the right alerts fire:

* insolvent: maintenance margin 50, margin balance -10 -> margin ratio +Inf, pages;
* isolated: cross 40 + isolated 20 on an isolated wallet of 75 (PnL -5) ->
  cross 40 / 180 (under its 23% threshold: no page, where 60 / 250 = 24% would
  page), the isolated position 20 / 70, which pages;
* usdc: single-asset mode, USDT totals at 1%, a USDC pool at 95 / 100 -> pages;
* multi: Multi-Assets mode, a negative USDT wallet under USDC collateral ->
  totals only (5%), and the pool's 200 USD below its 500 USD threshold pages
  as such, never as "available USDT";
* short: a SHORT whose mark (105) is past its liquidation price (100) -> -4.76%, pages;
* a master's sub-account and a Portfolio Margin account have positions, and a
  long past / a short near liquidation page;
* pm: an accountStatus Binance added since is exported as its own state and
  pages, with uniMMR still there;
* safe: nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
import yaml
from test_e2e_prometheus import PromAPI, poll, short_for_rules

from conftest import write_config
from exporter.simulator import SimFutures, SimPortfolio, SimPosition, SimSubAccount, balance_row
from stack_helpers import free_port, process, require_tool
from testkit import SimAccount, Simulator

DEADLINE_SECONDS = 45


def pos(symbol: str, amount: str, entry: str, mark: str, side: str = "BOTH", **kw) -> SimPosition:
    return SimPosition(symbol, amount, entry, mark, side, **kw)


# alias: (simulated account, its config keys)
CASES: dict[str, tuple[dict, dict]] = {
    # maint 1 x 10000 x 0.005 = 50; wallet 90, PnL (10000 - 10100) x 1 = -100 -> margin balance -10.
    "insolvent": ({"balances": [balance_row("USDT", "90")],
                   "positions": [pos("BTCUSDT", "1", "10100", "10000", maint_rate="0.005")]}, {}),
    # cross: 1 x 10000 x 0.004 = 40; isolated: 1 x 5000 x 0.004 = 20, PnL (5000 - 4995) x -1 = -5, wallet 75.
    "isolated": ({"balances": [balance_row("USDT", "255", cross="180")],
                  "positions": [pos("BTCUSDT", "1", "10000", "10000"),
                                pos("ETHUSDT", "-1", "4995", "5000", isolated=True, isolated_wallet="75")]},
                 {"max_margin_ratio": 0.23}),
    # USDT: 0.025 x 10000 x 0.004 = 1 on 100; USDC: 1 x 23750 x 0.004 = 95 on 100.
    "usdc": ({"balances": [balance_row("USDT", "100"), balance_row("USDC", "100")],
              "positions": [pos("BTCUSDT", "0.025", "10000", "10000"), pos("BTCUSDC", "1", "23750", "23750")]}, {}),
    # Multi-Assets: USDT -50 under USDC 250: one pool of 200 USD; maint 0.25 x 10000 x 0.004 = 10.
    "multi": ({"multi_assets": True, "balances": [balance_row("USDT", "-50"), balance_row("USDC", "250")],
               "positions": [pos("BTCUSDT", "0.25", "10000", "10000")]},
              {"min_account_available_balance": 500, "min_available_balance": {"USDT": 1000}}),
    "short": ({"balances": [balance_row("USDT", "1000")],
               "positions": [pos("ETHUSDT", "-1", "100", "105", "SHORT", liquidation_price="100"),
                             pos("BTCUSDT", "0.001", "10000", "10000", "LONG", liquidation_price="5000")]}, {}),
    "master": ({"balances": [balance_row("USDT", "1000")],
                "sub_accounts": [SimSubAccount("sub1@risk.example", SimFutures(
                    [balance_row("USDT", "500")],
                    [pos("BTCUSDT", "0.01", "50000", "50000", liquidation_price="50500")]))]},
               {"sub_accounts": {"include": ["*@risk.example"], "aliases": {"sub1@risk.example": "sub1"}}}),
    "pm": ({"pm": SimPortfolio(status="LIQUIDATION_PROTECTION", um_positions=[
        pos("BTCUSDT", "-0.5", "60000", "61000", "SHORT", liquidation_price="62000")])}, {"markets": ["pm"]}),
    "safe": ({"balances": [balance_row("USDT", "10000")], "positions": [pos("BTCUSDT", "0.01", "10000", "10000")]},
             {}),
}
EXPECTED_ALERTS = {
    ("BinanceFuturesMarginRatioHigh", "insolvent", "usdm", "", ""),
    ("BinanceFuturesMarginRatioHigh", "usdc", "usdm", "", ""),
    ("BinanceFuturesUnrealizedLossHigh", "insolvent", "usdm", "", ""),  # -100 on a wallet of 90
    ("BinanceFuturesIsolatedMarginRatioHigh", "isolated", "usdm", "ETHUSDT", "BOTH"),
    ("BinanceFuturesPositionNearLiquidation", "short", "usdm", "ETHUSDT", "SHORT"),
    ("BinanceFuturesPositionNearLiquidation", "sub1", "usdm", "BTCUSDT", "BOTH"),
    ("BinanceFuturesPositionNearLiquidation", "pm", "pm", "BTCUSDT", "SHORT"),
    ("BinanceFuturesPmAccountStatusNotNormal", "pm", "pm", "", ""),
    ("BinanceFuturesAccountAvailableBalanceLow", "multi", "usdm", "", ""),
}


@pytest.fixture(scope="module")
def risk_stack(tmp_path_factory) -> Iterator[PromAPI]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("risk")
    sim = Simulator()
    base = sim.start()
    accounts = []
    for alias, (state, settings) in CASES.items():
        key, secret = f"key-{alias}", f"secret-{alias}"
        sim.add_account(SimAccount(api_key=key, api_secret=secret, **state))
        accounts.append({"alias": alias, "api_key": key, "api_secret": secret, **settings})
    config = {"defaults": {"base_url": base, "coinm_base_url": base, "pm_base_url": base, "sapi_base_url": base,
                           "endpoint": "account", "positions": True, "cache_seconds": 0, "timeout_seconds": 3,
                           "max_margin_ratio": 0.8, "min_liquidation_distance": 0.03,
                           "live_risk": False},  # static marks, no market streams (test_live_risk.py)
              "scrape_interval_seconds": 1, "accounts": accounts}
    config_path = write_config(tmp / "config.yaml", config)
    exporter_port, prom_port = free_port(), free_port()
    prom_config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                   "rule_files": short_for_rules(tmp),
                   "scrape_configs": [{"job_name": "binance-futures",
                                       "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_config, sort_keys=False))
    exporter_cmd = [sys.executable, "-m", "exporter", f"--config.file={config_path}",
                    f"--web.listen-address=127.0.0.1:{exporter_port}"]
    prometheus_cmd = [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
    try:
        with process(exporter_cmd, f"http://127.0.0.1:{exporter_port}/-/ready", "exporter"), \
                process(prometheus_cmd, f"http://127.0.0.1:{prom_port}/-/ready", "prometheus"):
            yield PromAPI(f"http://127.0.0.1:{prom_port}")
    finally:
        sim.stop()


def values(api: PromAPI, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in api.query(expr)}


def test_each_case_gives_the_right_figure(risk_stack: PromAPI) -> None:
    api = risk_stack
    deadline = time.monotonic() + DEADLINE_SECONDS
    want = {("insolvent",): float("inf"), ("isolated",): 40 / 180, ("usdc",): 0.95, ("multi",): 10 / 200,
            ("safe",): 0.4 / 10000}

    def ratios():
        got = values(api, "binance_futures:margin_ratio", "alias")
        return all(k in got for k in want), got

    got = poll(ratios, "margin ratios of every case", deadline)
    for key, expected in want.items():
        assert got[key] == pytest.approx(expected, rel=1e-9), (key, got)
    pools = values(api, 'binance_futures:pool_margin_ratio{alias=~"usdc|multi"}', "alias", "pool")
    assert pools == pytest.approx({("usdc", "total"): 0.01, ("usdc", "USDT"): 0.01, ("usdc", "USDC"): 0.95,
                                   ("multi", "total"): 0.05}), pools  # no USDT pool in Multi-Assets mode
    assert values(api, "binance_futures:isolated_margin_ratio", "alias", "symbol") == pytest.approx(
        {("isolated", "ETHUSDT"): 20 / 70})

    def distances():
        got = values(api, "binance_futures:position_liquidation_distance", "alias", "symbol", "position_side")
        return len(got) >= 4, got

    got = poll(distances, "liquidation distances", deadline)
    assert got == pytest.approx({("short", "ETHUSDT", "SHORT"): (100 - 105) / 105,
                                 ("short", "BTCUSDT", "LONG"): 0.5,
                                 ("sub1", "BTCUSDT", "BOTH"): (50000 - 50500) / 50000,
                                 ("pm", "BTCUSDT", "SHORT"): (62000 - 61000) / 61000}), got
    assert values(api, "binance_futures_multi_assets_mode", "alias") == {
        (a,): (1.0 if a == "multi" else 0.0) for a in ("insolvent", "isolated", "usdc", "multi", "short", "master",
                                                        "safe")}
    assert values(api, "binance_futures:account_available_balance_usd", "alias") == {("multi",): 200.0}
    assert values(api, 'binance_futures:available_balance{alias="multi"}', "asset") == {}
    status = values(api, 'binance_futures_pm_account_status{alias="pm"}', "status")
    assert status[("LIQUIDATION_PROTECTION",)] == 1.0 and status[("NORMAL",)] == 0.0, status
    assert values(api, 'binance_futures_up', "alias") == {(a,): 1.0 for a in (*CASES, "sub1")}
    assert values(api, 'binance_futures_pm_uni_mmr', "alias")[("pm",)] > 1.5
    info = values(api, "binance_futures_position_info", "alias", "symbol", "margin_type", "margin_asset")
    assert info[("isolated", "ETHUSDT", "isolated", "USDT")] == 1.0 and ("sub1", "BTCUSDT") not in {
        k[:2] for k in info}  # USD-M sub-account rows carry no margin type


def test_exactly_the_right_alerts_fire(risk_stack: PromAPI) -> None:
    api = risk_stack
    deadline = time.monotonic() + DEADLINE_SECONDS

    def firing():
        series = api.query('ALERTS{alertstate="firing"}')
        # Per-account alerts only: BinanceFuturesExporterAbsent (no alias) may fire for the moment before
        # Prometheus' first scrape, with every `for:` shortened to 1s.
        got = {(m["alertname"], m["alias"], m["market"], m.get("symbol", ""), m.get("position_side", ""))
               for m in (s["metric"] for s in series) if "alias" in m}
        return got >= EXPECTED_ALERTS, got

    poll(firing, "every expected alert firing", deadline)
    series = api.query('ALERTS{alertname!="BinanceFuturesExporterAbsent"}')
    got = {(m["alertname"], m["alias"], m["market"], m.get("symbol", ""), m.get("position_side", ""))
           for m in (s["metric"] for s in series)}
    assert got == EXPECTED_ALERTS, got - EXPECTED_ALERTS
    low = api.query('ALERTS{alertname="BinanceFuturesAvailableBalanceLow"}')
    assert low == [], low  # the Multi-Assets pool is never reported as "available USDT"
