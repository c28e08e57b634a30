"""Soak (issue #3): thousands of scrapes under rotating API faults; is the exporter flat and clean?

    python -m benchmarks.soak --seconds 60
    python -m benchmarks.soak --seconds 5            # smoke

The simulator (own process, zero latency, `--accounts` accounts) gets a new
fault per account every `--fault-period` seconds, cycling through http_500,
http_503, html_403, truncated_json, wrong_types, reset, latency 0.2 s,
auth_2015, timestamp_1021 and healthy slots (no 429/418: those pause the whole
host and would turn the soak into a back-off test). `--workers` threads
scrape the exporter's /metrics and /probe?target=... back to back, as
Prometheus would, with a scrape-timeout header.

The exporter runs with `cache_seconds: 0` and a weight limit far above what
the soak sends (procstats.exporter_config), so every scrape asks the faulty
API again instead of being served from the cache or deferred by the budget.

Sampled every `--sample-interval` s from the exporter's pid: RSS, threads,
open fds, CPU. Checked: every answer is 200; no "Traceback" in any body or the
exporter's stderr; no API key or secret in any body or stderr; after the
faults are cleared every account is up again; and "flat": RSS growth after
warm-up < 10 MB, threads <= max_concurrency + workers + 8, fds after warm-up
grow by <= workers + 8. Table to stdout, JSON to `--output`
(default benchmarks/results/soak.json).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import (
    MB,
    BenchParser,
    ExporterProcess,
    SimProcess,
    alias,
    credentials,
    exit_code,
    exporter_config,
    fetch,
    md_table,
    metric_samples,
    percentile,
    progress_log,
    report_head,
    sample,
    slope_per_minute,
    write_json,
)

FAULTS: tuple[dict[str, Any], ...] = (
    {"kind": "http_500"},
    {"kind": "http_503"},
    {"kind": "html_403"},
    {"kind": "truncated_json"},
    {"kind": "wrong_types"},
    {"kind": "reset"},
    {"kind": "latency", "latency_s": 0.2},
    {"kind": "auth_2015"},
    {"kind": "timestamp_1021"},
)
HEALTHY_SLOTS = 3  # per cycle of len(FAULTS) + HEALTHY_SLOTS, an account is healthy this often
RSS_GROWTH_LIMIT_MB = 10.0
THREAD_SLACK = 8
FD_SLACK = 8
UP_RE = re.compile(rb"^binance_futures_up\{[^}]*\} (\S+)$", re.M)


@dataclass
class WorkerStats:
    requests: Counter = field(default_factory=Counter)       # endpoint -> answers
    statuses: Counter = field(default_factory=Counter)       # "endpoint status" -> n
    transport_errors: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"metrics": [], "probe": []})
    tracebacks: int = 0
    secret_leaks: int = 0
    up1: int = 0
    up0: int = 0
    examples: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = BenchParser("soak", __doc__, "soak.json")
    p.add_argument("--seconds", type=float, default=60.0, help="scraping time (default 60)")
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--workers", type=int, default=8, help="concurrent scraper threads")
    p.add_argument("--probe-share", type=float, default=0.75, help="share of scrapes that are /probe")
    p.add_argument("--fault-period", type=float, default=0.5, help="seconds between fault rotations")
    p.add_argument("--max-concurrency", type=int, default=16, help="exporter max_concurrency")
    p.add_argument("--timeout-seconds", type=float, default=2.0, help="exporter timeout_seconds")
    p.add_argument("--scrape-timeout", type=float, default=5.0, help="X-Prometheus-Scrape-Timeout-Seconds")
    p.add_argument("--sample-interval", type=float, default=0.5)
    p.add_argument("--warmup", type=float, help="seconds excluded from the flatness check (default 15%%, >= 2 s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse(argv)
    if args.warmup is None:
        args.warmup = max(2.0, 0.15 * args.seconds)
    args.warmup = min(args.warmup, args.seconds * 0.5)
    return args


def secrets_regex(count: int, seed: int) -> re.Pattern[bytes]:
    words = [w for i in range(count) for w in credentials(i, seed)]
    return re.compile(b"|".join(re.escape(w.encode()) for w in words))


def fault_plan(count: int, round_no: int, seed: int) -> tuple[dict[str, dict | None], Counter]:
    """Round `round_no`'s fault per account key: account i gets slot (i + round) of the cycle."""
    slots = len(FAULTS) + HEALTHY_SLOTS
    plan: dict[str, dict | None] = {}
    kinds: Counter = Counter()
    for i in range(count):
        slot = (i + round_no) % slots
        spec = FAULTS[slot] if slot < len(FAULTS) else None
        plan[credentials(i, seed)[0]] = spec
        kinds[spec["kind"] if spec else "healthy"] += 1
    return plan, kinds


