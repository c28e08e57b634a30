"""Turn Binance's JSON answers into typed snapshots, rejecting anything we can't trust.

Everything that will become a label or a sample is validated here, before it
gets near the renderer: a label value that is not plain printable ASCII of a
sane length, or a number that is not a plain decimal, makes the answer a
`BadResponse` (the account's `bad_response`), never a failed exposition.
Decimals are checked against a strict grammar because float() also accepts
"nan", "inf", "1_000" and " 1 ", none of which Binance sends.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from exporter.logs import fields as log_fields
from exporter.schema import (
    ACCOUNT_CONFIG,
    COINM_ACCOUNT_ASSET,
    COINM_BALANCE,
    PM_ACCOUNT,
    PM_ACCOUNT_STATUSES,
    PM_BALANCE,
    POSITION_RISK,
    SUB_ACCOUNT_ASSET,
    SUB_ACCOUNT_TOTALS,
    SUB_POSITION_KEYS,
    SUB_POSITION_RISK,
    USDM_ACCOUNT_ASSET,
    USDM_ACCOUNT_TOTALS,
    USDM_BALANCE,
    Field,
)

# ASCII digits only: Python's \d and float() also take "١٢" (Arabic-Indic) as 12, and Binance
# sends ASCII, so anything else is a bad answer, not a number (issue 23).
DECIMAL_RE = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?")
# Label values from Binance: printable ASCII only (a lone surrogate or a control
# character in a label would break the exposition for every account).
ASSET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
SYMBOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
POSITION_SIDES = frozenset({"BOTH", "LONG", "SHORT"})
ACCOUNT_ALIAS_RE = re.compile(r"[\x21-\x7e]{1,64}")
EMAIL_RE = re.compile(r"[\x21-\x3f\x41-\x7e]{1,128}@[\x21-\x3f\x41-\x7e]{1,128}")
MAX_MILLIS = 2**53  # keeps /1000 exact enough and finite
MAX_ADL = 100
MAX_ROWS = 100_000
# An accountStatus Binance added after PM_ACCOUNT_STATUSES: shown as its own state when it is a
# plain upper-case word, else as OTHER; never a rejected refresh.
PM_STATUS_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
PM_STATUS_OTHER = "OTHER"
MARGIN_TYPES = ("cross", "isolated")
# USD-M quote (settlement) assets, longest match first: the margin asset of a position in
# single-asset mode where the answer does not name it (v2 positionRisk, account positions).
USDM_QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "BTC")

log = logging.getLogger("exporter.parsing")


class BadResponse(ValueError):
    """The answer was not what we expect; the message is safe to log (it quotes no upstream text)."""


@dataclass(frozen=True, slots=True)
class AssetRow:
    asset: str
    values: Mapping[str, float]
    zero: bool  # every amount is exactly zero (skip_zero_balances)


@dataclass(frozen=True, slots=True)
class PositionRow:
    symbol: str
    side: str
    values: Mapping[str, float]
    margin_type: str | None = None  # cross / isolated; None where the answer does not say (USD-M sub-accounts)
    margin_asset: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one refresh of one account and market read; several answers merge into one."""

    assets: tuple[AssetRow, ...] = ()
    totals: Mapping[str, float] = field(default_factory=dict)
    positions: tuple[PositionRow, ...] = ()
    account_alias: str | None = None
    status: str | None = None  # Portfolio Margin accountStatus

    def merge(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            assets=self.assets + other.assets,
            totals={**self.totals, **other.totals},
            positions=self.positions + other.positions,
            account_alias=self.account_alias or other.account_alias,
            status=self.status or other.status,
        )


# ---- JSON --------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    """Raised inside the decoder: not a ValueError, so it is told apart from malformed JSON."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


