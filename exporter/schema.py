"""Binance's answers field by field, and the metric each field becomes: defined once.

Parsing reads answers through these tables, and the simulator builds its
answers from them, so a field added here shows up everywhere at once. The
family each field feeds is declared in catalogue.py (name, help, labels, and
the endpoints whose fields feed it, read from these tables).

Kinds of field:
- ``decimal``: a JSON string holding a decimal ("122607.35137903"); required.
- ``opt_decimal``: like ``decimal``, but may be missing or "" (Portfolio
  Margin's examples send "" in numeric fields): then no series, no error.
- ``bool``: a JSON boolean, exported as 1/0; optional.
- ``millis``: an integer millisecond timestamp, exported in seconds; optional.

Fields the exporter does not export have ``metric=None``; they are listed
anyway, so every table describes a whole answer in Binance's declared order
(the official SDK models) and the simulator can build answers from it. Their
kinds add ``text`` (a JSON string that is not a number: names, enums, and
v2's ``"false"``), ``int`` (a JSON integer) and ``list`` (a nested array).
Decimals the exporter skips (``leverage``, ``maxQty``...) keep kind
``decimal``: only a decimal *with* a metric is required by the parser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NS = "binance_futures"
MARKETS = ("usdm", "coinm", "pm")

# Label sets, by what a series describes.
ACCOUNT_LABELS = ("alias", "market")
ASSET_LABELS = ("alias", "market", "asset")
POSITION_LABELS = ("alias", "market", "symbol", "position_side")
POSITION_INFO_LABELS = POSITION_LABELS + ("margin_type", "margin_asset")


@dataclass(frozen=True)
class Field:
    """One JSON field of an answer and the family it feeds (None: read but not exported)."""

    json: str
    metric: str | None
    kind: str = "decimal"


def _layout(names: str, known: tuple[Field, ...] = (), *, complete: bool = False) -> tuple[Field, ...]:
    """An answer's fields in declared order, from "name" / "name:kind" words (kind decimal if omitted).

    A name found in `known` is that Field (its metric and kind); any other is
    read but not exported. `complete` insists that every known field is placed.
    """
    by_json = {f.json: f for f in known}
    fields = []
    for word in names.split():
        name, _, kind = word.partition(":")
        fields.append(by_json.pop(name) if name in by_json else Field(name, None, kind or "decimal"))
    if complete and by_json:
        raise ValueError(f"fields left out of the layout: {sorted(by_json)}")
    return tuple(fields)


# ---- USD-M (fapi) -----------------------------------------------------------------------------
BALANCE_AMOUNTS = ("balance", "available_balance", "cross_wallet_balance", "cross_unrealized_pnl",
                   "max_withdraw_amount")
"""The five amounts of a balance row; an asset with all five at zero is skipped (skip_zero_balances)."""

SERVER_TIME = _layout("serverTime:millis")  # /fapi/v1/time, /dapi/v1/time, /api/v3/time

USDM_BALANCE = _layout("accountAlias:text asset:text balance crossWalletBalance crossUnPnl availableBalance "
                       "maxWithdrawAmount marginAvailable updateTime", (
    Field("balance", "balance"),
    Field("crossWalletBalance", "cross_wallet_balance"),
    Field("crossUnPnl", "cross_unrealized_pnl"),
    Field("availableBalance", "available_balance"),
    Field("maxWithdrawAmount", "max_withdraw_amount"),
    Field("marginAvailable", "margin_available", "bool"),
    Field("updateTime", "balance_update_timestamp_seconds", "millis"),
), complete=True)
"""`/fapi/v2|v3/balance` rows (identical in v2 and v3)."""

USDM_ACCOUNT_ASSET = _layout("asset:text walletBalance unrealizedProfit marginBalance maintMargin initialMargin "
                             "positionInitialMargin openOrderInitialMargin crossWalletBalance crossUnPnl "
                             "availableBalance maxWithdrawAmount marginAvailable updateTime", (
    Field("walletBalance", "balance"),
    Field("unrealizedProfit", "unrealized_pnl"),
    Field("marginBalance", "margin_balance"),
    Field("maintMargin", "maint_margin"),
    Field("initialMargin", "initial_margin"),
    Field("positionInitialMargin", "position_initial_margin"),
    Field("openOrderInitialMargin", "open_order_initial_margin"),
    Field("crossWalletBalance", "cross_wallet_balance"),
    Field("crossUnPnl", "cross_unrealized_pnl"),
    Field("availableBalance", "available_balance"),
    Field("maxWithdrawAmount", "max_withdraw_amount"),
    Field("marginAvailable", "margin_available", "bool"),  # v2 only
    Field("updateTime", "balance_update_timestamp_seconds", "millis"),
), complete=True)
"""`/fapi/v2/account` assets[]; v3 has the same without marginAvailable."""
USDM_ACCOUNT_ASSET_V3 = tuple(f for f in USDM_ACCOUNT_ASSET if f.json != "marginAvailable")

USDM_ACCOUNT_TOTALS = (
    Field("totalInitialMargin", "account_initial_margin"),
    Field("totalMaintMargin", "account_maint_margin"),
    Field("totalWalletBalance", "account_wallet_balance"),
    Field("totalUnrealizedProfit", "account_unrealized_pnl"),
    Field("totalMarginBalance", "account_margin_balance"),
    Field("totalPositionInitialMargin", "account_position_initial_margin"),
    Field("totalOpenOrderInitialMargin", "account_open_order_initial_margin"),
    Field("totalCrossWalletBalance", "account_cross_wallet_balance"),
    Field("totalCrossUnPnl", "account_cross_unrealized_pnl"),
    Field("availableBalance", "account_available_balance"),
    Field("maxWithdrawAmount", "account_max_withdraw_amount"),
)

USDM_ACCOUNT_V3 = USDM_ACCOUNT_TOTALS + _layout("assets:list positions:list")
USDM_ACCOUNT_V2 = _layout("feeTier:int feeBurn:bool canTrade:bool canDeposit:bool canWithdraw:bool "
                          "updateTime:millis multiAssetsMargin:bool tradeGroupId:int") + USDM_ACCOUNT_V3
"""`/fapi/v3/account` and `/fapi/v2/account`, top level (neither has accountAlias)."""

POSITION_RISK = (
    Field("positionAmt", "position_amount"),
    Field("entryPrice", "position_entry_price", "opt_decimal"),
    Field("breakEvenPrice", "position_break_even_price", "opt_decimal"),
    Field("markPrice", "position_mark_price", "opt_decimal"),
    Field("unRealizedProfit", "position_unrealized_pnl", "opt_decimal"),
    Field("liquidationPrice", "position_liquidation_price", "opt_decimal"),
    Field("isolatedMargin", "position_isolated_margin", "opt_decimal"),
    Field("notional", "position_notional", "opt_decimal"),
    Field("notionalValue", "position_notional", "opt_decimal"),  # COIN-M's name
    Field("initialMargin", "position_required_initial_margin", "opt_decimal"),
    Field("maintMargin", "position_maint_margin", "opt_decimal"),
    Field("isolatedWallet", "position_isolated_wallet", "opt_decimal"),
)
"""What the parser reads from any position row (the union of the position layouts below)."""

USDM_POSITION_RISK_V2 = _layout(
    "entryPrice breakEvenPrice marginType:text isAutoAddMargin:text isolatedMargin leverage liquidationPrice "
    "markPrice maxNotionalValue positionAmt notional isolatedWallet symbol:text unRealizedProfit "
    "positionSide:text updateTime:millis", POSITION_RISK)
USDM_POSITION_RISK_V3 = _layout(
    "symbol:text positionSide:text positionAmt entryPrice breakEvenPrice markPrice unRealizedProfit "
    "liquidationPrice isolatedMargin notional marginAsset:text isolatedWallet initialMargin maintMargin "
    "positionInitialMargin openOrderInitialMargin adl:int bidNotional askNotional updateTime:millis",
    POSITION_RISK + (Field("adl", "position_adl_quantile", "int"),))
USDM_ACCOUNT_POSITION_V2 = _layout(
    "symbol:text initialMargin maintMargin unrealizedProfit positionInitialMargin openOrderInitialMargin "
    "leverage isolated:bool entryPrice maxNotional bidNotional askNotional positionSide:text positionAmt "
    "updateTime:millis", POSITION_RISK)
USDM_ACCOUNT_POSITION_V3 = _layout(
    "symbol:text positionSide:text positionAmt unrealizedProfit isolatedMargin notional isolatedWallet "
    "initialMargin maintMargin updateTime:millis", POSITION_RISK)

ACCOUNT_CONFIG = _layout("feeTier:int canTrade:bool canDeposit:bool canWithdraw:bool dualSidePosition "
                         "updateTime:millis multiAssetsMargin tradeGroupId:int", (
    Field("dualSidePosition", "hedge_mode", "bool"),
    Field("multiAssetsMargin", "multi_assets_mode", "bool"),
), complete=True)
"""`/fapi/v1/accountConfig`: the account's modes (weight 5 per the official SDK)."""

