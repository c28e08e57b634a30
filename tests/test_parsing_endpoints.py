"""Every endpoint's official example answer parses to exact values; 'none' values give no series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter import parsing
from exporter.parsing import BadResponse

EXAMPLES = json.loads((Path(__file__).parent / "fixtures" / "official_examples.json").read_text())


def body(name: str, **changes: object) -> bytes:
    data = json.loads(json.dumps(EXAMPLES[name]))
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return json.dumps(data).encode()


def test_usdm_account_v3_totals_and_assets() -> None:
    snap = parsing.parse_usdm_account(body("fapi_v3_account"))
    assert snap.totals == {
        "account_initial_margin": 0.0, "account_maint_margin": 0.0, "account_wallet_balance": 126.72469206,
        "account_unrealized_pnl": 0.0, "account_margin_balance": 126.72469206,
        "account_position_initial_margin": 0.0, "account_open_order_initial_margin": 0.0,
        "account_cross_wallet_balance": 126.72469206, "account_cross_unrealized_pnl": 0.0,
        "account_available_balance": 126.72469206, "account_max_withdraw_amount": 126.72469206,
        "account_isolated_maint_margin": 0.0,
    }
    (usdt,) = snap.assets
    assert usdt.asset == "USDT"
    assert usdt.values == {
        "balance": 23.72469206, "unrealized_pnl": 0.0, "margin_balance": 23.72469206, "maint_margin": 0.0,
        "initial_margin": 0.0, "position_initial_margin": 0.0, "open_order_initial_margin": 0.0,
        "cross_wallet_balance": 23.72469206, "cross_unrealized_pnl": 0.0, "available_balance": 23.72469206,
        "max_withdraw_amount": 23.72469206, "balance_update_timestamp_seconds": 1625474304.765,
        "isolated_maint_margin": 0.0,
    }
    assert snap.account_alias is None and snap.positions == ()  # positions come from positionRisk


def test_usdm_account_v2_has_margin_available() -> None:
    (usdt,) = parsing.parse_usdm_account(body("fapi_v2_account")).assets
    assert usdt.values["margin_available"] == 1.0


def test_usdm_account_v2_multi_assets_example() -> None:
    """Binance's own multi-assets example: the USDT row's availableBalance is the pool's (126.72), not USDT's."""
    snap = parsing.parse_usdm_account(body("fapi_v2_account"))
    assert snap.totals["multi_assets_mode"] == 1.0
    assert snap.totals["account_available_balance"] == 126.72469206
    (usdt,) = snap.assets
    assert usdt.values["balance"] == 23.72469206 and usdt.values["available_balance"] == 126.72469206
    single = parsing.parse_usdm_account(body("fapi_v2_account", multiAssetsMargin=False))
    assert single.totals["multi_assets_mode"] == 0.0
    with pytest.raises(BadResponse, match="multiAssetsMargin"):
        parsing.parse_usdm_account(body("fapi_v2_account", multiAssetsMargin="true"))


def test_account_isolated_maintenance_margin_per_asset() -> None:
    """Cross 40 + isolated 20 (USDT) + isolated 7 (USDC): the isolated part per margin asset and in total."""
    v3 = json.loads(body("fapi_v3_account"))
    usdc = dict(v3["assets"][0], asset="USDC")
    v3["assets"].append(usdc)
    v3["positions"] = [
        dict(v3["positions"][0], symbol="BTCUSDT", maintMargin="40", isolatedWallet="0"),
        dict(v3["positions"][0], symbol="ETHUSDT", maintMargin="20", isolatedWallet="75"),
        dict(v3["positions"][0], symbol="ETHUSDC", maintMargin="7", isolatedWallet="30"),
    ]
    snap = parsing.parse_usdm_account(json.dumps(v3).encode())
    # Mode unknown (v3): single-asset, whose totals are USDT's: USDC's isolated margin is USDC's pool's.
    assert snap.totals["account_isolated_maint_margin"] == 20.0
    multi = parsing.isolated_for_mode(parsing.Snapshot(totals={"multi_assets_mode": 1.0}).merge(snap))
    assert multi.totals["account_isolated_maint_margin"] == 27.0  # Multi-Assets: every asset's, in USD
    single = parsing.isolated_for_mode(parsing.Snapshot(totals={"multi_assets_mode": 0.0}).merge(snap))
    assert single.totals["account_isolated_maint_margin"] == 20.0
    assert {r.asset: r.values["isolated_maint_margin"] for r in snap.assets} == {"USDT": 20.0, "USDC": 7.0}
    v2 = parsing.parse_usdm_account(body("fapi_v2_account", **{"positions__0__maintMargin": "3.5"}))
    assert v2.totals["account_isolated_maint_margin"] == 3.5  # v2 marks it with "isolated": true
    coin = parsing.parse_coinm_account(body("dapi_v1_account"))
    assert all("isolated_maint_margin" in r.values for r in coin.assets)
    with pytest.raises(BadResponse, match="isolated"):
        parsing.parse_usdm_account(body("fapi_v2_account", **{"positions__0__isolated": "maybe"}))


def test_account_config_modes() -> None:
    snap = parsing.parse_account_config(body("fapi_v1_account_config"))
    assert snap.totals == {"hedge_mode": 1.0, "multi_assets_mode": 0.0}
    with pytest.raises(BadResponse):
        parsing.parse_account_config(body("fapi_v1_account_config", dualSidePosition="yes"))


def test_position_risk_v3_exact_and_liquidation_zero_is_none() -> None:
    (pos,) = parsing.parse_position_risk(body("fapi_v3_position_risk")).positions
    assert (pos.symbol, pos.side) == ("ADAUSDT", "BOTH")
    assert pos.values == {
        "position_amount": 30.0, "position_entry_price": 0.385, "position_break_even_price": 0.385077,
        "position_mark_price": 0.4104759, "position_unrealized_pnl": 0.764277, "position_isolated_margin": 0.0,
        "position_notional": 12.314277, "position_required_initial_margin": 0.61571385,
        "position_maint_margin": 0.0800428, "position_adl_quantile": 2.0, "position_isolated_wallet": 0.0,
    }  # liquidationPrice "0" on an open position: no liquidation price, so no series (never an alarm)


def test_position_margin_type_and_asset() -> None:
    (cross,) = parsing.parse_position_risk(body("fapi_v3_position_risk")).positions
    assert (cross.margin_type, cross.margin_asset) == ("cross", "USDT")
    assert cross.values["position_isolated_wallet"] == 0.0
    (iso,) = parsing.parse_position_risk(body("fapi_v3_position_risk", **{"0__isolatedWallet": "75"})).positions
    assert (iso.margin_type, iso.values["position_isolated_wallet"]) == ("isolated", 75.0)
    live = parsing.parse_position_risk(body("fapi_v2_position_risk_live", **{"0__positionAmt": "1"}))
    assert live.positions[0].margin_type in ("cross", "isolated")
    (fut,) = parsing.parse_position_risk(body("fapi_v2_position_risk_live", **{
        "0__positionAmt": "1", "0__symbol": "BTCUSDT_250926"})).positions
    assert fut.margin_asset == "USDT"  # v2 names none: the quote asset of the pair, delivery contracts too
    (coin,) = parsing.parse_coinm_position_risk(body("dapi_v1_position_risk", **{"0__positionAmt": "12"})).positions
    assert coin.margin_asset == coin.symbol.split("USD")[0]


@pytest.mark.parametrize("name, changes", [
    ("fapi_v3_position_risk", {"0__marginAsset": "US DT"}),
    ("fapi_v2_position_risk_live", {"0__positionAmt": "1", "0__marginType": "portfolio"}),
    ("dapi_v1_position_risk", {"0__positionAmt": "1", "0__marginType": None}),
])
def test_unknown_margin_type_or_asset_is_a_bad_response(name: str, changes: dict) -> None:
    with pytest.raises(BadResponse):
        parsing.parse_position_risk(body(name, **changes))


def test_sub_account_position_risk_official_example() -> None:
    (usdm,) = parsing.parse_sub_position_risk(body("sapi_v2_sub_account_futures_position_risk"), 1).positions
    assert (usdm.symbol, usdm.side, usdm.margin_type) == ("BTCUSDT", "BOTH", None)  # no margin type in the answer
    assert usdm.values == {"position_amount": 0.01, "position_entry_price": 9975.12,
                           "position_mark_price": 9973.50770517, "position_unrealized_pnl": -0.01612295,
                           "position_liquidation_price": 7963.54}
    (coin,) = parsing.parse_sub_position_risk(body("sapi_v2_sub_account_futures_position_risk"), 2).positions
    assert (coin.symbol, coin.margin_type, coin.margin_asset) == ("BTCUSD_201225", "cross", "BTC")
    assert coin.values["position_amount"] == 1.23 and coin.values["position_isolated_wallet"] == 9973.50770517
    assert "position_liquidation_price" not in coin.values  # COIN-M rows carry none
    empty = parsing.parse_sub_position_risk(b'{"futurePositionRiskVos": []}', 2)
    assert empty.positions == ()
    with pytest.raises(BadResponse):
        parsing.parse_sub_position_risk(body("sapi_v2_sub_account_futures_position_risk",
                                             **{"deliveryPositionRiskVos__0__isolated": "perhaps"}), 2)


def test_pm_position_risk_official_examples() -> None:
    assert parsing.parse_pm_position_risk(body("papi_v1_um_position_risk"), coin=False).positions == ()  # amount 0
    (um,) = parsing.parse_pm_position_risk(body("papi_v1_um_position_risk", **{"0__positionAmt": "-0.5"}),
                                           coin=False).positions
    assert (um.margin_type, um.margin_asset, um.side) == ("cross", "USDT", "BOTH")
    assert um.values["position_liquidation_price"] == 6170.20509059 and "position_maint_margin" not in um.values
    (cm,) = parsing.parse_pm_position_risk(body("papi_v1_cm_position_risk", **{"0__positionAmt": "3"}),
                                           coin=True).positions
    assert (cm.margin_asset, cm.values["position_notional"]) == ("BTC", 0.00084827)


def test_position_risk_with_a_liquidation_price() -> None:
    (pos,) = parsing.parse_position_risk(body("fapi_v3_position_risk", **{"0__liquidationPrice": "0.31"})).positions
    assert pos.values["position_liquidation_price"] == 0.31


def test_position_risk_v2_zero_rows_are_not_positions_and_unknown_keys_are_ignored() -> None:
    assert parsing.parse_position_risk(body("fapi_v2_position_risk")).positions == ()
    assert parsing.parse_position_risk(body("fapi_v2_position_risk_live")).positions == ()
    live = parsing.parse_position_risk(body("fapi_v2_position_risk_live", **{"0__positionAmt": "-2.50"}))
    (short,) = live.positions
    assert short.values["position_amount"] == -2.5 and short.values["position_adl_quantile"] == 0.0


def test_coinm_balance_maps_withdraw_available() -> None:
    snap = parsing.parse_coinm_balance(body("dapi_v1_balance"))
    (btc,) = snap.assets
    assert snap.account_alias == "SgsR"
    assert btc.values == {"balance": 0.0025, "max_withdraw_amount": 0.0025, "cross_wallet_balance": 0.00241969,
                          "cross_unrealized_pnl": 0.0, "available_balance": 0.00241969,
                          "balance_update_timestamp_seconds": 1592468353.979}


def test_coinm_account_assets_without_totals() -> None:
    snap = parsing.parse_coinm_account(body("dapi_v1_account"))
    assert snap.totals == {}
    assert snap.assets[0].values["margin_balance"] == 0.00241969


def test_coinm_position_risk_zero_row_dropped() -> None:
    assert parsing.parse_position_risk(body("dapi_v1_position_risk")).positions == ()
    (pos,) = parsing.parse_position_risk(body("dapi_v1_position_risk", **{"0__positionAmt": "12"})).positions
    assert pos.values["position_amount"] == 12.0 and "position_liquidation_price" not in pos.values


def test_pm_balance_list_and_object_with_empty_strings() -> None:
    (row,) = parsing.parse_pm_balance(body("papi_v1_balance_list")).assets
    assert row.values["balance"] == 122607.35137903
    assert row.values["pm_cross_margin_free"] == 100.0 and row.values["pm_um_unrealized_pnl"] == 23.72469206
    assert "pm_cm_unrealized_pnl" not in row.values  # "" means no value: no series, no error
    (single,) = parsing.parse_pm_balance(body("papi_v1_balance_object")).assets
    assert "pm_cross_margin_asset" not in single.values and single.values["pm_negative_balance"] == 0.0


def test_pm_account_status_and_empty_strings() -> None:
    snap = parsing.parse_pm_account(body("papi_v1_account"))
    assert snap.status == "NORMAL"
    assert snap.totals == {"pm_uni_mmr": 5167.92171923, "pm_account_equity": 73.47428058,
                           "pm_actual_equity": 122607.35137903, "pm_account_initial_margin": 23.72469206,
                           "pm_account_maint_margin": 23.72469206, "pm_virtual_max_withdraw_amount": 1627523.32459208}

@pytest.mark.parametrize("raw, shown", [
    ("LIQUIDATION_PROTECTION", "LIQUIDATION_PROTECTION"),  # a plain upper-case word: its own state
    ("x\ud800", "OTHER"), ("lower", "OTHER"), ("A" * 33, "OTHER"), (7, "OTHER"), (["NORMAL"], "OTHER"),
])
def test_pm_unknown_account_status_is_kept_not_rejected(raw: object, shown: str, caplog) -> None:
    snap = parsing.parse_pm_account(body("papi_v1_account", accountStatus=raw))
    assert snap.status == shown and snap.totals["pm_uni_mmr"] == 5167.92171923


def test_an_unknown_status_is_logged_once(caplog) -> None:
    for _ in range(3):
        assert parsing.parse_pm_account(body("papi_v1_account", accountStatus="ONCE_ONLY_STATE")).status \
            == "ONCE_ONLY_STATE"
    lines = [r for r in caplog.records if "accountStatus not in the documented list" in r.getMessage()]
    assert len(lines) == 1


def test_sub_account_usdm_and_coinm() -> None:
    snap = parsing.parse_sub_account(body("sapi_v2_sub_account_futures_account_1"), 1)
    (usdt,) = snap.assets
    assert usdt.values["balance"] == 0.88308 and usdt.values["max_withdraw_amount"] == 0.88308
    assert "available_balance" not in usdt.values  # Binance's sub-account API has none
    assert snap.totals["account_wallet_balance"] == 0.88308 and snap.totals["account_maint_margin"] == 0.0
    coin = parsing.parse_sub_account(body("sapi_v2_sub_account_futures_account_2"), 2)
    assert coin.assets[0].asset == "BTC" and coin.totals == {}
    with pytest.raises(BadResponse):  # asked for USD-M, got the COIN-M shape
        parsing.parse_sub_account(body("sapi_v2_sub_account_futures_account_2"), 1)


def test_sub_account_list() -> None:
    entries = parsing.parse_sub_account_list(body("sapi_v1_sub_account_list"))
    assert [e.email for e in entries] == ["testsub@gmail.com", "virtual@oxebmvfonoemail.com"]
    with pytest.raises(BadResponse):
        parsing.parse_sub_account_list(json.dumps({"subAccounts": [{"email": "a b@c"}]}).encode())


@pytest.mark.parametrize("name, changes", [
    ("fapi_v3_position_risk", {"0__positionSide": ["LONG"]}),  # unhashable where a word belongs
    ("fapi_v3_position_risk", {"0__positionSide": {"a": 1}}),
    ("fapi_v3_position_risk", {"0__positionAmt": 10 ** 400}),  # legal JSON, too large for a float
    ("fapi_v3_account", {"totalWalletBalance": -(10 ** 400)}),
])
def test_hostile_values_are_bad_responses(name: str, changes: dict) -> None:
    parser = parsing.parse_position_risk if "position" in name else parsing.parse_usdm_account
    with pytest.raises(BadResponse):
        parser(body(name, **changes))


@pytest.mark.parametrize("name", [n for n in EXAMPLES if not n.startswith("_")])
def test_truncated_examples_are_bad_responses(name: str) -> None:
    raw = json.dumps(EXAMPLES[name]).encode()
    parser = {
        "fapi_v2_account": parsing.parse_usdm_account, "fapi_v3_account": parsing.parse_usdm_account,
        "dapi_v1_balance": parsing.parse_coinm_balance, "dapi_v1_account": parsing.parse_coinm_account,
        "papi_v1_balance_list": parsing.parse_pm_balance, "papi_v1_balance_object": parsing.parse_pm_balance,
        "papi_v1_account": parsing.parse_pm_account, "sapi_v1_sub_account_list": parsing.parse_sub_account_list,
        "fapi_v1_account_config": parsing.parse_account_config,
        "sapi_v2_sub_account_futures_position_risk": lambda b: parsing.parse_sub_position_risk(b, 2),
        "sapi_v2_sub_account_futures_account_1": lambda b: parsing.parse_sub_account(b, 1),
        "sapi_v2_sub_account_futures_account_2": lambda b: parsing.parse_sub_account(b, 2),
    }.get(name, parsing.parse_position_risk)
    parser(raw)
    with pytest.raises(BadResponse):
        parser(raw[: len(raw) // 2])
