"""Standalone simulator for benchmarks and manual poking.

Prints its base URL as the first stdout line (so a parent process can read it
before sending traffic), then serves until SIGTERM/SIGINT. With --stats-file,
stats are written as JSON on SIGUSR1 and on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from types import FrameType

from .accounts import generate_accounts
from .simulator import Simulator


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testkit", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--accounts", type=int, default=1, help="generated accounts key-0000../secret-0000..")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay on every signed request")
    parser.add_argument("--clock-skew-ms", type=int, default=0)
    parser.add_argument("--weight-limit", type=int, default=2400)
    parser.add_argument("--v2-balance-weight", type=int, default=5)
    parser.add_argument("--max-recv-window-ms", type=int, default=60000, help="0 disables the cap")
    parser.add_argument("--ban-after-429s", type=int, default=3)
    parser.add_argument("--no-retry-after", action="store_true", help="omit Retry-After on 429/418")
    parser.add_argument("--drift", action="store_true", help="balances move slowly with time")
    parser.add_argument("--stats-file", help="write stats JSON here on SIGUSR1 and on exit")
    return parser.parse_args(argv)


def _write_stats(sim: Simulator, path: str) -> None:
    """Atomic replace, so a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".simstats-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(sim.stats(), fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sim = Simulator(
        generate_accounts(args.accounts, drift=args.drift),
        host=args.host,
        port=args.port,
        clock_skew_ms=args.clock_skew_ms,
        latency_s=args.latency_ms / 1000.0,
        weight_limit=args.weight_limit,
        v2_balance_weight=args.v2_balance_weight,
        max_recv_window_ms=args.max_recv_window_ms or None,
        ban_after_429s=args.ban_after_429s,
        send_retry_after=not args.no_retry_after,
    )
    wake = threading.Event()
    pending = {"stop": False, "dump": False}

    # Handlers only set flags: the main loop does the work outside signal context.
    def on_stop(signum: int, frame: FrameType | None) -> None:
        pending["stop"] = True
        wake.set()

    def on_dump(signum: int, frame: FrameType | None) -> None:
        pending["dump"] = True
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, on_dump)

    print(sim.start(), flush=True)
    try:
        while not pending["stop"]:
            wake.wait(1.0)
            wake.clear()
            if pending["dump"]:
                pending["dump"] = False
                if args.stats_file:
                    _write_stats(sim, args.stats_file)
    finally:
        sim.stop()
        if args.stats_file:
            _write_stats(sim, args.stats_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
