"""Every account kind against the simulator: USD-M account and positions, COIN-M, Portfolio Margin, sub-accounts."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import value, wait_until
from exporter.parsing import SUB_ACCOUNT_KEYS
from exporter.schema import (
    COINM_BALANCE,
    PM_ACCOUNT,
    PM_BALANCE,
    POSITION_RISK,
    SUB_ACCOUNT_ASSET,
    SUB_ACCOUNT_TOTALS,
    USDM_ACCOUNT_ASSET,
    USDM_ACCOUNT_TOTALS,
)
from exporter.secrets import Secret
from exporter.signing import HmacSigner, signed_query
from exporter.simulator import SimAccount, SimFutures, SimPortfolio, SimPosition, SimSubAccount, balance_row, pm_row
from testkit import Fault, Simulator

KEY, SECRET = "key-markets-" + "m" * 20, "secret-markets-" + "9" * 40


def signed_get(sim: Simulator, path: str, key: str = KEY, secret: str = SECRET, **params: str) -> object:
    """What the simulator answers the exporter, fetched the same way, to compare field by field."""
    query = signed_query([*params.items(), ("timestamp", str(sim.server_time_ms()))], HmacSigner(Secret(secret)))
    resp = requests.get(f"{sim.base_url}{path}?{query}", headers={"X-MBX-APIKEY": key}, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def exported(m: dict, labels: dict, item: dict, fields) -> int:
    """Every decimal field of `item` with a metric equals its series exactly; returns how many were checked."""
    checked = 0
    for f in fields:
        if f.metric is None or f.kind not in ("decimal", "opt_decimal") or f.json not in item:
            continue
        got = value(m, f"binance_futures_{f.metric}", **labels)
        if item[f.json] == "" or (f.metric == "position_liquidation_price" and float(item[f.json]) == 0):
            assert got is None, (f.json, labels)
            continue
        assert got == float(item[f.json]), (f.json, labels, got, item[f.json])
        checked += 1
    return checked


@pytest.fixture
def sim() -> Simulator:
    subs = [SimSubAccount(f"bot-{i:03d}@x.test", SimFutures([balance_row("USDT", f"{100 + i}.5", "90")]))
            for i in range(250)]
    subs += [SimSubAccount("skip-me@x.test"), SimSubAccount("other@y.test"),
             SimSubAccount("nofutures@x.test", usdm=None),
             SimSubAccount("both@x.test", SimFutures([balance_row("USDT", "777.25")],
                                                     [SimPosition("BTCUSDT", "0.010", "60000", "61000")]),
                           SimFutures([balance_row("BTC", "0.42", coin=True)]))]
    account = SimAccount(
        KEY, SECRET, account_alias="Mk7z",
        balances=[balance_row("USDT", "10000", "8000", cross="9950"), balance_row("BNB", "0")],
        positions=[SimPosition("BTCUSDT", "0.5", "60000", "62000", leverage=10, liquidation_price="54000.5"),
                   SimPosition("ETHUSDT", "-2", "3000", "3100")],
        coinm_balances=[balance_row("BTC", "0.25", "0.21", coin=True)],
        coinm_positions=[SimPosition("BTCUSD_PERP", "40", "61200.5", "62750.1", leverage=10)],
        pm=SimPortfolio(balances=[pm_row("USDT", "42000", "-850.5", free="5000")], maint_margin="14500",
                        initial_margin="21000"),
        sub_accounts=subs)
    simulator = Simulator([account])
    simulator.start()
    yield simulator
    simulator.stop()


def config(sim: Simulator, **account: object) -> dict:
    urls = {k: sim.base_url for k in ("base_url", "coinm_base_url", "pm_base_url", "sapi_base_url")}
    # live_risk off: the simulator here has no market streams (live risk: test_live_risk.py)
    return {"defaults": {**urls, "cache_seconds": 0, "timeout_seconds": 3, "live_risk": False},
            "accounts": [{"alias": "desk", "api_key": KEY, "api_secret": SECRET, **account}]}


def test_usdm_account_endpoint_with_positions_exact(sim: Simulator, make_harness) -> None:
    m = make_harness(config(sim, endpoint="account", positions=True, max_margin_ratio=0.8,
                            min_liquidation_distance=0.1)).scrape()
    desk = {"alias": "desk", "market": "usdm"}
    # The figures the simulator derives from the positions, exactly:
    assert value(m, "binance_futures_position_unrealized_pnl", **desk, symbol="BTCUSDT", position_side="BOTH") == 1000
    assert value(m, "binance_futures_position_notional", **desk, symbol="BTCUSDT", position_side="BOTH") == 31000
    assert value(m, "binance_futures_position_required_initial_margin", **desk, symbol="BTCUSDT",
                 position_side="BOTH") == 3100
    assert value(m, "binance_futures_position_liquidation_price", **desk, symbol="BTCUSDT",
                 position_side="BOTH") == 54000.5
    assert value(m, "binance_futures_position_amount", **desk, symbol="ETHUSDT", position_side="BOTH") == -2
    assert value(m, "binance_futures_unrealized_pnl", **desk, asset="USDT") == 800  # 1000 - 200
    assert value(m, "binance_futures_margin_balance", **desk, asset="USDT") == 10800
    assert value(m, "binance_futures_balance", **desk, asset="USDT") == 10000  # walletBalance
    assert value(m, "binance_futures_account_margin_balance", **desk) == 10800
    assert value(m, "binance_futures_max_margin_ratio", **desk) == 0.8
    assert value(m, "binance_futures_min_liquidation_distance", **desk) == 0.1
    assert sim.stats()["requests_by_path"] == {"/fapi/v1/time": 1, "/fapi/v3/account": 1, "/fapi/v3/positionRisk": 1,
                                               "/fapi/v1/accountConfig": 1}
    assert value(m, "binance_futures_exporter_used_weight", host=sim.base_url.split("//")[1]) == 16  # 1 + 5 + 5 + 5
    assert value(m, "binance_futures_multi_assets_mode", **desk) == 0 and value(m, "binance_futures_hedge_mode", **desk) == 0
    assert value(m, "binance_futures_account_isolated_maint_margin", **desk) == 0
    assert value(m, "binance_futures_position_info", **desk, symbol="BTCUSDT", position_side="BOTH",
                 margin_type="cross", margin_asset="USDT") == 1
    # ...and every other field, exactly as the simulator served it:
    account = signed_get(sim, "/fapi/v3/account")
    assert exported(m, desk, account, USDM_ACCOUNT_TOTALS) == 11
    for row in account["assets"]:
        if any(float(row[k]) for k in ("walletBalance", "crossWalletBalance", "availableBalance")):
            assert exported(m, {**desk, "asset": row["asset"]}, row, USDM_ACCOUNT_ASSET) == 11
    risk = signed_get(sim, "/fapi/v3/positionRisk")
    assert [p["symbol"] for p in risk] == ["BTCUSDT", "ETHUSDT"]
    for pos in risk:
        labels = {**desk, "symbol": pos["symbol"], "position_side": pos["positionSide"]}
        assert exported(m, labels, pos, POSITION_RISK) >= 9
        assert value(m, "binance_futures_position_adl_quantile", **labels) == pos["adl"]
    # Series of the balance endpoint the account endpoint lacks:
    assert value(m, "binance_futures_margin_available", **desk, asset="USDT") is None
    assert not [k for k in m if k[0] == "binance_futures_account_info"]


def test_a_position_that_closes_disappears(sim: Simulator, make_harness) -> None:
    h = make_harness(config(sim, endpoint="account", positions=True))
    m = h.scrape()
    eth = {"alias": "desk", "market": "usdm", "symbol": "ETHUSDT", "position_side": "BOTH"}
    assert value(m, "binance_futures_position_amount", **eth) == -2
    sim.update_account(KEY, positions=[SimPosition("BTCUSDT", "0.5", "60000", "62000", leverage=10)])
    m = h.scrape()
    assert value(m, "binance_futures_position_amount", **eth) is None
    assert value(m, "binance_futures_position_amount", alias="desk", market="usdm", symbol="BTCUSDT",
                 position_side="BOTH") == 0.5


def test_v2_account_has_margin_available(sim: Simulator, make_harness) -> None:
    m = make_harness(config(sim, endpoint="account", api_version="v2", positions=True)).scrape()
    assert value(m, "binance_futures_margin_available", alias="desk", asset="USDT") == 1.0
    assert sim.stats()["requests_by_path"]["/fapi/v2/positionRisk"] == 1
    assert value(m, "binance_futures_position_amount", alias="desk", symbol="BTCUSDT", position_side="BOTH") == 0.5


def test_failing_positions_fail_the_refresh_alone(sim: Simulator, make_harness) -> None:
    sim.set_fault(KEY, Fault("truncated_json", path="/fapi/v3/positionRisk"))
    m = make_harness(config(sim, endpoint="account", positions=True, markets=["usdm", "coinm"])).scrape()
    assert value(m, "binance_futures_up", alias="desk", market="usdm") == 0
    assert value(m, "binance_futures_scrape_errors_total", alias="desk", market="usdm", reason="bad_response") == 1
    assert value(m, "binance_futures_balance", alias="desk", market="usdm", asset="USDT") is None
    assert value(m, "binance_futures_up", alias="desk", market="coinm") == 1


def test_coinm_balance_account_and_positions(sim: Simulator, make_harness) -> None:
    h = make_harness(config(sim, markets=["coinm"]))
    m = h.scrape()
    coin = {"alias": "desk", "market": "coinm"}
    before = dict(sim.stats()["requests_by_path"])
    (row,) = signed_get(sim, "/dapi/v1/balance")
    assert exported(m, {**coin, "asset": "BTC"}, row, COINM_BALANCE) == 5
    assert value(m, "binance_futures_max_withdraw_amount", **coin, asset="BTC") == float(row["withdrawAvailable"])
    assert value(m, "binance_futures_account_info", **coin, account_alias="Mk7z") == 1
    m = make_harness(config(sim, markets=["coinm"], endpoint="account", positions=True)).scrape()
    pos = {**coin, "symbol": "BTCUSD_PERP", "position_side": "BOTH"}
    assert value(m, "binance_futures_position_amount", **pos) == 40
    assert value(m, "binance_futures_position_entry_price", **pos) == 61200.5
    assert value(m, "binance_futures_margin_balance", **coin, asset="BTC") is not None
    assert not [k for k in m if k[0].startswith("binance_futures_account_") and k[0] != "binance_futures_account_host_info"]
    paths = sim.stats()["requests_by_path"]
    assert before == {"/dapi/v1/time": 1, "/dapi/v1/balance": 1}
    assert paths["/dapi/v1/account"] == 1 and paths["/dapi/v1/positionRisk"] == 1
    assert paths["/dapi/v1/time"] == 2 and "/fapi/v1/time" not in paths


def test_portfolio_margin(sim: Simulator, make_harness) -> None:
    m = make_harness(config(sim, markets=["pm"])).scrape()
    pm = {"alias": "desk", "market": "pm"}
    paths = dict(sim.stats()["requests_by_path"])
    (row,) = signed_get(sim, "/papi/v1/balance")
    assert exported(m, {**pm, "asset": "USDT"}, row, PM_BALANCE) == 10  # and cmUnrealizedPNL "": no series
    assert value(m, "binance_futures_balance", **pm, asset="USDT") == 47000  # totalWalletBalance
    assert value(m, "binance_futures_pm_cm_unrealized_pnl", **pm, asset="USDT") is None  # "" gives no series
    account = signed_get(sim, "/papi/v1/account")
    assert exported(m, pm, account, PM_ACCOUNT) == 6
    assert account["totalAvailableBalance"] == "" and value(m, "binance_futures_pm_total_available_balance", **pm) is None
    states = {dict(k[1])["status"]: v for k, v in m.items() if k[0] == "binance_futures_pm_account_status"}
    assert states[account["accountStatus"]] == 1 and sum(states.values()) == 1 and len(states) == 7
    assert value(m, "binance_futures_min_uni_mmr", **pm) == 1.5  # the default
    assert value(m, "binance_futures_max_margin_ratio", **pm) is None
    assert paths == {"/fapi/v1/time": 1, "/papi/v1/balance": 1, "/papi/v1/account": 1}  # the USD-M clock
    host = sim.base_url.split("//")[1] + "/pm"
    assert value(m, "binance_futures_exporter_used_weight", host=host) == 40
    assert value(m, "binance_futures_weight_limit", host=host, interval="1m") == 6000


def test_sub_accounts_from_one_master_key(sim: Simulator, make_harness) -> None:
    h = make_harness(config(sim, markets=[], sub_accounts={
        "include": ["*@x.test"], "exclude": ["skip-*"], "markets": ["usdm", "coinm"],
        "aliases": {"both@x.test": "both"}, "discovery_interval_seconds": 1}))
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_sub_accounts", master="desk") else None)(h.scrape()))
    # 250 bots and both; nofutures was listed but dropped at its first fetch (no futures account).
    assert value(m, "binance_futures_sub_accounts", master="desk") == 251
    assert sim.stats()["requests_by_path"]["/sapi/v1/sub-account/list"] == 2  # 200 + 54 on the second page
    m = h.scrape()
    both = {"alias": "both", "market": "usdm"}
    assert value(m, "binance_futures_sub_account_info", alias="both", master="desk", email="both@x.test") == 1
    answer = signed_get(sim, "/sapi/v2/sub-account/futures/account", email="both@x.test", futuresType="1")
    resp = answer[SUB_ACCOUNT_KEYS[1]]
    assert exported(m, both, resp, SUB_ACCOUNT_TOTALS) == 8
    assert exported(m, {**both, "asset": "USDT"}, resp["assets"][0], SUB_ACCOUNT_ASSET) == 8
    assert value(m, "binance_futures_balance", alias="both", market="coinm", asset="BTC") == 0.42
    assert value(m, "binance_futures_available_balance", **both, asset="USDT") is None  # none in this API
    assert value(m, "binance_futures_balance", alias="bot-007@x.test", market="usdm", asset="USDT") == 107.5
    # No futures account of a kind: no series, no error (bots have no COIN-M, nofutures has none).
    assert value(m, "binance_futures_up", alias="bot-007@x.test", market="coinm") is None
    assert value(m, "binance_futures_up", alias="nofutures@x.test", market="usdm") is None
    assert not any(k[0] == "binance_futures_scrape_errors_total" and v for k, v in m.items())
    assert value(m, "binance_futures_up", alias="skip-me@x.test") is None
    assert value(m, "binance_futures_up", alias="other@y.test") is None
    # Each sub-account fetch weighs 1, on the /sapi host's own budget.
    sapi = sim.base_url.split("//")[1]  # the only kind of host on this URL: no /sapi suffix
    assert value(m, "binance_futures_weight_limit", host=sapi, interval="1m") == 12000
    assert value(m, "binance_futures_account_host_info", alias="both", market="usdm", host=sapi) == 1
    # /probe of the master returns all its sub-accounts; of a sub-account, that one.
    probe = h.scrape("/probe?target=both")
    assert {dict(k[1]).get("alias") for k in probe if "alias" in dict(k[1])} == {"both"}
    assert value(h.scrape("/probe?target=desk"), "binance_futures_up", alias="bot-249@x.test") == 1


def test_a_sub_account_that_disappears_stops_being_exported(sim: Simulator, make_harness) -> None:
    h = make_harness(config(sim, markets=[], sub_accounts={"include": ["bot-00*"], "discovery_interval_seconds": 1}))
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_up", alias="bot-003@x.test") else None)(h.scrape()))
    assert value(m, "binance_futures_sub_accounts", master="desk") == 10
    sim.remove_sub_account(KEY, "bot-003@x.test")
    time.sleep(1.0)  # the discovery interval
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_sub_accounts", master="desk") == 9 else None)(
        h.scrape()), timeout=10, interval=0.3)
    m = h.scrape()
    assert value(m, "binance_futures_up", alias="bot-003@x.test") is None
    assert value(m, "binance_futures_sub_account_info", alias="bot-003@x.test", master="desk",
                 email="bot-003@x.test") is None
    assert value(m, "binance_futures_up", alias="bot-004@x.test") == 1


def test_a_failing_sub_account_is_down_alone(sim: Simulator, make_harness) -> None:
    sim.set_fault("bot-005@x.test", Fault("wrong_types"))
    h = make_harness(config(sim, markets=[], sub_accounts={"include": ["bot-00*"]}))
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_up", alias="bot-004@x.test") else None)(h.scrape()))
    assert value(m, "binance_futures_up", alias="bot-005@x.test") == 0
    assert sum(v for k, v in m.items() if k[0] == "binance_futures_scrape_errors_total"
               and dict(k[1])["alias"] == "bot-005@x.test") == 1
    assert [value(m, "binance_futures_up", alias=f"bot-00{i}@x.test") for i in (0, 1, 2, 3, 4, 6)] == [1] * 6


def test_a_bug_applying_discovery_does_not_stop_later_discoveries(sim: Simulator, make_harness,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: no answer from a live server makes applying a list fail; if it ever did, the master
    must not stay 'running' (and never discover again) for the rest of the process."""
    from exporter import discovery as discovery_module

    real = discovery_module.apply
    calls = []

    def flaky(discovery, emails, members):  # type: ignore[no-untyped-def]
        calls.append(len(emails))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(discovery, emails, members)

    monkeypatch.setattr(discovery_module, "apply", flaky)
    h = make_harness(config(sim, markets=[], sub_accounts={"include": ["bot-00*"], "discovery_interval_seconds": 1}))
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_sub_accounts", master="desk") else None)(
        h.scrape()), timeout=10, interval=0.3)
    assert len(calls) >= 2 and value(m, "binance_futures_sub_accounts", master="desk") == 10


