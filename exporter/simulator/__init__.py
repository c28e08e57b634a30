"""Local simulator of Binance's futures account APIs over real HTTP on loopback.

`--demo` runs the exporter against it; the tests and benchmarks use it through
testkit (not shipped), which adds fault injection and request counters
through the `Simulator.intercept` hook.

Serves USD-M (/fapi: ping, time, v2|v3 balance, account, positionRisk),
COIN-M (/dapi: time, balance, account, positionRisk), Portfolio Margin
(/papi: ping, balance, account; no time endpoint, like Binance), and the
master-account pieces of the spot host (/api/v3/time, /sapi sub-account list
and futures account). Answers use exporter.schema's field tables, so they
have Binance's field names, types and order (see accounts for how figures
agree with each other).

Choices where Binance's docs are silent (see /work/shared/binance-api.md §8, §9):

* unknown path → 404 ``{"code":-1099,"msg":"Not found, unauthenticated, or unauthorized."}``;
  non-GET → 405 ``{"code":-1099,"msg":"Method not allowed."}`` with ``Allow: GET``; both weigh 1;
* weight: one counter per client IP and API family (fapi, dapi, papi, api,
  and sapi per endpoint), in fixed 1-minute windows of *server* time (local
  time + ``clock_skew_ms``); /sapi answers carry X-SAPI-USED-IP-WEIGHT-1M, the
  others X-MBX-USED-WEIGHT-1M; requests refused with 429 still add their
  weight, requests refused during a ban do not;
* sub-account errors: a foreign email → 400 -5012, a sub-account without that
  futures type → 400 -5011, list ``limit`` above 200 → 400 -1130;
* with a market (``Simulator(market=SimMarket())``, see market): marks that
  walk every second, REST answers at those marks (maintenance margin by
  bracket, Binance's liquidation price), leverageBracket and exchangeInfo,
  the public market streams (market_stream), and liquidations with their
  ORDER_TRADE_UPDATE events;
* Portfolio Margin accountStatus follows uniMMR (> 1.5 NORMAL, > 1.2
  MARGIN_CALL, > 1.05 REDUCE_ONLY, else FORCE_LIQUIDATION) unless set.
"""

from .accounts import (
    SimAccount,
    SimFutures,
    SimPortfolio,
    SimPosition,
    SimSubAccount,
    balance_row,
    format_decimal,
    pm_row,
)
from .gate import Reply
from .market import SimMarket
from .server import Request, Simulator

__all__ = ["Reply", "Request", "SimAccount", "SimFutures", "SimMarket", "SimPortfolio", "SimPosition",
           "SimSubAccount", "Simulator", "balance_row", "format_decimal", "pm_row"]
