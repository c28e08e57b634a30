"""The metric catalogue: every family the exporter exposes, declared once.

Each family has its name, type, help and labels; the markets that emit it and where its value
comes from (the Binance endpoints whose fields feed it, read from schema.py's layouts, or the
config, the user data stream, the exporter itself); and how fresh it is:

- ``rest``: from the account's latest REST fetch (see cache_seconds, max_data_age_seconds);
- ``event-fresh``: from the latest REST fetch, and overlaid within a second by user data stream
  events while the account has ``user_stream: true``;
- ``live``: the exporter's own state when the scrape is answered (health, budgets, configured
  thresholds, stream state).

render.py creates families from here and only fills in values; schema.py's layouts name the family
each field feeds; docs/metrics.md is generated from here (``make docs``, checked by the tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from exporter.labelvalues import DOWN_REASONS, SCRAPE_ERROR_REASONS, STREAM_EVENT_KINDS
from exporter.schema import (
    ACCOUNT_CONFIG,
    ACCOUNT_LABELS,
    ASSET_LABELS,
    COINM_ACCOUNT_ASSET,
    COINM_BALANCE,
    COINM_POSITION_RISK,
    NS,
    PM_ACCOUNT,
    PM_BALANCE,
    PM_CM_POSITION_RISK,
    PM_UM_POSITION_RISK,
    POSITION_INFO_LABELS,
    POSITION_LABELS,
    SUB_ACCOUNT_ASSET,
    SUB_ACCOUNT_COINM,
    SUB_ACCOUNT_USDM,
    SUB_POSITION_RISK_COINM,
    SUB_POSITION_RISK_USDM,
    USDM_ACCOUNT_ASSET,
    USDM_ACCOUNT_ASSET_V3,
    USDM_ACCOUNT_V2,
    USDM_ACCOUNT_V3,
    USDM_BALANCE,
    USDM_POSITION_RISK_V2,
    USDM_POSITION_RISK_V3,
    Field,
)

Freshness = Literal["rest", "event-fresh", "live"]
# Recomputed at every mark price by live risk (exporter/liverisk.py, risk.py) for accounts with
# `live_risk` (own key, USD-M and COIN-M; Portfolio Margin: the position figures but the liquidation
# price). Multi-Assets mode's account totals and cross liquidation prices keep their REST value.
LIVE_RISK = frozenset({
    "position_mark_price", "position_unrealized_pnl", "position_notional", "position_maint_margin",
    "position_isolated_margin", "position_liquidation_price",
    "unrealized_pnl", "cross_unrealized_pnl", "margin_balance", "maint_margin", "isolated_maint_margin",
    "account_unrealized_pnl", "account_margin_balance", "account_cross_unrealized_pnl", "account_maint_margin",
    "account_isolated_maint_margin"})
ALL_MARKETS = ("usdm", "coinm", "pm")

# Where each field-fed family comes from: (market, endpoint, the layout of its answer).
ENDPOINT_LAYOUTS: tuple[tuple[str, str, tuple[Field, ...]], ...] = (
    ("usdm", "/fapi/v3/balance", USDM_BALANCE),
    ("usdm", "/fapi/v2/balance", USDM_BALANCE),
    ("usdm", "/fapi/v3/account", USDM_ACCOUNT_ASSET_V3 + USDM_ACCOUNT_V3),
    ("usdm", "/fapi/v2/account", USDM_ACCOUNT_ASSET + USDM_ACCOUNT_V2),
    ("usdm", "/fapi/v3/positionRisk", USDM_POSITION_RISK_V3),
    ("usdm", "/fapi/v2/positionRisk", USDM_POSITION_RISK_V2),
    ("usdm", "/fapi/v1/accountConfig", ACCOUNT_CONFIG),
    ("coinm", "/dapi/v1/balance", COINM_BALANCE),
    ("coinm", "/dapi/v1/account", COINM_ACCOUNT_ASSET),
    ("coinm", "/dapi/v1/positionRisk", COINM_POSITION_RISK),
    ("pm", "/papi/v1/balance", PM_BALANCE),
    ("pm", "/papi/v1/account", PM_ACCOUNT),
    ("pm", "/papi/v1/um/positionRisk", PM_UM_POSITION_RISK),
    ("pm", "/papi/v1/cm/positionRisk", PM_CM_POSITION_RISK),
    ("usdm", "/sapi/v2/sub-account/futures/account", SUB_ACCOUNT_ASSET + SUB_ACCOUNT_USDM),
    ("coinm", "/sapi/v2/sub-account/futures/account", SUB_ACCOUNT_ASSET + SUB_ACCOUNT_COINM),
    ("usdm", "/sapi/v2/sub-account/futures/positionRisk", SUB_POSITION_RISK_USDM),
    ("coinm", "/sapi/v2/sub-account/futures/positionRisk", SUB_POSITION_RISK_COINM),
)


def _fed_by(name: str) -> tuple[tuple[str, str], ...]:
    """(market, endpoint) of every answer with a field that feeds family `name`."""
    return tuple(dict.fromkeys((market, path) for market, path, layout in ENDPOINT_LAYOUTS
                               for f in layout if f.metric == name))


@dataclass(frozen=True)
class Family:
    """One family: `binance_futures_<name>` (a counter's samples add `_total`)."""

    name: str
    labels: tuple[str, ...]
    help: str
    type: Literal["gauge", "counter"] = "gauge"
    freshness: Freshness = "rest"
    # (market, where the value comes from); () for a field-fed family: read from ENDPOINT_LAYOUTS.
    declared_sources: tuple[tuple[str, str], ...] = ()
    # (label, its fixed set of values) for labels that carry one (exporter/labelvalues.py).
    label_values: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def full_name(self) -> str:
        return f"{NS}_{self.name}"

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        return self.declared_sources or _fed_by(self.name)

    @property
    def markets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(market for market, _ in self.sources if market in ALL_MARKETS))


