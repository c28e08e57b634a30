"""Simulated accounts, and every answer built from them.

Tests and the demo set state: balance rows (as the balance endpoints return
them), positions, Portfolio Margin figures, sub-accounts. Every other figure
is derived, so the answers agree with each other the way Binance's do:

* per position: notional = amount x mark (COIN-M: amount x contract size /
  mark, in the coin), unRealizedProfit = (mark - entry) x amount (COIN-M:
  amount x size x (1/entry - 1/mark)), initialMargin = |notional| / leverage
  (+ open-order margin), maintMargin = |notional| x maint_rate;
* per asset: walletBalance = the row's balance; unrealizedProfit and the
  margins = sums over the positions margined in that asset; marginBalance =
  wallet + unrealizedProfit; crossUnPnl = the row's crossUnPnl + the cross
  positions' PnL. (A row's own crossUnPnl stands for PnL of positions the
  simulator is not told about: leave it 0 when you give positions.);
* USD-M account totals: the USDT asset's figures in single-asset mode (as
  Binance's "only for USDT asset"), the sums over the assets in Multi-Assets
  mode, every asset at price 1 (the simulator has no prices); sub-accounts
  and Portfolio Margin: sums over the assets.

Field names and their order come from exporter.schema; values follow the
style of the official examples, which is also what a bare SimAccount answers.
"""

from __future__ import annotations

import copy
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from exporter.parsing import SUB_ACCOUNT_KEYS
from exporter.schema import (
    ACCOUNT_CONFIG,
    COINM_ACCOUNT,
    COINM_ACCOUNT_ASSET,
    COINM_ACCOUNT_POSITION,
    COINM_BALANCE,
    COINM_POSITION_RISK,
    PM_ACCOUNT,
    PM_BALANCE,
    PM_BALANCE_ONE,
    PM_CM_POSITION_RISK,
    PM_UM_POSITION_RISK,
    SUB_ACCOUNT_ASSET,
    SUB_ACCOUNT_COINM,
    SUB_ACCOUNT_LIST_ENTRY,
    SUB_ACCOUNT_TOTALS,
    SUB_ACCOUNT_USDM,
    SUB_POSITION_KEYS,
    SUB_POSITION_RISK_COINM,
    SUB_POSITION_RISK_USDM,
    USDM_ACCOUNT_ASSET,
    USDM_ACCOUNT_ASSET_V3,
    USDM_ACCOUNT_POSITION_V2,
    USDM_ACCOUNT_POSITION_V3,
    USDM_ACCOUNT_TOTALS,
    USDM_ACCOUNT_V2,
    USDM_ACCOUNT_V3,
    USDM_BALANCE,
    USDM_POSITION_RISK_V2,
    USDM_POSITION_RISK_V3,
    Field,
)

from .gate import ApiError, Credentials, invalid_param_msg, mandatory_param_msg

Num = str | float | int | Decimal
ZERO = Decimal(0)
# Markets: the symbols every v2/COIN-M position list shows (zero rows), and USD-M mark prices.
USDM_MARKS = {"BTCUSDT": "6679.50671178", "ETHUSDT": "3412.31000000", "ADAUSDT": "0.41047590"}
USDM_SYMBOLS = ("BTCUSDT", "ETHUSDT")
COINM_SYMBOLS = ("BTCUSD_PERP", "ETHUSD_PERP")
PM_LADDER = ((Decimal("1.5"), "NORMAL"), (Decimal("1.2"), "MARGIN_CALL"), (Decimal("1.05"), "REDUCE_ONLY"))
"""uniMMR above the bound → status; FORCE_LIQUIDATION below all. An assumption: only PM Pro publishes a ladder."""

