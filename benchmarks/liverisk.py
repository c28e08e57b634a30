"""Live risk at scale (issue 24): 300 accounts x 5 positions over 50 symbols, marks every second.

    python -m benchmarks.liverisk             # N=300, 5 positions, 50 symbols, 45 s phases
    python -m benchmarks.liverisk --quick     # N=20, 10 s phases (smoke)
    python -m benchmarks.liverisk --forms-only   # only the stream-form measurement (no processes)

First, which market-stream form (in-process, no network): the CPU per second of handling what
Binance sends in one second, `<symbol>@markPrice@1s` for the symbols held (one message per symbol,
in the combined-stream envelope) against `!markPrice@arr@1s` (one message with every symbol of
the market, about 550 on USD-M), with the bytes each form carries per second.

Then one exporter process against the simulator in its own process (the simulator walks every
mark each second, its REST answers follow them, its market streams carry them), scraped every
15 s like Prometheus, with `live_risk` on and then off (`--no-compare` skips the second run):

1. warm-up: every account read once, the market stream up;
2. steady: CPU, RSS and threads of the exporter, REST weight per minute (simulator's request log);
3. latency (live risk only): the driver sets one symbol's mark to a new price and polls /metrics
   (and /probe of an account holding the symbol) back to back until the price shows: mark-to-
   exposition latency, p50 and p99.

With `--orders` (a third run): live risk and every account's USD-M user data stream (sharing
connections, 100 keys each), the exporter's CPU for `--seconds` idle, then while the simulator
pushes 1,000 ordinary ORDER_TRADE_UPDATE events a second across the accounts (issue 24's goal:
dropping them costs under 10 % of one core).

Writes benchmarks/results/liverisk.json (--quick: liverisk-quick.json).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procstats import (
    MB,
    RESULTS,
    BenchParser,
    ExporterProcess,
    SimProcess,
    alias,
    exporter_config,
    fill_defaults,
    machine_info,
    percentile,
    sample,
    write_json,
)
from exporter.streams.events import split_envelope
from exporter.streams.market import parse_mark

ALL_USDM_SYMBOLS = 550  # USD-M perpetual and delivery symbols with a mark price (order of magnitude, 2026)


def _update(symbol: str, price: float, now_ms: int) -> dict[str, Any]:
    """Binance's markPriceUpdate (USD-M example of its docs, this symbol and price)."""
    return {"e": "markPriceUpdate", "E": now_ms, "s": symbol, "p": f"{price:.8f}", "ap": f"{price:.8f}",
            "P": f"{price * 1.0001:.8f}", "i": f"{price * 0.9999:.8f}", "r": "0.00010000", "T": now_ms + 3_600_000}


def stream_forms(held: int, seconds: int = 3) -> dict[str, Any]:
    """CPU (ms per second of marks) and bytes per second: per-symbol streams vs the all-market array."""
    now_ms = int(time.time() * 1000)
    names = [f"SYM{k:03d}USDT" for k in range(ALL_USDM_SYMBOLS)]
    wanted = set(names[:held])
    per_symbol = [json.dumps({"stream": f"{s.lower()}@markPrice@1s", "data": _update(s, 100 + k, now_ms)},
                             separators=(",", ":")) for k, s in enumerate(names[:held])]
    array = json.dumps({"stream": "!markPrice@arr@1s",
                        "data": [_update(s, 100 + k, now_ms) for k, s in enumerate(names)]}, separators=(",", ":"))
    sink: dict[str, Any] = {}

    def one_by_one() -> None:
        for text in per_symbol:
            _, data = split_envelope(text)
            sink[data["s"]] = parse_mark(data, data["s"])

    def all_at_once() -> None:
        _, data = split_envelope(array)
        for item in data:
            symbol = item.get("s")
            if symbol in wanted:
                sink[symbol] = parse_mark(item, symbol)

    def cost_ms(func: Any) -> float:
        best = float("inf")
        for _ in range(seconds):
            start = time.perf_counter()
            for _ in range(20):
                func()
            best = min(best, (time.perf_counter() - start) / 20)
        return round(best * 1000, 3)

    return {"symbols_held": held, "symbols_in_market": ALL_USDM_SYMBOLS,
            "per_symbol": {"messages_per_s": held, "bytes_per_s": sum(len(t) for t in per_symbol),
                           "cpu_ms_per_s": cost_ms(one_by_one)},
            "all_market": {"messages_per_s": 1, "bytes_per_s": len(array), "cpu_ms_per_s": cost_ms(all_at_once)}}