def worker(index: int, base_url: str, args: argparse.Namespace, stop: threading.Event,
           secrets: re.Pattern[bytes], stats: WorkerStats) -> None:
    rng = random.Random(args.seed * 7919 + index)
    session = requests.Session()
    client_timeout = args.scrape_timeout + 10
    try:
        while not stop.is_set():
            if rng.random() < args.probe_share:
                endpoint, url = "probe", f"{base_url}/probe?target={alias(rng.randrange(args.accounts))}"
            else:
                endpoint, url = "metrics", f"{base_url}/metrics"
            try:
                answer = fetch(session, url, client_timeout, args.scrape_timeout)
            except requests.RequestException as exc:
                stats.transport_errors[f"{endpoint} {type(exc).__name__}"] += 1
                continue
            stats.requests[endpoint] += 1
            stats.statuses[f"{endpoint} {answer.status}"] += 1
            stats.latencies[endpoint].append(answer.seconds)
            body = answer.body
            if b"Traceback" in body:
                stats.tracebacks += 1
                if len(stats.examples) < 3:
                    stats.examples.append(f"traceback in {endpoint} body")
            if secrets.search(body):
                stats.secret_leaks += 1
                if len(stats.examples) < 3:
                    stats.examples.append(f"secret in {endpoint} body")
            if answer.status != 200 and len(stats.examples) < 3:
                stats.examples.append(f"{endpoint} {answer.status}: {body[:200]!r}")
            for value in UP_RE.findall(body):
                if float(value) == 1.0:
                    stats.up1 += 1
                else:
                    stats.up0 += 1
    finally:
        session.close()


def final_check(base_url: str, args: argparse.Namespace) -> tuple[int, int, dict[str, float], bytes]:
    """After the faults are cleared: (accounts up, accounts listed, errors by reason, body)."""
    session = requests.Session()
    try:
        answer = fetch(session, f"{base_url}/metrics", args.scrape_timeout + 10, args.scrape_timeout)
        values = UP_RE.findall(answer.body)
        up = sum(1 for v in values if float(v) == 1.0)
        if up < len(values):  # one fetch may still have been answered under the old fault
            time.sleep(0.5)
            answer = fetch(session, f"{base_url}/metrics", args.scrape_timeout + 10, args.scrape_timeout)
            values = UP_RE.findall(answer.body)
            up = sum(1 for v in values if float(v) == 1.0)
    finally:
        session.close()
    errors: Counter = Counter()
    for _name, labels, value in metric_samples(answer.body, "binance_futures_scrape_errors_total"):
        errors[labels.get("reason", "")] += value
    return up, len(values), dict(errors), answer.body