def _families(labels: tuple[str, ...], event_fresh: tuple[str, ...], *rows: tuple[str, str],
              sources: dict[str, tuple[tuple[str, str], ...]] | None = None) -> tuple[Family, ...]:
    """Families of one label set; those named in `event_fresh` are overlaid by user data stream events,
    those in LIVE_RISK recomputed at every mark price (live wins: it moves between events too).
    `sources`: where the families come from that no field of a layout feeds alone (worked out by the
    parser from several fields, or read by its own code)."""
    out = tuple(Family(name, labels, text, freshness="live" if name in LIVE_RISK
                       else "event-fresh" if name in event_fresh else "rest",
                       declared_sources=(sources or {}).get(name, ())) for name, text in rows)
    unknown = set(event_fresh) - {f.name for f in out}
    if unknown:
        raise ValueError(f"event_fresh names no family: {sorted(unknown)}")
    return out


def _each(markets: Iterable[str], source: str) -> tuple[tuple[str, str], ...]:
    return tuple((m, source) for m in markets)


# ---- what the account's answers carry (the families schema.py's layouts feed) ----------------
ASSET_FAMILIES = _families(
    ASSET_LABELS, ("balance", "cross_wallet_balance"),  # ACCOUNT_UPDATE: wb, cw
    ("balance", "Wallet balance: balance (balance endpoints), walletBalance (account endpoints, "
                "sub-accounts), totalWalletBalance (Portfolio Margin)."),
    ("available_balance", "Available balance (availableBalance)."),
    ("cross_wallet_balance", "Cross wallet balance (crossWalletBalance)."),
    ("cross_unrealized_pnl", "Unrealized PnL of cross positions (crossUnPnl)."),
    ("max_withdraw_amount", "Maximum amount for transfer out (maxWithdrawAmount; withdrawAvailable on COIN-M)."),
    ("margin_available", "1 if the asset can be used as margin in Multi-Assets mode (marginAvailable)."),
    ("balance_update_timestamp_seconds", "Last update time reported by Binance (updateTime), Unix seconds; "
                                         "absent when Binance reports 0 (never updated)."),
    ("margin_balance", "Margin balance: wallet balance plus unrealized PnL (marginBalance)."),
    ("maint_margin", "Maintenance margin required (maintMargin; maintenanceMargin for sub-accounts)."),
    ("initial_margin", "Initial margin required at the current mark price (initialMargin)."),
    ("position_initial_margin", "Initial margin required for positions at the current mark price "
                                "(positionInitialMargin)."),
    ("open_order_initial_margin", "Initial margin required for open orders at the current mark price "
                                  "(openOrderInitialMargin)."),
    ("unrealized_pnl", "Unrealized PnL of all positions in this asset (unrealizedProfit)."),
    ("pm_cross_margin_asset", "Portfolio Margin: cross margin asset (crossMarginAsset)."),
    ("pm_cross_margin_borrowed", "Portfolio Margin: cross margin borrowed (crossMarginBorrowed)."),
    ("pm_cross_margin_free", "Portfolio Margin: cross margin free (crossMarginFree)."),
    ("pm_cross_margin_interest", "Portfolio Margin: cross margin interest (crossMarginInterest)."),
    ("pm_cross_margin_locked", "Portfolio Margin: cross margin locked (crossMarginLocked)."),
    ("pm_um_wallet_balance", "Portfolio Margin: USD-M wallet balance (umWalletBalance)."),
    ("pm_um_unrealized_pnl", "Portfolio Margin: USD-M unrealized PnL (umUnrealizedPNL)."),
    ("pm_cm_wallet_balance", "Portfolio Margin: COIN-M wallet balance (cmWalletBalance)."),
    ("pm_cm_unrealized_pnl", "Portfolio Margin: COIN-M unrealized PnL (cmUnrealizedPNL)."),
    ("pm_negative_balance", "Portfolio Margin: negative balance (negativeBalance)."),
    ("isolated_maint_margin", "Maintenance margin of the isolated positions margined in this asset (the sum of "
                              "maintMargin over the account endpoint's isolated positions); maint_margin minus "
                              "this is the asset's cross maintenance margin. Account endpoints only."),
    sources={"isolated_maint_margin": (("usdm", "/fapi/v3/account"), ("usdm", "/fapi/v2/account"),
                                          ("coinm", "/dapi/v1/account"))},
)

