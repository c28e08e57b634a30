"""Reload-storm benchmark (issue 23): concurrent `POST /-/reload` must not hold up scrapes.

    python -m benchmarks.reloadstorm             # 2,000 accounts, 150 concurrent reloads (~1-2 min)
    python -m benchmarks.reloadstorm --quick     # smoke mode: 100 accounts, 30 reloads, seconds

The simulator (own process, no latency) serves `--accounts` accounts; the
exporter (a real process, `--web.enable-lifecycle`, the default cache) reads
them all. After a warm-up scrape:

* baseline: /metrics scraped back to back for `--baseline-seconds`, as
  Prometheus asks (gzip, the scrape-timeout header);
* storm: `--rounds` times, `--reloads` clients each send one `POST /-/reload`
  at the same moment (the config file unchanged: each run re-reads and
  checks all of it) and the round ends when every reload has answered. The
  driver scrapes /metrics back to back all along; a scrape counts for the
  storm if it began while a round was on.

Figures: scrape latency (p50, p99, max) per phase, the storm's length, the
reload answers by status, and how many reload runs the exporter made (its
`msg="config reloaded"` log lines). Reloads coalesce: one asked for while
one runs joins the single run queued after it, so the runs are far fewer than
the requests. JSON to `--output` (default benchmarks/results/reloadstorm.json;
quick mode: reloadstorm-quick.json).

Target (issue 23): with 150 concurrent reloads on 2,000 accounts, /metrics
p99 under 1 s during the storm.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks.procstats import (
    ExporterProcess,
    SimProcess,
    exporter_config,
    fmt,
    harness_args,
    harness_parser,
    md_table,
    percentile,
    report_head,
    write_json,
)

SCRAPE_P99_TARGET_S = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = harness_parser("reloadstorm", __doc__)
    p.add_argument("--accounts", type=int, help="accounts in the config (default 2000; quick 100)")
    p.add_argument("--reloads", type=int, help="concurrent POST /-/reload (default 150; quick 30)")
    p.add_argument("--rounds", type=int, help="storms of --reloads requests, one after the other (default 20; quick 2)")
    p.add_argument("--baseline-seconds", type=float, help="scraping before the storm (default 10; quick 2)")
    p.add_argument("--assets", type=int, default=1, help="non-zero balance rows per account")
    p.add_argument("--cache-seconds", type=float, default=300.0,
                   help="cache_seconds of every account (default 300: scrapes render from the cache, so what "
                        "they wait for is the exporter, not a refresh of every account; -1: the default)")
    return harness_args(p, argv, "reloadstorm", accounts=(100, 2000), reloads=(30, 150), rounds=(2, 20),
                        baseline_seconds=(2.0, 10.0))


def scrape(session: requests.Session, url: str) -> tuple[float, int, float]:
    """(seconds, status, when it began: monotonic)."""
    began, started = time.monotonic(), time.perf_counter()
    try:
        status = session.get(f"{url}/metrics", timeout=120, headers={
            "Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "10"}).status_code
    except requests.RequestException:
        status = 0
    return time.perf_counter() - started, status, began


def scrape_until(url: str, done: threading.Event, not_before: float = 0.0) -> list[tuple[float, int, float]]:
    """/metrics back to back until `done` is set and `not_before` (monotonic) has passed."""
    out: list[tuple[float, int, float]] = []
    with requests.Session() as session:
        while not done.is_set() or time.monotonic() < not_before:
            out.append(scrape(session, url))
    return out


def stats(samples: list[tuple[float, int, float]]) -> dict[str, Any]:
    times = [s for s, _, _ in samples]
    return {"n": len(times), "p50_s": percentile(times, 50), "p99_s": percentile(times, 99),
            "max_s": max(times) if times else None, "non_200": sum(1 for _, st, _ in samples if st != 200)}


POST_RELOAD = b"POST /-/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def reload_storm(port: int, count: int, timeout: float = 600.0) -> list[int]:
    """`count` POST /-/reload at once, from one thread: every client connects first, then all send,
    then every answer is read (the driver's own CPU stays small next to the exporter's). An answer
    is a few hundred bytes: the kernel holds each one until it is read."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=timeout) for _ in range(count)]
    for sock in socks:
        sock.sendall(POST_RELOAD)
    statuses = []
    for sock in socks:
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        sock.close()
        statuses.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0)
    return statuses


