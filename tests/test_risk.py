"""Live risk arithmetic against Binance's worked examples and hand-computed cases (1e-9 relative).

Binance's USD-M FAQ example (How to Calculate Liquidation Price of USDⓈ-M Futures Contracts): one
cross wallet of 1,535,443.01 USDT holding ETHUSDT 3,683.979 @ 1,456.84 (mark 1,335.18; bracket
10 %, cum 135,365) and BTCUSDT 109.488 @ 32,481.98 (mark 31,967.27; bracket 2.5 %, cum 16,300);
Binance prints the liquidation prices 1,153.26 (ETH) and 26,316.89 (BTC), to the cent.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from exporter import risk
from exporter.parsing import AssetRow, PositionRow, Snapshot
from exporter.risk import Bracket, Leg

D = Decimal
REL = D("1e-9")


def close(actual: float | D | None, expected: D) -> bool:
    assert actual is not None
    return abs(D(repr(actual)) - expected) <= abs(expected) * REL if isinstance(actual, float) else \
        abs(actual - expected) <= abs(expected) * REL


def table(*rows: tuple[str, str, str, str]) -> tuple[Bracket, ...]:
    return tuple(Bracket(D(f), D(c), D(m), D(cum)) for f, c, m, cum in rows)


# Binance's published tables of the FAQ's time (each cum = floor x (mmr - previous mmr) + previous cum).
BTCUSDT = table(("0", "50000", "0.004", "0"), ("50000", "250000", "0.005", "50"),
                ("250000", "1000000", "0.01", "1300"), ("1000000", "10000000", "0.025", "16300"),
                ("10000000", "20000000", "0.05", "266300"), ("20000000", "50000000", "0.1", "1266300"))
ETHUSDT = table(("0", "10000", "0.005", "0"), ("10000", "100000", "0.0065", "15"),
                ("100000", "500000", "0.01", "365"), ("500000", "1000000", "0.02", "5365"),
                ("1000000", "2000000", "0.05", "35365"), ("2000000", "5000000", "0.1", "135365"),
                ("5000000", "10000000", "0.125", "260365"))
BTCUSD = table(("0", "50", "0.004", "0"), ("50", "100", "0.005", "0.05"), ("100", "200", "0.01", "0.55"),
               ("200", "500", "0.025", "3.55"))


def test_cum_tables_are_continuous() -> None:
    """The tables above follow Binance's maintenance-amount rule, so maintenance margin has no jumps."""
    for brackets in (BTCUSDT, ETHUSDT, BTCUSD):
        for low, high in zip(brackets, brackets[1:], strict=False):
            assert high.cum == high.floor * (high.mmr - low.mmr) + low.cum
            assert risk.maint_margin(high.floor, low) == risk.maint_margin(high.floor, high)


def test_select_bracket_by_size() -> None:
    assert risk.select_bracket(BTCUSDT, D("49999.99")).mmr == D("0.004")
    assert risk.select_bracket(BTCUSDT, D("50000")).mmr == D("0.005")  # floors are inclusive
    assert risk.select_bracket(BTCUSDT, D("-3500032.458")).cum == 16300  # by absolute value
    assert risk.select_bracket(BTCUSDT, D("1e12")) is BTCUSDT[-1]


def test_faq_maintenance_margins() -> None:
    assert risk.maint_margin(D("4918775.081"), risk.select_bracket(ETHUSDT, D("4918775.081"))) == D("356512.5081")
    assert risk.maint_margin(D("3500032.458"), risk.select_bracket(BTCUSDT, D("3500032.458"))) == D("71200.81145")
    # COIN-M FAQ: 100 BTCUSD contracts (100 USD each) at mark 25,000: 0.4 BTC, level 1, 0.0016 BTC.
    notional = risk.coinm_notional(D(100), D(25000), D(100))
    assert notional == D("0.4")
    assert risk.maint_margin(notional, risk.select_bracket(BTCUSD, notional)) == D("0.0016")