def config(base_url: str, urls: dict[str, str], n: int, live: bool, interval: float,
           stream_url: str | None = None) -> dict:
    streams = {} if stream_url is None else {"stream_keys_per_connection": 100, "stream_connections_per_5m": 300}
    cfg = exporter_config(base_url, n, max_concurrency=None, timeout_seconds=None, cache_seconds=None,
                          weight_limit=24000, scrape_interval_seconds=interval,
                          market_stream_base_url=urls["usdm"], coinm_market_stream_base_url=urls["coinm"], **streams)
    cfg["defaults"].update(endpoint="account", positions=True, live_risk=live)
    if stream_url is not None:
        cfg["defaults"].update(user_stream=True, stream_base_url=stream_url + "/private")
    return cfg


def cpu_pct(exp: ExporterProcess, seconds: float) -> float:
    assert exp.ps is not None
    start = sample(exp.ps)
    time.sleep(seconds)
    end = sample(exp.ps)
    return round(100 * (end["cpu"] - start["cpu"]) / (end["t"] - start["t"]), 2)


def orders_run(args: Any, tmp: Path, log: Any) -> dict[str, Any]:
    """Exporter CPU idle and under 1,000 ordinary order events a second (user streams on, shared)."""
    with SimProcess(args.accounts, assets=2, positions=args.positions, symbols=args.symbols) as sim:
        urls = sim.command({"op": "market_urls"})
        stream_url = sim.command({"op": "stream_url"})["url"]
        session = requests.Session()
        exp = ExporterProcess(config(sim.base_url, urls, args.accounts, True, args.interval, stream_url),
                              tmp / "orders").start()
        try:
            warm = time.monotonic()
            while time.monotonic() - warm < 300:
                text = session.get(f"{exp.base_url}/metrics", timeout=60).text
                if text.count("binance_futures_stream_up{") >= args.accounts and " 0.0\n" not in "".join(
                        line + "\n" for line in text.splitlines() if line.startswith("binance_futures_stream_up{")):
                    break
                time.sleep(1.0)
            log(f"orders: streams up in {time.monotonic() - warm:.0f}s")
            time.sleep(5.0)  # the resyncs after the connections
            idle = cpu_pct(exp, args.seconds)
            sim.command({"op": "orders", "rate": 1000, "seconds": args.seconds + 5})
            time.sleep(1.0)
            loaded = cpu_pct(exp, args.seconds)
            pushed = sim.command({"op": "streams"})
            result = {"idle_cpu_pct": idle, "orders_1000_per_s_cpu_pct": loaded,
                      "order_events_cpu_pct": round(loaded - idle, 2), "stream_connections": pushed["open"]}
            log(f"orders: {result}")
            return result
        finally:
            exp.stop()


def weight_per_minute(sim: SimProcess, since: int, t0: float, t1: float) -> dict[str, float]:
    """REST weight per minute in the window: in all, and the metadata reads (once-an-hour brackets,
    modes every 15 minutes, exchangeInfo) apart from the data refreshes."""
    out = {"total": 0.0, "data": 0.0, "brackets": 0.0, "modes": 0.0, "other": 0.0}
    for at, path, _acct, _email, _status, weight in sim.requests(since)["entries"]:
        if t0 <= at < t1:
            kind = ("brackets" if "leverageBracket" in path else "modes" if "accountConfig" in path
                    else "data" if path.endswith(("/account", "/positionRisk", "/balance")) else "other")
            out[kind] += weight
            out["total"] += weight
    return {k: round(v * 60.0 / max(1e-9, t1 - t0), 1) for k, v in out.items()}


def steady(exp: ExporterProcess, session: requests.Session, seconds: float, interval: float) -> dict[str, Any]:
    assert exp.ps is not None
    start, t0, k, rss, threads, took = sample(exp.ps), time.time(), 0, [], [], []
    while time.time() - t0 < seconds:
        delay = t0 + k * interval - time.time()
        if delay > 0:
            time.sleep(min(delay, max(0.0, seconds - (time.time() - t0))))
            if time.time() - t0 >= seconds:
                break
        began = time.monotonic()
        session.get(f"{exp.base_url}/metrics", timeout=30)
        took.append(time.monotonic() - began)
        snap = sample(exp.ps)
        rss.append(snap["rss"])
        threads.append(snap["threads"])
        k += 1
    end, t1 = sample(exp.ps), time.time()
    return {"t0": t0, "t1": t1, "scrapes": k,
            "cpu_pct": round(100 * (end["cpu"] - start["cpu"]) / (end["t"] - start["t"]), 2),
            "rss_mb": round(max(rss + [end["rss"]]) / MB, 1), "threads": int(max(threads + [end["threads"]])),
            "scrape_s": _r(percentile(took, 50))}


