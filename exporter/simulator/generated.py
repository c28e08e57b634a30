"""Deterministic generated accounts for `--demo`, the standalone CLI and benchmarks."""

from __future__ import annotations

import random
from typing import Any

from .schema import format_decimal
from .state import SimAccount


def account_key(index: int) -> str:
    return f"key-{index:04d}"


def account_secret(index: int) -> str:
    return f"secret-{index:04d}"


def _rows(rng: random.Random, now_ms: int) -> list[dict[str, Any]]:
    wallet = rng.uniform(1_000, 250_000)
    unpnl = wallet * rng.uniform(-0.02, 0.04)
    available = wallet * rng.uniform(0.5, 0.95)
    usdc = rng.uniform(100, 20_000)
    zero = format_decimal(0.0)
    return [
        {
            "asset": "USDT",
            "balance": format_decimal(wallet),
            "crossWalletBalance": format_decimal(wallet),
            "crossUnPnl": format_decimal(unpnl),
            "availableBalance": format_decimal(available),
            "maxWithdrawAmount": format_decimal(available * 0.98),
            "marginAvailable": True,
            "updateTime": now_ms,
        },
        {
            "asset": "USDC",
            "balance": format_decimal(usdc),
            "crossWalletBalance": format_decimal(usdc),
            "crossUnPnl": zero,
            "availableBalance": format_decimal(usdc),
            "maxWithdrawAmount": format_decimal(usdc),
            "marginAvailable": True,
            "updateTime": now_ms,
        },
        # Untouched assets are listed with zeros and updateTime 0 (spec §2.2, unconfirmed).
        {
            "asset": "BNB",
            "balance": zero,
            "crossWalletBalance": zero,
            "crossUnPnl": zero,
            "availableBalance": zero,
            "maxWithdrawAmount": zero,
            "marginAvailable": True,
            "updateTime": 0,
        },
    ]


def generate_accounts(count: int, *, drift: bool = False, seed: int = 0) -> list[SimAccount]:
    """`count` HMAC accounts with keys key-0000.. and secrets secret-0000.., same data every run."""
    now_ms = 1_700_000_000_000
    accounts = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        alias = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") for _ in range(4))
        accounts.append(
            SimAccount(
                api_key=account_key(index),
                api_secret=account_secret(index),
                account_alias=alias,
                balances=_rows(rng, now_ms),
                drift=drift,
            )
        )
    return accounts