_TOTALS_NOTE = " USDT in single-asset mode; the sum of USD values in Multi-Assets mode."
ACCOUNT_FAMILIES = _families(
    ACCOUNT_LABELS, ("multi_assets_mode", "pm_uni_mmr"),  # ACCOUNT_CONFIG_UPDATE: ai.j; riskLevelChange: u
    ("account_wallet_balance", "Account total wallet balance (totalWalletBalance)." + _TOTALS_NOTE),
    ("account_margin_balance", "Account total margin balance (totalMarginBalance)." + _TOTALS_NOTE),
    ("account_maint_margin", "Account total maintenance margin (totalMaintMargin; totalMaintenanceMargin "
                             "for sub-accounts)." + _TOTALS_NOTE),
    ("account_initial_margin", "Account total initial margin (totalInitialMargin)." + _TOTALS_NOTE),
    ("account_position_initial_margin", "Account initial margin for positions (totalPositionInitialMargin)."
                                        + _TOTALS_NOTE),
    ("account_open_order_initial_margin", "Account initial margin for open orders "
                                          "(totalOpenOrderInitialMargin)." + _TOTALS_NOTE),
    ("account_unrealized_pnl", "Account total unrealized PnL (totalUnrealizedProfit)." + _TOTALS_NOTE),
    ("account_cross_wallet_balance", "Account cross wallet balance (totalCrossWalletBalance)." + _TOTALS_NOTE),
    ("account_cross_unrealized_pnl", "Account unrealized PnL of cross positions (totalCrossUnPnl)."
                                     + _TOTALS_NOTE),
    ("account_available_balance", "Account available balance (availableBalance)." + _TOTALS_NOTE),
    ("account_max_withdraw_amount", "Account maximum amount for transfer out (maxWithdrawAmount)."
                                    + _TOTALS_NOTE),
    ("account_isolated_maint_margin", "Maintenance margin of every isolated position (the sum of maintMargin "
                                      "over the account endpoint's isolated positions, in their margin assets); "
                                      "account_maint_margin minus this is the cross maintenance margin."),
    ("multi_assets_mode", "1 if the USD-M account is in Multi-Assets mode, 0 in single-asset mode "
                          "(multiAssetsMargin of /fapi/v1/accountConfig, read at start and every 15 minutes, "
                          "or of the v2 account endpoint)."),
    ("hedge_mode", "1 if the USD-M account is in hedge mode (LONG and SHORT positions), 0 in one-way mode "
                   "(dualSidePosition of /fapi/v1/accountConfig, read at start and every 15 minutes)."),
    ("pm_uni_mmr", "Portfolio Margin unified maintenance margin ratio (uniMMR); Binance liquidates "
                   "below 1.05 and sends margin-call reminders from 1.5 down (min_uni_mmr)."),
    ("pm_account_equity", "Portfolio Margin account equity in USD (accountEquity)."),
    ("pm_actual_equity", "Portfolio Margin actual equity in USD, without collateral rate (actualEquity)."),
    ("pm_account_maint_margin", "Portfolio Margin account maintenance margin in USD (accountMaintMargin)."),
    ("pm_account_initial_margin", "Portfolio Margin account initial margin in USD (accountInitialMargin)."),
    ("pm_virtual_max_withdraw_amount", "Portfolio Margin maximum virtual amount for transfer out in USD "
                                       "(virtualMaxWithdrawAmount)."),
    ("pm_total_available_balance", "Portfolio Margin total available balance in USD (totalAvailableBalance)."),
    ("pm_total_margin_open_loss", "Portfolio Margin margin of open loss in USD (totalMarginOpenLoss)."),
    sources={"account_isolated_maint_margin": (("usdm", "/fapi/v3/account"), ("usdm", "/fapi/v2/account")),
             "multi_assets_mode": (("usdm", "/fapi/v1/accountConfig"), ("usdm", "/fapi/v2/account"))},
)