def test_modes_are_read_at_start_then_rarely_within_the_budget(sim: Simulator, make_harness) -> None:
    """accountConfig (weight 5) at the first refresh only: later refreshes reuse the modes it gave."""
    sim.update_account(KEY, multi_assets=True, positions=[
        SimPosition("BTCUSDT", "0.5", "60000", "62000", "LONG", leverage=10)])
    h = make_harness(config(sim))
    for _ in range(3):
        m = h.scrape()
    desk = {"alias": "desk", "market": "usdm"}
    assert value(m, "binance_futures_multi_assets_mode", **desk) == 1
    assert value(m, "binance_futures_hedge_mode", **desk) == 1
    paths = sim.stats()["requests_by_path"]
    assert paths["/fapi/v1/accountConfig"] == 1 and paths["/fapi/v3/balance"] == 3
    # Multi-Assets mode: every row shows the pool's available balance (10000 + 0 at price 1).
    assert value(m, "binance_futures_available_balance", **desk, asset="USDT") == 8000


def test_a_failing_mode_read_keeps_the_account_up(sim: Simulator, make_harness, caplog) -> None:
    sim.set_fault(KEY, Fault("truncated_json", path="/fapi/v1/accountConfig"))
    m = make_harness(config(sim)).scrape()
    desk = {"alias": "desk", "market": "usdm"}
    assert value(m, "binance_futures_up", **desk) == 1
    assert value(m, "binance_futures_balance", **desk, asset="USDT") == 10000
    assert value(m, "binance_futures_multi_assets_mode", **desk) is None  # unknown: rules treat it as single-asset
    assert not any(k[0] == "binance_futures_scrape_errors_total" and v for k, v in m.items())
    assert "reading the account's modes failed" in caplog.text