def load_json(body: bytes) -> Any:
    """Decode an answer; BadResponse for anything that is not sane JSON.

    json's C decoder recurses per nesting level: 100,000 brackets raise
    RecursionError, which is just another malformed body here. An object that
    repeats a key is refused too: json would keep the last value silently,
    and which one Binance meant is anyone's guess (dict() of the pairs the C
    decoder hands over costs a few percent of the decode).
    """
    try:
        return json.loads(body, object_pairs_hook=_unique_pairs)
    except _DuplicateKey:
        raise BadResponse("body has an object with a duplicate key") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadResponse(f"body is not valid JSON ({type(exc).__name__})") from None


def parse_error(body: bytes) -> tuple[int | None, str | None]:
    """Binance's `{"code": -1022, "msg": "..."}`; (None, None) for anything else (HTML, text)."""
    try:
        data = load_json(body)
    except BadResponse:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    msg = data.get("msg")
    if not (isinstance(code, int) and not isinstance(code, bool) and -10**9 < code < 10**9):
        code = None
    return code, (printable(msg, 200) if isinstance(msg, str) else None)


def printable(text: str, limit: int) -> str:
    """Upstream text made safe for a log line: printable ASCII, at most `limit` characters."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text[: limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


# ---- values ------------------------------------------------------------------------------------
def parse_decimal(value: Any, where: str) -> float:
    if isinstance(value, str):
        if not DECIMAL_RE.fullmatch(value):
            raise BadResponse(f"field {where} is not a decimal string")
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise BadResponse(f"field {where} is out of range") from None
    else:
        raise BadResponse(f"field {where} has type {type(value).__name__}, expected a decimal string")
    if not math.isfinite(number):
        raise BadResponse(f"field {where} is out of range")
    return number


def _millis(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MILLIS:
        raise BadResponse(f"field {where} is not a millisecond timestamp")
    return value / 1000.0


_MISSING = object()
_DECIMAL_KINDS = frozenset({"decimal", "opt_decimal"})
_DECIMAL_MATCH = DECIMAL_RE.fullmatch  # at most 30 + 30 digits: float() of it is always finite


def read_fields(item: Mapping[str, Any], fields: Sequence[Field], where: str) -> dict[str, float]:
    """The metric values of one JSON object, per its field table."""
    values: dict[str, float] = {}
    for spec in fields:
        metric = spec.metric
        if metric is None:
            continue
        raw = item.get(spec.json, _MISSING)
        kind = spec.kind
        if kind in _DECIMAL_KINDS and raw.__class__ is str and _DECIMAL_MATCH(raw):
            values[metric] = float(raw)  # the common case, first: a plain decimal string
            continue
        if raw is _MISSING:
            if kind == "decimal":
                raise BadResponse(f"{where}: field {spec.json} is missing")
            continue
        name = f"{where}.{spec.json}"
        if kind == "bool":
            if raw is None:
                continue
            if not isinstance(raw, bool):
                raise BadResponse(f"field {name} is not a boolean")
            values[metric] = 1.0 if raw else 0.0
        elif kind == "millis":
            if raw is not None and raw != 0:  # 0: never updated (an untouched asset), not 1970
                values[metric] = _millis(raw, name)
        elif kind == "opt_decimal" and (raw == "" or raw is None):
            continue  # "no value" (Portfolio Margin sends "" in numeric fields)
        elif kind in _DECIMAL_KINDS:
            values[metric] = parse_decimal(raw, name)
    return values


_AMOUNTS: dict[int, tuple[Sequence[Field], tuple[str, ...]]] = {}


def _amounts_zero(values: Mapping[str, float], fields: Sequence[Field]) -> bool:
    known = _AMOUNTS.get(id(fields))  # the entry keeps the table alive: its id stays its own
    if known is None or known[0] is not fields:
        known = _AMOUNTS[id(fields)] = (fields, tuple(f.metric for f in fields
                                                      if f.metric and f.kind in _DECIMAL_KINDS))
    return not any(values.get(m, 0.0) for m in known[1])


def _label(value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadResponse(f"{what} is missing or not a plain name")
    return value


def _object(item: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise BadResponse(f"{where} is {type(item).__name__}, expected an object")
    return item


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadResponse(f"{where}: expected a JSON array, got {type(value).__name__}")
    if len(value) > MAX_ROWS:
        raise BadResponse(f"{where}: more than {MAX_ROWS} elements")
    return value


def asset_rows(items: Iterable[Any], fields: Sequence[Field], where: str) -> tuple[AssetRow, ...]:
    rows: list[AssetRow] = []
    seen: set[str] = set()
    for index, raw in enumerate(items):
        item = _object(raw, f"{where}[{index}]")
        asset = _label(item.get("asset"), ASSET_RE, f"{where}[{index}].asset")
        if asset in seen:
            raise BadResponse(f"asset {asset} appears twice")
        seen.add(asset)
        values = read_fields(item, fields, asset)
        rows.append(AssetRow(asset, values, _amounts_zero(values, fields)))
    return tuple(rows)


def _account_alias(items: Iterable[Any]) -> str | None:
    for item in items:
        alias = item.get("accountAlias") if isinstance(item, dict) else None
        if alias not in (None, ""):
            return _label(alias, ACCOUNT_ALIAS_RE, "accountAlias")
    return None


# ---- endpoints ---------------------------------------------------------------------------------
def parse_balance(body: bytes, fields: Sequence[Field] = USDM_BALANCE) -> Snapshot:
    """`/fapi/v2|v3/balance` (and `/dapi/v1/balance` with COINM_BALANCE): an array of assets."""
    items = _list(load_json(body), "balance")
    return Snapshot(assets=asset_rows(items, fields, "balance"), account_alias=_account_alias(items))


def parse_coinm_balance(body: bytes) -> Snapshot:
    return parse_balance(body, COINM_BALANCE)


def parse_usdm_account(body: bytes) -> Snapshot:
    """`/fapi/v2|v3/account`: totals and assets, with the isolated positions' maintenance margin.

    Positions themselves come from positionRisk; here they only tell how much of the
    maintenance margin belongs to isolated positions, which Binance's cross ratio leaves
    out. v2's `multiAssetsMargin` is the account's mode, fresher than accountConfig's.
    """
    data = _object(load_json(body), "account")
    assets = asset_rows(_list(data.get("assets"), "assets"), USDM_ACCOUNT_ASSET, "assets")
    totals = read_fields(data, USDM_ACCOUNT_TOTALS, "account")
    multi = data.get("multiAssetsMargin")
    if multi is not None:
        if not isinstance(multi, bool):
            raise BadResponse("field account.multiAssetsMargin is not a boolean")
        totals["multi_assets_mode"] = 1.0 if multi else 0.0
    assets, isolated = _with_isolated_maint(assets, data.get("positions", []), coin=False)
    totals["account_isolated_maint_margin"] = isolated
    return isolated_for_mode(Snapshot(assets=assets, totals=totals))


def isolated_for_mode(snapshot: Snapshot) -> Snapshot:
    """`account_isolated_maint_margin` of the pool the account totals are: in single-asset mode the
    totals are USDT's, so only USDT's isolated maintenance margin is taken out of them (a USDC
    isolated position belongs to USDC's pool); in Multi-Assets mode every asset's. An unknown mode
    counts as single-asset, as the rules do (it can only over-warn)."""
    if "account_isolated_maint_margin" not in snapshot.totals:
        return snapshot
    if snapshot.totals.get("multi_assets_mode") == 1.0:  # every asset's (the parse may have had USDT's only)
        rows = sum((r.values.get("isolated_maint_margin", 0.0) for r in snapshot.assets), 0.0)
        value = max(rows, snapshot.totals["account_isolated_maint_margin"])
    else:
        value = next((r.values.get("isolated_maint_margin", 0.0) for r in snapshot.assets if r.asset == "USDT"), 0.0)
    return Snapshot(snapshot.assets, {**snapshot.totals, "account_isolated_maint_margin": value},
                    snapshot.positions, snapshot.account_alias, snapshot.status)


def parse_coinm_account(body: bytes) -> Snapshot:
    """`/dapi/v1/account`: assets only (COIN-M has no account totals), with isolated maintenance margin."""
    data = _object(load_json(body), "account")
    assets = asset_rows(_list(data.get("assets"), "assets"), COINM_ACCOUNT_ASSET, "assets")
    return Snapshot(assets=_with_isolated_maint(assets, data.get("positions", []), coin=True)[0])


def parse_account_config(body: bytes) -> Snapshot:
    """`/fapi/v1/accountConfig`: multi-assets and hedge mode, as 0/1 account values."""
    return Snapshot(totals=read_fields(_object(load_json(body), "accountConfig"), ACCOUNT_CONFIG, "accountConfig"))


_ACCOUNT_POSITION_MARGIN = (Field("maintMargin", "maint", "opt_decimal"),
                            Field("isolatedWallet", "position_isolated_wallet", "opt_decimal"))


def _with_isolated_maint(assets: tuple[AssetRow, ...], positions: Any,
                         coin: bool) -> tuple[tuple[AssetRow, ...], float]:
    """Each asset's isolated maintenance margin (`isolated_maint_margin`), and their sum."""
    names = sorted((row.asset for row in assets), key=len, reverse=True)
    per_asset: dict[str, float] = {}
    total = 0.0
    for index, raw in enumerate(_list(positions, "positions")):
        item = _object(raw, f"positions[{index}]")
        symbol = _label(item.get("symbol"), SYMBOL_RE, f"positions[{index}].symbol")
        values = read_fields(item, _ACCOUNT_POSITION_MARGIN, symbol)
        if _margin_type(item, values, symbol) != "isolated":
            continue
        maint = values.get("maint", 0.0)
        total += maint
        pair = symbol.split("_", 1)[0]  # BTCUSDT_250926: a delivery contract of BTCUSDT
        asset = _coin_of(symbol) if coin else next((a for a in names if pair.endswith(a)), None)
        if asset is not None:
            per_asset[asset] = per_asset.get(asset, 0.0) + maint
    rows = tuple(AssetRow(r.asset, {**r.values, "isolated_maint_margin": per_asset.get(r.asset, 0.0)}, r.zero)
                 for r in assets)
    return rows, total


def _margin_type(item: Mapping[str, Any], values: Mapping[str, float], where: str) -> str | None:
    """cross or isolated, from whichever field the answer has; None if it has none."""
    if "marginType" in item:  # v2 and COIN-M positionRisk: "cross" / "isolated"
        raw = item["marginType"]
        if isinstance(raw, str) and raw.lower() in MARGIN_TYPES:
            return raw.lower()
        raise BadResponse(f"field {where}.marginType is not cross or isolated")
    if "isolated" in item:  # account positions (a boolean), COIN-M sub-accounts ("true"/"false")
        raw = item["isolated"]
        if raw in (True, "true"):
            return "isolated"
        if raw in (False, "false"):
            return "cross"
        raise BadResponse(f"field {where}.isolated is not a boolean")
    if "isolatedWallet" in item:  # v3: an isolated position has a wallet of its own
        return "isolated" if values.get("position_isolated_wallet", 0.0) > 0 else "cross"
    return None


def _coin_of(symbol: str) -> str | None:
    """COIN-M's margin asset: the base coin (BTCUSD_PERP, BTCUSD_201225: BTC)."""
    base = symbol.split("USD", 1)[0]
    return base if base and ASSET_RE.fullmatch(base) else None


def _margin_asset(item: Mapping[str, Any], symbol: str, coin: bool, where: str) -> str | None:
    if "marginAsset" in item:
        return _label(item["marginAsset"], ASSET_RE, f"{where}.marginAsset")
    if coin:
        return _coin_of(symbol)
    pair = symbol.split("_", 1)[0]
    return next((a for a in USDM_QUOTE_ASSETS if pair.endswith(a) and len(pair) > len(a)), None)


def parse_position_risk(body: bytes, *, coin: bool = False, rows_key: str | None = None,
                        fields: Sequence[Field] = POSITION_RISK, default_type: str | None = None) -> Snapshot:
    """Open positions: `/fapi/v2|v3/positionRisk`, `/dapi/v1/positionRisk` (coin), Portfolio Margin's
    `/papi/v1/um|cm/positionRisk`, and sub-accounts' rows under `rows_key` (with their own field names).

    Rows with an amount of 0 (symbols with open orders but no position) are not
    positions and are dropped; a liquidation price of 0 means "none" and gives
    no liquidation-price series, so it can never look like a position at risk.
    A side, margin type or margin asset that is not one Binance documents is a
    bad answer, not a guess.
    """
    data = load_json(body)
    if rows_key is not None:
        data = _object(data, "answer").get(rows_key)
        data = [] if data is None else data  # no positions of that type: the key may be left out
    rows: list[PositionRow] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(_list(data, "positionRisk")):
        item = _object(raw, f"positionRisk[{index}]")
        symbol = _label(item.get("symbol"), SYMBOL_RE, f"positionRisk[{index}].symbol")
        side = item.get("positionSide", "BOTH")
        if not isinstance(side, str) or side not in POSITION_SIDES:
            raise BadResponse(f"positionRisk[{index}].positionSide is not BOTH, LONG or SHORT")
        values = read_fields(item, fields, symbol)
        adl = item.get("adl", item.get("adlQuantile"))
        if adl is not None:
            if isinstance(adl, bool) or not isinstance(adl, int) or not 0 <= adl <= MAX_ADL:
                raise BadResponse(f"field {symbol}.adl is not a small integer")
            values["position_adl_quantile"] = float(adl)
        margin_type = _margin_type(item, values, symbol) or default_type
        margin_asset = _margin_asset(item, symbol, coin, symbol)
        if values.get("position_amount", 0.0) == 0.0:
            continue
        if values.get("position_liquidation_price") == 0.0:
            del values["position_liquidation_price"]
        if (symbol, side) in seen:
            raise BadResponse(f"position {symbol} {side} appears twice")
        seen.add((symbol, side))
        rows.append(PositionRow(symbol, side, values, margin_type, margin_asset))
    return Snapshot(positions=tuple(rows))


def parse_coinm_position_risk(body: bytes) -> Snapshot:
    return parse_position_risk(body, coin=True)


def parse_pm_position_risk(body: bytes, coin: bool) -> Snapshot:
    """Portfolio Margin's UM and CM positions: one cross margin pool, so every position is cross."""
    return parse_position_risk(body, coin=coin, default_type="cross")


def parse_sub_position_risk(body: bytes, futures_type: int) -> Snapshot:
    """`/sapi/v2/sub-account/futures/positionRisk`: USD-M rows have no side (BOTH) and no margin type."""
    return parse_position_risk(body, coin=futures_type == 2, rows_key=SUB_POSITION_KEYS[futures_type],
                               fields=SUB_POSITION_RISK)


def parse_pm_balance(body: bytes) -> Snapshot:
    """`/papi/v1/balance`: a list of assets, or a single asset object (the SDK's oneOf)."""
    data = load_json(body)
    items = [data] if isinstance(data, dict) else _list(data, "balance")
    return Snapshot(assets=asset_rows(items, PM_BALANCE, "balance"))


def parse_pm_account(body: bytes) -> Snapshot:
    """`/papi/v1/account`: uniMMR, equity, margins, and accountStatus as a state."""
    data = _object(load_json(body), "account")
    return Snapshot(totals=read_fields(data, PM_ACCOUNT, "account"), status=pm_status(data.get("accountStatus")))


_unknown_statuses: set[str] = set()
_unknown_lock = threading.Lock()


def pm_status(raw: Any) -> str | None:
    """A status Binance added without notice is information, not a bad answer: its own state if it
    is a plain upper-case word (at most 32 characters), else OTHER; logged once per process."""
    if raw is None or (isinstance(raw, str) and raw in PM_ACCOUNT_STATUSES):
        return raw
    shown = raw if isinstance(raw, str) and PM_STATUS_RE.fullmatch(raw) else PM_STATUS_OTHER
    with _unknown_lock:
        new = shown not in _unknown_statuses and len(_unknown_statuses) < 64
        if new:
            _unknown_statuses.add(shown)
    if new:
        log.warning("Portfolio Margin accountStatus not in the documented list; exported as its own state",
                    extra=log_fields(status=shown))
    return shown


SUB_ACCOUNT_KEYS = {1: "futureAccountResp", 2: "deliveryAccountResp"}


def parse_sub_account(body: bytes, futures_type: int) -> Snapshot:
    """`/sapi/v2/sub-account/futures/account`: one sub-account's assets (and USD-M totals)."""
    data = _object(load_json(body), "answer")
    key = SUB_ACCOUNT_KEYS[futures_type]
    resp = _object(data.get(key), key)
    assets = asset_rows(_list(resp.get("assets"), "assets"), SUB_ACCOUNT_ASSET, "assets")
    totals = read_fields(resp, SUB_ACCOUNT_TOTALS, key) if futures_type == 1 else {}
    return Snapshot(assets=assets, totals=totals)


@dataclass(frozen=True, slots=True)
class SubAccountEntry:
    email: str
    frozen: bool


def parse_sub_account_list(body: bytes) -> tuple[SubAccountEntry, ...]:
    """`/sapi/v1/sub-account/list`: one page of `{"subAccounts": [...]}`."""
    data = _object(load_json(body), "answer")
    out: list[SubAccountEntry] = []
    for index, raw in enumerate(_list(data.get("subAccounts", []), "subAccounts")):
        item = _object(raw, f"subAccounts[{index}]")
        email = _label(item.get("email"), EMAIL_RE, f"subAccounts[{index}].email")
        frozen = item.get("isFreeze", False)
        out.append(SubAccountEntry(email, frozen is True))
    return tuple(out)


# ---- brackets and contract sizes (live risk) --------------------------------------------------
MAX_BRACKETS = 100  # per symbol; Binance's tables have about ten
_BRACKET_NUMBER = re.compile(r"\d{1,30}(\.\d{1,30})?(E-?\d{1,2})?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Bracket:
    """One maintenance bracket: [floor, cap) of the notional (USD-M) or of the quantity in the coin (COIN-M)."""

    floor: Decimal
    cap: Decimal
    mmr: Decimal  # maintMarginRatio
    cum: Decimal  # maintenance amount


Brackets = Mapping[str, tuple[Bracket, ...]]
"""An account's brackets per symbol, each symbol's sorted by floor (Binance adjusts them per user)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _load_exact(body: bytes) -> Any:
    """load_json, with JSON numbers as exact Decimals (brackets are JSON numbers, not strings)."""
    try:
        return json.loads(body, object_pairs_hook=_unique_pairs, parse_float=Decimal, parse_int=Decimal,
                          parse_constant=_refuse_constant)
    except _DuplicateKey:
        raise BadResponse("body has an object with a duplicate key") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadResponse(f"body is not valid JSON ({type(exc).__name__})") from None


def _exact(value: Any, where: str) -> Decimal:
    """A non-negative exact number: a JSON number (as the SDK models have it) or a decimal string."""
    if isinstance(value, str) and _BRACKET_NUMBER.fullmatch(value):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0 or abs(value.adjusted()) > 30:
        raise BadResponse(f"field {where} is not a non-negative number")
    return value


def _bracket_table(rows: Any, coin: bool, where: str) -> tuple[Bracket, ...]:
    rows = _list(rows, f"{where}.brackets")
    if not rows or len(rows) > MAX_BRACKETS:
        raise BadResponse(f"{where}.brackets: expected 1 to {MAX_BRACKETS} brackets")
    cap_key = "qtyCap" if coin else "notionalCap"
    floor_keys = ("qtyFloor", "qtylFloor") if coin else ("notionalFloor",)  # qtylFloor: the docs' own spelling
    out: list[Bracket] = []
    for index, raw in enumerate(rows):
        item = _object(raw, f"{where}.brackets[{index}]")
        at = f"{where}.brackets[{index}]"
        floor_key = next((k for k in floor_keys if k in item), floor_keys[0])
        floor, cap = _exact(item.get(floor_key), f"{at}.{floor_key}"), _exact(item.get(cap_key), f"{at}.{cap_key}")
        mmr = _exact(item.get("maintMarginRatio"), f"{at}.maintMarginRatio")
        if cap <= floor or mmr >= 1:
            raise BadResponse(f"{at}: cap not above floor, or maintMarginRatio not below 1")
        cum = _exact(item["cum"], f"{at}.cum") if "cum" in item else None
        out.append(Bracket(floor, cap, mmr, cum if cum is not None else Decimal(-1)))
    out.sort(key=lambda b: b.floor)
    for low, high in zip(out, out[1:], strict=False):
        if high.floor < low.cap:
            raise BadResponse(f"{where}.brackets overlap")
    if any(b.cum < 0 for b in out):  # cum left out (the v1 COIN-M examples): Binance's own rule
        cum, previous = Decimal(0), Decimal(0)
        rebuilt = []
        for b in out:
            cum += b.floor * (b.mmr - previous)
            previous = b.mmr
            rebuilt.append(Bracket(b.floor, b.cap, b.mmr, cum))
        out = rebuilt
    return tuple(out)


def parse_leverage_brackets(body: bytes, coin: bool = False) -> Brackets:
    """`/fapi/v1/leverageBracket`, `/papi/v1/um/leverageBracket` (notional brackets) and `/dapi/v2/leverageBracket`
    (coin=True: brackets by quantity in the coin): `[{"symbol", "notionalCoef"?, "brackets": [...]}]`,
    or one such object (the answer to a `symbol` query).

    The brackets are the account's own (Binance adjusts them per user; `notionalCoef` only says
    by how much). A missing `cum` is derived by Binance's maintenance-amount rule.
    """
    data = _load_exact(body)
    items = [data] if isinstance(data, dict) else _list(data, "leverageBracket")
    out: dict[str, tuple[Bracket, ...]] = {}
    for index, raw in enumerate(items):
        item = _object(raw, f"leverageBracket[{index}]")
        symbol = _label(item.get("symbol"), SYMBOL_RE, f"leverageBracket[{index}].symbol")
        if symbol in out:
            raise BadResponse(f"symbol {symbol} appears twice")
        out[symbol] = _bracket_table(item.get("brackets"), coin, symbol)
    return out


def parse_coinm_leverage_brackets(body: bytes) -> Brackets:
    return parse_leverage_brackets(body, coin=True)


def parse_contract_sizes(body: bytes) -> Mapping[str, Decimal]:
    """`/dapi/v1/exchangeInfo` (public): USD per contract of every COIN-M symbol (`contractSize`).

    A symbol without a contract size is left out (nothing to recompute for it); one whose
    size is not a positive number makes the answer bad.
    """
    data = _object(_load_exact(body), "exchangeInfo")
    out: dict[str, Decimal] = {}
    for index, raw in enumerate(_list(data.get("symbols"), "symbols")):
        item = _object(raw, f"symbols[{index}]")
        if "contractSize" not in item:
            continue
        symbol = _label(item.get("symbol"), SYMBOL_RE, f"symbols[{index}].symbol")
        size = _exact(item["contractSize"], f"{symbol}.contractSize")
        if size == 0:
            raise BadResponse(f"field {symbol}.contractSize is 0")
        out[symbol] = size
    return out
