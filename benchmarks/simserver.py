"""The simulator as a child process the benchmarks can steer over stdin/stdout.

    python -m benchmarks.simserver --accounts 300 --assets 5 --latency-ms 300

Prints its base URL as the first stdout line, then answers one JSON command
per stdin line with one JSON line on stdout:

    {"op": "stats"}                          -> the simulator's stats()
    {"op": "latency", "ms": 50}              -> change the per-request latency
    {"op": "faults", "faults": {KEY: {"kind": "http_500", "latency_s": 0.2} | null, ...}}

and stops when stdin closes (so it never outlives the driver). Accounts use
`procstats.credentials(i, seed)`, with `--assets` non-zero balance rows each
(USDT, USDC, BNB, BTC, ETH, ...), unlike `generate_accounts`' three rows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/simserver.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procstats import ASSETS, credentials  # noqa: E402
from exporter.simulator import format_decimal  # noqa: E402
from testkit import Fault, SimAccount, Simulator  # noqa: E402


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


def build_accounts(count: int, assets: int, seed: int = 0) -> list[SimAccount]:
    accounts = []
    for index in range(count):
        key, secret = credentials(index, seed)
        accounts.append(SimAccount(api_key=key, api_secret=secret, account_alias=f"A{index:04d}",
                                   balances=balance_rows(index, assets, seed)))
    return accounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simserver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--assets", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--weight-limit", type=int, default=1_000_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sim = Simulator(build_accounts(args.accounts, args.assets, args.seed),
                    latency_s=args.latency_ms / 1000.0, weight_limit=args.weight_limit)
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
