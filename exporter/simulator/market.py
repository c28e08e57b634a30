"""The simulator's market: mark prices that walk, brackets, contract sizes, and forced liquidations.

With a `SimMarket` attached (`Simulator(market=SimMarket())`, and always in
`--demo`), every account's positions take their mark price from it, so the
REST answers and the market streams (market_stream) follow the same prices,
and the figures a mark moves are Binance's formulas at that mark:

* notional, unrealized PnL as before (accounts); maintenance margin
  = |notional| x the bracket's maintMarginRatio - its cum, the bracket chosen
  by |notional| (COIN-M: the quantity in the coin);
* liquidationPrice by Binance's formula (exporter.risk: the FAQ's, with the
  cross wallet of the margin asset, or the isolated wallet), except in
  Multi-Assets mode, where the stored figure stays (collateral haircuts);
* account and asset figures are sums over those positions, as before.

Marks: the market's symbols (by default the simulator's usual five; `marks=`
names others) move by a multiplicative random walk, one step a second
(`step`), seeded so runs repeat, with an optional trend per symbol; `set_mark`
pins one for tests. A position in a symbol the market does not have keeps its
stored (or drifting) mark and figures, and so does the liquidation price of
a cross position sharing its pool.

`liquidate` is what Binance's liquidation engine does to an account whose
margin no longer covers its maintenance: for every position past its
liquidation price, the ORDER_TRADE_UPDATE events of a liquidation order
(client order id `autoclose-…`, type LIQUIDATION, execution CALCULATED: NEW
then FILLED), the position closed at the liquidation price and its loss taken
from the wallet.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from exporter.parsing import Bracket
from exporter.risk import liquidation_price, select_bracket

from .accounts import COINM_SYMBOLS, USDM_MARKS, SimAccount, SimPosition, dec, format_decimal, margin_asset

Q8 = Decimal("1e-8")
COINM_MARKS = {"BTCUSD_PERP": "6679.5", "ETHUSD_PERP": "3412.3"}


def _table(*rows: tuple[str, str, str, str]) -> tuple[Bracket, ...]:
    return tuple(Bracket(Decimal(f), Decimal(c), Decimal(m), Decimal(cum)) for f, c, m, cum in rows)


# Tables in Binance's style (each cum = floor x (mmr - previous mmr) + previous cum).
BTCUSDT_BRACKETS = _table(("0", "50000", "0.004", "0"), ("50000", "250000", "0.005", "50"),
                          ("250000", "1000000", "0.01", "1300"), ("1000000", "10000000", "0.025", "16300"),
                          ("10000000", "20000000", "0.05", "266300"), ("20000000", "50000000", "0.1", "1266300"),
                          ("50000000", "100000000", "0.125", "2516300"),
                          ("100000000", "200000000", "0.15", "5016300"),
                          ("200000000", "300000000", "0.25", "25016300"),
                          ("300000000", "500000000", "0.5", "100016300"))
USDM_BRACKETS = _table(("0", "5000", "0.01", "0"), ("5000", "25000", "0.025", "75"),
                       ("25000", "100000", "0.05", "700"), ("100000", "250000", "0.1", "5700"),
                       ("250000", "1000000", "0.125", "11950"), ("1000000", "1500000", "0.5", "386950"))
COINM_BRACKETS = _table(("0", "5", "0.005", "0"), ("5", "10", "0.01", "0.025"), ("10", "20", "0.02", "0.125"),
                        ("20", "40", "0.05", "0.725"), ("40", "80", "0.1", "2.725"), ("80", "160", "0.125", "4.725"),
                        ("160", "1000000", "0.5", "64.725"))
SWING_PERIOD_S = 600
INITIAL_LEVERAGE = (125, 100, 50, 20, 10, 5, 4, 3, 2, 1)


def contract_size(symbol: str) -> int:
    """USD per contract: 100 for BTCUSD contracts, 10 for the others (as accounts computes COIN-M figures)."""
    return 100 if symbol.startswith("BTC") else 10


def is_coinm(symbol: str) -> bool:
    return "USD_" in symbol


@dataclass
class SimMarket:
    """Mark prices per symbol (a seeded random walk), and the brackets every account gets."""

    marks: dict[str, str] | None = None  # symbol -> starting mark; None: USDM_MARKS and COINM_MARKS
    volatility: float = 0.0005  # standard deviation of one second's step, as a fraction of the mark
    trend: dict[str, float] = field(default_factory=dict)  # symbol -> mean step (e.g. -0.0002: down 1.2 %/min)
    swing: dict[str, float] = field(default_factory=dict)  # symbol -> amplitude of a 10-minute swing (demo)
    seed: int = 24
    brackets: dict[str, tuple[Bracket, ...]] = field(default_factory=lambda: {"BTCUSDT": BTCUSDT_BRACKETS})
    _marks: dict[str, Decimal] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _steps: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        start = self.marks if self.marks is not None else {**USDM_MARKS, **COINM_MARKS}
        self._marks = {symbol: Decimal(price) for symbol, price in start.items()}

    # ---- marks ---------------------------------------------------------------------------------
    def mark(self, symbol: str) -> Decimal | None:
        """The symbol's mark; None for a symbol the market does not have."""
        with self._lock:
            return self._marks.get(symbol)

    def current(self) -> dict[str, Decimal]:
        with self._lock:
            return dict(self._marks)

    def set_mark(self, symbol: str, price: Decimal | str | float) -> None:
        with self._lock:
            self._marks[symbol] = Decimal(str(price))

    def step(self) -> dict[str, Decimal]:
        """One second of the random walk for every symbol; the new marks."""
        with self._lock:
            self._steps += 1
            # A swing of amplitude A is the step-by-step derivative of A sin(2 pi t / T) in the log price.
            phase = math.cos(2 * math.pi * self._steps / SWING_PERIOD_S) * 2 * math.pi / SWING_PERIOD_S
            for symbol, price in self._marks.items():
                mean = self.trend.get(symbol, 0.0) + self.swing.get(symbol, 0.0) * phase
                factor = Decimal(repr(math.exp(self._rng.gauss(mean, self.volatility))))
                self._marks[symbol] = (price * factor).quantize(Q8)
            return dict(self._marks)

    # ---- brackets and contract sizes -----------------------------------------------------------
    def table(self, symbol: str) -> tuple[Bracket, ...]:
        default = COINM_BRACKETS if is_coinm(symbol) else USDM_BRACKETS
        return self.brackets.get(symbol, default)

    def symbols(self, coin: bool) -> list[str]:
        with self._lock:
            return sorted(s for s in self._marks if is_coinm(s) == coin)


