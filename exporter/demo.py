"""`--demo`: three simulated accounts on a loopback simulator, so a new user sees real metrics.

The keys are generated per run and never leave the process. `grid-bot` sits
below its USDT threshold, so the shipped low-balance alert fires in the demo stack.
"""

from __future__ import annotations

import secrets

from exporter.config import AccountConfig, Config
from exporter.secrets import Secret
from exporter.signing import HmacSigner
from exporter.simulator import SimAccount, Simulator

DEFAULT_THRESHOLDS = {"USDT": 1000.0}
# The simulator binds a random loopback port; a fixed `host` label keeps the demo's
# per-host series continuous across restarts.
DEMO_HOST = "demo-simulator"


def _row(asset: str, balance: str, cross: str, pnl: str, available: str, withdraw: str,
         margin: bool = True) -> dict:
    return {"accountAlias": "", "asset": asset, "balance": balance, "crossWalletBalance": cross,
            "crossUnPnl": pnl, "availableBalance": available, "maxWithdrawAmount": withdraw,
            "marginAvailable": margin, "updateTime": 0}


DEMO_ACCOUNTS: dict[str, tuple[str, list[dict], dict[str, float]]] = {
    "main": ("SgsR", [
        _row("USDT", "25012.48213350", "24890.11020000", "312.55000000", "18043.90210000", "18043.90210000"),
        _row("BNB", "12.40000000", "12.40000000", "0.00000000", "11.90000000", "11.90000000"),
        _row("BTC", "0.50000000", "0.50000000", "0.00000000", "0.48000000", "0.48000000"),
        _row("ETH", "0.00000000", "0.00000000", "0.00000000", "0.00000000", "0.00000000"),
    ], {"BNB": 2.0}),
    "hedge": ("fT2q", [
        _row("USDT", "8004.17000000", "7990.00000000", "-640.25000000", "6012.33000000", "6012.33000000"),
        _row("USDC", "3000.00000000", "3000.00000000", "0.00000000", "2950.00000000", "2950.00000000"),
    ], {}),
    "grid-bot": ("Kp9x", [
        _row("USDT", "1203.77000000", "1198.40000000", "-35.10000000", "420.66000000", "420.66000000"),
    ], {}),
}


def start_demo(weight_limit: int = 2400) -> tuple[Simulator, Config]:
    """Start the simulator and build the config that points at it."""
    sim_accounts: list[SimAccount] = []
    accounts: list[AccountConfig] = []
    sim = Simulator(weight_limit=weight_limit)
    base_url = sim.start()
    for alias, (code, rows, extra_thresholds) in DEMO_ACCOUNTS.items():
        key, secret = secrets.token_hex(32), secrets.token_hex(32)
        for row in rows:
            row["accountAlias"] = code
        sim_accounts.append(SimAccount(api_key=key, api_secret=secret, account_alias=code,
                                       balances=[dict(r) for r in rows], drift=True))
        accounts.append(AccountConfig(
            alias=alias, api_key=Secret(key), signer=HmacSigner(Secret(secret)), base_url=base_url,
            timeout_seconds=5.0, min_available_balance={**DEFAULT_THRESHOLDS, **extra_thresholds},
            host_label=DEMO_HOST,
        ))
    for account in sim_accounts:
        sim.add_account(account)
    return sim, Config(source="--demo", accounts=tuple(accounts), weight_limit=weight_limit)