def latencies(sim: SimProcess, session: requests.Session, url: str, samples: int, symbols: int,
              positions: int, n: int) -> dict[str, Any]:
    """Set a symbol's mark to a new price; seconds until /metrics (then /probe) shows it."""
    rng = random.Random(24)
    out: dict[str, list[float]] = {"metrics": [], "probe": []}
    for path in ("metrics", "probe"):
        for i in range(samples):
            holder = rng.randrange(n)
            k = (holder * positions + rng.randrange(positions)) % symbols
            price = f"{100 + k}.{rng.randrange(10**7, 10**8)}"
            needle = f'symbol="SYM{k:02d}USDT"}} {float(price)!r}'
            target = f"{url}/metrics" if path == "metrics" else f"{url}/probe?target={alias(holder)}"
            sim.command({"op": "set_mark", "symbol": f"SYM{k:02d}USDT", "price": price})
            start = time.monotonic()
            while time.monotonic() - start < 10:
                if needle in session.get(target, timeout=30).text:
                    out[path].append(time.monotonic() - start)
                    break
            time.sleep(0.2 + 0.1 * (i % 3))  # not in step with the simulator's second
    return {path: {"samples": len(v), "p50_s": _r(percentile(v, 50)), "p99_s": _r(percentile(v, 99)),
                   "max_s": _r(max(v) if v else None)} for path, v in out.items()}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run(args: Any, live: bool, tmp: Path, log: Any) -> dict[str, Any]:
    with SimProcess(args.accounts, assets=2, request_log=True, positions=args.positions,
                    symbols=args.symbols) as sim:
        urls = sim.command({"op": "market_urls"})
        session = requests.Session()
        exp = ExporterProcess(config(sim.base_url, urls, args.accounts, live, args.interval),
                              tmp / ("live" if live else "polling")).start()
        try:
            warm = time.monotonic()
            while time.monotonic() - warm < 300:
                text = session.get(f"{exp.base_url}/metrics", timeout=60).text
                if text.count('binance_futures_last_success_timestamp_seconds{') >= args.accounts and (
                        not live or 'binance_futures_market_stream_up{market="usdm"} 1.0' in text):
                    break
                time.sleep(1.0)
            log(f"live_risk={live}: warm in {time.monotonic() - warm:.0f}s")
            since = sim.requests(0)["next"]
            phase = steady(exp, session, args.seconds, args.interval)
            phase["rest_weight_per_min"] = weight_per_minute(sim, since, phase.pop("t0"), phase.pop("t1"))
            if live:
                phase["market_streams"] = {"connections": sim.command({"op": "market_streams"})["connections"],
                                           "subscriptions": len(sim.command({"op": "market_streams"})
                                                                ["subscriptions"])}
                phase["latency"] = latencies(sim, session, exp.base_url, args.samples, args.symbols, args.positions,
                                             args.accounts)
            log(f"live_risk={live}: {phase}")
            return phase
        finally:
            exp.stop()


def main(argv: list[str] | None = None) -> int:
    parser = BenchParser("liverisk", __doc__, str(RESULTS / "liverisk.json"), str(RESULTS / "liverisk-quick.json"))
    parser.add_argument("--accounts", type=int)
    parser.add_argument("--positions", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--forms-only", action="store_true")
    parser.add_argument("--no-compare", action="store_true", help="skip the run with live_risk off")
    parser.add_argument("--orders", action="store_true", help="a third run: 1,000 order events a second")
    parser.add_argument("--orders-only", action="store_true", help="only that run")
    args = parser.parse(argv)
    fill_defaults(args, accounts=(20, 300), seconds=(10.0, 45.0), samples=(4, 20))
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {"machine": machine_info(), "params": {
        k: getattr(args, k) for k in ("accounts", "positions", "symbols", "seconds", "samples", "interval")}}
    report["stream_forms"] = [stream_forms(held) for held in (args.symbols, ALL_USDM_SYMBOLS)]
    log(f"stream forms: {report['stream_forms']}")
    if not args.forms_only:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.orders_only:
                report["live_risk"] = run(args, True, Path(tmp), log)
                if not args.no_compare:
                    report["polling_only"] = run(args, False, Path(tmp), log)
            if args.orders or args.orders_only:
                report["order_events"] = orders_run(args, Path(tmp), log)
    write_json(Path(args.output), report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