# ---- COIN-M (dapi) ----------------------------------------------------------------------------
COINM_BALANCE = _layout("accountAlias:text asset:text balance withdrawAvailable crossWalletBalance crossUnPnl "
                        "availableBalance updateTime", (
    Field("balance", "balance"),
    Field("withdrawAvailable", "max_withdraw_amount"),
    Field("crossWalletBalance", "cross_wallet_balance"),
    Field("crossUnPnl", "cross_unrealized_pnl"),
    Field("availableBalance", "available_balance"),
    Field("updateTime", "balance_update_timestamp_seconds", "millis"),
), complete=True)

COINM_ACCOUNT_ASSET = _layout("asset:text walletBalance unrealizedProfit marginBalance maintMargin initialMargin "
                              "positionInitialMargin openOrderInitialMargin maxWithdrawAmount crossWalletBalance "
                              "crossUnPnl availableBalance updateTime", (
    Field("walletBalance", "balance"),
    Field("unrealizedProfit", "unrealized_pnl", "opt_decimal"),
    Field("marginBalance", "margin_balance", "opt_decimal"),
    Field("maintMargin", "maint_margin", "opt_decimal"),
    Field("initialMargin", "initial_margin", "opt_decimal"),
    Field("positionInitialMargin", "position_initial_margin", "opt_decimal"),
    Field("openOrderInitialMargin", "open_order_initial_margin", "opt_decimal"),
    Field("maxWithdrawAmount", "max_withdraw_amount", "opt_decimal"),
    Field("crossWalletBalance", "cross_wallet_balance", "opt_decimal"),
    Field("crossUnPnl", "cross_unrealized_pnl", "opt_decimal"),
    Field("availableBalance", "available_balance", "opt_decimal"),
    Field("updateTime", "balance_update_timestamp_seconds", "millis"),
), complete=True)