POSITION_FAMILIES = _families(
    POSITION_LABELS,  # ACCOUNT_UPDATE: pa, ep, bep, up, iw
    ("position_amount", "position_entry_price", "position_break_even_price", "position_unrealized_pnl",
     "position_isolated_wallet"),
    ("position_amount", "Position amount, negative when short (positionAmt; positionAmount for sub-accounts): "
                        "USD-M in the base asset, COIN-M in contracts."),
    ("position_entry_price", "Average entry price (entryPrice)."),
    ("position_break_even_price", "Break-even price (breakEvenPrice)."),
    ("position_mark_price", "Mark price (markPrice)."),
    ("position_liquidation_price", "Liquidation price (liquidationPrice); absent when Binance reports 0, "
                                   "i.e. no liquidation price."),
    ("position_notional", "Notional value at the mark price (notional; notionalValue on COIN-M, in the coin); "
                          "absent where the answer has none."),
    ("position_unrealized_pnl", "Unrealized PnL of the position (unRealizedProfit; unrealizedProfit for "
                                "sub-accounts), in its margin asset: COIN-M in the coin."),
    ("position_required_initial_margin", "Initial margin required for the position at the current mark "
                                         "price (initialMargin), in its margin asset."),
    ("position_maint_margin", "Maintenance margin required for the position (maintMargin), in its margin asset."),
    ("position_isolated_margin", "Isolated margin of the position (isolatedMargin), in its margin asset "
                                 "(COIN-M: the coin)."),
    ("position_isolated_wallet", "Wallet of an isolated position (isolatedWallet), in its margin asset "
                                 "(COIN-M: the coin); 0 for a cross position."),
    ("position_adl_quantile", "Auto-deleveraging queue quantile, 0 (last) to 4 (first) (adl)."),
)


_CONFIG = "config"
_EXPORTER = "exporter"
_STREAM = "user data stream"
_BALANCE_ENDPOINTS = (("usdm", "/fapi/v3/balance"), ("usdm", "/fapi/v2/balance"), ("coinm", "/dapi/v1/balance"))
_POSITION_ENDPOINTS = (("usdm", "/fapi/v3/positionRisk"), ("usdm", "/fapi/v2/positionRisk"),
                       ("coinm", "/dapi/v1/positionRisk"), ("pm", "/papi/v1/um/positionRisk"),
                       ("pm", "/papi/v1/cm/positionRisk"), ("coinm", "/sapi/v2/sub-account/futures/positionRisk"))
_SUB_ACCOUNT_LIST = (("usdm", "/sapi/v1/sub-account/list"), ("coinm", "/sapi/v1/sub-account/list"))