# ---- state -------------------------------------------------------------------------------------
@dataclass
class SimPosition:
    """One position; with amount 0 and open_order_margin, a symbol with open orders only."""

    symbol: str = "BTCUSDT"
    amount: Num = "0"  # positionAmt, negative when short; contracts on COIN-M
    entry_price: Num = "0"
    mark_price: Num | None = None  # None: USDM_MARKS, else the entry price
    side: str = "BOTH"  # positionSide: BOTH (one-way mode) or LONG/SHORT (hedge mode)
    leverage: int = 20
    isolated: bool = False
    isolated_wallet: Num = "0"  # margin moved into an isolated position
    liquidation_price: Num = "0"  # "0": none, as Binance reports for most cross positions
    maint_rate: Num = "0.004"
    maint_amount: Num = "0"  # the bracket's cum: maintMargin = |notional| x maint_rate - maint_amount
    open_order_margin: Num = "0"  # openOrderInitialMargin
    break_even_price: Num | None = None  # None: entry ± 0.02 % (a taker fee)
    adl: int = 0
    update_time: int = 0


@dataclass
class SimFutures:
    """One futures account of a sub-account: rows in its balance endpoint's shape, and positions."""

    balances: list[dict[str, Any]] | None = None  # None: the official example of the sub-account endpoint
    positions: list[SimPosition] = field(default_factory=list)


@dataclass
class SimSubAccount:
    email: str
    usdm: SimFutures | None = field(default_factory=SimFutures)  # None: no USD-M futures account (-5011)
    coinm: SimFutures | None = None
    frozen: bool = False  # isFreeze
    remark: str = ""
    sub_user_id: int | None = None  # None: derived from the email
    create_time: int = 1544433328000


@dataclass
class SimPortfolio:
    """Portfolio Margin: balance rows as /papi/v1/balance lists them, and the account's margins (USD)."""

    balances: list[dict[str, Any]] | None = None  # None: the official example
    maint_margin: Num = "23.72469206"  # accountMaintMargin
    initial_margin: Num = "23.72469206"  # accountInitialMargin
    collateral_rate: Num = "1"  # accountEquity = actualEquity x this (haircuts)
    status: str | None = None  # accountStatus; None: from uniMMR (PM_LADDER)
    blanks: bool = True  # "" in totalAvailableBalance, totalMarginOpenLoss, as the official example
    update_time: int = 1657707212154
    um_positions: list[SimPosition] = field(default_factory=list)  # /papi/v1/um/positionRisk
    cm_positions: list[SimPosition] = field(default_factory=list)  # /papi/v1/cm/positionRisk


@dataclass
class SimAccount:
    api_key: str
    api_secret: str | None = field(default=None, repr=False)
    public_key_pem: bytes | None = field(default=None, repr=False)
    account_alias: str = "SgsR"
    balances: list[dict[str, Any]] | None = None  # USD-M rows as /fapi/v3/balance returns them; None: the example
    drift: bool = False  # demo only: values move smoothly with server time (see drift)
    positions: list[SimPosition] = field(default_factory=list)  # USD-M
    # Multi-Assets mode: every row's availableBalance is the pool's (the sum over rows at price 1), as in
    # Binance's own example; the v2 account answer and accountConfig say so. Single-asset otherwise.
    multi_assets: bool = False
    hedge: bool | None = None  # dualSidePosition; None: hedge mode when a position is LONG or SHORT
    coinm_balances: list[dict[str, Any]] | None = None  # rows as /dapi/v1/balance returns them; None: the example
    coinm_positions: list[SimPosition] = field(default_factory=list)
    pm: SimPortfolio = field(default_factory=SimPortfolio)
    sub_accounts: list[SimSubAccount] = field(default_factory=list)  # for a master key


def _or(rows: list[dict[str, Any]] | None, example: dict[str, Any]) -> list[dict[str, Any]]:
    return [example] if rows is None else rows


