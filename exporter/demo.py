"""`--demo`: simulated accounts on a loopback simulator, so a new user sees real metrics in every market.

The keys are generated per run and never leave the process. Every market
points at the one simulator. What the demo shows on purpose:

* `main`: USD-M and COIN-M balances;
* `hedge`: account endpoint with positions (hedge mode); its ETHUSDT short
  stays within 3.8-6.7 % of its liquidation price while the mark drifts, under
  the account's min_liquidation_distance of 10 %, so that alert fires; its
  ADAUSDT long is an isolated position (its own margin ratio, far from the
  threshold), and it also holds a USDC margin pool;
* `grid-bot`: below its USDT threshold, so the low-balance alert fires;
* `multi`: an account in Multi-Assets mode (USDT and USDC as one pool, its
  available balance in USD against min_account_available_balance);
* `portfolio`: a Portfolio Margin account with a uniMMR alert threshold;
* `master`: a master key with sub-accounts (one frozen, one without futures,
  one excluded by the config);
* `degen` (issue 24, live risk): a cross SOLUSDT long about 2.5 % above its
  liquidation price, on the simulator's live market, whose SOLUSDT mark swings
  4 % over 10 minutes on top of a random walk: its margin ratio moves every
  second, and within a few minutes Binance's stand-in liquidates it (the
  ORDER_TRADE_UPDATE events of a liquidation on its user data stream); a
  minute later the position is back at the new mark, for the next round (no
  risk thresholds, so the alerts the other accounts show stay the only ones);
* user data streams on for every account (the simulator's WebSocket server):
  `hedge` gets a MARGIN_CALL each time the drift takes its ETHUSDT short
  within 5 % of its liquidation price (for part of every 10-minute cycle).
"""

from __future__ import annotations

import secrets
from typing import Any

from exporter.config import AccountConfig, Config, SubAccounts
from exporter.secrets import Secret
from exporter.signing import HmacSigner
from exporter.simulator import (
    SimAccount,
    SimFutures,
    SimPortfolio,
    SimPosition,
    SimSubAccount,
    Simulator,
    balance_row,
    pm_row,
)
from exporter.simulator.market import SimMarket

DEFAULT_THRESHOLDS = {"USDT": 1000.0}
# The simulator binds a random loopback port; a fixed `host` label keeps the demo's
# per-host series continuous across restarts.
DEMO_HOST = "demo-simulator"
SUBS = "@demo.example"

# alias: (SimAccount fields, AccountConfig fields)
DEMO_ACCOUNTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "main": ({
        "account_alias": "SgsR",
        "balances": [balance_row("USDT", "25012.48213350", "18043.90210000", cross="24890.11020000", pnl="312.55"),
                     balance_row("BNB", "12.4", "11.9"), balance_row("BTC", "0.5", "0.48"), balance_row("ETH", 0)],
        "coinm_balances": [balance_row("BTC", "0.25", "0.21", coin=True), balance_row("ETH", "3.1", coin=True)],
        "coinm_positions": [SimPosition("BTCUSD_PERP", "40", "61200.5", "62750.1", leverage=10)],
    }, {"markets": ("usdm", "coinm"), "min_available_balance": {**DEFAULT_THRESHOLDS, "BNB": 2.0}}),
    "hedge": ({
        "account_alias": "fT2q",
        "balances": [balance_row("USDT", "8004.17", "3012.33", cross="7794.17"), balance_row("USDC", "3000", "2950")],
        "positions": [
            SimPosition("ADAUSDT", "5000", "0.40", "0.41047590", "LONG", leverage=10, isolated=True,
                        isolated_wallet="210", liquidation_price="0.30"),
            SimPosition("BTCUSDT", "0.500", "64000", "62750.10000000", "LONG", leverage=10,
                        liquidation_price="49120.55"),
            SimPosition("ETHUSDT", "-4.000", "3300", "3420.50000000", "SHORT", leverage=20,
                        liquidation_price="3600.25", open_order_margin="35.5"),
        ],
    }, {"endpoint": "account", "positions": True, "max_margin_ratio": 0.5, "min_liquidation_distance": 0.1}),
    "grid-bot": ({
        "account_alias": "Kp9x",
        "balances": [balance_row("USDT", "1203.77", "420.66", cross="1198.40", pnl="-35.10")],
    }, {}),
    "multi": ({
        "account_alias": "Mu1t",
        "multi_assets": True,
        "balances": [balance_row("USDT", "2500", "2100"), balance_row("USDC", "1500", "1400")],
        "positions": [SimPosition("BTCUSDT", "0.100", "64000", "62750.10000000", leverage=10)],
    }, {"endpoint": "account", "positions": True, "max_margin_ratio": 0.5, "min_account_available_balance": 1000.0}),
    "portfolio": ({
        "account_alias": "Pm7w",
        "pm": SimPortfolio(balances=[pm_row("USDT", "42000", "-850.5", free="5000"),
                                     pm_row("USDC", "8000", "120.25", cm_wallet="0", cm_pnl="")],
                           maint_margin="14500", initial_margin="21000", collateral_rate="0.97"),
    }, {"markets": ("pm",), "min_uni_mmr": 2.0}),
    "degen": ({
        "account_alias": "Dgn5",
        "balances": [balance_row("USDT", "665.6")],
        "positions": [SimPosition("SOLUSDT", "100", "150", leverage=25)],
    }, {"endpoint": "account", "positions": True, "min_available_balance": {}}),  # no thresholds: no new alerts
    "master": ({
        "account_alias": "Mstr",
        "balances": [balance_row("USDT", "15000", "14100")],
        "sub_accounts": [
            SimSubAccount("bot-1" + SUBS, SimFutures([balance_row("USDT", "5230.5", "4100")],
                                                     [SimPosition("BTCUSDT", "0.050", "63000", "62750.1")])),
            SimSubAccount("bot-2" + SUBS, SimFutures([balance_row("USDT", "2100")]),
                          SimFutures([balance_row("BTC", "0.42", coin=True)])),
            SimSubAccount("reserve" + SUBS, SimFutures([balance_row("USDT", "1800")]), frozen=True),
            SimSubAccount("spot-only" + SUBS, usdm=None),
            SimSubAccount("test-1" + SUBS),
        ],
    }, {"sub_accounts": SubAccounts(include=("*" + SUBS,), exclude=("test-*",), markets=("usdm", "coinm"),
                                    aliases={"bot-1" + SUBS: "bot-1", "bot-2" + SUBS: "bot-2"})}),
}


