"""User data streams at scale (issue 16): N streaming accounts against the simulator.

    python -m benchmarks.streams              # N=300, 60 s phases
    python -m benchmarks.streams --quick      # N=20, short phases (smoke)
    python -m benchmarks.streams --connect-only   # only the connection comparison below
    python -m benchmarks.streams --thousand       # issue 22: N=1000 sharing 50 keys a connection,
                                                  # 20 s phases

First, connecting: N accounts' USD-M streams at the default attempt limit
(`stream_connections_per_5m: 150`), once with one connection per account
(`stream_keys_per_connection: 1`) and once sharing (`--keys-per-connection`,
default 100): connections used and time until every stream is up.

Phases, one exporter process with `user_stream: true` for every account
(weight_limit 2400, the default budget share, scrape every 15 s like Prometheus):

1. connect: until every stream is up (`binance_futures_stream_up`);
2. idle: streams open, no events; RSS, threads, CPU, REST weight per minute;
3. load: the simulator changes `--rate` balances a second (accounts in turn;
   each change is one ACCOUNT_UPDATE on that account's stream, and REST agrees);
   RSS, threads, CPU, REST weight per minute;
4. latency, still under load: the driver sets one account's balance to the
   current time and polls `/probe?target=<alias>` back to back until the
   value shows: event-to-exposition latency (/probe renders like /metrics,
   for one account, so polling it does not load the exporter);

then the same idle phase with `user_stream: false` (REST polling only) for the
weight comparison. "Same freshness": what polling would cost to keep every
balance as fresh as the stream does is computed (N x weight x 60 / age),
since the budget cannot buy it.

The simulator runs in its own process; its request log gives the weight.
"""

from __future__ import annotations

import argparse
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
    fmt,
    md_table,
    median,
    metric_samples,
    percentile,
    progress_log,
    report_head,
    sample,
    write_json,
)

BALANCE_WEIGHT = 5  # /fapi/v3/balance


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = BenchParser("streams", __doc__, "streams.json", "streams.json", strict=False)
    parser.add_argument("--accounts", type=int)
    parser.add_argument("--phase-seconds", type=float)
    parser.add_argument("--rate", type=float, default=100.0, help="events a second in the load phase")
    parser.add_argument("--latency-samples", type=int)
    parser.add_argument("--interval", type=float, default=15.0, help="scrape interval")
    parser.add_argument("--connect-only", action="store_true", help="only the connection comparison")
    parser.add_argument("--keys-per-connection", type=int, default=100, help="the shared run's setting")
    parser.add_argument("--skip-unshared", action="store_true",
                        help="connection comparison: only the shared run (the other takes 5 minutes at N=300)")
    parser.add_argument("--connect-limit", type=int, default=150,
                        help="stream_connections_per_5m of the connection comparison (the exporter's default)")
    parser.add_argument("--phase-keys-per-connection", type=int, default=1,
                        help="stream_keys_per_connection of the idle/load/latency phases")
    parser.add_argument("--latency-endpoint", choices=("probe", "metrics"), default="probe",
                        help="where the latency driver looks for its change: /probe (one account) or /metrics")
    parser.add_argument("--weight-limit", type=int, default=2400,
                        help="the exporter's weight_limit (the simulator sets no practical limit)")
    parser.add_argument("--thousand", action="store_true",
                        help="issue 22's run: 1000 accounts, 50 keys a connection in every part (no unshared "
                             "run), weight_limit 24000 (so the after-the-gap resyncs of 1000 accounts take seconds, "
                             "not minutes), 20 s phases, 100 latency samples (on /probe: at 1000 accounts one "
                             "/metrics takes about a second to render, which would hide the stream's own latency)")
    args = parser.parse(argv)
    if args.thousand:
        args.accounts = args.accounts or 1000
        args.keys_per_connection = args.phase_keys_per_connection = 50
        args.skip_unshared = True
        args.weight_limit = 24000
        args.phase_seconds = args.phase_seconds or 20.0
        args.latency_samples = args.latency_samples or 100
        if args.output == RESULTS / "streams.json":
            args.output = RESULTS / "streams-1000.json"
    fill_defaults(args, accounts=(20, 300), phase_seconds=(8.0, 60.0), latency_samples=(20, 200))
    return args