COINM_ACCOUNT = _layout("assets:list positions:list canDeposit:bool canTrade:bool canWithdraw:bool feeTier:int "
                        "updateTime:millis")
"""`/dapi/v1/account`: no totals, no accountAlias; amounts are in the coin."""
COINM_ACCOUNT_POSITION = _layout(
    "symbol:text positionAmt initialMargin maintMargin unrealizedProfit positionInitialMargin "
    "openOrderInitialMargin leverage isolated:bool positionSide:text entryPrice breakEvenPrice maxQty "
    "updateTime:millis notionalValue", POSITION_RISK)
COINM_POSITION_RISK = _layout(
    "symbol:text positionAmt entryPrice breakEvenPrice markPrice unRealizedProfit liquidationPrice leverage "
    "maxQty marginType:text isolatedMargin isAutoAddMargin:text positionSide:text updateTime:millis",
    POSITION_RISK)

# ---- Portfolio Margin (papi) ------------------------------------------------------------------
PM_UM_POSITION_RISK = _layout(
    "entryPrice leverage markPrice maxNotionalValue positionAmt notional symbol:text unRealizedProfit "
    "liquidationPrice positionSide:text updateTime:millis", POSITION_RISK)
PM_CM_POSITION_RISK = _layout(
    "symbol:text positionAmt entryPrice markPrice unRealizedProfit liquidationPrice leverage positionSide:text "
    "updateTime:millis maxQty notionalValue", POSITION_RISK)
"""`/papi/v1/um/positionRisk` (no maintenance margin, no isolated wallet) and `/papi/v1/cm/positionRisk`."""

PM_BALANCE = _layout("asset:text totalWalletBalance crossMarginAsset crossMarginBorrowed crossMarginFree "
                     "crossMarginInterest crossMarginLocked umWalletBalance umUnrealizedPNL cmWalletBalance "
                     "cmUnrealizedPNL updateTime negativeBalance", (
    Field("totalWalletBalance", "balance"),
    Field("crossMarginAsset", "pm_cross_margin_asset", "opt_decimal"),
    Field("crossMarginBorrowed", "pm_cross_margin_borrowed", "opt_decimal"),
    Field("crossMarginFree", "pm_cross_margin_free", "opt_decimal"),
    Field("crossMarginInterest", "pm_cross_margin_interest", "opt_decimal"),
    Field("crossMarginLocked", "pm_cross_margin_locked", "opt_decimal"),
    Field("umWalletBalance", "pm_um_wallet_balance", "opt_decimal"),
    Field("umUnrealizedPNL", "pm_um_unrealized_pnl", "opt_decimal"),
    Field("cmWalletBalance", "pm_cm_wallet_balance", "opt_decimal"),
    Field("cmUnrealizedPNL", "pm_cm_unrealized_pnl", "opt_decimal"),
    Field("updateTime", "balance_update_timestamp_seconds", "millis"),
    Field("negativeBalance", "pm_negative_balance", "opt_decimal"),
), complete=True)
"""`/papi/v1/balance` list rows; with `asset` sent the answer is one object without crossMarginAsset."""
PM_BALANCE_ONE = tuple(f for f in PM_BALANCE if f.json != "crossMarginAsset")

