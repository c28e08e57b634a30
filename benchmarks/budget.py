"""Weight-budget benchmark (issue 8): many accounts, Binance's real limit, Prometheus' cadence.

    python -m benchmarks.budget                # 300 accounts, limit 2400, share 0.5, every 15 s for 180 s (~3.5 min)
    python -m benchmarks.budget --quick        # smoke mode: 10 accounts @20 ms, every 1 s for 5 s

Acceptance of issue 8: "300 accounts, limit 2400, share 0.5, a 15 s scrape
interval for 3 minutes: zero 429s at the simulator, each account refreshed at
least every 80 s, scrape time still about one round trip."

The simulator (its own process, `--latency-ms` per signed request, the real
per-IP /fapi limit `--weight-limit` with 429 and 418 escalation) logs every
request with its arrival time. The exporter runs as a process with the
exporter's defaults except `weight_limit`, `weight_budget_share` and
`scrape_interval_seconds` (its cache is the default one: data younger than
0.8 x the interval serves a scrape). The driver scrapes /metrics every
`--interval` seconds for `--duration` seconds, as Prometheus does (its Accept
header, gzip, X-Prometheus-Scrape-Timeout-Seconds).

300 accounts x 5 weight every 15 s would be 6000 weight per minute; the budget
is 2400 x 0.5 = 1200, so the governor paces fetches at 1200/60 = 20 weight
per second: 4 accounts per second, a full round every 75 s.

Measured at the simulator (its request log): 429/418 answers; the worst
weight in any rolling 60 s (windows end at each request's arrival) and in
any fixed minute (what Binance and the simulator count); per account, the
time from the first scrape to its first balance fetch, the times between
consecutive fetches, and the time from its last fetch to the end of the run.
Measured per scrape: wall time; from /metrics: accounts up,
fetches_deferred_total, exporter_used_weight (the exporter's own count of
its last 60 s; its highest sample is a lower bound of the true worst window,
which the simulator's log gives), Binance's used_weight, and the age of the
oldest exported data. Table to stdout, JSON to `--output`
(default benchmarks/results/budget.json; quick mode: budget-quick.json).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/budget.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import (
    MB,
    BenchParser,
    ExporterProcess,
    SimProcess,
    exit_code,
    exporter_config,
    fetch,
    fill_defaults,
    fmt,
    md_table,
    median,
    metric_samples,
    peak_rss,
    percentile,
    progress_log,
    report_head,
    rolling_max,
    rolling_windows,
    sample,
    write_json,
)

BALANCE_PATH = "/fapi/v3/balance"
TARGET_REFRESH_S = 80.0
TARGET_WALL_MEDIAN_RTT = 1.5  # x the simulated round trip
TARGET_WALL_P95_RTT = 2.0
METRICS = ("binance_futures_up", "binance_futures_last_success_timestamp_seconds",
           "binance_futures_fetches_deferred_total", "binance_futures_exporter_used_weight",
           "binance_futures_used_weight", "binance_futures_weight_budget", "binance_futures_backoff_seconds",
           "binance_futures_rate_limited_responses_total")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = BenchParser("budget", __doc__, "budget.json", "budget-quick.json")
    p.add_argument("--accounts", type=int, help="accounts (default 300; quick 10)")
    p.add_argument("--latency-ms", type=float, help="simulated latency per signed request (default 300; quick 20)")
    p.add_argument("--weight-limit", type=int, default=2400,
                   help="per-IP /fapi limit, at the simulator and in the exporter's config (default 2400, Binance's)")
    p.add_argument("--share", type=float, default=0.5, help="exporter weight_budget_share (default 0.5)")
    p.add_argument("--interval", type=float, help="scrape interval, also scrape_interval_seconds (default 15; quick 1)")
    p.add_argument("--duration", type=float,
                   help="seconds from the first scrape to the last (default 180; quick 5)")
    p.add_argument("--scrape-timeout", type=float, default=10.0, help="X-Prometheus-Scrape-Timeout-Seconds")
    p.add_argument("--assets", type=int, default=5, help="non-zero balance rows per account")
    p.add_argument("--target-refresh", type=float, default=TARGET_REFRESH_S,
                   help=f"each account refreshed at least this often, seconds (default {TARGET_REFRESH_S:g})")
    args = p.parse(argv)
    fill_defaults(args, accounts=(10, 300), latency_ms=(20.0, 300.0), interval=(1.0, 15.0), duration=(5.0, 180.0))
    if args.accounts < 1 or args.interval <= 0 or args.duration < 0:
        p.error("--accounts, --interval must be positive, --duration >= 0")
    return args


def scrape_once(session: requests.Session, url: str, args: argparse.Namespace, t0: float) -> dict[str, Any]:
    """One Prometheus-like scrape and what /metrics says about the budget."""
    at = time.time()
    answer = fetch(session, url, args.scrape_timeout + 30, args.scrape_timeout)
    now = time.time()
    row: dict[str, Any] = {"t": round(at - t0, 3), "wall_s": answer.seconds, "status": answer.status,
                           "bytes": len(answer.body)}
    if answer.status != 200:
        return row
    up: dict[str, float] = {}
    last: list[float] = []
    host: dict[str, float] = {}
    for name, labels, value in metric_samples(answer.body, *METRICS):
        if name == "binance_futures_up":
            up[labels.get("alias", "")] = value
        elif name == "binance_futures_last_success_timestamp_seconds":
            last.append(value)
        elif name == "binance_futures_rate_limited_responses_total":
            host[f"rate_limited_{labels.get('status')}"] = host.get(f"rate_limited_{labels.get('status')}", 0) + value
        else:
            key = name.removeprefix("binance_futures_").removesuffix("_total")
            host[key] = host.get(key, 0) + value  # one API host in this benchmark
    row.update({
        "up": int(sum(1 for v in up.values() if v == 1.0)),
        "listed": len(up),
        "fetches_deferred_total": host.get("fetches_deferred"),
        "exporter_used_weight": host.get("exporter_used_weight"),
        "binance_used_weight": host.get("used_weight"),
        "weight_budget": host.get("weight_budget"),
        "backoff_seconds": host.get("backoff_seconds"),
        "rate_limited_429": host.get("rate_limited_429"),
        "rate_limited_418": host.get("rate_limited_418"),
        "oldest_data_age_s": round(now - min(last), 2) if last else None,
        "accounts_with_data": len(last),
    })
    return row


def windows_over(events: list[tuple[float, float]], cap: float, window: float = 60.0) -> dict[str, Any]:
    """Rolling windows (ending at each request) whose weight exceeds `cap`, and how close they come to 60 s.

    The governor counts a request when it admits it; the simulator when it
    arrives, a few milliseconds later and not always equally later. A window
    just over the cap at the wire shows here with `span_s`, the time from
    its oldest to its newest request (just under 60 s), and `next_older_gap_s`,
    how long before the newest request the request that had just left it arrived.
    """
    data = sorted(events)
    found = []
    for t, total, low in rolling_windows(data, window):
        if total > cap:
            found.append({"weight": total, "span_s": round(t - data[low][0], 4),
                          "next_older_gap_s": round(t - data[low - 1][0], 4) if low > 0 else None})
    return {"count": len(found), "max_excess": max((f["weight"] - cap for f in found), default=0.0),
            "examples": found[:5]}


def analyse_log(entries: list[list[Any]], n: int, t0: float, t_end: float, worst_cap: float) -> dict[str, Any]:
    """What the simulator saw: answers, weight per rolling and fixed minute, refresh intervals per account."""
    statuses: dict[str, int] = defaultdict(int)
    for _at, _path, _acct, _email, status, _w in entries:
        statuses[str(status)] += 1
    weights = [(at, float(w)) for at, _p, _a, _e, _s, w in entries]
    worst, worst_end = rolling_max(weights)
    over = windows_over(weights, worst_cap)
    minutes: dict[int, int] = defaultdict(int)
    for at, _p, _a, _e, _s, w in entries:
        minutes[int(at * 1000) // 60000] += w
    fetches: dict[int, list[float]] = defaultdict(list)
    for at, path, acct, _e, status, _w in entries:
        if path == BALANCE_PATH and acct is not None and status == 200:
            fetches[acct].append(at)
    intervals: list[float] = []
    worst_per_account: list[float] = []
    first: list[float] = []
    end_gap: list[float] = []
    for acct in range(n):
        times = sorted(t for t in fetches.get(acct, []) if t <= t_end)
        if not times:
            first.append(float("inf"))
            continue
        first.append(times[0] - t0)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        intervals.extend(gaps)
        end_gap.append(t_end - times[-1])
        worst_per_account.append(max([times[0] - t0, *gaps, t_end - times[-1]]))
    finite_first = [f for f in first if f != float("inf")]
    return {
        "requests": len(entries),
        "requests_by_path": {p: sum(1 for e in entries if e[1] == p) for p in sorted({e[1] for e in entries})},
        "answers_by_status": dict(statuses),
        "answers_429": statuses.get("429", 0),
        "answers_418": statuses.get("418", 0),
        "worst_rolling_60s_weight": worst,
        "worst_rolling_60s_ends_at_s": None if worst_end is None else round(worst_end - t0, 2),
        "windows_over_budget": over,
        "worst_fixed_minute_weight": max(minutes.values(), default=0),
        "weight_by_fixed_minute": [minutes[m] for m in sorted(minutes)],
        "accounts_never_fetched": sum(1 for f in first if f == float("inf")),
        "first_fetch_s": {"min": min(finite_first, default=None), "median": median(finite_first),
                          "p95": percentile(finite_first, 95), "max": max(finite_first, default=None)},
        "refresh_interval_s": {"count": len(intervals), "min": min(intervals, default=None),
                               "median": median(intervals), "p95": percentile(intervals, 95),
                               "max": max(intervals, default=None)},
        "end_gap_s": {"max": max(end_gap, default=None)},
        "worst_data_gap_per_account_s": {"median": median(worst_per_account),
                                         "max": max(worst_per_account, default=None)},
        "balance_fetches_per_account": {"min": min((len(v) for v in fetches.values()), default=0),
                                        "max": max((len(v) for v in fetches.values()), default=0)},
    }


def evaluate(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    sim, scrapes = report["simulator"], report["scrapes"]
    cap = args.weight_limit * args.share
    rtt = args.latency_ms / 1000.0
    targets = []
    bad = sim["answers_429"] + sim["answers_418"]
    targets.append({"target": "zero 429/418 answers at the simulator", "result": "PASS" if bad == 0 else "FAIL",
                    "value": bad, "detail": f"{sim['answers_429']} x 429, {sim['answers_418']} x 418 "
                                            f"in {sim['requests']} requests"})
    worst = sim["worst_rolling_60s_weight"]
    targets.append({"target": f"weight sent per rolling 60 s <= budget {args.weight_limit} x {args.share:g} "
                              f"= {cap:g} (at the simulator)",
                    "result": "PASS" if worst <= cap else "FAIL", "value": worst,
                    "detail": f"worst rolling window {worst:g}, worst fixed minute "
                              f"{sim['worst_fixed_minute_weight']}; exporter_used_weight highest sample "
                              f"{report['exporter_used_weight_max']:g}"})
    gap = sim["worst_data_gap_per_account_s"]["max"]
    ok = sim["accounts_never_fetched"] == 0 and gap is not None and gap <= args.target_refresh
    targets.append({"target": f"each account refreshed at least every {args.target_refresh:g} s "
                              "(first fetch after the first scrape, between fetches, last fetch to the end)",
                    "result": "PASS" if ok else "FAIL", "value": gap,
                    "detail": f"first fetch max {fmt(sim['first_fetch_s']['max'], 1)} s; interval max "
                              f"{fmt(sim['refresh_interval_s']['max'], 1)} s, p95 "
                              f"{fmt(sim['refresh_interval_s']['p95'], 1)} s; end gap max "
                              f"{fmt(sim['end_gap_s']['max'], 1)} s; never fetched {sim['accounts_never_fetched']}"})
    walls = [s["wall_s"] for s in scrapes]
    med, p95 = median(walls), percentile(walls, 95)
    ok = (med is not None and p95 is not None
          and med <= TARGET_WALL_MEDIAN_RTT * rtt and p95 <= TARGET_WALL_P95_RTT * rtt)
    targets.append({"target": f"scrape time about one round trip: median <= {TARGET_WALL_MEDIAN_RTT:g}x and p95 <= "
                              f"{TARGET_WALL_P95_RTT:g}x the {args.latency_ms:g} ms round trip",
                    "result": "PASS" if ok else "FAIL", "value": p95,
                    "detail": f"median {fmt(med, 3)} s, p95 {fmt(p95, 3)} s, max {fmt(max(walls, default=None), 3)} s"})
    ups = [s.get("up", 0) for s in scrapes]
    non_200 = sum(1 for s in scrapes if s["status"] != 200)
    drops = sum(1 for a, b in itertools.pairwise(ups) if b < a)
    ok = non_200 == 0 and drops == 0 and bool(ups) and ups[-1] == args.accounts and report["stderr_tracebacks"] == 0
    targets.append({"target": "every scrape 200; once fetched an account stays up (deferred ones export their last "
                              "values); all up at the end; no Traceback",
                    "result": "PASS" if ok else "FAIL", "value": ups[-1] if ups else None,
                    "detail": f"up per scrape {ups}; non-200 {non_200}; tracebacks {report['stderr_tracebacks']}"})
    return targets


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [[s["t"], fmt(s["wall_s"], 3), s["status"], f"{s.get('up', '-')}/{args.accounts}",
             fmt(s.get("fetches_deferred_total"), 0), fmt(s.get("exporter_used_weight"), 0),
             fmt(s.get("binance_used_weight"), 0), fmt(s.get("oldest_data_age_s"), 1)] for s in report["scrapes"]]
    sim = report["simulator"]
    out = ["### Scrapes", "",
           md_table(["t (s)", "wall (s)", "status", "up", "deferred_total", "exporter_used_weight",
                     "Binance used_weight", "oldest data (s)"], rows), "",
           "### At the simulator", "",
           md_table(["measure", "value"], [
               ["requests (by path)", f"{sim['requests']} {sim['requests_by_path']}"],
               ["answers by status", sim["answers_by_status"]],
               ["worst rolling 60 s weight", f"{sim['worst_rolling_60s_weight']:g} (window ending at "
                                             f"t={sim['worst_rolling_60s_ends_at_s']} s)"],
               ["rolling windows over the budget", f"{sim['windows_over_budget']['count']}, by at most "
                                                   f"{sim['windows_over_budget']['max_excess']:g}; e.g. "
                                                   f"{sim['windows_over_budget']['examples'][:2]}"],
               ["worst fixed-minute weight", f"{sim['worst_fixed_minute_weight']} "
                                             f"(per minute: {sim['weight_by_fixed_minute']})"],
               ["first balance fetch after the first scrape (s): median / p95 / max",
                f"{fmt(sim['first_fetch_s']['median'])} / {fmt(sim['first_fetch_s']['p95'])} / "
                f"{fmt(sim['first_fetch_s']['max'])}"],
               ["refresh interval (s): median / p95 / max",
                f"{fmt(sim['refresh_interval_s']['median'])} / {fmt(sim['refresh_interval_s']['p95'])} / "
                f"{fmt(sim['refresh_interval_s']['max'])} ({sim['refresh_interval_s']['count']} intervals)"],
               ["last fetch to end of run (s): max", fmt(sim["end_gap_s"]["max"])],
               ["balance fetches per account: min / max",
                f"{sim['balance_fetches_per_account']['min']} / {sim['balance_fetches_per_account']['max']}"],
           ]), "",
           f"Exporter: CPU {report['exporter_cpu_s']:.2f} s over the run, RSS peak {fmt(report['rss_mb_peak'])} MB, "
           f"threads at the end {report['threads_at_end']}.", "",
           "### Targets", "",
           md_table(["result", "target", "measured"],
                    [[t["result"], t["target"], t.get("detail", "")] for t in report["targets"]]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = progress_log(started)

    scrapes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        log(f"simulator: {args.accounts} accounts, latency {args.latency_ms:g} ms, /fapi limit {args.weight_limit}")
        with SimProcess(args.accounts, args.assets, args.latency_ms, weight_limit=args.weight_limit,
                        request_log=True) as sim:
            config = exporter_config(sim.base_url, args.accounts, max_concurrency=None, timeout_seconds=None,
                                     weight_limit=args.weight_limit, cache_seconds=None,
                                     weight_budget_share=args.share, scrape_interval_seconds=args.interval)
            spawned = time.time()
            exp = ExporterProcess(config, Path(tmp), name="budget", log_level="info").start()
            assert exp.ps is not None and exp.proc is not None
            ready = time.time()
            session = requests.Session()
            url = f"{exp.base_url}/metrics"
            count = int(args.duration // args.interval) + 1
            log(f"exporter ready in {ready - spawned:.2f}s; {count} scrapes every {args.interval:g}s")
            cpu0 = sample(exp.ps)["cpu"]
            t0 = time.time()
            try:
                for k in range(count):
                    delay = t0 + k * args.interval - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    row = scrape_once(session, url, args, t0)
                    snap = sample(exp.ps)
                    row["rss_mb"] = round(snap["rss"] / MB, 1)
                    scrapes.append(row)
                    log(f"scrape {k + 1}/{count} t={row['t']:.1f}s wall {row['wall_s']:.3f}s "
                        f"up {row.get('up')}/{args.accounts} deferred {row.get('fetches_deferred_total')} "
                        f"used {row.get('exporter_used_weight')}")
                t_end = time.time()
                end = sample(exp.ps)
                rss_peak = peak_rss(exp.proc.pid)
            finally:
                session.close()
                rc = exp.stop()
            stderr = exp.stderr()
            entries = sim.requests(0)
        if entries["dropped"]:
            log(f"warning: the simulator's request log dropped {entries['dropped']} entries")
    budget_lines = [line for line in stderr.splitlines() if "weight budget" in line]
    report: dict[str, Any] = {
        **report_head("budget", argv, args),
        "exporter_config": {k: v for k, v in config.items() if k != "accounts"},
        "budget_per_minute": args.weight_limit * args.share,
        "round_trip_s": args.latency_ms / 1000.0,
        "exporter_ready_s": round(ready - spawned, 3),
        "scrapes": scrapes,
        "wall_median_s": median([s["wall_s"] for s in scrapes]),
        "wall_p95_s": percentile([s["wall_s"] for s in scrapes], 95),
        "wall_max_s": max((s["wall_s"] for s in scrapes), default=None),
        "up_per_scrape": [s.get("up") for s in scrapes],
        "fetches_deferred_total": scrapes[-1].get("fetches_deferred_total") if scrapes else None,
        "exporter_used_weight_max": max((s.get("exporter_used_weight") or 0 for s in scrapes), default=0),
        "oldest_data_age_max_s": max((s.get("oldest_data_age_s") or 0 for s in scrapes), default=0),
        "simulator": analyse_log(entries["entries"], args.accounts, t0, t_end, args.weight_limit * args.share),
        # Every request as the simulator saw it: [seconds after the first scrape, path, account, status, weight].
        "request_log": [[round(at - t0, 4), path, acct, status, w]
                        for at, path, acct, _e, status, w in entries["entries"]],
        "exporter_cpu_s": end["cpu"] - cpu0,
        "rss_mb_peak": None if rss_peak is None else rss_peak / MB,
        "threads_at_end": end["threads"],
        "exporter_budget_log": budget_lines,
        "stderr_lines": len(stderr.splitlines()),
        "stderr_tracebacks": stderr.count("Traceback"),
        "exit_code": rc,
        "duration_s": round(time.monotonic() - started, 1),
    }
    report["targets"] = evaluate(report, args)
    write_json(args.output, report)
    m = report["machine"]
    print(f"## Weight-budget benchmark: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['date']}\n")
    print(f"{args.accounts} accounts, limit {args.weight_limit} x share {args.share:g} = "
          f"{report['budget_per_minute']:g} weight/min, scrape every {args.interval:g} s for {args.duration:g} s, "
          f"latency {args.latency_ms:g} ms\n")
    print(render(report, args))
    print(f"JSON: {args.output}  (total {report['duration_s']:.0f}s)")
    return exit_code(report["targets"], args.strict)


if __name__ == "__main__":
    sys.exit(main())
