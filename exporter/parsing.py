"""Turn Binance's balance JSON into typed rows, rejecting anything we can't trust.

Decimals arrive as strings ("122607.35137903"). They are checked against a
strict decimal grammar before conversion, because Python's float() also
accepts "nan", "inf", "1_000" and " 1 ", none of which Binance sends and none
of which we want to export as a balance.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

DECIMAL_RE = re.compile(r"-?\d{1,30}(\.\d{1,30})?")

# JSON field -> attribute name, in the order metrics are emitted.
DECIMAL_FIELDS = (
    ("balance", "balance"),
    ("availableBalance", "available_balance"),
    ("crossWalletBalance", "cross_wallet_balance"),
    ("crossUnPnl", "cross_unrealized_pnl"),
    ("maxWithdrawAmount", "max_withdraw_amount"),
)


class BadResponse(ValueError):
    """The answer was not the balance array we expect; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class AssetBalance:
    asset: str
    balance: float
    available_balance: float
    cross_wallet_balance: float
    cross_unrealized_pnl: float
    max_withdraw_amount: float
    margin_available: bool | None
    update_time_ms: int | None

    def is_zero(self) -> bool:
        return not (self.balance or self.available_balance or self.cross_wallet_balance
                    or self.cross_unrealized_pnl or self.max_withdraw_amount)


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    account_alias: str | None
    assets: tuple[AssetBalance, ...]


def parse_decimal(value: Any, field_name: str) -> float:
    if isinstance(value, str):
        if not DECIMAL_RE.fullmatch(value):
            raise BadResponse(f"field {field_name} is not a decimal string")
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    raise BadResponse(f"field {field_name} has type {type(value).__name__}, expected a decimal string")


def _row(item: Any, index: int) -> AssetBalance:
    if not isinstance(item, dict):
        raise BadResponse(f"element {index} is {type(item).__name__}, expected an object")
    asset = item.get("asset")
    if not isinstance(asset, str) or not asset or len(asset) > 32 or not asset.isprintable():
        raise BadResponse(f"element {index} has no valid asset name")
    values: dict[str, Any] = {}
    for json_name, attr in DECIMAL_FIELDS:
        if json_name not in item:
            raise BadResponse(f"asset {asset}: field {json_name} is missing")
        values[attr] = parse_decimal(item[json_name], f"{asset}.{json_name}")
    margin = item.get("marginAvailable")
    if margin is not None and not isinstance(margin, bool):
        raise BadResponse(f"asset {asset}: field marginAvailable is not a boolean")
    update = item.get("updateTime")
    if update is not None and (isinstance(update, bool) or not isinstance(update, int) or update < 0):
        raise BadResponse(f"asset {asset}: field updateTime is not a millisecond timestamp")
    return AssetBalance(asset=asset, margin_available=margin, update_time_ms=update, **values)


def parse_balances(body: bytes | str) -> BalanceSnapshot:
    """Parse a `/fapi/v{2,3}/balance` body; raise BadResponse with a loggable reason."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadResponse(f"body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, list):
        raise BadResponse(f"expected a JSON array of assets, got {type(data).__name__}")
    rows: list[AssetBalance] = []
    seen: set[str] = set()
    account_alias: str | None = None
    for index, item in enumerate(data):
        row = _row(item, index)
        if row.asset in seen:
            raise BadResponse(f"asset {row.asset} appears twice")
        seen.add(row.asset)
        rows.append(row)
        alias = item.get("accountAlias")
        if isinstance(alias, str) and alias and account_alias is None:
            account_alias = alias[:64]
    return BalanceSnapshot(account_alias=account_alias, assets=tuple(rows))


def parse_error(body: bytes | str) -> tuple[int | None, str | None]:
    """Binance's `{"code": -1022, "msg": "..."}`; (None, None) for anything else (HTML, text)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    msg = data.get("msg")
    return (code if isinstance(code, int) and not isinstance(code, bool) else None,
            msg[:200] if isinstance(msg, str) else None)