def _filled(account: SimAccount) -> SimAccount:
    """A private copy with every default example filled in, so builders never see None."""
    subs = [replace(s, usdm=s.usdm and replace(s.usdm, balances=_or(s.usdm.balances, EXAMPLE_SUB_USDM_ROW)),
                    coinm=s.coinm and replace(s.coinm, balances=_or(s.coinm.balances, EXAMPLE_SUB_COINM_ROW)),
                    sub_user_id=s.sub_user_id or zlib.crc32(s.email.encode()) % 10**9)
            for s in account.sub_accounts]
    return copy.deepcopy(replace(
        account, balances=_or(account.balances, EXAMPLE_USDM_ROW), sub_accounts=subs,
        coinm_balances=_or(account.coinm_balances, EXAMPLE_COINM_ROW),
        pm=replace(account.pm, balances=_or(account.pm.balances, EXAMPLE_PM_ROW))))


@dataclass(frozen=True)
class _Entry:
    account: SimAccount  # never mutated once stored: readers use it without a lock
    credentials: Credentials


class AccountBook:
    """The accounts by API key, safe to change while the server runs (copy on write)."""

    def __init__(self, accounts: Iterable[SimAccount] = ()) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        for account in accounts:
            self.add(account)

    def add(self, account: SimAccount) -> None:
        """Register (or replace) an account; bad key material fails here, not per request."""
        entry = _Entry(_filled(account), Credentials.create(account.api_secret, account.public_key_pem))
        with self._lock:
            self._entries[account.api_key] = entry

    def update(self, api_key: str, change: Callable[[SimAccount], SimAccount]) -> None:
        with self._lock:
            entry = self._entries.get(api_key)
            if entry is None:
                raise KeyError(f"unknown api_key {api_key!r}")
            account = _filled(change(entry.account))
            if account.api_key != api_key:
                raise ValueError("api_key cannot change; add the account under its new key instead")
            creds = Credentials.create(account.api_secret, account.public_key_pem)
            self._entries[api_key] = _Entry(account, creds)

    def credentials(self, api_key: str) -> Credentials | None:
        entry = self._entries.get(api_key)
        return None if entry is None else entry.credentials

    def get(self, api_key: str) -> SimAccount | None:
        entry = self._entries.get(api_key)
        return None if entry is None else entry.account

    def all(self) -> list[SimAccount]:
        with self._lock:
            return [entry.account for entry in self._entries.values()]


# ---- numbers -----------------------------------------------------------------------------------
def dec(value: Any) -> Decimal:
    """A number from a row or a setting; anything unparsable ("", "abc", a bool) counts as 0."""
    if isinstance(value, bool):
        return ZERO
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ZERO
    return number if number.is_finite() else ZERO


def format_decimal(value: float | Decimal) -> str:
    """Binance's amount style: 8 decimals, never "-0.00000000"."""
    text = f"{value:.8f}"
    return "0.00000000" if text == "-0.00000000" else text


def _text(value: Num) -> str:
    """A quantity or price as given ("30", "1.000", "0.385"), numbers in plain notation."""
    return value if isinstance(value, str) else format(dec(value).normalize(), "f")


def _zero_or(value: Decimal) -> str:
    """Margins and notionals: "0" when zero, as in the official examples."""
    return "0" if value == 0 else format_decimal(value)


def shape(layout: tuple[Field, ...], values: dict[str, Any]) -> dict[str, Any]:
    """One JSON object in declared order; `values` is keyed by metric name, else by JSON name."""
    out = {}
    for f in layout:
        value = values[f.metric or f.json]
        out[f.json] = format_decimal(value) if isinstance(value, Decimal) else value
    return out


def _by_metric(row: dict[str, Any], layout: tuple[Field, ...]) -> dict[str, Any]:
    return {f.metric: row.get(f.json) for f in layout if f.metric}


def _zero_row(layout: tuple[Field, ...], asset: str, alias: str) -> dict[str, Any]:
    zero = {"text": asset, "bool": True, "millis": 0}
    return {f.json: alias if f.json == "accountAlias" else zero.get(f.kind, "0.00000000") for f in layout}