def _live(name: str, labels: tuple[str, ...], text: str, sources: tuple[tuple[str, str], ...],
          kind: Literal["gauge", "counter"] = "gauge",
          label_values: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> Family:
    return Family(name, labels, text, kind, "live", sources, label_values)


# ---- per account, besides its answers: thresholds, info, health ------------------------------
MIN_AVAILABLE_BALANCE = _live("min_available_balance", ASSET_LABELS, "Configured low-balance threshold "
                              "(min_available_balance) per account, market and asset.",
                              _each(("usdm", "coinm"), _CONFIG))
MIN_ACCOUNT_AVAILABLE_BALANCE = _live(
    "min_account_available_balance", ACCOUNT_LABELS, "Configured account-level low-balance threshold "
    "(min_account_available_balance), USD value of a Multi-Assets mode account's pool; USD-M only.",
    _each(("usdm",), _CONFIG))
ACCOUNT_INFO = Family("account_info", ("alias", "market", "account_alias"), "Binance's accountAlias for an "
                      "account (balance endpoints only); always 1.", declared_sources=_BALANCE_ENDPOINTS)
PM_ACCOUNT_STATUS = Family("pm_account_status", ("alias", "market", "status"), "Portfolio Margin accountStatus "
                           "as a state set: 1 for the current status, 0 for the other documented ones; a status "
                           "Binance added since shows as its own state (a plain upper-case word) or as OTHER.",
                           freshness="event-fresh", declared_sources=(("pm", "/papi/v1/account"),))
POSITION_INFO = Family("position_info", POSITION_INFO_LABELS, "A position's margin type (cross or isolated) and "
                       "margin asset (COIN-M: the coin); always 1. Absent where Binance's answer does not say "
                       "(USD-M sub-accounts).", declared_sources=_POSITION_ENDPOINTS)
MAX_MARGIN_RATIO = _live("max_margin_ratio", ACCOUNT_LABELS, "Configured margin-ratio alert threshold "
                         "(max_margin_ratio).", _each(("usdm", "coinm"), _CONFIG))
MIN_LIQUIDATION_DISTANCE = _live("min_liquidation_distance", ACCOUNT_LABELS, "Configured minimum distance from "
                                 "mark price to liquidation price, as a fraction of mark price "
                                 "(min_liquidation_distance).", _each(ALL_MARKETS, _CONFIG))
MIN_UNI_MMR = _live("min_uni_mmr", ACCOUNT_LABELS, "Configured Portfolio Margin uniMMR alert threshold "
                    "(min_uni_mmr).", _each(("pm",), _CONFIG))
ACCOUNT_HOST_INFO = _live("account_host_info", ("alias", "market", "host"), "The API host an account's market is "
                          "fetched from (whose budget, back-off and bans apply to it); always 1.",
                          _each(ALL_MARKETS, _CONFIG))
SUB_ACCOUNT_INFO = Family("sub_account_info", ("alias", "master", "email"), "Sub-accounts found through a master "
                          "account's key; always 1.", declared_sources=_SUB_ACCOUNT_LIST)
UP = _live("up", ACCOUNT_LABELS, "1 while the account has values to export: its latest fetch succeeded, no longer "
           "ago than max_data_age_seconds.", _each(ALL_MARKETS, _EXPORTER))
DOWN_REASON = _live("down_reason", ("alias", "market", "reason"), "Why up is 0, while it is: 1 for the reason, one "
                    "of the error reasons of scrape_errors_total (the latest fetch failed), deferred (no fetch yet: "
                    "waiting for the weight budget, e.g. during a cold start, or for a back-off) or stale (the latest "
                    "values are older than max_data_age_seconds).", _each(ALL_MARKETS, _EXPORTER),
                    label_values=(("reason", DOWN_REASONS),))
REQUEST_DURATION_SECONDS = _live("request_duration_seconds", ACCOUNT_LABELS, "How long the account's latest fetch "
                                 "took.", _each(ALL_MARKETS, _EXPORTER))
LAST_SUCCESS_TIMESTAMP_SECONDS = _live("last_success_timestamp_seconds", ACCOUNT_LABELS, "When the account's "
                                       "latest successful fetch (the values exported) was made, Unix seconds.",
                                       _each(ALL_MARKETS, _EXPORTER))
SCRAPE_ERRORS = _live("scrape_errors", ("alias", "market", "reason"), "Failed fetches by account and reason.",
                      _each(ALL_MARKETS, _EXPORTER), "counter", (("reason", SCRAPE_ERROR_REASONS),))

# ---- user data streams (accounts with user_stream: true) -------------------------------------
STREAM_UP = _live("stream_up", ACCOUNT_LABELS, "1 while the account's user data stream is connected with a valid "
                  "listenKey.", _each(ALL_MARKETS, _STREAM))
STREAM_EVENTS = _live("stream_events", ("alias", "market", "event"), "User data stream messages by event: "
                      "ACCOUNT_UPDATE, MARGIN_CALL, ACCOUNT_CONFIG_UPDATE, riskLevelChange, listenKeyExpired, other "
                      "(any other event), invalid (not a sane event: dropped, and the connection is made again).",
                      _each(ALL_MARKETS, _STREAM), "counter", (("event", STREAM_EVENT_KINDS),))
STREAM_RECONNECTS = _live("stream_reconnects", ACCOUNT_LABELS, "User data stream connection attempts after the "
                          "first connection (after a failure, a new listenKey, or the planned daily reconnect).",
                          _each(ALL_MARKETS, _STREAM), "counter")
STREAM_LAST_EVENT_TIMESTAMP_SECONDS = _live("stream_last_event_timestamp_seconds", ACCOUNT_LABELS, "When the "
                                            "account's latest user data stream event was applied, Unix seconds.",
                                            _each(ALL_MARKETS, _STREAM))
MARGIN_CALL_EVENTS = _live("margin_call_events", ACCOUNT_LABELS, "Margin-call events on the user data stream: "
                           "MARGIN_CALL (USD-M, COIN-M) and riskLevelChange (Portfolio Margin).",
                           _each(ALL_MARKETS, _STREAM), "counter")

# ---- live risk: forced closes and the public market streams (issue 24) ------------------------
LIQUIDATION_EVENTS = _live("liquidation_events", ("alias", "market", "symbol", "kind"), "Forced closes Binance "
                           "reported on the user data stream (ORDER_TRADE_UPDATE), counted once per order: kind "
                           "liquidation (client order id autoclose-, order type LIQUIDATION) or adl "
                           "(adl_autoclose).", _each(ALL_MARKETS, _STREAM), "counter")
MARKET_STREAM_UP = _live("market_stream_up", ("market",), "1 while the public mark-price stream of the market is "
                         "connected (live risk); 0 while it is down, when risk figures move only with REST reads.",
                         (("usdm", "market stream"), ("coinm", "market stream")))

# ---- per master account: sub-account discovery -----------------------------------------------
SUB_ACCOUNTS = _live("sub_accounts", ("master",), "Sub-accounts exported for this master: found through its key, "
                     "kept by include/exclude, with a futures account in at least one configured market.",
                     _SUB_ACCOUNT_LIST)
SUB_ACCOUNT_DISCOVERY_ERRORS = _live("sub_account_discovery_errors", ("master", "reason"), "Failed sub-account "
                                     "discoveries by master and reason.", _SUB_ACCOUNT_LIST, "counter",
                                     (("reason", SCRAPE_ERROR_REASONS),))

# ---- per API host: Binance's figure, the exporter's budget and use, back-off, clock ---------
USED_WEIGHT = _live("used_weight", ("host", "interval"), "Request weight Binance reports used by this IP in the "
                    "current minute: the highest X-MBX-USED-WEIGHT-1M seen (X-SAPI-USED-IP-WEIGHT-1M on /sapi, "
                    "counted per endpoint); absent when no answer this minute reported it.",
                    (("host", "response headers"),))
WEIGHT_LIMIT = _live("weight_limit", ("host", "interval"), "Binance's request-weight limit per minute and IP "
                     "(config).", (("host", _CONFIG),))
WEIGHT_BUDGET = _live("weight_budget", ("host",), "The exporter's own weight cap per rolling minute: weight_limit x "
                      "weight_budget_share.", (("host", _CONFIG),))
EXPORTER_USED_WEIGHT = _live("exporter_used_weight", ("host",), "Weight this exporter sent to the host in the last "
                             "60 s.", (("host", _EXPORTER),))
BACKOFF_SECONDS = _live("backoff_seconds", ("host",), "Seconds left before requests to this host resume after a "
                        "429/418 (0 = none).", (("host", _EXPORTER),))
TIME_OFFSET_SECONDS = _live("time_offset_seconds", ("host",), "Binance's clock minus the local clock, as "
                            "measured.", (("host", "/fapi/v1/time, /dapi/v1/time, /api/v3/time"),))
FETCHES_DEFERRED = _live("fetches_deferred", ("host",), "Fetches a scrape wanted but did not start at once, "
                         "because of the weight budget or a back-off.", (("host", _EXPORTER),), "counter")
RATE_LIMITED_RESPONSES = _live("rate_limited_responses", ("host", "status"), "429 and 418 answers received.",
                               (("host", "response status"),), "counter")

# ---- the exporter itself -----------------------------------------------------------------------
EXPORTER_BUILD_INFO = _live("exporter_build_info", ("version", "revision"), "Exporter version and the VCS revision "
                            "it was built from (unknown unless the build was told); always 1.",
                            (("exporter", _EXPORTER),))
EXPORTER_CONFIG_LAST_RELOAD_SUCCESSFUL = _live(
    "exporter_config_last_reload_successful", (), "Whether the latest configuration reload (SIGHUP or POST "
    "/-/reload) succeeded; 1 at start. 0: the last good config keeps running.", (("exporter", _EXPORTER),))
EXPORTER_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = _live(
    "exporter_config_last_reload_success_timestamp_seconds", (), "When the configuration was last loaded "
    "successfully (at start or by a reload), Unix seconds.", (("exporter", _EXPORTER),))

# ---- the catalogue, in exposition order --------------------------------------------------------
SECTIONS: tuple[tuple[str, tuple[Family, ...]], ...] = (
    ("Per account and asset", ASSET_FAMILIES + (MIN_AVAILABLE_BALANCE,)),
    ("Per account", (MIN_ACCOUNT_AVAILABLE_BALANCE, ACCOUNT_INFO) + ACCOUNT_FAMILIES + (PM_ACCOUNT_STATUS,)),
    ("Per position", POSITION_FAMILIES + (POSITION_INFO,)),
    ("Per account: thresholds, host and health", (
        MAX_MARGIN_RATIO, MIN_LIQUIDATION_DISTANCE, MIN_UNI_MMR, ACCOUNT_HOST_INFO, SUB_ACCOUNT_INFO, UP, DOWN_REASON,
        REQUEST_DURATION_SECONDS, LAST_SUCCESS_TIMESTAMP_SECONDS, SCRAPE_ERRORS)),
    ("User data streams", (STREAM_UP, STREAM_EVENTS, STREAM_RECONNECTS, STREAM_LAST_EVENT_TIMESTAMP_SECONDS,
                           MARGIN_CALL_EVENTS)),
    ("Live risk", (LIQUIDATION_EVENTS, MARKET_STREAM_UP)),
    ("Sub-account discovery", (SUB_ACCOUNTS, SUB_ACCOUNT_DISCOVERY_ERRORS)),
    ("Per API host", (USED_WEIGHT, WEIGHT_LIMIT, WEIGHT_BUDGET, EXPORTER_USED_WEIGHT, BACKOFF_SECONDS,
                      TIME_OFFSET_SECONDS, FETCHES_DEFERRED, RATE_LIMITED_RESPONSES)),
    ("The exporter", (EXPORTER_BUILD_INFO, EXPORTER_CONFIG_LAST_RELOAD_SUCCESSFUL,
                      EXPORTER_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS)),
)
FAMILIES: dict[str, Family] = {f.name: f for _, section in SECTIONS for f in section}
if len(FAMILIES) != sum(len(section) for _, section in SECTIONS):
    raise ValueError("a family is declared twice")


def _paths(sources: tuple[tuple[str, str], ...]) -> str:
    """Where a family comes from, as the reference says it: `/fapi/v{2,3}/balance`, config, ..."""
    names = list(dict.fromkeys(source for _, source in sources))
    out = []
    for name in names:
        if "/v2/" in name and name.replace("/v2/", "/v3/") in names:
            continue  # said once, with v3 below
        shown = name.replace("/v3/", "/v{2,3}/") if name.replace("/v3/", "/v2/") in names else name
        out.append(f"`{shown}`" if shown.startswith("/") else shown)
    return ", ".join(out)


def reference() -> str:
    """docs/metrics.md's tables: every family, by section, in exposition order."""
    out = []
    for title, section in SECTIONS:
        out += [f"### {title}", "", "| metric | type | labels | markets | from | freshness | help |",
                "|---|---|---|---|---|---|---|"]
        for f in section:
            name = f.full_name + ("_total" if f.type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in f.labels) or "-"
            out.append(f"| `{name}` | {f.type} | {labels} | {', '.join(f.markets) or '-'} | {_paths(f.sources)} | "
                       f"{f.freshness} | {f.help} |")
        out.append("")
    out += ["### Label values", "", "Labels whose values are a fixed set (declared in `exporter/labelvalues.py`):", "",
            "| metric | label | values |", "|---|---|---|"]
    for _, section in SECTIONS:
        for f in section:
            name = f.full_name + ("_total" if f.type == "counter" else "")
            for label, values in f.label_values:
                out.append(f"| `{name}` | `{label}` | {', '.join(f'`{v}`' for v in values)} |")
    out.append("")
    return "\n".join(out)