def test_isolated_positions_and_their_maintenance_margin(sim: Simulator, make_harness) -> None:
    sim.update_account(KEY, balances=[balance_row("USDT", "255", cross="180")], positions=[
        SimPosition("BTCUSDT", "1", "10000", "10000"),
        SimPosition("ETHUSDT", "-1", "4995", "5000", isolated=True, isolated_wallet="75")])
    m = make_harness(config(sim, endpoint="account", positions=True)).scrape()
    desk = {"alias": "desk", "market": "usdm"}
    eth = {**desk, "symbol": "ETHUSDT", "position_side": "BOTH"}
    assert value(m, "binance_futures_account_maint_margin", **desk) == 60
    assert value(m, "binance_futures_account_isolated_maint_margin", **desk) == 20
    assert value(m, "binance_futures_isolated_maint_margin", **desk, asset="USDT") == 20
    assert value(m, "binance_futures_account_cross_wallet_balance", **desk) == 180
    assert value(m, "binance_futures_account_margin_balance", **desk) == 250
    assert value(m, "binance_futures_position_isolated_wallet", **eth) == 75
    assert value(m, "binance_futures_position_maint_margin", **eth) == 20
    assert value(m, "binance_futures_position_unrealized_pnl", **eth) == -5
    assert value(m, "binance_futures_position_info", **eth, margin_type="isolated", margin_asset="USDT") == 1