def balance_row(asset: str, balance: Num, available: Num | None = None, *, cross: Num | None = None,
                pnl: Num = 0, withdraw: Num | None = None, update_time: int = 0, coin: bool = False) -> dict[str, Any]:
    """A row in the shape of /fapi/v3/balance (coin=True: /dapi/v1/balance), accountAlias left to the account.

    Defaults: crossWalletBalance = balance, availableBalance = crossWalletBalance, max withdraw = available.
    """
    cross = balance if cross is None else cross
    available = cross if available is None else available
    values = {"accountAlias": "", "asset": asset, "balance": dec(balance), "cross_wallet_balance": dec(cross),
              "cross_unrealized_pnl": dec(pnl), "available_balance": dec(available),
              "max_withdraw_amount": dec(available if withdraw is None else withdraw), "margin_available": True,
              "balance_update_timestamp_seconds": update_time}
    return {k: v for k, v in shape(COINM_BALANCE if coin else USDM_BALANCE, values).items() if k != "accountAlias"}


def pm_row(asset: str, um_wallet: Num, um_pnl: Num = 0, *, cm_wallet: Num = 0, cm_pnl: Num | str = "",
           free: Num = 0, locked: Num = 0, update_time: int = 0) -> dict[str, Any]:
    """A /papi/v1/balance row; totalWalletBalance = free + locked + UM wallet + CM wallet (the doc's rule)."""
    values = {"asset": asset, "balance": dec(free) + dec(locked) + dec(um_wallet) + dec(cm_wallet),
              "pm_cross_margin_asset": dec(free) + dec(locked), "pm_cross_margin_borrowed": ZERO,
              "pm_cross_margin_free": dec(free), "pm_cross_margin_interest": ZERO,
              "pm_cross_margin_locked": dec(locked),
              "pm_um_wallet_balance": dec(um_wallet), "pm_um_unrealized_pnl": dec(um_pnl),
              "pm_cm_wallet_balance": dec(cm_wallet), "pm_cm_unrealized_pnl": cm_pnl if cm_pnl == "" else dec(cm_pnl),
              "balance_update_timestamp_seconds": update_time, "pm_negative_balance": "0"}
    return shape(PM_BALANCE, values)


# The official examples (sdk-reference.md §1), in the balance endpoints' shape (alias: SimAccount's).
EXAMPLE_USDM_ROW = balance_row("USDT", "122607.35137903", cross="23.72469206", update_time=1617939110373)
EXAMPLE_COINM_ROW = balance_row("BTC", "0.0025", "0.00241969", cross="0.00241969", withdraw="0.0025",
                                update_time=1592468353979, coin=True)
EXAMPLE_SUB_USDM_ROW = balance_row("USDT", "0.88308", update_time=1576756674610)
EXAMPLE_SUB_COINM_ROW = balance_row("BTC", "0.88308", update_time=1598959682001, coin=True)
EXAMPLE_PM_ROW = {"asset": "USDT", "totalWalletBalance": "122607.35137903", "crossMarginAsset": "92.27530794",
                  "crossMarginBorrowed": "10.00000000", "crossMarginFree": "100.00000000",
                  "crossMarginInterest": "0.72469206", "crossMarginLocked": "3.00000000",
                  "umWalletBalance": "0.00000000", "umUnrealizedPNL": "23.72469206",
                  "cmWalletBalance": "23.72469206", "cmUnrealizedPNL": "", "updateTime": 1617939110373,
                  "negativeBalance": "0"}  # not self-consistent (92.27... != 100 + 3), so not built with pm_row


# ---- futures accounts (USD-M, COIN-M, sub-accounts) --------------------------------------------
def margin_asset(symbol: str, coin: bool) -> str:
    if coin:
        return symbol.split("USD")[0]
    return "USDC" if symbol.endswith("USDC") else "USDT"