def config(base_url: str, stream_url: str, n: int, streams: bool, interval: float, connect_limit: int = 300,
           keys_per_connection: int = 1, weight_limit: int = 2400) -> dict:
    cfg = exporter_config(base_url, n, max_concurrency=None, timeout_seconds=None, cache_seconds=None,
                          weight_limit=weight_limit, scrape_interval_seconds=interval,
                          stream_connections_per_5m=connect_limit, stream_keys_per_connection=keys_per_connection)
    if streams:
        cfg["defaults"].update(user_stream=True, stream_base_url=stream_url + "/private")
    return cfg


def weight_per_minute(entries: list[list[Any]], t0: float, t1: float) -> dict[str, float]:
    """REST weight the exporter sent between t0 and t1, per minute, by kind of request."""
    minutes = max(1e-9, (t1 - t0) / 60.0)
    out: dict[str, float] = {"total": 0.0, "listenKey": 0.0, "refresh": 0.0, "other": 0.0}
    for at, path, _acct, _email, _status, weight in entries:
        if not t0 <= at < t1:
            continue
        kind = "listenKey" if path.endswith("/listenKey") else "refresh" if "balance" in path else "other"
        out[kind] += weight
        out["total"] += weight
    return {k: round(v / minutes, 1) for k, v in out.items()}


def phase(exp: ExporterProcess, session: requests.Session, seconds: float, interval: float) -> dict[str, Any]:
    """Scrape /metrics every `interval` s for `seconds`; the exporter's CPU, RSS and threads meanwhile."""
    assert exp.ps is not None
    start, t0 = sample(exp.ps), time.time()
    k, rss, threads = 0, [], []
    while time.time() - t0 < seconds:
        delay = t0 + k * interval - time.time()
        if delay > 0:
            time.sleep(min(delay, seconds - (time.time() - t0)) if k else delay)
            if time.time() - t0 >= seconds:
                break
        session.get(f"{exp.base_url}/metrics", timeout=30)
        snap = sample(exp.ps)
        rss.append(snap["rss"])
        threads.append(snap["threads"])
        k += 1
    end, t1 = sample(exp.ps), time.time()
    return {"t0": t0, "t1": t1, "scrapes": k,
            "cpu_pct": round(100 * (end["cpu"] - start["cpu"]) / (end["t"] - start["t"]), 2),
            "rss_mb": round(max(rss + [end["rss"]]) / MB, 1), "threads": int(max(threads + [end["threads"]])),
            "fds": end["fds"]}


def connect_runs(sim: SimProcess, stream_url: str, tmp: Path, session: requests.Session, args: argparse.Namespace,
                 log: Any) -> list[dict[str, Any]]:
    """Time until all N streams are up, and connections used, without and with sharing."""
    n, runs = args.accounts, []
    for keys in ((args.keys_per_connection,) if args.skip_unshared else (1, args.keys_per_connection)):
        before = sim.command({"op": "streams"})["handshakes"]
        exp = ExporterProcess(config(sim.base_url, stream_url, n, True, args.interval, args.connect_limit, keys),
                              Path(tmp), name=f"connect-{keys}", log_level="warn").start()
        try:
            t0 = time.monotonic()
            while (up := streams_up(session, exp.base_url)) < n:
                if time.monotonic() - t0 > 900:
                    raise RuntimeError(f"only {up} of {n} streams up after 900 s")
                time.sleep(0.25)
            elapsed = time.monotonic() - t0
            streams = sim.command({"op": "streams"})
        finally:
            exp.stop()
        runs.append({"keys_per_connection": keys, "connections": streams["open"],
                     "handshakes": streams["handshakes"] - before, "subscriptions": streams["subscriptions"],
                     "all_up_s": round(elapsed, 2)})
        log(f"connect, {keys} key(s) per connection: {runs[-1]}")
        deadline = time.monotonic() + 10  # the closed exporter's connections go before the next run
        while sim.command({"op": "streams"})["open"] and time.monotonic() < deadline:
            time.sleep(0.1)
    return runs