# ---- REST answers ------------------------------------------------------------------------------
def _number(value: Decimal) -> int | float:
    """Brackets are JSON numbers in Binance's answers (integers where whole)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _bracket_rows(table: Iterable[Bracket], coin: bool) -> list[dict[str, Any]]:
    cap, floor = ("qtyCap", "qtyFloor") if coin else ("notionalCap", "notionalFloor")
    return [{"bracket": index + 1, "initialLeverage": INITIAL_LEVERAGE[min(index, len(INITIAL_LEVERAGE) - 1)],
             cap: _number(b.cap), floor: _number(b.floor), "maintMarginRatio": _number(b.mmr), "cum": _number(b.cum)}
            for index, b in enumerate(table)]


def leverage_brackets(market: SimMarket, acct: SimAccount, params: Mapping[str, str], coin: bool) -> Any:
    """/fapi/v1/leverageBracket, /papi/v1/um/leverageBracket (coin=False) and /dapi/v2/leverageBracket."""
    held = [p.symbol for p in (acct.coinm_positions if coin else acct.positions + acct.pm.um_positions)]
    symbols = sorted({*market.symbols(coin), *held})
    one = params.get("symbol")
    rows = [{"symbol": s, "brackets": _bracket_rows(market.table(s), coin)} for s in symbols if one in (None, s)]
    if one is not None and not coin:
        return rows[0] if rows else {"symbol": one, "brackets": _bracket_rows(market.table(one), coin)}
    return rows


def exchange_info(market: SimMarket, server_ms: int) -> dict[str, Any]:
    """/dapi/v1/exchangeInfo (public): the fields of the SDK model that matter here, per COIN-M symbol."""
    symbols = sorted({*market.symbols(True), *COINM_SYMBOLS})
    return {"timezone": "UTC", "serverTime": server_ms,
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": 2400}],
            "exchangeFilters": [],
            "symbols": [{"symbol": s, "pair": s.split("_")[0], "contractType": "PERPETUAL",
                         "deliveryDate": 4133404800000, "onboardDate": 1597042800000, "contractStatus": "TRADING",
                         "contractSize": contract_size(s), "marginAsset": margin_asset(s, True),
                         "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                         "baseAsset": margin_asset(s, True), "quoteAsset": "USD", "pricePrecision": 1,
                         "quantityPrecision": 0, "baseAssetPrecision": 8, "quotePrecision": 8,
                         "equalQtyPrecision": 4, "triggerProtect": "0.0500", "underlyingType": "COIN",
                         "underlyingSubType": [], "filters": [], "orderTypes": ["LIMIT", "MARKET"],
                         "timeInForce": ["GTC"], "liquidationFee": "0.010000", "marketTakeBound": "0.05"}
                        for s in symbols]}


# ---- accounts at the market's marks ------------------------------------------------------------
def _wallet(acct: SimAccount, asset: str, coin: bool) -> Decimal | None:
    rows = acct.coinm_balances if coin else acct.balances
    for row in rows or []:
        if row.get("asset") == asset:
            return dec(row.get("crossWalletBalance"))
    return None


def _figures(market: SimMarket, p: SimPosition, coin: bool) -> tuple[Decimal, Decimal, Decimal, Bracket] | None:
    """(mark, notional, PnL, bracket) of a position at the market's mark; None if it has no mark."""
    amount, entry = dec(p.amount), dec(p.entry_price)
    mark = market.mark(p.symbol)
    if mark is None or amount == 0 or entry == 0:
        return None
    if coin:
        size = contract_size(p.symbol)
        notional, pnl = amount * size / mark, amount * size * (1 / entry - 1 / mark)
    else:
        notional, pnl = amount * mark, (mark - entry) * amount
    return mark, notional, pnl, select_bracket(market.table(p.symbol), notional)