def _position(p: SimPosition, coin: bool) -> tuple[dict[str, Any], dict[str, Decimal]]:
    """The position's answer values, and what it adds to its margin asset."""
    amount, entry = dec(p.amount), dec(p.entry_price)
    mark = dec(p.mark_price if p.mark_price is not None else USDM_MARKS.get(p.symbol, entry))
    if coin:
        size = 100 if p.symbol.startswith("BTC") else 10  # USD per contract
        notional = amount * size / mark if mark else ZERO
        pnl = amount * size * (1 / entry - 1 / mark) if entry and mark else ZERO
    else:
        notional, pnl = amount * mark, (mark - entry) * amount
    q = Decimal("1e-8")
    notional, pnl = notional.quantize(q), pnl.quantize(q)
    position_im = (abs(notional) / max(p.leverage, 1)).quantize(q)
    open_im = dec(p.open_order_margin)
    maint = (abs(notional) * dec(p.maint_rate) - dec(p.maint_amount)).quantize(q) if notional else ZERO
    wallet = dec(p.isolated_wallet) if p.isolated else ZERO
    fee = Decimal("0.0002") if amount >= 0 else Decimal("-0.0002")
    break_even = p.break_even_price if p.break_even_price is not None else (entry * (1 + fee)).normalize()
    liquidation = dec(p.liquidation_price)
    values: dict[str, Any] = {
        "symbol": p.symbol, "positionSide": p.side, "position_amount": _text(p.amount),
        "position_entry_price": _text(p.entry_price), "position_break_even_price": _text(break_even),
        "position_mark_price": format_decimal(mark), "position_unrealized_pnl": pnl, "unrealizedProfit": pnl,
        "position_liquidation_price": "0" if liquidation == 0 else format_decimal(liquidation),
        "position_isolated_margin": wallet + pnl if p.isolated else ZERO, "position_notional": _zero_or(notional),
        "position_required_initial_margin": _zero_or(position_im + open_im),
        "position_maint_margin": _zero_or(maint), "positionInitialMargin": _zero_or(position_im),
        "openOrderInitialMargin": _zero_or(open_im), "position_isolated_wallet": _zero_or(wallet),
        "marginAsset": margin_asset(p.symbol, coin), "marginType": "isolated" if p.isolated else "cross",
        "isAutoAddMargin": "false", "isolated": p.isolated, "leverage": str(p.leverage),
        "maxNotionalValue": "20000000", "maxNotional": "20000000", "maxQty": "50", "bidNotional": "0",
        "askNotional": "0", "position_adl_quantile": p.adl, "updateTime": p.update_time,
    }
    adds = {"unrealized_pnl": pnl, "cross_unrealized_pnl": ZERO if p.isolated else pnl,
            "position_initial_margin": position_im, "open_order_initial_margin": open_im, "maint_margin": maint}
    return values, adds


def _position_rows(positions: list[SimPosition], symbols: tuple[str, ...], coin: bool,
                   everything: bool) -> list[dict[str, Any]]:
    """Positions, plus zero rows for the market's other symbols when `everything` (v2, COIN-M)."""
    rows = list(positions)
    if everything:
        sides = ("LONG", "SHORT") if any(p.side != "BOTH" for p in positions) else ("BOTH",)
        have = {(p.symbol, p.side) for p in positions}
        rows += [SimPosition(s, "0" if coin else "0.000", "0.0" if coin else "0.00000", "0" if coin else None,
                             side, break_even_price="0.0", leverage=20)
                 for s in dict.fromkeys([*symbols, *(p.symbol for p in positions)]) for side in sides
                 if (s, side) not in have]
    else:
        rows = [p for p in rows if dec(p.amount) != 0 or dec(p.open_order_margin) != 0]
    return [_position(p, coin)[0] for p in rows]


