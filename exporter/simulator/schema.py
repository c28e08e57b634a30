"""The balance-row schema of /fapi/v2|v3/balance (spec §2.2), shared by state, drift and faults."""

from __future__ import annotations

from typing import Any

# Decimal fields travel as JSON strings with 8 decimals, never as numbers.
DECIMAL_FIELDS: tuple[str, ...] = (
    "balance",
    "crossWalletBalance",
    "crossUnPnl",
    "availableBalance",
    "maxWithdrawAmount",
)


def example_row(account_alias: str = "SgsR") -> dict[str, Any]:
    """The official documentation example, so a bare SimAccount answers like the docs."""
    return {
        "accountAlias": account_alias,
        "asset": "USDT",
        "balance": "122607.35137903",
        "crossWalletBalance": "23.72469206",
        "crossUnPnl": "0.00000000",
        "availableBalance": "23.72469206",
        "maxWithdrawAmount": "23.72469206",
        "marginAvailable": True,
        "updateTime": 1617939110373,
    }


def format_decimal(value: float) -> str:
    text = f"{value:.8f}"
    return "0.00000000" if text == "-0.00000000" else text