def _live_positions(market: SimMarket, acct: SimAccount, positions: list[SimPosition],
                    coin: bool) -> list[SimPosition]:
    figures = {id(p): _figures(market, p, coin) for p in positions}
    out = []
    for p in positions:
        fig = figures[id(p)]
        if fig is None:
            out.append(p)
            continue
        mark, _, _, bracket = fig
        liq = _liquidation(market, acct, p, positions, figures, coin)
        out.append(replace(p, mark_price=format_decimal(mark), maint_rate=bracket.mmr, maint_amount=bracket.cum,
                           liquidation_price=p.liquidation_price if liq is None else liq))
    return out


def _liquidation(market: SimMarket, acct: SimAccount, p: SimPosition, positions: list[SimPosition],
                 figures: Mapping[int, tuple[Decimal, Decimal, Decimal, Bracket] | None], coin: bool) -> Decimal | None:
    """Binance's liquidation price of `p` (None: keep the stored one; 0: none)."""
    if acct.multi_assets and not p.isolated:
        return None
    fig = figures[id(p)]
    assert fig is not None
    size = Decimal(contract_size(p.symbol)) if coin else None
    if p.isolated:
        legs, wallet, others = [p], dec(p.isolated_wallet), []
    else:
        asset = margin_asset(p.symbol, coin)
        found = _wallet(acct, asset, coin)
        if found is None:
            return None
        pool = [q for q in positions if not q.isolated and margin_asset(q.symbol, coin) == asset and dec(q.amount) != 0]
        legs, wallet = [q for q in pool if q.symbol == p.symbol], found
        others = [q for q in pool if q.symbol != p.symbol]
    other_maint = other_pnl = Decimal(0)
    for q in others:
        other = figures[id(q)]
        if other is None:
            return None  # a position the market does not move shares the pool: keep the stored price
        _, notional, pnl, bracket = other
        other_maint += abs(notional) * bracket.mmr - bracket.cum
        other_pnl += pnl
    spec = [(dec(q.amount), dec(q.entry_price), market.table(q.symbol)) for q in legs if figures[id(q)] is not None]
    price = liquidation_price(wallet, other_maint, other_pnl, spec, fig[0], size)
    return Decimal(0) if price is None else price.quantize(Q8)


def _marked(market: SimMarket, positions: list[SimPosition]) -> list[SimPosition]:
    """Portfolio Margin positions: the market's mark only (their liquidation price comes from uniMMR)."""
    out = []
    for p in positions:
        mark = market.mark(p.symbol)
        out.append(p if mark is None else replace(p, mark_price=format_decimal(mark)))
    return out