def _assets(rows: list[dict[str, Any]], positions: list[SimPosition], balance_layout: tuple[Field, ...],
            coin: bool, alias: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the balance endpoint's rows, the account endpoints' asset values) of one futures account."""
    adds: dict[str, dict[str, Decimal]] = {}
    for p in positions:
        sums = adds.setdefault(margin_asset(p.symbol, coin), {})
        for name, value in _position(p, coin)[1].items():
            sums[name] = sums.get(name, ZERO) + value
    names = {row.get("asset") for row in rows}
    rows = rows + [_zero_row(balance_layout, a, alias) for a in adds if a not in names]
    pnl_json = next(f.json for f in balance_layout if f.metric == "cross_unrealized_pnl")
    served, assets = [], []
    for row in rows:
        sums, m = adds.get(row.get("asset", ""), {}), _by_metric(row, balance_layout)
        own = dec(m["cross_unrealized_pnl"])
        row = {"accountAlias": alias, **row} if "accountAlias" not in row else dict(row)
        if sums:  # otherwise served verbatim: tests may send odd rows on purpose
            row[pnl_json] = format_decimal(own + sums["cross_unrealized_pnl"])
        served.append(row)
        pnl = own + sums.get("unrealized_pnl", ZERO)
        position_im, open_im = sums.get("position_initial_margin", ZERO), sums.get("open_order_initial_margin", ZERO)
        assets.append({
            "asset": row.get("asset"), "balance": dec(m["balance"]), "unrealized_pnl": pnl,
            "margin_balance": dec(m["balance"]) + pnl, "maint_margin": sums.get("maint_margin", ZERO),
            "initial_margin": position_im + open_im, "position_initial_margin": position_im,
            "open_order_initial_margin": open_im, "cross_wallet_balance": dec(m["cross_wallet_balance"]),
            "cross_unrealized_pnl": own + sums.get("cross_unrealized_pnl", ZERO),
            "available_balance": dec(m["available_balance"]), "max_withdraw_amount": dec(m["max_withdraw_amount"]),
            "margin_available": m.get("margin_available", True),
            "balance_update_timestamp_seconds": m["balance_update_timestamp_seconds"] or 0,
        })
    return served, assets


def _totals(assets: list[dict[str, Any]], layout: tuple[Field, ...]) -> dict[str, Decimal]:
    """Account totals: each `account_x` metric is the sum of the assets' `x` (price 1 for every asset)."""
    out = {}
    for f in layout:
        if f.metric and f.metric.startswith("account_"):
            name = f.metric.removeprefix("account_")
            name = "balance" if name == "wallet_balance" else name
            out[f.metric] = sum((a[name] for a in assets), ZERO)
    return out


def _usdm_rows(acct: SimAccount) -> tuple[list[dict[str, Any]], Decimal | None]:
    """USD-M balance rows, and in Multi-Assets mode the pool's available balance, which every row shows."""
    rows = acct.balances or []
    if not acct.multi_assets:
        return rows, None
    pool = sum((dec(r.get("availableBalance")) for r in rows), ZERO)
    return [{**r, "availableBalance": format_decimal(pool)} for r in rows], pool


# ---- endpoints: builder(account, params) -------------------------------------------------------
def usdm_balance(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]]:
    return _assets(_usdm_rows(acct)[0], acct.positions, USDM_BALANCE, False, acct.account_alias)[0]


