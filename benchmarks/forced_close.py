"""Cost of telling forced closes from ordinary order events (issue 24), per event, in one process.

    python -m benchmarks.forced_close            # 200,000 events per case
    python -m benchmarks.forced_close --quick    # 20,000 (smoke)

An ORDER_TRADE_UPDATE that is not a forced close must cost little: a busy bot
account sends thousands a minute. Cases: the pre-filter alone on an ordinary
event (text, as websockets hands it over, and bytes), json.loads of the same
event (what parsing every event would cost), and the whole path of a forced
close (pre-filter, json.loads, classify, once-per-order). The share of one core
at the issue's load (1,000 order events a second across 300 accounts) is
events/s x cost. Writes benchmarks/results/forced_close.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.forced_close import OnceSet, may_be_forced_close, new_forced_close

ORDER = {"s": "BTCUSDT", "c": "web_Qw8sd0aXh4lE2Pp", "S": "SELL", "o": "LIMIT", "f": "GTC", "q": "0.001",
         "p": "97103.04", "ap": "0", "sp": "0", "x": "NEW", "X": "NEW", "i": 8886774, "l": "0", "z": "0",
         "L": "0", "N": "USDT", "n": "0", "T": 1568879465650, "t": 0, "b": "0", "a": "9.91", "m": False,
         "R": False, "wt": "CONTRACT_PRICE", "ot": "LIMIT", "ps": "BOTH", "cp": False, "rp": "0",
         "V": "EXPIRE_TAKER", "pm": "NONE", "gtd": 0}
LOAD_EVENTS_PER_S = 1000


def _event(**order: Any) -> str:
    return json.dumps({"e": "ORDER_TRADE_UPDATE", "E": 1568879465651, "T": 1568879465650,
                       "o": {**ORDER, **order}}, separators=(",", ":"))


def _per_call_ns(func: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter_ns()
        for _ in range(count):
            func()
        best = min(best, (time.perf_counter_ns() - start) / count)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "forced_close.json"))
    args = parser.parse_args(argv)
    count = 20_000 if args.quick else 200_000
    ordinary = _event()
    ordinary_bytes = ordinary.encode()
    forced = _event(c="autoclose-1568879465650123", o="LIQUIDATION", x="CALCULATED", X="FILLED")
    once = OnceSet()

    def whole_path() -> object:
        return new_forced_close(forced, once)

    cases = {
        "prefilter_ordinary_str_ns": _per_call_ns(lambda: may_be_forced_close(ordinary), count),
        "prefilter_ordinary_bytes_ns": _per_call_ns(lambda: may_be_forced_close(ordinary_bytes), count),
        "whole_path_ordinary_ns": _per_call_ns(lambda: new_forced_close(ordinary, once), count),
        "json_loads_ordinary_ns": _per_call_ns(lambda: json.loads(ordinary), count),
        "forced_close_whole_path_ns": _per_call_ns(whole_path, count),
    }
    share = cases["whole_path_ordinary_ns"] * LOAD_EVENTS_PER_S / 1e9
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "params": {"events_per_case": count, "event_bytes": len(ordinary_bytes)},
              "results": {**{k: round(v, 1) for k, v in cases.items()},
                          "core_share_at_1000_events_per_s": share}}
    for name, value in report["results"].items():
        print(f"{name}: {value}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