def test_faq_cross_liquidation_prices_with_its_figures() -> None:
    eth = Leg(D("3683.979"), D("1456.84"), ETHUSDT[5])
    btc = Leg(D("109.488"), D("32481.980"), BTCUSDT[3])
    eth_lp = risk.usdm_liquidation_price_at(D("1535443.01"), D("71200.81144"), D("-56354.57"), [eth])
    btc_lp = risk.usdm_liquidation_price_at(D("1535443.01"), D("356512.508"), D("-448192.89"), [btc])
    assert eth_lp is not None and round(eth_lp, 2) == D("1153.26")
    assert btc_lp is not None and round(btc_lp, 2) == D("26316.89")
    # The same by hand: (WB - TMM1 + UPNL1 + cum - amount x EP) / (amount x MMR - amount).
    expected = (D("1535443.01") - D("71200.81144") - D("56354.57") + 135365 - D("3683.979") * D("1456.84")) / \
        (D("3683.979") * D("0.1") - D("3683.979"))
    assert close(eth_lp, expected)


def faq_snapshot(**wallet: float) -> Snapshot:
    rows = (
        PositionRow("ETHUSDT", "BOTH", {"position_amount": 3683.979, "position_entry_price": 1456.84,
                                        "position_mark_price": 1400.0, "position_unrealized_pnl": -0.5,
                                        "position_notional": 1.0, "position_maint_margin": 1.0,
                                        "position_isolated_wallet": 0.0, "position_liquidation_price": 1.0},
                    "cross", "USDT"),
        PositionRow("BTCUSDT", "BOTH", {"position_amount": 109.488, "position_entry_price": 32481.98,
                                        "position_mark_price": 32000.0, "position_unrealized_pnl": -0.25,
                                        "position_notional": 1.0, "position_maint_margin": 2.0,
                                        "position_isolated_wallet": 0.0},
                    "cross", "USDT"),
    )
    asset = AssetRow("USDT", {"balance": 1535443.01, "cross_wallet_balance": wallet.get("cross", 1535443.01),
                              "unrealized_pnl": -0.75, "margin_balance": 1535442.26, "maint_margin": 3.0,
                              "cross_unrealized_pnl": -0.75, "isolated_maint_margin": 0.0,
                              "available_balance": 7.0}, False)
    totals = {"account_unrealized_pnl": -0.75, "account_cross_unrealized_pnl": -0.75, "account_maint_margin": 3.0,
              "account_margin_balance": 1535442.26, "account_available_balance": 7.0}
    return Snapshot(assets=(asset,), totals=totals, positions=rows)


MARKS = {"ETHUSDT": D("1335.18"), "BTCUSDT": D("31967.27")}