def usdm_account_config(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    hedge = acct.hedge if acct.hedge is not None else any(p.side != "BOTH" for p in acct.positions)
    return shape(ACCOUNT_CONFIG, {"feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True,
                                  "hedge_mode": hedge, "updateTime": 0, "multi_assets_mode": acct.multi_assets,
                                  "tradeGroupId": -1})


def usdm_account(acct: SimAccount, params: dict[str, str], version: int) -> dict[str, Any]:
    rows, pool = _usdm_rows(acct)
    assets = _assets(rows, acct.positions, USDM_BALANCE, False)[1]
    v2 = version == 2
    # Single-asset mode: the totals are the USDT pool's only (every other margin asset is a pool of its own);
    # Multi-Assets mode: every asset, at price 1.
    totals = _totals(assets if pool is not None else [a for a in assets if a["asset"] == "USDT"],
                     USDM_ACCOUNT_TOTALS)
    if pool is not None:
        totals["account_available_balance"] = pool
    values = {**totals, "feeTier": 0, "feeBurn": True, "canTrade": True,
              "canDeposit": True, "canWithdraw": True, "updateTime": 0, "multiAssetsMargin": acct.multi_assets,
              "tradeGroupId": -1,
              "assets": [shape(USDM_ACCOUNT_ASSET if v2 else USDM_ACCOUNT_ASSET_V3, a) for a in assets],
              "positions": [shape(USDM_ACCOUNT_POSITION_V2 if v2 else USDM_ACCOUNT_POSITION_V3, p)
                            for p in _position_rows(acct.positions, USDM_SYMBOLS, False, v2)]}
    return shape(USDM_ACCOUNT_V2 if v2 else USDM_ACCOUNT_V3, values)


def usdm_position_risk(acct: SimAccount, params: dict[str, str], version: int) -> list[dict[str, Any]]:
    rows = _position_rows(acct.positions, USDM_SYMBOLS, False, version == 2)
    symbol = params.get("symbol")
    if symbol is not None:
        if symbol not in {*USDM_MARKS, *USDM_SYMBOLS, *(p.symbol for p in acct.positions)}:
            raise ApiError(400, -1121, "Invalid symbol.")
        rows = [r for r in rows if r["symbol"] == symbol]
    return [shape(USDM_POSITION_RISK_V2 if version == 2 else USDM_POSITION_RISK_V3, r) for r in rows]


def coinm_balance(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]]:
    return _assets(acct.coinm_balances or [], acct.coinm_positions, COINM_BALANCE, True, acct.account_alias)[0]


def coinm_account(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    assets = _assets(acct.coinm_balances or [], acct.coinm_positions, COINM_BALANCE, True)[1]
    rows = _position_rows(acct.coinm_positions, COINM_SYMBOLS, True, True)
    return shape(COINM_ACCOUNT, {"assets": [shape(COINM_ACCOUNT_ASSET, a) for a in assets],
                                 "positions": [shape(COINM_ACCOUNT_POSITION, r) for r in rows],
                                 "canDeposit": True, "canTrade": True, "canWithdraw": True, "feeTier": 2,
                                 "updateTime": 0})


def coinm_position_risk(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]]:
    rows = _position_rows(acct.coinm_positions, COINM_SYMBOLS, True, True)
    pair, asset = params.get("pair"), params.get("marginAsset")
    rows = [r for r in rows if pair in (None, r["symbol"].split("_")[0]) and asset in (None, r["marginAsset"])]
    return [shape(COINM_POSITION_RISK, r) for r in rows]


def pm_balance(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]] | dict[str, Any]:
    rows = acct.pm.balances or []
    if "asset" not in params:
        return rows
    row = next((r for r in rows if r.get("asset") == params["asset"]), None)
    row = row or _zero_row(PM_BALANCE, params["asset"], "")
    keep = {f.json for f in PM_BALANCE_ONE}
    return {k: v for k, v in row.items() if k in keep}


def pm_um_position_risk(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]]:
    return [shape(PM_UM_POSITION_RISK, r) for r in _position_rows(acct.pm.um_positions, (), False, False)]


def pm_cm_position_risk(acct: SimAccount, params: dict[str, str]) -> list[dict[str, Any]]:
    return [shape(PM_CM_POSITION_RISK, r) for r in _position_rows(acct.pm.cm_positions, (), True, False)]


