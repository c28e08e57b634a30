"""Deterministic generated accounts (key-0000/secret-0000, ...) for the standalone simulator and benchmarks."""

from __future__ import annotations

import random
from typing import Any

from exporter.simulator import SimAccount, balance_row


def account_key(index: int) -> str:
    return f"key-{index:04d}"


def account_secret(index: int) -> str:
    return f"secret-{index:04d}"


def _rows(rng: random.Random, now_ms: int) -> list[dict[str, Any]]:
    wallet = rng.uniform(1_000, 250_000)
    unpnl = wallet * rng.uniform(-0.02, 0.04)
    available = wallet * rng.uniform(0.5, 0.95)
    usdc = rng.uniform(100, 20_000)
    # Untouched assets are listed with zeros and updateTime 0 (spec §2.2, unconfirmed).
    return [balance_row("USDT", wallet, available, pnl=unpnl, withdraw=available * 0.98, update_time=now_ms),
            balance_row("USDC", usdc, update_time=now_ms),
            balance_row("BNB", 0)]


def generate_accounts(count: int, *, drift: bool = False, seed: int = 0) -> list[SimAccount]:
    """`count` HMAC accounts with keys key-0000.. and secrets secret-0000.., same data every run."""
    accounts = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        alias = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") for _ in range(4))
        accounts.append(SimAccount(api_key=account_key(index), api_secret=account_secret(index),
                                   account_alias=alias, balances=_rows(rng, 1_700_000_000_000), drift=drift))
    return accounts