def cpu_seconds(exp: ExporterProcess) -> float:
    assert exp.ps is not None
    times = exp.ps.cpu_times()
    return float(times.user + times.system)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with SimProcess(args.accounts, assets=args.assets) as sim:
        config = exporter_config(sim.base_url, args.accounts, max_concurrency=None, timeout_seconds=None,
                                 cache_seconds=None if args.cache_seconds < 0 else args.cache_seconds)
        exp = ExporterProcess(config, workdir, name="reloadstorm", log_level="info",
                              extra_args=("--web.enable-lifecycle",)).start(timeout=300)
        try:
            url = exp.base_url
            with requests.Session() as session:
                warm = scrape(session, url)
            baseline_done = threading.Event()
            baseline_done.set()
            load_before = os.getloadavg()[0]
            cpu_start = cpu_seconds(exp)
            baseline = scrape_until(url, baseline_done, time.monotonic() + args.baseline_seconds)
            cpu_per_scrape = (cpu_seconds(exp) - cpu_start) / max(1, len(baseline))
            cpu_start = cpu_seconds(exp)
            runs_before = exp.stderr().count("config reloaded")
            done, rounds, answers = threading.Event(), [], []
            port = int(url.rsplit(":", 1)[1])
            with ThreadPoolExecutor(1) as scraper:
                scrapes = scraper.submit(scrape_until, url, done)
                for _ in range(args.rounds):
                    started = time.monotonic()
                    answers += reload_storm(port, args.reloads)
                    rounds.append((started, time.monotonic()))
                done.set()
                all_scrapes = scrapes.result()
                during = [s for s in all_scrapes if any(a <= s[2] < b for a, b in rounds)]
            storm_cpu = cpu_seconds(exp) - cpu_start
            load_after = os.getloadavg()[0]
            runs = exp.stderr().count("config reloaded") - runs_before
            skipped = exp.stderr().count("as before, nothing to apply")
            storm_s = sum(b - a for a, b in rounds)
        finally:
            exp.stop()
    during_stats = stats(during)
    p99 = during_stats["p99_s"]
    return {
        "warmup_scrape_s": warm[0],
        "baseline": stats(baseline),
        "storm": {**during_stats, "seconds": storm_s, "reloads": args.reloads, "rounds": args.rounds,
                  "answers": dict(Counter(str(a) for a in answers)), "reload_runs": runs,
                  "runs_with_files_as_before": skipped, "exporter_cpu_s": storm_cpu,
                  # what the storm cost the exporter beyond the scrapes made meanwhile
                  "reload_cpu_s": storm_cpu - len(all_scrapes) * cpu_per_scrape},
        "exporter_cpu_per_scrape_s": cpu_per_scrape,
        "load_average_1m": {"before": load_before, "after": load_after},
        "targets": [{"name": f"/metrics p99 during {args.reloads} concurrent reloads on {args.accounts} accounts "
                             f"({args.assets} asset(s) each)",
                     "target": f"< {SCRAPE_P99_TARGET_S:g} s", "measured_s": p99,
                     "result": "PASS" if p99 is not None and p99 < SCRAPE_P99_TARGET_S else "FAIL"}],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = report_head("reloadstorm", argv, args)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reloadstorm-") as tmp:
        report.update(run(args, Path(tmp)))
    report["duration_s"] = time.monotonic() - started
    write_json(args.output, report)
    storm = report["storm"]
    print(f"## Reload storm: {args.rounds} x {args.reloads} concurrent POST /-/reload, {args.accounts} accounts\n")
    print(md_table(["phase", "scrapes", "p50 s", "p99 s", "max s", "non-200"], [
        [name, s["n"], fmt(s["p50_s"], 3), fmt(s["p99_s"], 3), fmt(s["max_s"], 3), s["non_200"]]
        for name, s in (("baseline", report["baseline"]), ("storm", storm))]))
    print(f"\nstorm {storm['seconds']:.1f} s in all, answers {storm['answers']}, reload runs {storm['reload_runs']} "
          f"({storm['runs_with_files_as_before']} with every file as before), "
          f"warm-up scrape {report['warmup_scrape_s']:.2f} s")
    print(f"exporter CPU: {report['exporter_cpu_per_scrape_s']:.3f} s a scrape; the storm's reloads "
          f"{storm['reload_cpu_s']:.2f} s in all; load average {report['load_average_1m']['before']:.1f} "
          f"before, {report['load_average_1m']['after']:.1f} after (2 cores, shared)\n")
    print("### Targets\n")
    print(md_table(["target", "wanted", "measured", "result"], [
        [t["name"], t["target"], fmt(t["measured_s"], 3), t["result"]] for t in report["targets"]]))
    failed = any(t["result"] == "FAIL" for t in report["targets"])
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