def pm_account(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    pm = acct.pm
    actual = ZERO
    for row in pm.balances or []:
        m = _by_metric(row, PM_BALANCE)
        actual += dec(m["balance"]) + dec(m["pm_um_unrealized_pnl"]) + dec(m["pm_cm_unrealized_pnl"])
    equity, maint, initial = actual * dec(pm.collateral_rate), dec(pm.maint_margin), dec(pm.initial_margin)
    # Without maintenance margin the ratio is unbounded: "" (no value) rather than a made-up number.
    ratio = (equity / maint).quantize(Decimal("1e-8")) if maint else None
    uni_mmr = ratio if ratio is not None else ""
    status = pm.status or next((s for bound, s in PM_LADDER if ratio is None or ratio > bound), "FORCE_LIQUIDATION")
    return shape(PM_ACCOUNT, {
        "pm_uni_mmr": uni_mmr, "pm_account_equity": equity, "pm_actual_equity": actual,
        "pm_account_initial_margin": initial, "pm_account_maint_margin": maint, "accountStatus": status,
        "pm_virtual_max_withdraw_amount": max(ZERO, equity - Decimal("1.2") * maint),
        "pm_total_available_balance": "" if pm.blanks else max(ZERO, equity - initial),
        "pm_total_margin_open_loss": "" if pm.blanks else ZERO, "updateTime": pm.update_time})


def _positive_int(params: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, -1130, invalid_param_msg(name))
    return int(raw)


def sub_account_list(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    """Paged like Binance: `limit` defaults to 1 (sic, per the doc), at most 200; past the end, []."""
    page = _positive_int(params, "page", 1, 10**9)
    limit = _positive_int(params, "limit", 1, 200)
    subs = [s for s in acct.sub_accounts if params.get("email", s.email) == s.email
            and params.get("isFreeze", str(s.frozen).lower()) == str(s.frozen).lower()]
    return {"subAccounts": [shape(SUB_ACCOUNT_LIST_ENTRY, {
        "subUserId": s.sub_user_id, "email": s.email, "remark": s.remark, "isFreeze": s.frozen,
        "createTime": s.create_time, "isManagedSubAccount": False, "isAssetManagementSubAccount": False,
    }) for s in subs[(page - 1) * limit:page * limit]]}


def _sub_book(acct: SimAccount, params: dict[str, str]) -> tuple[SimSubAccount, SimFutures, int]:
    for name in ("email", "futuresType"):
        if not params.get(name):
            raise ApiError(400, -1102, mandatory_param_msg(name))
    if params["futuresType"] not in ("1", "2"):
        raise ApiError(400, -1130, invalid_param_msg("futuresType"))
    futures_type = int(params["futuresType"])
    sub = next((s for s in acct.sub_accounts if s.email == params["email"]), None)
    if sub is None:
        raise ApiError(400, -5012, "future account or sub relation not exists.")
    book = sub.usdm if futures_type == 1 else sub.coinm
    if book is None:
        raise ApiError(400, -5011, "future account not exists.")
    return sub, book, futures_type


def sub_account_position_risk(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    """`/sapi/v2/sub-account/futures/positionRisk`: positionAmount; COIN-M's `isolated` is a string."""
    _, book, futures_type = _sub_book(acct, params)
    coin = futures_type == 2
    layout = SUB_POSITION_RISK_COINM if coin else SUB_POSITION_RISK_USDM
    rows = [{**r, "isolated": "true" if r["isolated"] else "false", "positionAmount": r["position_amount"]}
            for r in _position_rows(book.positions, (), coin, False)]
    return {SUB_POSITION_KEYS[futures_type]: [shape(layout, r) for r in rows]}


def sub_account_futures(acct: SimAccount, params: dict[str, str]) -> dict[str, Any]:
    sub, book, futures_type = _sub_book(acct, params)
    rows = book.balances or []
    assets = _assets(rows, book.positions, USDM_BALANCE if futures_type == 1 else COINM_BALANCE,
                     futures_type == 2)[1]
    values = {**_totals(assets, SUB_ACCOUNT_TOTALS), "email": sub.email,
              "assets": [shape(SUB_ACCOUNT_ASSET, a) for a in assets], "canDeposit": not sub.frozen,
              "canTrade": not sub.frozen, "canWithdraw": not sub.frozen, "feeTier": 2,
              "updateTime": max((a["balance_update_timestamp_seconds"] for a in assets), default=0)}
    layout = SUB_ACCOUNT_USDM if futures_type == 1 else SUB_ACCOUNT_COINM
    return {SUB_ACCOUNT_KEYS[futures_type]: shape(layout, values)}
