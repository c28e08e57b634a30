"""What to call for each kind of account, at what weight, and how to read the answer.

One refresh of one account in one market is a short list of signed calls
(`Call`); their weights are Binance's documented IP weights (where Binance
announced a higher figure than its pages show, the higher one), and every one
of them is charged to its host's budget before it is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from exporter import parsing


@dataclass(frozen=True)
class HostKind:
    """What differs between Binance's API hosts."""

    name: str
    time_path: str | None  # unsigned, weight 1; None: measure the clock through the USD-M host
    weight_header: str  # the IP's used weight this minute
    default_limit: int  # request weight per minute per IP


# Limits: USD-M 2400 (exchangeInfo); COIN-M 2400 (its exchangeInfo page says 2400 in one
# language and 6000 in another: take the lower); Portfolio Margin 6000 ("Portfolio Margin
# IP Limit is 6000/min"); /sapi 12,000 per endpoint, reported in X-SAPI-USED-IP-WEIGHT-1M
# (one budget for both sub-account endpoints is the cautious reading). Portfolio Margin
# has no time endpoint (only /papi/v1/ping): its accounts sign with the USD-M clock.
HOST_KINDS = {
    "usdm": HostKind("usdm", "/fapi/v1/time", "X-MBX-USED-WEIGHT-1M", 2400),
    "coinm": HostKind("coinm", "/dapi/v1/time", "X-MBX-USED-WEIGHT-1M", 2400),
    "pm": HostKind("pm", None, "X-MBX-USED-WEIGHT-1M", 6000),
    "sapi": HostKind("sapi", "/api/v3/time", "X-SAPI-USED-IP-WEIGHT-1M", 12000),
}
TIME_WEIGHT = 1


@dataclass(frozen=True)
class Call:
    path: str
    weight: int
    parse: Callable[[bytes], Any]  # a Snapshot, except for the sub-account list
    params: tuple[tuple[str, str], ...] = ()


# v2 was announced at 10 (change log 2024-08-07, from 2024-09-03, never reverted) while its pages and
# the official SDK (18.1.0) still say 5. Binance's own count cannot be observed without calling it, so the
# budget keeps the higher figure: it can only under-use the budget, never draw a 429.
V2_WEIGHT = 10


def usdm_calls(api_version: str, endpoint: str, positions: bool) -> tuple[Call, ...]:
    weight = V2_WEIGHT if api_version == "v2" else 5
    main = (Call(f"/fapi/{api_version}/balance", weight, parsing.parse_balance) if endpoint == "balance"
            else Call(f"/fapi/{api_version}/account", weight, parsing.parse_usdm_account))
    if not positions:
        return (main,)
    return main, Call(f"/fapi/{api_version}/positionRisk", weight, parsing.parse_position_risk)


def coinm_calls(endpoint: str, positions: bool) -> tuple[Call, ...]:
    main = (Call("/dapi/v1/balance", 1, parsing.parse_coinm_balance) if endpoint == "balance"
            else Call("/dapi/v1/account", 5, parsing.parse_coinm_account))
    if not positions:
        return (main,)
    return main, Call("/dapi/v1/positionRisk", 1, parsing.parse_coinm_position_risk)


ACCOUNT_CONFIG_CALL = Call("/fapi/v1/accountConfig", 5, parsing.parse_account_config)
"""A USD-M account's modes; read at start and then rarely (modes.py), not at every refresh."""


def pm_calls(positions: bool = False) -> tuple[Call, ...]:
    calls = (Call("/papi/v1/balance", 20, parsing.parse_pm_balance),
             Call("/papi/v1/account", 20, parsing.parse_pm_account))
    if not positions:
        return calls
    return calls + (Call("/papi/v1/um/positionRisk", 5, partial(parsing.parse_pm_position_risk, coin=False)),
                    Call("/papi/v1/cm/positionRisk", 1, partial(parsing.parse_pm_position_risk, coin=True)))


FUTURES_TYPES = {"usdm": 1, "coinm": 2}


def sub_account_calls(email: str, market: str, positions: bool = False) -> tuple[Call, ...]:
    futures_type = FUTURES_TYPES[market]
    params = (("email", email), ("futuresType", str(futures_type)))
    main = Call("/sapi/v2/sub-account/futures/account", 1, partial(parsing.parse_sub_account,
                                                                   futures_type=futures_type), params)
    if not positions:
        return (main,)
    return main, Call("/sapi/v2/sub-account/futures/positionRisk", 1,
                      partial(parsing.parse_sub_position_risk, futures_type=futures_type), params)


SUB_ACCOUNT_PAGE_SIZE = 200  # the documented maximum; the list has no total, a short page is the last
SUB_ACCOUNT_MAX_PAGES = 100  # 20,000 sub-accounts: Binance's cap per master is far lower


def sub_account_list_call(page: int) -> Call:
    return Call("/sapi/v1/sub-account/list", 1, parsing.parse_sub_account_list,
                (("page", str(page)), ("limit", str(SUB_ACCOUNT_PAGE_SIZE))))


# ---- live risk: brackets (per account, signed) and contract sizes (public) ----------------------
# Weights per the official SDKs: /fapi/v1/leverageBracket and /papi/v1/um/leverageBracket 1;
# /dapi/v2/leverageBracket "1 (after CM migration: 1 with `symbol` / 2 without `symbol`)": every
# symbol is read, so the higher figure; /dapi/v1/exchangeInfo 1 (public, unsigned).
LEVERAGE_BRACKET_CALLS = {
    "usdm": Call("/fapi/v1/leverageBracket", 1, parsing.parse_leverage_brackets),
    "coinm": Call("/dapi/v2/leverageBracket", 2, parsing.parse_coinm_leverage_brackets),
    "pm": Call("/papi/v1/um/leverageBracket", 1, parsing.parse_leverage_brackets),
}
"""An account's brackets in a market; the lead's metadata scheduler reads them at start, at most hourly,
and after an ACCOUNT_CONFIG_UPDATE. Portfolio Margin: the UM brackets (its CM positions keep Binance's
figures)."""

CONTRACT_SIZES_CALL = Call("/dapi/v1/exchangeInfo", 1, parsing.parse_contract_sizes)
"""COIN-M contract sizes, one read per process (not per account): unsigned, through `client.public_call`."""