def summarize(series: list[dict[str, float]], key: str, warm_t: float, scale: float = 1.0) -> dict[str, Any]:
    values = [s[key] / scale for s in series]
    after = [s for s in series if s["t"] >= warm_t] or series[-1:]
    base = after[0][key] / scale
    return {
        "first": values[0], "at_warmup": base, "last": values[-1], "max": max(values), "min": min(values),
        "max_after_warmup": max(s[key] / scale for s in after),
        "growth_after_warmup": max(s[key] / scale for s in after) - base,
        "last_minus_warmup": values[-1] - base,
        "slope_per_min_after_warmup": slope_per_minute([(s["t"], s[key] / scale) for s in after]),
        # The allocator settles for a while after warm-up; the second half shows a leak best.
        "slope_per_min_last_half": slope_per_minute([(s["t"], s[key] / scale) for s in after[len(after) // 2:]]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    log = progress_log(t0)

    secrets = secrets_regex(args.accounts, args.seed)
    workers = [WorkerStats() for _ in range(args.workers)]
    series: list[dict[str, float]] = []
    fault_counts: Counter = Counter()
    rounds = 0
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, \
            SimProcess(args.accounts, assets=5, latency_ms=0, seed=args.seed) as sim:
        config = exporter_config(sim.base_url, args.accounts, max_concurrency=args.max_concurrency,
                                 timeout_seconds=args.timeout_seconds, seed=args.seed)
        exp = ExporterProcess(config, Path(tmp), name="soak", log_level=args.log_level).start()
        assert exp.ps is not None
        ps = exp.ps
        log(f"exporter pid {ps.pid} at {exp.base_url}; {args.accounts} accounts, {args.workers} workers, "
            f"{args.seconds:g}s, faults rotate every {args.fault_period:g}s")
        stop = threading.Event()
        start = time.monotonic()

        def sampler() -> None:
            while True:
                s = sample(ps)
                s["t"] -= start
                series.append(s)
                if stop.wait(args.sample_interval):
                    break

        def rotator() -> None:
            nonlocal rounds
            while not stop.is_set():
                plan, kinds = fault_plan(args.accounts, rounds, args.seed)
                sim.set_faults(plan)
                fault_counts.update(kinds)
                rounds += 1
                stop.wait(args.fault_period)

        threads = [threading.Thread(target=sampler, name="sampler", daemon=True),
                   threading.Thread(target=rotator, name="faults", daemon=True)]
        threads += [threading.Thread(target=worker, name=f"scraper-{i}", daemon=True,
                                     args=(i, exp.base_url, args, stop, secrets, workers[i]))
                    for i in range(args.workers)]
        for t in threads:
            t.start()
        stop.wait(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=args.scrape_timeout + 15)
        elapsed = time.monotonic() - start
        sim.set_faults({credentials(i, args.seed)[0]: None for i in range(args.accounts)})
        up, listed, errors_by_reason, final_body = final_check(exp.base_url, args)
        end_sample = sample(ps)
        end_sample["t"] -= start
        series.append(end_sample)
        rc = exp.stop()
        stderr = exp.stderr()
        sim_stats = sim.stats()

    requests_by_ep: Counter = Counter()
    statuses: Counter = Counter()
    transport: Counter = Counter()
    lat: dict[str, list[float]] = {"metrics": [], "probe": []}
    tracebacks = leaks = up1 = up0 = 0
    examples: list[str] = []
    for w in workers:
        requests_by_ep.update(w.requests)
        statuses.update(w.statuses)
        transport.update(w.transport_errors)
        for k in lat:
            lat[k].extend(w.latencies[k])
        tracebacks += w.tracebacks
        leaks += w.secret_leaks
        up1 += w.up1
        up0 += w.up0
        examples.extend(w.examples)
    total = sum(requests_by_ep.values())
    non_200 = sum(n for k, n in statuses.items() if not k.endswith(" 200"))
    stderr_tracebacks = stderr.count("Traceback")
    stderr_leaks = len(secrets.findall(stderr.encode("utf-8", "replace")))
    final_leaks = len(secrets.findall(final_body))
    levels = Counter(m.group(1) for m in re.finditer(r"\blevel=(\w+)", stderr))

    warm_t = args.warmup
    rss = summarize(series, "rss", warm_t, MB)
    thr = summarize(series, "threads", warm_t)
    fds = summarize(series, "fds", warm_t)
    thread_bound = args.max_concurrency + args.workers + THREAD_SLACK
    checks = [
        ("every answer is HTTP 200", non_200 == 0 and not transport,
         f"{non_200} non-200, {sum(transport.values())} transport errors of {total}"),
        ("no Traceback in bodies or exporter stderr", tracebacks == 0 and stderr_tracebacks == 0,
         f"{tracebacks} bodies, {stderr_tracebacks} in stderr"),
        ("no API key/secret in bodies or exporter stderr", leaks + stderr_leaks + final_leaks == 0,
         f"{leaks + final_leaks} bodies, {stderr_leaks} in stderr ({len(stderr.splitlines())} stderr lines)"),
        ("all accounts up after faults are cleared", up == listed == args.accounts, f"{up}/{listed} up"),
        ("exporter exits 0 on SIGTERM", rc == 0, f"exit code {rc}"),
        (f"RSS flat: growth after warm-up < {RSS_GROWTH_LIMIT_MB:g} MB",
         rss["growth_after_warmup"] < RSS_GROWTH_LIMIT_MB,
         f"{rss['at_warmup']:.1f} -> max {rss['max_after_warmup']:.1f}, last {rss['last']:.1f} MB "
         f"(+{rss['growth_after_warmup']:.1f} MB)"),
        (f"threads <= max_concurrency + workers + {THREAD_SLACK} = {thread_bound}", thr["max"] <= thread_bound,
         f"first {thr['first']:.0f}, max {thr['max']:.0f}, last {thr['last']:.0f}"),
        (f"fds flat: growth after warm-up <= workers + {FD_SLACK}",
         fds["growth_after_warmup"] <= args.workers + FD_SLACK,
         f"first {fds['first']:.0f}, at warm-up {fds['at_warmup']:.0f}, max {fds['max']:.0f}, last {fds['last']:.0f}"),
    ]
    targets = [{"target": name, "result": "PASS" if ok else "FAIL", "detail": detail} for name, ok, detail in checks]
    report = {
        **report_head("soak", argv, args),
        "elapsed_s": elapsed,
        "scrapes": total,
        "scrapes_per_second": total / elapsed if elapsed else None,
        "by_endpoint": {
            ep: {"count": requests_by_ep[ep], "per_second": requests_by_ep[ep] / elapsed if elapsed else None,
                 "median_s": percentile(lat[ep], 50), "p95_s": percentile(lat[ep], 95),
                 "p99_s": percentile(lat[ep], 99), "max_s": max(lat[ep]) if lat[ep] else None}
            for ep in ("metrics", "probe")
        },
        "statuses": dict(statuses),
        "transport_errors": dict(transport),
        "non_200": non_200,
        "body_tracebacks": tracebacks,
        "body_secret_leaks": leaks + final_leaks,
        "stderr_tracebacks": stderr_tracebacks,
        "stderr_secret_leaks": stderr_leaks,
        "stderr_lines": len(stderr.splitlines()),
        "stderr_levels": dict(levels),
        "up_samples": {"up_1": up1, "up_0": up0},
        "final_up": up,
        "final_listed": listed,
        "scrape_errors_by_reason": errors_by_reason,
        "fault_rounds": rounds,
        "fault_assignments": dict(fault_counts),
        "simulator": {"requests": sim_stats.get("requests"), "connections": sim_stats.get("connections")},
        "exit_code": rc,
        "rss_mb": rss,
        "threads": thr,
        "fds": fds,
        "samples": [{k: round(v, 3) for k, v in s.items()} for s in series],
        "examples": examples[:5],
        "targets": targets,
    }
    write_json(args.output, report)

    m = report["machine"]
    print(f"## Soak: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['date']}\n")
    print(f"{args.accounts} accounts, {args.workers} scraper threads ({args.probe_share:.0%} /probe), "
          f"{elapsed:.1f}s, {rounds} fault rotations, exporter max_concurrency {args.max_concurrency}\n")
    rows = [[ep, d["count"], f"{d['per_second']:.1f}",
             f"{d['median_s'] * 1000:.1f}" if d["median_s"] is not None else "n/a",
             f"{d['p95_s'] * 1000:.1f}" if d["p95_s"] is not None else "n/a",
             f"{d['max_s'] * 1000:.1f}" if d["max_s"] is not None else "n/a"]
            for ep, d in report["by_endpoint"].items()]
    rows.append(["total", total, f"{report['scrapes_per_second']:.1f}", "", "", ""])
    print(md_table(["endpoint", "scrapes", "per second", "median ms", "p95 ms", "max ms"], rows), "\n")
    rows = [[name, f"{d['first']:.1f}", f"{d['at_warmup']:.1f}", f"{d['max']:.1f}", f"{d['last']:.1f}",
             "n/a" if d["slope_per_min_after_warmup"] is None else f"{d['slope_per_min_after_warmup']:+.2f}",
             "n/a" if d["slope_per_min_last_half"] is None else f"{d['slope_per_min_last_half']:+.2f}"]
            for name, d in (("RSS MB", rss), ("threads", thr), ("open fds", fds))]
    print(md_table(["exporter", "first", f"at warm-up ({warm_t:g}s)", "max", "last", "slope/min after warm-up",
                   "slope/min, last half"],
                   rows), "\n")
    print("errors counted by the exporter (binance_futures_scrape_errors_total, all accounts): "
          + ", ".join(f"{k}={v:g}" for k, v in sorted(errors_by_reason.items())) + "\n")
    print(md_table(["result", "check", "measured"], [[t["result"], t["target"], t["detail"]] for t in targets]))
    print(f"\nJSON: {args.output}")
    return exit_code(targets, args.strict)


if __name__ == "__main__":
    sys.exit(main())
