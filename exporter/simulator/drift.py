"""Demo drift: balances and mark prices that move slowly and smoothly, so dashboards look alive.

Everything is a pure function of (stored account, server time), computed per
request: no background thread, and tests move time through the simulator's
clock skew instead of sleeping. Binance's invariants hold at every instant:

* all amounts of one balance row share one factor, so orderings such as
  maxWithdrawAmount <= availableBalance <= crossWalletBalance that hold in the
  stored row hold in every drifted row;
* the row's own unrealized PnL swings through zero (clients see negatives);
* a mark price depends on the symbol only, so every account sees the same;
  PnL, notional and margins follow from it (see accounts);
* a position with a liquidation price keeps its distance |mark - liq| / mark
  within ±LIQUIDATION_BAND of the stored distance, on the same side of the mark.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace
from decimal import Decimal
from typing import Any

from exporter.schema import COINM_BALANCE, PM_BALANCE, USDM_BALANCE, Field

from .accounts import USDM_MARKS, SimAccount, SimFutures, SimPosition, dec, format_decimal

PERIOD_S = 600.0
AMPLITUDE = 0.03
UNPNL_AMPLITUDE = 1.5
MARK_AMPLITUDE = 0.02
MARGIN_AMPLITUDE = 0.05  # Portfolio Margin maintenance margin, so uniMMR moves too
LIQUIDATION_BAND = 0.25
HARMONIC_SHARE = 0.1
PNL_METRICS = frozenset({"cross_unrealized_pnl", "pm_um_unrealized_pnl", "pm_cm_unrealized_pnl"})


def _wave(name: str, server_ms: int, amplitude: float) -> float:
    """1 + a smooth periodic wobble whose phase is stable per `name`, so rows don't move in lockstep."""
    phase = zlib.crc32(name.encode("utf-8")) / 2**32 * 2 * math.pi
    theta = 2 * math.pi * (server_ms / 1000.0) / PERIOD_S + phase
    return 1.0 + amplitude * math.sin(theta) + HARMONIC_SHARE * amplitude * math.sin(2 * theta + phase)


def _scaled(value: Any, factor: float) -> Any:
    """Scale a decimal string; zero, "" and anything unparsable stay exactly as given."""
    number = dec(value)
    return value if number == 0 or not isinstance(value, str) else format_decimal(number * Decimal(factor))


def drift_rows(rows: list[dict[str, Any]], layout: tuple[Field, ...], key: str, server_ms: int) -> list[dict[str, Any]]:
    out = []
    for index, row in enumerate(rows):
        name = f"{key}\0{index}\0{row.get('asset', '')}"
        factor, pnl_factor = _wave(name, server_ms, AMPLITUDE), _wave(name, server_ms, UNPNL_AMPLITUDE)
        row = dict(row)
        for f in layout:
            if f.kind in ("decimal", "opt_decimal") and f.metric and f.json in row:
                row[f.json] = _scaled(row[f.json], pnl_factor if f.metric in PNL_METRICS else factor)
            elif f.kind == "millis" and f.json in row:
                row[f.json] = server_ms
        out.append(row)
    return out


def mark_price(symbol: str, base: Decimal, server_ms: int) -> Decimal:
    return base * Decimal(_wave(symbol, server_ms, MARK_AMPLITUDE))


def _position(p: SimPosition, server_ms: int) -> SimPosition:
    mark0 = dec(p.mark_price if p.mark_price is not None else USDM_MARKS.get(p.symbol, p.entry_price))
    if mark0 == 0:
        return p
    liq0 = dec(p.liquidation_price)
    mark = mark_price(p.symbol, mark0, server_ms)
    liq = liq0
    if liq0 != 0:
        distance = abs(mark0 - liq0) / mark0 * Decimal(_wave(f"{p.symbol}\0liq", server_ms, LIQUIDATION_BAND))
        liq = mark * (1 - distance) if liq0 < mark0 else mark * (1 + distance)
    return replace(p, mark_price=mark, liquidation_price=liq,
                   update_time=server_ms if dec(p.amount) != 0 else p.update_time)


def _futures(book: SimFutures | None, layout: tuple[Field, ...], key: str, server_ms: int) -> SimFutures | None:
    if book is None:
        return None
    return SimFutures(drift_rows(book.balances or [], layout, key, server_ms),
                      [_position(p, server_ms) for p in book.positions])


def drift_account(acct: SimAccount, server_ms: int) -> SimAccount:
    """The account as of `server_ms`; the stored one is left alone."""
    key = acct.api_key
    usdm = _futures(SimFutures(acct.balances, acct.positions), USDM_BALANCE, key, server_ms)
    coinm = _futures(SimFutures(acct.coinm_balances, acct.coinm_positions), COINM_BALANCE, key + "\0coinm",
                     server_ms)
    margin = Decimal(_wave(key + "\0pm", server_ms, MARGIN_AMPLITUDE))
    pm = replace(acct.pm, balances=drift_rows(acct.pm.balances or [], PM_BALANCE, key + "\0pm", server_ms),
                 maint_margin=dec(acct.pm.maint_margin) * margin, initial_margin=dec(acct.pm.initial_margin) * margin,
                 update_time=server_ms)
    subs = [replace(s, usdm=_futures(s.usdm, USDM_BALANCE, f"{key}\0{s.email}", server_ms),
                    coinm=_futures(s.coinm, COINM_BALANCE, f"{key}\0{s.email}\0coinm", server_ms))
            for s in acct.sub_accounts]
    assert usdm is not None and coinm is not None
    return replace(acct, balances=usdm.balances, positions=usdm.positions, coinm_balances=coinm.balances,
                   coinm_positions=coinm.positions, pm=pm, sub_accounts=subs)