def test_positions_of_portfolio_margin_and_sub_accounts(sim: Simulator, make_harness) -> None:
    sim.update_account(KEY, pm=SimPortfolio(
        um_positions=[SimPosition("BTCUSDT", "-0.5", "60000", "61000", "SHORT", liquidation_price="62000")],
        cm_positions=[SimPosition("ETHUSD_PERP", "10", "3000", "3100", liquidation_price="2500")]))
    m = make_harness(config(sim, markets=["pm"], positions=True)).scrape()
    pm = {"alias": "desk", "market": "pm"}
    um = {**pm, "symbol": "BTCUSDT", "position_side": "SHORT"}
    assert value(m, "binance_futures_position_amount", **um) == -0.5
    assert value(m, "binance_futures_position_liquidation_price", **um) == 62000
    assert value(m, "binance_futures_position_info", **um, margin_type="cross", margin_asset="USDT") == 1
    assert value(m, "binance_futures_position_amount", **pm, symbol="ETHUSD_PERP", position_side="BOTH") == 10
    paths = sim.stats()["requests_by_path"]
    assert paths["/papi/v1/um/positionRisk"] == 1 and paths["/papi/v1/cm/positionRisk"] == 1
    host = sim.base_url.split("//")[1] + "/pm"
    assert value(m, "binance_futures_exporter_used_weight", host=host) == 46  # 20 + 20 + 5 + 1

    h = make_harness(config(sim, markets=[], positions=True, sub_accounts={"include": ["both@x.test"],
                                                                           "markets": ["usdm", "coinm"]}))
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_sub_accounts", master="desk") else None)(h.scrape()))
    m = h.scrape()
    sub = {"alias": "both@x.test", "market": "usdm", "symbol": "BTCUSDT", "position_side": "BOTH"}
    assert value(m, "binance_futures_position_amount", **sub) == 0.01
    assert value(m, "binance_futures_position_mark_price", **sub) == 61000
    assert not [k for k in m if k[0] == "binance_futures_position_info" and dict(k[1])["alias"] == "both@x.test"]
    assert sim.stats()["requests_by_path"]["/sapi/v2/sub-account/futures/positionRisk"] >= 2  # usdm and coinm