def test_recompute_usdm_cross_one_way_faq() -> None:
    snap = risk.recompute(faq_snapshot(), "usdm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {}, MARKS)
    eth, btc = snap.positions
    eth_pnl = D("3683.979") * (D("1335.18") - D("1456.84"))
    btc_pnl = D("109.488") * (D("31967.27") - D("32481.98"))
    eth_mm = D("3683.979") * D("1335.18") * D("0.1") - 135365
    btc_mm = D("109.488") * D("31967.27") * D("0.025") - 16300
    assert round(eth_pnl, 2) == D("-448192.89") and round(btc_pnl, 2) == D("-56354.57")  # the FAQ's UPNL1s
    assert eth.values["position_mark_price"] == 1335.18
    assert close(eth.values["position_unrealized_pnl"], eth_pnl)
    assert close(eth.values["position_notional"], D("3683.979") * D("1335.18"))
    assert close(eth.values["position_maint_margin"], eth_mm)
    assert close(btc.values["position_maint_margin"], btc_mm)
    eth_lp = (D("1535443.01") - btc_mm + btc_pnl + 135365 - D("3683.979") * D("1456.84")) / \
        (D("3683.979") * D("0.1") - D("3683.979"))
    btc_lp = (D("1535443.01") - eth_mm + eth_pnl + 16300 - D("109.488") * D("32481.98")) / \
        (D("109.488") * D("0.025") - D("109.488"))
    assert close(eth.values["position_liquidation_price"], eth_lp)
    assert close(btc.values["position_liquidation_price"], btc_lp)
    assert round(eth_lp, 2) == D("1153.26") and round(btc_lp, 2) == D("26316.89")  # Binance's printed figures
    # Asset and totals move by the positions' change (REST had -0.75 PnL and 3.0 maintenance margin).
    (usdt,) = snap.assets
    assert close(usdt.values["unrealized_pnl"], D("-0.75") + eth_pnl + btc_pnl - D("-0.75"))
    assert close(usdt.values["cross_unrealized_pnl"], eth_pnl + btc_pnl)
    assert close(usdt.values["margin_balance"], D("1535443.01") + eth_pnl + btc_pnl)
    assert close(usdt.values["maint_margin"], eth_mm + btc_mm)
    assert usdt.values["isolated_maint_margin"] == 0.0 and usdt.values["available_balance"] == 7.0  # REST-only
    assert close(snap.totals["account_margin_balance"], D("1535443.01") + eth_pnl + btc_pnl)
    assert close(snap.totals["account_maint_margin"], eth_mm + btc_mm)
    assert snap.totals["account_available_balance"] == 7.0


def test_liquidation_price_recomputed_in_the_bracket_it_falls_in() -> None:
    """100 BTC long @ 20,000 (2M: 2.5 %): the first price, 8,037.9, is 803,795 of notional (1 %): again there."""
    first = (D(1200000) + 16300 - D(2000000)) / (D(100) * D("0.025") - 100)
    assert first * 100 < 1000000
    price = risk.liquidation_price(D(1200000), D(0), D(0), [(D(100), D(20000), BTCUSDT)], D(20000))
    assert close(price, (D(1200000) + 1300 - D(2000000)) / (D(100) * D("0.01") - 100))


def test_usdm_cross_hedge_mode_shares_one_price() -> None:
    """LONG 2 @ 30,000 and SHORT 1 @ 31,000 of one symbol, 10,000 USDT: both legs, one price."""
    rows = (
        PositionRow("BTCUSDT", "LONG", {"position_amount": 2.0, "position_entry_price": 30000.0,
                                        "position_unrealized_pnl": 0.0, "position_maint_margin": 0.0},
                    "cross", "USDT"),
        PositionRow("BTCUSDT", "SHORT", {"position_amount": -1.0, "position_entry_price": 31000.0,
                                         "position_unrealized_pnl": 0.0, "position_maint_margin": 0.0},
                    "cross", "USDT"),
    )
    snap = Snapshot(assets=(AssetRow("USDT", {"cross_wallet_balance": 10000.0, "unrealized_pnl": 0.0}, False),),
                    positions=rows)
    out = risk.recompute(snap, "usdm", {"BTCUSDT": BTCUSDT}, {}, {"BTCUSDT": D(30500)})
    long, short = out.positions
    # At 30,500 the long (61,000) is in 0.5 %/50; at the price found (~19,219) both legs are in 0.4 %/0.
    expected = (D(10000) + 0 - D(2) * 30000 + D(1) * 31000) / (D(2) * D("0.004") + D(1) * D("0.004") - 2 + 1)
    assert close(long.values["position_liquidation_price"], expected)
    assert long.values["position_liquidation_price"] == short.values["position_liquidation_price"]
    assert close(long.values["position_maint_margin"], D(61000) * D("0.005") - 50)
    assert close(short.values["position_unrealized_pnl"], D(-1) * (D(30500) - 31000))
    assert close(out.assets[0].values["unrealized_pnl"], D(2) * 500 + D(500))


def test_usdm_isolated_uses_its_own_wallet_only() -> None:
    """Isolated: WB = isolated wallet, TMM1 = UPNL1 = 0, whatever the cross pool holds."""
    rows = (
        PositionRow("BTCUSDT", "BOTH", {"position_amount": -0.5, "position_entry_price": 40000.0,
                                        "position_unrealized_pnl": 0.0, "position_isolated_wallet": 1000.0,
                                        "position_isolated_margin": 1000.0, "position_maint_margin": 80.0},
                    "isolated", "USDT"),
        PositionRow("ETHUSDT", "BOTH", {"position_amount": 10.0, "position_entry_price": 2000.0,
                                        "position_unrealized_pnl": 0.0, "position_maint_margin": 100.0},
                    "cross", "USDT"),
    )
    snap = Snapshot(assets=(AssetRow("USDT", {"cross_wallet_balance": 5000.0, "maint_margin": 180.0,
                                              "isolated_maint_margin": 80.0, "cross_unrealized_pnl": 0.0,
                                              "unrealized_pnl": 0.0}, False),), positions=rows)
    out = risk.recompute(snap, "usdm", {"BTCUSDT": BTCUSDT, "ETHUSDT": ETHUSDT}, {},
                         {"BTCUSDT": D(41000), "ETHUSDT": D(1900)})
    btc, eth = out.positions
    lp = (D(1000) + 0 + D("0.5") * 40000) / (D("0.5") * D("0.004") + D("0.5"))
    assert close(btc.values["position_liquidation_price"], lp)
    assert close(btc.values["position_isolated_margin"], D(1000) + D("-0.5") * 1000)
    eth_lp = (D(5000) + 15 - D(10) * 2000) / (D(10) * D("0.0065") - 10)
    assert close(eth.values["position_liquidation_price"], eth_lp)  # isolated BTC is not in its pool
    usdt = out.assets[0].values
    btc_mm, eth_mm = D(20500) * D("0.004"), D(19000) * D("0.0065") - 15
    assert close(usdt["isolated_maint_margin"], btc_mm)
    assert close(usdt["maint_margin"], btc_mm + eth_mm)
    assert close(usdt["cross_unrealized_pnl"], D(-1000))
    assert close(usdt["unrealized_pnl"], D(-1000) - 500)


def test_coinm_cross_and_isolated() -> None:
    rows = (
        PositionRow("BTCUSD_PERP", "BOTH", {"position_amount": 100.0, "position_entry_price": 25000.0,
                                            "position_unrealized_pnl": 0.0, "position_isolated_margin": 0.0},
                    "cross", "BTC"),
        PositionRow("ETHUSD_PERP", "BOTH", {"position_amount": -50.0, "position_entry_price": 2500.0,
                                            "position_unrealized_pnl": 0.001, "position_isolated_margin": 0.051},
                    "isolated", "ETH"),
    )
    assets = (AssetRow("BTC", {"cross_wallet_balance": 0.1, "unrealized_pnl": 0.0, "margin_balance": 0.1,
                               "maint_margin": 0.0016}, False),
              AssetRow("ETH", {"cross_wallet_balance": 3.0, "unrealized_pnl": 0.001}, False))
    sizes = {"BTCUSD_PERP": D(100), "ETHUSD_PERP": D(10)}
    out = risk.recompute(Snapshot(assets=assets, positions=rows), "coinm",
                         {"BTCUSD_PERP": BTCUSD, "ETHUSD_PERP": BTCUSD}, sizes,
                         {"BTCUSD_PERP": D(25000), "ETHUSD_PERP": D(2400)})
    btc, eth = out.positions
    # Cross: LP = CS (|a| MMR + a) / (WB + cum + CS a / EP) = 100 x 100.4 / (0.1 + 0.4) = 20,080.
    assert close(btc.values["position_liquidation_price"], D(20080))
    assert btc.values["position_isolated_margin"] == 0.0  # a cross position's isolated margin stays 0
    # Isolated short, wallet = isolated margin - PnL = 0.05 ETH (COIN-M positionRisk has no isolatedWallet).
    pnl = D(-50) * 10 * (1 / D(2500) - 1 / D(2400))
    assert close(eth.values["position_unrealized_pnl"], pnl)
    assert close(eth.values["position_isolated_margin"], D("0.05") + pnl)
    lp = D(10) * (D(50) * D("0.004") - 50) / (D("0.05") + D(10) * D(-50) / 2500)
    assert close(eth.values["position_liquidation_price"], lp)
    assert close(out.assets[1].values["unrealized_pnl"], pnl)
    assert "margin_balance" not in out.assets[1].values  # not given by REST: not invented


def test_coinm_liquidation_price_is_where_margin_meets_maintenance() -> None:
    """The COIN-M formula solved back: at the price found, margin balance = maintenance margin."""
    wallet, amount, entry, size = D("0.37"), D(-1200), D(31000), D(100)
    price = risk.liquidation_price(wallet, D(0), D(0), [(amount, entry, BTCUSD)], D(30000), size)
    assert price is not None
    pnl = risk.coinm_unrealized_pnl(amount, entry, price, size)
    notional = risk.coinm_notional(amount, price, size)
    mm = risk.maint_margin(notional, risk.select_bracket(BTCUSD, notional))
    assert close(wallet + pnl, mm)


def test_no_liquidation_price_below_zero() -> None:
    """A long holding more than its notional in the wallet is never liquidated: no price (Binance: 0)."""
    row = PositionRow("BTCUSDT", "BOTH", {"position_amount": 1.0, "position_entry_price": 30000.0,
                                          "position_unrealized_pnl": 0.0, "position_liquidation_price": 5.0},
                      "cross", "USDT")
    snap = Snapshot(assets=(AssetRow("USDT", {"cross_wallet_balance": 50000.0}, False),), positions=(row,))
    out = risk.recompute(snap, "usdm", {"BTCUSDT": BTCUSDT}, {}, {"BTCUSDT": D(30000)})
    assert "position_liquidation_price" not in out.positions[0].values


def test_missing_inputs_keep_the_last_values() -> None:
    snap = faq_snapshot()
    assert risk.recompute(snap, "usdm", {}, {}, {}) is snap  # no marks: nothing moves, nothing extrapolated
    only_btc = risk.recompute(snap, "usdm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {},
                              {"BTCUSDT": D("31967.27")})
    eth, btc = only_btc.positions
    assert eth.values == snap.positions[0].values
    # BTC's price uses ETH's last REST figures for TMM1 and UPNL1.
    lp = (D("1535443.01") - D(1) + D("-0.5") + 16300 - D("109.488") * D("32481.98")) / \
        (D("109.488") * D("0.025") - D("109.488"))
    assert close(btc.values["position_liquidation_price"], lp)
    no_brackets = risk.recompute(snap, "usdm", {}, {}, MARKS)
    assert no_brackets.positions[0].values["position_maint_margin"] == 1.0
    assert no_brackets.positions[0].values["position_liquidation_price"] == 1.0
    assert no_brackets.positions[0].values["position_mark_price"] == 1335.18


def test_multi_assets_and_portfolio_margin_keep_account_figures() -> None:
    multi = replace_totals(faq_snapshot(), multi_assets_mode=1.0)
    out = risk.recompute(multi, "usdm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {}, MARKS)
    assert out.positions[0].values["position_liquidation_price"] == 1.0  # haircuts: Binance's last figure
    assert out.totals == multi.totals
    assert out.positions[0].values["position_mark_price"] == 1335.18
    pm = risk.recompute(faq_snapshot(), "pm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {}, MARKS)
    assert pm.assets == faq_snapshot().assets and pm.totals == faq_snapshot().totals
    assert pm.positions[0].values["position_liquidation_price"] == 1.0
    assert close(pm.positions[0].values["position_unrealized_pnl"], D("3683.979") * (D("1335.18") - D("1456.84")))


def replace_totals(snap: Snapshot, **totals: float) -> Snapshot:
    return Snapshot(assets=snap.assets, totals={**snap.totals, **totals}, positions=snap.positions)


def test_live_symbols() -> None:
    assert risk.live_symbols(faq_snapshot()) == {"ETHUSDT", "BTCUSDT"}


@pytest.mark.parametrize("mark", ["1", "0.00001", "99999999.99"])
def test_usdm_price_solves_the_balance(mark: str) -> None:
    """Property: at the price found, wallet + PnL = maintenance margin (whatever the bracket)."""
    wallet, amount, entry = D(25000), D("-3.5"), D(30000)
    price = risk.liquidation_price(wallet, D(0), D(0), [(amount, entry, BTCUSDT)], D(mark))
    assert price is not None
    mm = risk.maint_margin(amount * price, risk.select_bracket(BTCUSDT, amount * price))
    assert close(wallet + risk.usdm_unrealized_pnl(amount, entry, price), mm)


def test_live_risk_is_prepared_once_and_reused_per_mark() -> None:
    live = risk.LiveRisk(faq_snapshot(), "usdm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {})
    assert live.symbols == {"ETHUSDT", "BTCUSDT"}
    first = live.at(MARKS)
    other = live.at({"ETHUSDT": D("1400"), "BTCUSDT": D("32000")})
    again = live.at(MARKS)
    assert first == again != other  # no state carried from one mark to the next
    assert first == risk.recompute(faq_snapshot(), "usdm", {"ETHUSDT": ETHUSDT, "BTCUSDT": BTCUSDT}, {}, MARKS)
    assert close(other.positions[0].values["position_unrealized_pnl"], D("3683.979") * (D(1400) - D("1456.84")))
