"""Live risk: every figure a mark price moves, recomputed locally from Binance's published formulas.

Between two REST reads the exporter knows an account's positions, wallets and
brackets; the public mark price stream tells it the one thing that moves. This
module is the arithmetic only (no I/O, no clocks, no threads): Binance's
formulas (shared/binance-api.md §13.3; the FAQs "How to Calculate Liquidation
Price of USDⓈ-M / COIN-M Futures Contracts") in exact Decimal arithmetic, and
`recompute`, which applies them to an account's last coherent `Snapshot`.

Conventions, as in Binance's answers:

* amounts are signed (a short, and a hedge-mode SHORT leg, is negative);
  USD-M amounts are in the base asset, COIN-M amounts in contracts;
* notional is signed like the amount (positionRisk's `notional`); brackets
  are chosen by its absolute value (COIN-M: the quantity in the coin,
  |amount| x contract size / mark);
* maintenance margin = |notional| x maintMarginRatio - cum of that bracket;
* a liquidation price at or below 0 (or none at all) is None: Binance then
  answers 0, which the parser already turns into "no liquidation price".

What public data cannot give exactly keeps its last REST or event value:
Multi-Assets mode's USD totals and its cross liquidation prices (collateral
haircuts), everything Portfolio Margin derives from uniMMR, and any figure of a
position whose mark, brackets or contract size is not known. A stale mark is
never extrapolated: the caller passes only marks it trusts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Context, Decimal, localcontext

from exporter.parsing import AssetRow, Bracket, PositionRow, Snapshot

__all__ = ["Bracket", "Leg", "LiveRisk", "coinm_liquidation_price_at", "coinm_notional", "coinm_unrealized_pnl",
           "liquidation_price", "live_symbols", "maint_margin", "recompute", "select_bracket",
           "usdm_liquidation_price_at", "usdm_notional", "usdm_unrealized_pnl"]

ZERO = Decimal(0)
ONE = Decimal(1)
# 50 significant digits: products of 30-digit decimals (the parser's limit) stay exact enough that
# the float each figure ends as is the correctly rounded value of Binance's formula.
_CONTEXT = Context(prec=50)
# Bracket re-selection at the liquidation price: each pass moves to the bracket the last price falls
# in; Binance's tables have at most a few dozen brackets, so this bound is never the one that stops.
MAX_BRACKET_PASSES = 64


@dataclass(frozen=True, slots=True)
class Leg:
    """One position entering a liquidation price: its signed amount, entry price and bracket."""

    amount: Decimal
    entry: Decimal
    bracket: Bracket


# ---- per position ------------------------------------------------------------------------------
def select_bracket(brackets: Sequence[Bracket], size: Decimal) -> Bracket:
    """The bracket `size` (|notional|, COIN-M: quantity in the coin) falls in; floors inclusive.

    Past the last cap the last bracket applies (Binance's last cap is the symbol's maximum).
    `brackets` must be non-empty and sorted by floor (parsing checks both).
    """
    size = abs(size)
    for bracket in brackets:
        if size < bracket.cap:
            return bracket
    return brackets[-1]


def usdm_unrealized_pnl(amount: Decimal, entry: Decimal, mark: Decimal) -> Decimal:
    with localcontext(_CONTEXT):
        return amount * (mark - entry)


def coinm_unrealized_pnl(amount: Decimal, entry: Decimal, mark: Decimal, contract_size: Decimal) -> Decimal:
    """In the coin: amount x contract size x (1/entry - 1/mark)."""
    with localcontext(_CONTEXT):
        return amount * contract_size * (ONE / entry - ONE / mark)


def usdm_notional(amount: Decimal, mark: Decimal) -> Decimal:
    with localcontext(_CONTEXT):
        return amount * mark


def coinm_notional(amount: Decimal, mark: Decimal, contract_size: Decimal) -> Decimal:
    """Position value in the coin: amount x contract size / mark (signed like the amount)."""
    with localcontext(_CONTEXT):
        return amount * contract_size / mark


def maint_margin(notional: Decimal, bracket: Bracket) -> Decimal:
    with localcontext(_CONTEXT):
        return abs(notional) * bracket.mmr - bracket.cum


def usdm_liquidation_price_at(wallet: Decimal, other_maint: Decimal, other_pnl: Decimal,
                              legs: Sequence[Leg]) -> Decimal | None:
    """Binance's USD-M formula with the legs' brackets as given (no re-selection).

    LP = (WB - TMM1 + UPNL1 + sum cum - sum amount x EP) / (sum |amount| x MMR - sum amount)

    which is the FAQ's formula with Side1BOTH x Position1BOTH = the BOTH amount, Position1LONG =
    the LONG amount and Position1SHORT = -(the SHORT amount). Isolated: WB = the position's
    isolated wallet, TMM1 = UPNL1 = 0.
    """
    with localcontext(_CONTEXT):
        numerator = wallet - other_maint + other_pnl
        denominator = ZERO
        for leg in legs:
            numerator += leg.bracket.cum - leg.amount * leg.entry
            denominator += abs(leg.amount) * leg.bracket.mmr - leg.amount
        if denominator == 0:
            return None
        price = numerator / denominator
    return price if price > 0 else None


def coinm_liquidation_price_at(wallet: Decimal, other_maint: Decimal, other_pnl: Decimal, legs: Sequence[Leg],
                               contract_size: Decimal) -> Decimal | None:
    """Binance's COIN-M formula with the legs' brackets as given; WB, TMM1, UPNL1 and cum in the coin.

    LP = CS x (sum |amount| x MMR + sum amount) / (WB - TMM1 + UPNL1 + sum cum + CS x sum amount / EP)

    (the price at which WB + UPNL1 + sum amount x CS x (1/EP - 1/LP) equals TMM1 + sum (|amount| x CS / LP
    x MMR - cum)).
    """
    with localcontext(_CONTEXT):
        numerator = ZERO
        denominator = wallet - other_maint + other_pnl
        for leg in legs:
            if leg.entry == 0:
                return None
            numerator += abs(leg.amount) * leg.bracket.mmr + leg.amount
            denominator += leg.bracket.cum + contract_size * leg.amount / leg.entry
        if denominator == 0:
            return None
        price = contract_size * numerator / denominator
    return price if price > 0 else None


def liquidation_price(wallet: Decimal, other_maint: Decimal, other_pnl: Decimal,
                      legs: Sequence[tuple[Decimal, Decimal, Sequence[Bracket]]], mark: Decimal,
                      contract_size: Decimal | None = None) -> Decimal | None:
    """The liquidation price of one symbol's legs ((amount, entry, brackets) each), brackets per the FAQ.

    The legs start in the bracket of their size at `mark`; when the size at the price found
    falls in another bracket, the price is computed again with that bracket ("recompute with
    the liquidation price's level"), until the brackets agree. `contract_size` None: USD-M.
    """
    def size_at(amount: Decimal, price: Decimal) -> Decimal:
        with localcontext(_CONTEXT):
            return abs(amount) * price if contract_size is None else abs(amount) * contract_size / price

    def solve(chosen: Sequence[Bracket]) -> Decimal | None:
        built = [Leg(amount, entry, bracket) for (amount, entry, _), bracket in zip(legs, chosen, strict=True)]
        if contract_size is None:
            return usdm_liquidation_price_at(wallet, other_maint, other_pnl, built)
        return coinm_liquidation_price_at(wallet, other_maint, other_pnl, built, contract_size)

    if not legs or mark <= 0:
        return None
    chosen = [select_bracket(table, size_at(amount, mark)) for amount, _, table in legs]
    price = solve(chosen)
    seen = {tuple(chosen)}
    for _ in range(MAX_BRACKET_PASSES):
        if price is None:
            return None
        again = [select_bracket(table, size_at(amount, price)) for amount, _, table in legs]
        if again == chosen:
            return price
        if tuple(again) in seen:  # two brackets pointing at each other: the price sits on their boundary
            return price
        seen.add(tuple(again))
        chosen = again
        price = solve(chosen)
    return price


# ---- an account's snapshot ---------------------------------------------------------------------
def _dec(value: float) -> Decimal:
    """A parsed figure back to the decimal Binance sent: repr() of a float is its shortest round trip."""
    return Decimal(repr(value))


@dataclass
class _Pos:
    """One position being recomputed: its row, the old and new figures (None: not recomputed)."""

    row: PositionRow
    index: int
    coin: bool
    amount: Decimal
    entry: Decimal | None
    mark: Decimal | None
    size: Decimal | None  # COIN-M contract size
    brackets: Sequence[Bracket] | None
    old_pnl: Decimal | None
    pnl: Decimal | None = None
    notional: Decimal | None = None
    old_maint: Decimal | None = None
    maint: Decimal | None = None
    wallet: Decimal | None = None  # isolated wallet
    liq: Decimal | None = None
    liq_known: bool = False  # liq is a result (None: no liquidation price), not "not computed"

    @property
    def isolated(self) -> bool:
        return self.row.margin_type == "isolated"


def live_symbols(snapshot: Snapshot) -> frozenset[str]:
    """The symbols whose mark prices move this account's figures (the streams to subscribe)."""
    return frozenset(p.symbol for p in snapshot.positions if p.values.get("position_amount"))


def _static(row: PositionRow, index: int, coin: bool, brackets: Mapping[str, Sequence[Bracket]],
            contract_sizes: Mapping[str, Decimal]) -> _Pos:
    """What of a position does not depend on the mark, converted once per snapshot."""
    values = row.values
    amount = _dec(values.get("position_amount", 0.0))
    entry = _dec(values["position_entry_price"]) if values.get("position_entry_price") else None
    size = contract_sizes.get(row.symbol) if coin else None
    table = brackets.get(row.symbol) or None
    old_pnl = _dec(values["position_unrealized_pnl"]) if "position_unrealized_pnl" in values else None
    pos = _Pos(row, index, coin, amount, entry, None, size, table, old_pnl)
    if "position_maint_margin" in values:
        pos.old_maint = _dec(values["position_maint_margin"])
    elif table is not None and entry is not None and values.get("position_mark_price") and (size or not coin):
        # COIN-M positionRisk has no maintMargin: the REST figure is Binance's formula at the old mark.
        old_mark = _dec(values["position_mark_price"])
        old_notional = coinm_notional(amount, old_mark, size) if coin and size else usdm_notional(amount, old_mark)
        pos.old_maint = maint_margin(old_notional, select_bracket(table, old_notional))
    if pos.isolated:
        if "position_isolated_wallet" in values and values["position_isolated_wallet"] > 0:
            pos.wallet = _dec(values["position_isolated_wallet"])
        elif "position_isolated_margin" in values and old_pnl is not None:  # COIN-M: margin = wallet + PnL
            pos.wallet = _dec(values["position_isolated_margin"]) - old_pnl
    return pos


def _at(static: _Pos, marks: Mapping[str, Decimal]) -> _Pos:
    """A fresh copy of a prepared position with its figures at the symbol's mark (if fresh and usable)."""
    pos = _Pos(static.row, static.index, static.coin, static.amount, static.entry, None, static.size,
               static.brackets, static.old_pnl, old_maint=static.old_maint, wallet=static.wallet)
    mark = marks.get(static.row.symbol)
    if mark is None or mark <= 0 or pos.entry is None or (pos.coin and not pos.size):
        return pos
    pos.mark = mark
    if pos.coin:
        assert pos.size is not None
        pos.pnl = coinm_unrealized_pnl(pos.amount, pos.entry, mark, pos.size)
        pos.notional = coinm_notional(pos.amount, mark, pos.size)
    else:
        pos.pnl = usdm_unrealized_pnl(pos.amount, pos.entry, mark)
        pos.notional = usdm_notional(pos.amount, mark)
    if pos.brackets is not None:
        pos.maint = maint_margin(pos.notional, select_bracket(pos.brackets, pos.notional))
    return pos


def _liquidation_prices(pool: list[_Pos], wallet: Decimal | None) -> None:
    """Cross liquidation prices of one margin pool (one margin asset), symbol by symbol.

    TMM1 and UPNL1 of a symbol are the pool's sums less the symbol's own legs (exact in Decimal):
    one pass over the pool, not one per symbol.
    """
    if wallet is None:
        return
    maint = [p.maint if p.maint is not None else p.old_maint for p in pool]
    pnl = [p.pnl if p.pnl is not None else p.old_pnl for p in pool]
    known = {p.row.symbol: True for p in pool}
    with localcontext(_CONTEXT):
        total_maint = total_pnl = ZERO
        by_symbol: dict[str, list[_Pos]] = {}
        own: dict[str, tuple[Decimal, Decimal]] = {}
        for pos, m, u in zip(pool, maint, pnl, strict=True):
            by_symbol.setdefault(pos.row.symbol, []).append(pos)
            if m is None or u is None:
                known[pos.row.symbol] = False
                continue
            total_maint += m
            total_pnl += u
            mine = own.get(pos.row.symbol, (ZERO, ZERO))
            own[pos.row.symbol] = (mine[0] + m, mine[1] + u)
        unknown = [symbol for symbol, ok in known.items() if not ok]
        for symbol, legs in by_symbol.items():
            # Another position's figures unknown, or this one not computable: the last price stays.
            if any(other != symbol for other in unknown) or not all(_ready(p) for p in legs):
                continue
            mine = own.get(symbol, (ZERO, ZERO))
            price = _solve(legs, wallet, total_maint - mine[0], total_pnl - mine[1])
            for pos in legs:
                pos.liq, pos.liq_known = price, True


def _ready(pos: _Pos) -> bool:
    return pos.mark is not None and pos.entry is not None and pos.brackets is not None and pos.pnl is not None


def _solve(legs: list[_Pos], wallet: Decimal, other_maint: Decimal, other_pnl: Decimal) -> Decimal | None:
    first = legs[0]
    assert first.mark is not None
    spec = [(p.amount, p.entry or ZERO, p.brackets or ()) for p in legs]
    return liquidation_price(wallet, other_maint, other_pnl, spec, first.mark, first.size if first.coin else None)


class LiveRisk:
    """One account's last coherent state in one market, ready to be recomputed at new mark prices.

    Build it at every REST read or event that changes the snapshot (what does not depend on the
    mark is converted once, here); then `at(marks)` on every mark update costs only the formulas.

    `brackets`: this account's brackets per symbol (Binance adjusts them per user); `contract_sizes`:
    COIN-M USD per contract per symbol (a symbol listed there is a COIN-M symbol, also inside a
    Portfolio Margin snapshot).
    """

    def __init__(self, snapshot: Snapshot, market: str, brackets: Mapping[str, Sequence[Bracket]],
                 contract_sizes: Mapping[str, Decimal]) -> None:
        self.snapshot = snapshot
        self.market = market
        self.brackets = brackets  # what it was built with (a caller caching it compares them)
        self.sizes = contract_sizes
        self._pm = market == "pm"
        self._multi = snapshot.totals.get("multi_assets_mode") == 1.0
        self._positions = [_static(row, index, market == "coinm" or (self._pm and row.symbol in contract_sizes),
                                   brackets, contract_sizes) for index, row in enumerate(snapshot.positions)]
        self._wallets: dict[str, Decimal] = {}
        for row in snapshot.assets:
            wallet = row.values.get("cross_wallet_balance")
            if wallet is not None:
                self._wallets[row.asset] = _dec(wallet)
        self.symbols = live_symbols(snapshot)

    def at(self, marks: Mapping[str, Decimal]) -> Snapshot:
        """The snapshot as Binance would answer at `marks` (fresh mark prices per symbol, and only fresh ones).

        Per position: mark price, unrealized PnL, notional, maintenance margin, isolated margin and
        the liquidation price; per asset: unrealized PnL, cross unrealized PnL, margin balance,
        maintenance margin (and its isolated part); USD-M single-asset totals likewise (they are the
        USDT pool's). Only figures the snapshot has are replaced (an endpoint that did not give a
        figure does not get one), except the liquidation price, which appears and disappears as
        Binance's would. Asset and account figures move by the change of their positions' figures,
        so whatever Binance counted that the exporter cannot see stays counted. Portfolio Margin and
        Multi-Assets mode keep their account figures and cross liquidation prices (collateral
        haircuts, uniMMR). A symbol without a mark in `marks` keeps its figures.
        """
        snapshot = self.snapshot
        if not self._positions or not marks:
            return snapshot
        positions = [_at(static, marks) for static in self._positions]
        if not any(p.pnl is not None for p in positions):
            return snapshot
        if not self._pm:
            for pos in positions:  # isolated: the position's own wallet, nothing else in its pool
                if pos.isolated and pos.wallet is not None and _ready(pos):
                    pos.liq, pos.liq_known = _solve([pos], pos.wallet, ZERO, ZERO), True
            if not self._multi:
                pools: dict[str, list[_Pos]] = {}
                for pos in positions:
                    if pos.row.margin_type == "cross" and pos.row.margin_asset is not None:
                        pools.setdefault(pos.row.margin_asset, []).append(pos)
                for asset, pool in pools.items():
                    _liquidation_prices(pool, self._wallets.get(asset))
        new_positions = tuple(_position_row(p) for p in positions)
        new_assets = tuple(_asset_row(row, [p for p in positions if p.row.margin_asset == row.asset], self._pm)
                           for row in snapshot.assets)
        totals = snapshot.totals if self._pm or self._multi or self.market != "usdm" \
            else _totals(snapshot.totals, positions)
        return replace(snapshot, positions=new_positions, assets=new_assets, totals=totals)


def recompute(snapshot: Snapshot, market: str, brackets: Mapping[str, Sequence[Bracket]],
              contract_sizes: Mapping[str, Decimal], marks: Mapping[str, Decimal]) -> Snapshot:
    """`LiveRisk(snapshot, market, brackets, contract_sizes).at(marks)`, for one-off use (see LiveRisk.at)."""
    return LiveRisk(snapshot, market, brackets, contract_sizes).at(marks)


def _set(values: dict[str, float], name: str, value: Decimal | None) -> None:
    if value is not None and name in values:
        values[name] = float(value)


def _position_row(pos: _Pos) -> PositionRow:
    if pos.pnl is None:
        return pos.row
    values = dict(pos.row.values)
    assert pos.mark is not None
    values["position_mark_price"] = float(pos.mark)
    _set(values, "position_unrealized_pnl", pos.pnl)
    _set(values, "position_notional", pos.notional)
    _set(values, "position_maint_margin", pos.maint)
    if pos.isolated and pos.wallet is not None:
        with localcontext(_CONTEXT):
            _set(values, "position_isolated_margin", pos.wallet + pos.pnl)
    if pos.liq_known:
        if pos.liq is None:
            values.pop("position_liquidation_price", None)
        else:
            values["position_liquidation_price"] = float(pos.liq)
    return replace(pos.row, values=values)


def _delta(positions: Iterable[_Pos], maint: bool = False) -> Decimal:
    """How much the positions' PnL (or maintenance margin) moved: new minus old, where both are known."""
    total = ZERO
    with localcontext(_CONTEXT):
        for pos in positions:
            now, before = (pos.maint, pos.old_maint) if maint else (pos.pnl, pos.old_pnl)
            if now is not None and before is not None:
                total += now - before
    return total


def _moved(values: Mapping[str, float], name: str, delta: Decimal) -> float:
    with localcontext(_CONTEXT):
        return float(_dec(values[name]) + delta)


def _asset_row(row: AssetRow, positions: list[_Pos], pm: bool) -> AssetRow:
    if pm or not positions:
        return row
    pnl = _delta(positions)
    cross_pnl = _delta(p for p in positions if not p.isolated)
    maint = _delta(positions, maint=True)
    isolated_maint = _delta((p for p in positions if p.isolated), maint=True)
    values = dict(row.values)
    for name, delta in (("unrealized_pnl", pnl), ("margin_balance", pnl), ("cross_unrealized_pnl", cross_pnl),
                        ("maint_margin", maint), ("isolated_maint_margin", isolated_maint)):
        if name in values and delta:
            values[name] = _moved(values, name, delta)
    return replace(row, values=values)


def _totals(totals: Mapping[str, float], positions: list[_Pos]) -> Mapping[str, float]:
    """USD-M single-asset totals: the USDT pool's figures (isolated maintenance margin: every asset's)."""
    usdt = [p for p in positions if p.row.margin_asset == "USDT"]
    pnl = _delta(usdt)
    out = dict(totals)
    for name, delta in (("account_unrealized_pnl", pnl), ("account_margin_balance", pnl),
                        ("account_cross_unrealized_pnl", _delta(p for p in usdt if not p.isolated)),
                        ("account_maint_margin", _delta(usdt, maint=True)),
                        ("account_isolated_maint_margin", _delta((p for p in positions if p.isolated), maint=True))):
        if name in out and delta:
            out[name] = _moved(out, name, delta)
    return out
