"""The simulator as a child process the benchmarks can steer over stdin/stdout.

    python -m benchmarks.simserver --accounts 300 --assets 5 --latency-ms 300
    python -m benchmarks.simserver --accounts 1 --sub-accounts 500 --request-log

Prints its base URL as the first stdout line, then answers one JSON command
per stdin line with one JSON line on stdout:

    {"op": "stats"}                          -> the simulator's stats()
    {"op": "latency", "ms": 50}              -> change the per-request latency
    {"op": "faults", "faults": {KEY: {"kind": "http_500", "latency_s": 0.2} | null, ...}}
    {"op": "requests", "since": 0}           -> {"entries": [[at, path, account, email, status, weight], ...],
                                                 "next": N, "dropped": D}  (needs --request-log)
    {"op": "stream_url"}                     -> {"url": the user data streams' WebSocket base}
    {"op": "mark", "account": i, "value": "1.5"}  -> account i's first balance row becomes `value`
                                                 (REST and an ACCOUNT_UPDATE on its streams agree)
    {"op": "pump", "rate": 100, "seconds": 60}    -> in the background, `rate` marks a second, accounts
                                                 in turn, each value the time it was set (Unix seconds)
    {"op": "pump_stop"}                      -> stop the pump
    {"op": "streams"}                        -> {"open": open user data stream connections,
                                                 "handshakes": accepted since start,
                                                 "subscriptions": listenKeys on the open connections}
    {"op": "market_urls"}                    -> {"usdm": ..., "coinm": ...} market-stream bases (--positions)
    {"op": "set_mark", "symbol": S, "price": P}  -> S's mark is P now, published on the market streams
    {"op": "market_streams"}                 -> {"connections": n, "subscriptions": [...]} (USD-M)
    {"op": "orders", "rate": 1000, "seconds": 20}  -> in the background, `rate` ordinary ORDER_TRADE_UPDATE
                                                 events a second on the accounts' USD-M streams, in turn

With `--positions N` (issue 24), every account also holds N USD-M cross positions over `--symbols`
symbols (SYM00USDT, ...; account i holds symbols i*N .. i*N+N-1, modulo), small beside its USDT
wallet, and the simulator's market walks their marks every second (REST follows them, the market
streams carry them; no liquidation).

and stops when stdin closes (so it never outlives the driver). Accounts use
`procstats.credentials(i, seed)`, with `--assets` non-zero balance rows each
(USDT, USDC, BNB, BTC, ETH, ...), unlike `generate_accounts`' three rows.
With `--sub-accounts N`, account 0 is also a master key owning N sub-accounts
(`sub_email(i)`), each with a USD-M futures account of `--assets` rows.

The request log names accounts by their index (`account`, None for an unknown
or missing key), never by key, so nothing secret crosses the pipe. `at` is
the arrival time (time.time()), when the request's weight is charged.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/simserver.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procstats import ASSETS, credentials
from exporter.simulator import SimPosition, format_decimal
from exporter.simulator.market import SimMarket
from testkit import Fault, SimAccount, SimFutures, SimSubAccount, Simulator


def balance_rows(index: int, assets: int, seed: int = 0) -> list[dict]:
    """`assets` non-zero rows for account `index`, the same every run."""
    rng = random.Random(seed * 1_000_003 + index)
    rows = []
    for n in range(assets):
        asset = ASSETS[n] if n < len(ASSETS) else f"AST{n}"
        wallet = rng.uniform(0.5, 250_000)
        available = wallet * rng.uniform(0.5, 0.95)
        rows.append({
            "asset": asset,
            "balance": format_decimal(wallet),
            "crossWalletBalance": format_decimal(wallet),
            "crossUnPnl": format_decimal(wallet * rng.uniform(-0.02, 0.04)),
            "availableBalance": format_decimal(available),
            "maxWithdrawAmount": format_decimal(available * 0.98),
            "marginAvailable": n < 3,
            "updateTime": 1_700_000_000_000 + index * 1000 + n,
        })
    return rows


def sub_email(index: int) -> str:
    return f"sub-{index:04d}@bench.example"


def symbol_name(index: int) -> str:
    return f"SYM{index:02d}USDT"


def positions_of(index: int, positions: int, symbols: int) -> list[SimPosition]:
    """`positions` small cross positions of account `index` (longs and shorts), the same every run."""
    out = []
    for n in range(positions):
        k = (index * positions + n) % symbols
        amount = ("" if (index + n) % 2 == 0 else "-") + f"{1 + k % 7}.000"
        out.append(SimPosition(symbol_name(k), amount, f"{100 + k}.5", leverage=10))
    return out


def build_accounts(count: int, assets: int, seed: int = 0, sub_accounts: int = 0, positions: int = 0,
                   symbols: int = 50) -> list[SimAccount]:
    accounts = []
    for index in range(count):
        key, secret = credentials(index, seed)
        subs = [SimSubAccount(email=sub_email(i), usdm=SimFutures(balances=balance_rows(100_000 + i, assets, seed)))
                for i in range(sub_accounts if index == 0 else 0)]
        accounts.append(SimAccount(api_key=key, api_secret=secret, account_alias=f"A{index:04d}",
                                   balances=balance_rows(index, assets, seed), sub_accounts=subs,
                                   positions=positions_of(index, positions, symbols)))
    return accounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simserver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--assets", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--weight-limit", type=int, default=1_000_000_000)
    parser.add_argument("--sapi-weight-limit", type=int, default=12000, help="per /sapi endpoint, like Binance")
    parser.add_argument("--sub-accounts", type=int, default=0, help="sub-accounts of account 0 (a master key)")
    parser.add_argument("--request-log", action="store_true", help="keep a log of every request (op requests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positions", type=int, default=0, help="USD-M positions per account, marks moving")
    parser.add_argument("--symbols", type=int, default=50, help="symbols the positions spread over")
    args = parser.parse_args(argv)

    market = None
    if args.positions:
        market = SimMarket(marks={symbol_name(k): f"{100 + k}" for k in range(args.symbols)}, volatility=0.0005)
    sim = Simulator(build_accounts(args.accounts, args.assets, args.seed, args.sub_accounts, args.positions,
                                   args.symbols),
                    latency_s=args.latency_ms / 1000.0, weight_limit=args.weight_limit,
                    sapi_weight_limit=args.sapi_weight_limit, request_log=args.request_log, market=market)
    sim.auto_liquidate = False
    index_of = {credentials(i, args.seed)[0]: i for i in range(args.accounts)}
    rows = {i: balance_rows(i, args.assets, args.seed) for i in range(args.accounts)}

    def mark(index: int, value: str) -> None:
        rows[index] = [{**rows[index][0], "balance": value}] + rows[index][1:]
        sim.set_balances(credentials(index, args.seed)[0], rows[index])

    stop_pump = threading.Event()

    def pump(rate: float, seconds: float) -> None:
        start, n = time.monotonic(), 0
        stop_pump.clear()
        while n < rate * seconds and not stop_pump.is_set():
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mark(n % args.accounts, f"{time.time():.6f}")
            n += 1

    def orders(rate: float, seconds: float) -> None:
        """Ordinary order events (a bot's limit orders), the kind the exporter must drop cheaply."""
        start, n = time.monotonic(), 0
        while n < rate * seconds and not stop_pump.is_set():
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            order = {"s": "SYM00USDT", "c": f"web_{n:016d}", "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "0.001",
                     "p": "97103.04", "ap": "0", "sp": "0", "x": "NEW", "X": "NEW", "i": 8886774 + n, "l": "0",
                     "z": "0", "L": "0", "N": "USDT", "n": "0", "T": int(time.time() * 1000), "t": 0, "b": "0",
                     "a": "9.91", "m": False, "R": False, "wt": "CONTRACT_PRICE", "ot": "LIMIT", "ps": "BOTH",
                     "cp": False, "rp": "0", "V": "EXPIRE_TAKER", "pm": "NONE", "gtd": 0}
            sim.push_event(credentials(n % args.accounts, args.seed)[0], "usdm",
                           {"e": "ORDER_TRADE_UPDATE", "E": int(time.time() * 1000), "T": order["T"], "o": order})
            n += 1

    print(sim.start(), flush=True)
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                op = cmd.get("op")
                if op == "stats":
                    reply: dict = sim.stats()
                elif op == "latency":
                    sim.latency_s = float(cmd["ms"]) / 1000.0
                    reply = {"ok": True}
                elif op == "requests":
                    if sim.request_log is None:
                        raise ValueError("start the simulator with --request-log")
                    since = int(cmd.get("since", 0))
                    entries = sim.request_log.since(since)
                    reply = {"entries": [[e.at, e.path, index_of.get(e.api_key or ""), e.email, e.status, e.weight]
                                         for e in entries],
                             "next": since + len(entries), "dropped": sim.request_log.dropped}
                elif op == "stream_url":
                    reply = {"url": sim.stream_url}
                elif op == "mark":
                    mark(int(cmd["account"]), str(cmd["value"]))
                    reply = {"ok": True}
                elif op == "pump":
                    threading.Thread(target=pump, args=(float(cmd["rate"]), float(cmd["seconds"])),
                                     daemon=True).start()
                    reply = {"ok": True}
                elif op == "orders":
                    stop_pump.clear()
                    threading.Thread(target=orders, args=(float(cmd["rate"]), float(cmd["seconds"])),
                                     daemon=True).start()
                    reply = {"ok": True}
                elif op == "pump_stop":
                    stop_pump.set()
                    reply = {"ok": True}
                elif op == "streams":
                    reply = {"open": sim.open_streams(), "handshakes": sim.stream_connections,
                             "subscriptions": sim.stream_subscriptions()}
                elif op == "market_urls":
                    reply = {"usdm": sim.market_stream_url, "coinm": sim.coinm_market_stream_url}
                elif op == "set_mark":
                    assert sim.market is not None, "start the simulator with --positions"
                    sim.market.set_mark(str(cmd["symbol"]), str(cmd["price"]))
                    sim.publish_marks()
                    reply = {"ok": True}
                elif op == "market_streams":
                    reply = {"connections": sim.market_connections("usdm"),
                             "subscriptions": sim.market_subscriptions("usdm")}
                elif op == "faults":
                    for key, spec in cmd["faults"].items():
                        sim.set_fault(key, None if spec is None else Fault(**spec))
                    reply = {"ok": True}
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except Exception as exc:  # noqa: BLE001 - report to the driver, keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