def print_connect(runs: list[dict[str, Any]], n: int, limit: int) -> None:
    print(f"Connecting {n} USD-M streams at stream_connections_per_5m: {limit}\n")
    print(md_table(["stream_keys_per_connection", "connections", "handshakes", "all streams up (s)"],
                   [[r["keys_per_connection"], r["connections"], r["handshakes"], r["all_up_s"]] for r in runs]))
    print()


def resynced(session: requests.Session, url: str, since: float) -> int:
    """Accounts whose latest successful REST read came after `since` (wall clock)."""
    body = session.get(f"{url}/metrics", timeout=30).content
    return sum(1 for _n, _l, v in metric_samples(body, "binance_futures_last_success_timestamp_seconds")
               if v >= since)


def streams_up(session: requests.Session, url: str) -> int:
    body = session.get(f"{url}/metrics", timeout=30).content
    return int(sum(v for _n, _l, v in metric_samples(body, "binance_futures_stream_up")))


def latency(sim: SimProcess, session: requests.Session, url: str, n: int, samples: int,
            endpoint: str = "probe") -> list[float]:
    out = []
    for k in range(samples):
        index = (k * 7919) % n
        value = f"{time.time():.6f}"
        sent = time.monotonic()
        sim.command({"op": "mark", "account": index, "value": value})
        deadline = sent + 10.0
        while time.monotonic() < deadline:
            if endpoint == "metrics":
                body = session.get(f"{url}/metrics", timeout=10).content
            else:
                body = session.get(f"{url}/probe", params={"target": alias(index)}, timeout=10).content
            # The load keeps changing balances to the time of the change: any value from our mark on
            # means ours arrived (one account's events arrive in order).
            if any(v >= float(value) - 1e-6 for _n, labels, v in metric_samples(body, "binance_futures_balance")
                   if labels.get("asset") == "USDT" and labels.get("alias") == alias(index)):
                out.append(time.monotonic() - sent)
                break
        time.sleep(0.05)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = progress_log(started)

    n = args.accounts
    report: dict[str, Any] = report_head("streams", argv, args)
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp, \
            SimProcess(n, 5, request_log=True) as sim:
        stream_url = sim.command({"op": "stream_url"})["url"]
        session = requests.Session()
        report["connect"] = connect_runs(sim, stream_url, Path(tmp), session, args, log)
        if args.connect_only:
            report["duration_s"] = round(time.monotonic() - started, 1)
            write_json(args.output, report)
            print_connect(report["connect"], n, args.connect_limit)
            return 0
        # ---- with streams
        exp = ExporterProcess(config(sim.base_url, stream_url, n, True, args.interval,
                                     keys_per_connection=args.phase_keys_per_connection,
                                     weight_limit=args.weight_limit),
                              Path(tmp), name="streams", log_level="warn").start()
        try:
            t_start, started_wall = time.monotonic(), time.time()
            while streams_up(session, exp.base_url) < n:
                if time.monotonic() - t_start > 600:
                    raise RuntimeError("streams did not all come up")
                time.sleep(0.5)
            report["connect_s"] = round(time.monotonic() - t_start, 2)
            # Events show once the account's REST resync after its gap is in: wait for all of them
            # (a REST read that succeeded after the first stream came up; about the resync).
            while resynced(session, exp.base_url, started_wall) < n:
                if time.monotonic() - t_start > 600:
                    raise RuntimeError("resyncs did not all come in")
                time.sleep(0.5)
            report["resynced_s"] = round(time.monotonic() - t_start, 2)
            log(f"{n} streams up in {report['connect_s']} s, all resynced by REST in {report['resynced_s']} s; "
                "idle phase")
            report["idle"] = phase(exp, session, args.phase_seconds, args.interval)
            log(f"idle: {report['idle']}; load phase at {args.rate:g} events/s")
            sim.command({"op": "pump", "rate": args.rate, "seconds": 3600})
            report["load"] = phase(exp, session, args.phase_seconds, args.interval)
            log(f"load: {report['load']}; latency")
            lat = latency(sim, session, exp.base_url, n, args.latency_samples, args.latency_endpoint)
            report["latency"] = {"samples": len(lat), "p50_ms": round(1000 * (median(lat) or 0), 1),
                                 "p99_ms": round(1000 * (percentile(lat, 99) or 0), 1),
                                 "max_ms": round(1000 * max(lat, default=0), 1)}
            log(f"latency: {report['latency']}")
        finally:
            sim.command({"op": "pump_stop"})
            exp.stop()
        streamed = sim.requests(0)["entries"]
        report["idle"]["weight_per_min"] = weight_per_minute(streamed, report["idle"]["t0"], report["idle"]["t1"])
        report["load"]["weight_per_min"] = weight_per_minute(streamed, report["load"]["t0"], report["load"]["t1"])
        # ---- without streams: REST polling only
        mark = len(streamed)
        exp = ExporterProcess(config(sim.base_url, stream_url, n, False, args.interval,
                                     weight_limit=args.weight_limit), Path(tmp), name="polling",
                              log_level="warn").start()
        try:
            report["polling"] = phase(exp, session, args.phase_seconds, args.interval)
        finally:
            exp.stop()
        polled = sim.requests(mark)["entries"]
        report["polling"]["weight_per_min"] = weight_per_minute(polled, report["polling"]["t0"],
                                                                report["polling"]["t1"])
    p99 = report["latency"]["p99_ms"] / 1000.0 or 0.1
    report["polling_for_stream_freshness_weight_per_min"] = round(n * BALANCE_WEIGHT * 60 / max(p99, 0.1))
    report["duration_s"] = round(time.monotonic() - started, 1)
    write_json(args.output, report)
    m = report["machine"]
    print(f"## User data streams: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['date']}\n")
    print_connect(report["connect"], n, args.connect_limit)
    print(f"{n} accounts, one USD-M stream each; scrape every {args.interval:g} s; phases of "
          f"{args.phase_seconds:g} s; all streams up in {report['connect_s']} s, all resynced by REST in "
          f"{report['resynced_s']} s\n")
    rows = []
    for name, label in (("idle", "streams, idle"), ("load", f"streams, {args.rate:g} events/s"),
                        ("polling", "no streams (polling)")):
        r = report[name]
        rows.append([label, r["rss_mb"], r["threads"], r["cpu_pct"], r["weight_per_min"]["total"],
                     r["weight_per_min"]["listenKey"], r["weight_per_min"]["refresh"]])
    print(md_table(["run", "RSS MB", "threads", "CPU %", "REST weight/min", "of it listenKey", "of it refreshes"],
                   rows))
    lat = report["latency"]
    print(f"\nEvent-to-exposition latency under load ({lat['samples']} samples): p50 {fmt(lat['p50_ms'])} ms, "
          f"p99 {fmt(lat['p99_ms'])} ms, max {fmt(lat['max_ms'])} ms")
    print(f"Polling every balance every {max(p99, 0.1):.1f} s (the p99, at least 0.1 s) would cost "
          f"{report['polling_for_stream_freshness_weight_per_min']:,} weight/min (limit {args.weight_limit:,}).")
    print(f"JSON: {args.output}  (total {report['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