def live_account(market: SimMarket, acct: SimAccount) -> SimAccount:
    """The account as Binance would answer at the market's current marks (the stored one is left alone)."""
    pm = replace(acct.pm, um_positions=_marked(market, acct.pm.um_positions),
                 cm_positions=_marked(market, acct.pm.cm_positions))
    return replace(acct, positions=_live_positions(market, acct, acct.positions, False),
                   coinm_positions=_live_positions(market, acct, acct.coinm_positions, True), pm=pm)


# ---- liquidation -------------------------------------------------------------------------------
def crossed(p: SimPosition) -> bool:
    """Past its liquidation price at its mark (a position of an account from live_account)."""
    mark, liq, amount = dec(p.mark_price), dec(p.liquidation_price), dec(p.amount)
    if not liq or not mark or not amount:
        return False
    return mark <= liq if amount > 0 else mark >= liq


def order_trade_update(p: SimPosition, order_id: int, status: str, server_ms: int, *,
                       client_order_id: str | None = None) -> dict[str, Any]:
    """The ORDER_TRADE_UPDATE of a forced close of `p` at its liquidation price (Binance's fields and order).

    A liquidation: client order id `autoclose-<ms>`, type LIQUIDATION, execution type CALCULATED;
    an ADL: pass client_order_id="adl_autoclose".
    """
    amount, price = dec(p.amount), format_decimal(dec(p.liquidation_price))
    filled = status == "FILLED"
    qty = format(abs(amount).normalize(), "f")
    asset = margin_asset(p.symbol, "USD_" in p.symbol)
    return {"e": "ORDER_TRADE_UPDATE", "E": server_ms, "T": server_ms, "o": {
        "s": p.symbol, "c": client_order_id or f"autoclose-{server_ms}", "S": "SELL" if amount > 0 else "BUY",
        "o": "LIQUIDATION", "f": "IOC", "q": qty, "p": price, "ap": price if filled else "0", "sp": "0",
        "x": "CALCULATED" if filled else "NEW", "X": status, "i": order_id, "l": qty if filled else "0",
        "z": qty if filled else "0", "L": price if filled else "0", "N": asset, "n": "0", "T": server_ms,
        "t": order_id if filled else 0, "b": "0", "a": "0", "m": False, "R": True, "wt": "CONTRACT_PRICE",
        "ot": "LIQUIDATION", "ps": p.side, "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0,
        "V": "NONE", "pm": "NONE", "gtd": 0}}


def liquidated(acct: SimAccount, live: SimAccount, coin: bool) -> tuple[list[SimPosition], SimAccount]:
    """(the live positions past their liquidation price, the stored account with them closed).

    A closed position's loss at its liquidation price leaves its margin asset's wallet
    (cross: the balance row; isolated: its isolated wallet goes with it).
    """
    stored = acct.coinm_positions if coin else acct.positions
    current = live.coinm_positions if coin else live.positions
    gone = [q for q in current if crossed(q)]
    if not gone:
        return [], acct
    keys = {(q.symbol, q.side) for q in gone}
    cross_loss: dict[str, Decimal] = {}
    wallet_loss: dict[str, Decimal] = {}
    for q in gone:
        asset = margin_asset(q.symbol, coin)
        amount, entry, price = dec(q.amount), dec(q.entry_price), dec(q.liquidation_price)
        if q.isolated:  # the isolated wallet is what is lost; the cross wallet does not move
            pnl = -dec(q.isolated_wallet)
        else:
            pnl = amount * contract_size(q.symbol) * (1 / entry - 1 / price) if coin else amount * (price - entry)
            cross_loss[asset] = cross_loss.get(asset, Decimal(0)) + pnl
        wallet_loss[asset] = wallet_loss.get(asset, Decimal(0)) + pnl
    rows = [dict(r) for r in (acct.coinm_balances if coin else acct.balances) or []]
    for row in rows:
        asset = row.get("asset", "")
        for names, change in ((("balance", "walletBalance"), wallet_loss.get(asset)),
                              (("crossWalletBalance", "availableBalance", "maxWithdrawAmount", "withdrawAvailable"),
                               cross_loss.get(asset))):
            for key in names:
                if change is not None and key in row:
                    row[key] = format_decimal(max(Decimal(0), dec(row[key]) + change))
    kept = [p for p in stored if (p.symbol, p.side) not in keys]
    if coin:
        return gone, replace(acct, coinm_positions=kept, coinm_balances=rows)
    return gone, replace(acct, positions=kept, balances=rows)