DEMO_CONCURRENCY = 32
# The live market of --demo: only `degen`'s symbol, so the other accounts keep their drifting figures.
DEMO_MARKS = {"SOLUSDT": "150"}
DEMO_SWING = {"SOLUSDT": -0.04}  # down first: the long meets its liquidation price within minutes
DEMO_VOLATILITY = 0.0008
DEMO_REOPEN_S = 60.0
DEMO_KEYS_PER_CONNECTION = 10


def start_demo(weight_limit: int = 2400) -> tuple[Simulator, Config]:
    """Start the simulator and build the config that points at it."""
    sim = Simulator(weight_limit=weight_limit, market=SimMarket(marks=dict(DEMO_MARKS), swing=dict(DEMO_SWING),
                                                               volatility=DEMO_VOLATILITY))
    sim.reopen_after_s = DEMO_REOPEN_S
    base_url = sim.start()
    urls = {key: base_url for key in ("base_url", "coinm_base_url", "pm_base_url", "sapi_base_url")}
    # --demo turns the user data streams on: margin calls and balance changes arrive as events.
    streams = {"user_stream": True, "stream_base_url": sim.stream_url + "/private",
               "coinm_stream_base_url": sim.stream_url, "pm_stream_base_url": sim.stream_url + "/pm"}
    accounts = []
    for alias, (state, settings) in DEMO_ACCOUNTS.items():
        key, secret = secrets.token_hex(32), secrets.token_hex(32)
        sim.add_account(SimAccount(api_key=key, api_secret=secret, drift=True, **state))
        accounts.append(AccountConfig(
            alias=alias, api_key=Secret(key), signer=HmacSigner(Secret(secret)), timeout_seconds=5.0,
            host_label=DEMO_HOST, **{"min_available_balance": DEFAULT_THRESHOLDS, **urls, **streams, **settings}))
    # A handful of accounts and sub-accounts: 32 fetches at once is plenty, and keeps the pool (whose
    # both ends are in this process) within a container's usual 1,024 open files.
    # The demo's USD-M streams share one private connection (stream_keys_per_connection), so the
    # shared form is what --demo shows; the simulator serves it like Binance's stream mode.
    return sim, Config(source="--demo", accounts=tuple(accounts), weight_limit=weight_limit,
                       max_concurrency=DEMO_CONCURRENCY, stream_keys_per_connection=DEMO_KEYS_PER_CONNECTION,
                       market_stream_base_url=sim.market_stream_url,
                       coinm_market_stream_base_url=sim.coinm_market_stream_url)