def test_a_new_portfolio_margin_status_is_exported_not_rejected(sim: Simulator, make_harness) -> None:
    sim.update_account(KEY, pm=SimPortfolio(status="LIQUIDATION_PROTECTION"))
    m = make_harness(config(sim, markets=["pm"])).scrape()
    pm = {"alias": "desk", "market": "pm"}
    assert value(m, "binance_futures_up", **pm) == 1 and value(m, "binance_futures_pm_uni_mmr", **pm) is not None
    states = {dict(k[1])["status"]: v for k, v in m.items() if k[0] == "binance_futures_pm_account_status"}
    assert states["LIQUIDATION_PROTECTION"] == 1 and sum(states.values()) == 1 and len(states) == 8
    sim.update_account(KEY, pm=SimPortfolio(status="weird status!"))
    m = make_harness(config(sim, markets=["pm"])).scrape()
    states = {dict(k[1])["status"]: v for k, v in m.items() if k[0] == "binance_futures_pm_account_status"}
    assert states["OTHER"] == 1 and sum(states.values()) == 1


@pytest.mark.parametrize("path, body", [
    ("/papi/v1/um/positionRisk", b'[{"symbol":"BTCUSDT","positionAmt":"1","positionSide":"NEITHER"}]'),
    ("/papi/v1/cm/positionRisk", b'[{"symbol":"BTCUSD_PERP","positionAmt":"1e400","positionSide":"BOTH"}]'),
    ("/fapi/v3/positionRisk", b'[{"symbol":"BTCUSDT","positionAmt":"1","positionSide":"BOTH","marginType":"x"}]'),
    ("/fapi/v3/account", b'{"assets":[],"positions":[{"symbol":"BTCUSDT","isolated":"maybe"}]}'),
])
def test_bad_risk_answers_degrade_that_account_alone(sim: Simulator, make_harness, path: str, body: bytes) -> None:
    """An unknown side or margin type, or an absurd number, is that account's bad_response; the rest is exported."""
    other = SimAccount("other-key", "other-secret", balances=[balance_row("USDT", "5")])
    sim.add_account(other)
    sim.set_fault(KEY, Fault("raw", path=path, status=200, body=body))
    data = config(sim, markets=["usdm", "pm"], endpoint="account", positions=True)
    data["accounts"].append({"alias": "other", "api_key": "other-key", "api_secret": "other-secret"})
    m = make_harness(data).scrape()
    market = "pm" if path.startswith("/papi") else "usdm"
    bad = {"alias": "desk", "market": market}
    assert value(m, "binance_futures_up", **bad) == 0
    assert value(m, "binance_futures_scrape_errors_total", **bad, reason="bad_response") == 1
    good = {"alias": "desk", "market": "usdm" if market == "pm" else "pm"}
    assert value(m, "binance_futures_up", **good) == 1
    assert value(m, "binance_futures_balance", alias="other", market="usdm", asset="USDT") == 5