PM_ACCOUNT = _layout("uniMMR accountEquity actualEquity accountInitialMargin accountMaintMargin accountStatus:text "
                     "virtualMaxWithdrawAmount totalAvailableBalance totalMarginOpenLoss updateTime:millis", (
    Field("uniMMR", "pm_uni_mmr", "opt_decimal"),
    Field("accountEquity", "pm_account_equity", "opt_decimal"),
    Field("actualEquity", "pm_actual_equity", "opt_decimal"),
    Field("accountInitialMargin", "pm_account_initial_margin", "opt_decimal"),
    Field("accountMaintMargin", "pm_account_maint_margin", "opt_decimal"),
    Field("virtualMaxWithdrawAmount", "pm_virtual_max_withdraw_amount", "opt_decimal"),
    Field("totalAvailableBalance", "pm_total_available_balance", "opt_decimal"),
    Field("totalMarginOpenLoss", "pm_total_margin_open_loss", "opt_decimal"),
), complete=True)

PM_ACCOUNT_STATUSES = ("NORMAL", "MARGIN_CALL", "SUPPLY_MARGIN", "REDUCE_ONLY", "ACTIVE_LIQUIDATION",
                       "FORCE_LIQUIDATION", "BANKRUPTED")

# ---- sub-accounts (sapi, master key) ----------------------------------------------------------
SUB_ACCOUNT_LIST_ENTRY = _layout("subUserId:int email:text remark:text isFreeze:bool createTime:millis "
                                 "isManagedSubAccount:bool isAssetManagementSubAccount:bool")
"""`/sapi/v1/sub-account/list` subAccounts[] (no paging metadata in the answer)."""

SUB_ACCOUNT_ASSET = _layout("asset:text initialMargin maintenanceMargin marginBalance maxWithdrawAmount "
                            "openOrderInitialMargin positionInitialMargin unrealizedProfit walletBalance", (
    Field("walletBalance", "balance"),
    Field("initialMargin", "initial_margin", "opt_decimal"),
    Field("maintenanceMargin", "maint_margin", "opt_decimal"),
    Field("marginBalance", "margin_balance", "opt_decimal"),
    Field("maxWithdrawAmount", "max_withdraw_amount", "opt_decimal"),
    Field("openOrderInitialMargin", "open_order_initial_margin", "opt_decimal"),
    Field("positionInitialMargin", "position_initial_margin", "opt_decimal"),
    Field("unrealizedProfit", "unrealized_pnl", "opt_decimal"),
), complete=True)

SUB_ACCOUNT_TOTALS = (
    Field("maxWithdrawAmount", "account_max_withdraw_amount", "opt_decimal"),
    Field("totalInitialMargin", "account_initial_margin", "opt_decimal"),
    Field("totalMaintenanceMargin", "account_maint_margin", "opt_decimal"),
    Field("totalMarginBalance", "account_margin_balance", "opt_decimal"),
    Field("totalOpenOrderInitialMargin", "account_open_order_initial_margin", "opt_decimal"),
    Field("totalPositionInitialMargin", "account_position_initial_margin", "opt_decimal"),
    Field("totalUnrealizedProfit", "account_unrealized_pnl", "opt_decimal"),
    Field("totalWalletBalance", "account_wallet_balance", "opt_decimal"),
)

_SUB_HEAD = "email:text assets:list canDeposit:bool canTrade:bool canWithdraw:bool feeTier:int"
SUB_ACCOUNT_USDM = _layout(_SUB_HEAD) + SUB_ACCOUNT_TOTALS + _layout("updateTime:millis")
SUB_ACCOUNT_COINM = _layout(_SUB_HEAD + " updateTime:millis")
"""`/sapi/v2/sub-account/futures/account` futureAccountResp (futuresType 1; no top-level asset) and
deliveryAccountResp (futuresType 2; no totals, no top-level maxWithdrawAmount)."""

SUB_POSITION_RISK = tuple(replace(f, json={"positionAmt": "positionAmount",
                                            "unRealizedProfit": "unrealizedProfit"}.get(f.json, f.json))
                          for f in POSITION_RISK)
"""POSITION_RISK under the sub-account answer's names (positionAmount, unrealizedProfit)."""
SUB_POSITION_RISK_USDM = _layout("entryPrice leverage maxNotional liquidationPrice markPrice positionAmount "
                                 "symbol:text unrealizedProfit", SUB_POSITION_RISK)
SUB_POSITION_RISK_COINM = _layout("entryPrice markPrice leverage isolated:text isolatedWallet isolatedMargin "
                                  "isAutoAddMargin:text positionSide:text positionAmount symbol:text unrealizedProfit",
                                  SUB_POSITION_RISK)
"""`/sapi/v2/sub-account/futures/positionRisk` futurePositionRiskVos[] (futuresType 1: no positionSide, no margin
type) and deliveryPositionRiskVos[] (futuresType 2: no liquidationPrice; `isolated` is the string "true"/"false")."""
SUB_POSITION_KEYS = {1: "futurePositionRiskVos", 2: "deliveryPositionRiskVos"}
