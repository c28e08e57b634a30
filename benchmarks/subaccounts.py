"""Sub-account benchmark (issue 11): one master key, hundreds of sub-accounts, within the weight budget.

    python -m benchmarks.subaccounts            # 500 sub-accounts @300 ms, 20 scrapes every 7.5 s (~3.5 min)
    python -m benchmarks.subaccounts --quick    # smoke mode: 20 sub-accounts @20 ms, 3 scrapes

Acceptance of issue 11: "a master with 500 sub-accounts at 300 ms latency,
within the governor's budget: discovery time, scrape time against one
account's, CPU per sub-account, RSS. Targets: a scrape under 3x one
account's; under 1 ms CPU per sub-account; RSS under 100 MB."

The simulator (own process, `--latency-ms` per signed request, Binance's
limits: /fapi 2400, /sapi 12000 per endpoint) owns one master key with
`--sub-accounts` sub-accounts, each with a USD-M futures account of
`--assets` non-zero rows, and one ordinary USD-M account. Two exporter
processes run one after the other:

* baseline: the ordinary account alone (`markets` default, usdm); one
  warm-up and `--scrapes` scrapes `--baseline-interval` s apart;
* master: `markets: []`, `sub_accounts: {include: ["*"]}`; discovery runs at
  start-up (3 pages of 200 for 500), then `--scrapes` scrapes `--interval` s
  apart after a first one.

Both use `cache_seconds: 0` and `scrape_interval_seconds` = their cadence (at least 1),
so every scrape refreshes every (sub-)account. That stays within the
budget: a sub-account costs 1 weight on the /sapi host, whose budget is
12000 x 0.5 = 6000 per minute; 500 sub-accounts every 7.5 s are 4000 per
minute, so the governor lets each round go at once and defers nothing
(checked: fetches_deferred_total stays 0, and the simulator's log gives the
worst rolling minute). A 15 s cadence would measure the same per scrape,
in twice the time.

Measured: discovery time (exporter spawn -> ready, which waits for the
discovery, and spawn -> the first scrape with every sub-account up); scrape
wall time, median and p95, against the single account's; exporter CPU per
sub-account per scrape (psutil, over the timed scrapes including the idle time
between them; also the in-scrape share); RSS after the first and the last
scrape and the peak (VmHWM); TCP connections the simulator accepted; /metrics
size; 429/418 answers; weight per rolling minute. With py-spy available
(`--profile`), a separate profiled run says where the CPU goes. JSON to
`--output` (default benchmarks/results/subaccounts.json; quick mode:
subaccounts-quick.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/subaccounts.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import (
    MB,
    BenchParser,
    ExporterProcess,
    LoadMeter,
    SimProcess,
    credentials,
    exit_code,
    fetch,
    fill_defaults,
    fmt,
    md_table,
    median,
    metric_samples,
    peak_rss,
    percentile,
    progress_log,
    py_spy,
    report_head,
    rolling_max,
    sample,
    write_json,
)
from benchmarks.scrape import py_spy_profile

MASTER = "master"
SINGLE = "single"
TARGET_RATIO = 3.0
TARGET_CPU_MS = 1.0
TARGET_RSS_MB = 100.0
SAPI_LIMIT = 12000
SHARE = 0.5
DISCOVERY_DEADLINE_S = 120.0
METRICS = ("binance_futures_up", "binance_futures_sub_accounts", "binance_futures_fetches_deferred_total",
           "binance_futures_exporter_used_weight", "binance_futures_rate_limited_responses_total")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = BenchParser("subaccounts", __doc__, "subaccounts.json", "subaccounts-quick.json")
    p.add_argument("--sub-accounts", type=int, help="sub-accounts of the master (default 500; quick 20)")
    p.add_argument("--latency-ms", type=float, help="simulated latency per signed request (default 300; quick 20)")
    p.add_argument("--scrapes", type=int, help="timed scrapes of each exporter (default 20; quick 3)")
    p.add_argument("--interval", type=float, help="seconds between master scrapes (default 7.5; quick 0.5)")
    p.add_argument("--baseline-interval", type=float, help="seconds between single-account scrapes (default 1)")
    p.add_argument("--assets", type=int, default=5, help="non-zero balance rows per (sub-)account")
    p.add_argument("--max-concurrency", type=int, help="exporter max_concurrency (default: the exporter's default)")
    p.add_argument("--scrape-timeout", type=float, default=10.0, help="X-Prometheus-Scrape-Timeout-Seconds")
    p.add_argument("--profile", choices=("auto", "on", "off"), default="auto",
                   help="py-spy profile of a separate master run (auto = if py-spy is found and not --quick)")
    p.add_argument("--profile-scrapes", type=int, default=10)
    args = p.parse(argv)
    q = args.quick
    fill_defaults(args, sub_accounts=(20, 500), latency_ms=(20.0, 300.0), scrapes=(3, 20), interval=(0.5, 7.5),
                  baseline_interval=(0.2, 1.0))
    if args.profile == "auto":
        args.profile = "off" if q or py_spy() is None else "on"
    if args.profile == "on" and py_spy() is None:
        p.error("--profile on needs py-spy on PATH or in the venv (pip install py-spy)")
    if args.sub_accounts < 1 or args.scrapes < 1 or args.interval <= 0:
        p.error("--sub-accounts, --scrapes and --interval must be positive")
    per_minute = args.sub_accounts * 60.0 / args.interval
    if per_minute > SAPI_LIMIT * SHARE:
        p.error(f"{args.sub_accounts} sub-accounts every {args.interval:g} s = {per_minute:.0f} weight/min: over the "
                f"/sapi budget {SAPI_LIMIT * SHARE:g}; raise --interval")
    return args


def config(sim_url: str, master: bool, interval: float, args: argparse.Namespace) -> dict[str, Any]:
    index = 0 if master else 1
    key, secret = credentials(index)
    account: dict[str, Any] = {"alias": MASTER if master else SINGLE, "api_key": key, "api_secret": secret}
    if master:
        account.update({"markets": [], "sub_accounts": {"include": ["*"]}})
    out: dict[str, Any] = {
        "defaults": {"base_url": sim_url, "sapi_base_url": sim_url, "cache_seconds": 0},
        "scrape_interval_seconds": max(1.0, interval),  # the config's minimum is 1
        "accounts": [account],
    }
    if args.max_concurrency:
        out["max_concurrency"] = args.max_concurrency
    return out


def read_metrics(body: bytes) -> dict[str, Any]:
    up = ok = 0
    host: dict[str, float] = defaultdict(float)
    found = None
    for name, labels, value in metric_samples(body, *METRICS):
        if name == "binance_futures_up":
            up += 1
            ok += value == 1.0
        elif name == "binance_futures_sub_accounts":
            found = value
        elif name == "binance_futures_rate_limited_responses_total":
            host[f"rate_limited_{labels.get('status')}"] += value
        else:
            host[name.removeprefix("binance_futures_").removesuffix("_total")] += value
    return {"listed": up, "up": ok, "sub_accounts_gauge": found, **host}


def run_phase(sim: SimProcess, master: bool, args: argparse.Namespace, workdir: Path,
              log: Any) -> dict[str, Any]:
    """Start one exporter, wait for its accounts, scrape it on a cadence, return the measurements."""
    expected = args.sub_accounts if master else 1
    interval = args.interval if master else args.baseline_interval
    cfg = config(sim.base_url, master, interval, args)
    before = sim.stats()
    log_from = sim.requests(0)["next"]
    spawned = time.monotonic()
    exp = ExporterProcess(cfg, workdir, name=MASTER if master else SINGLE, log_level="info").start()
    assert exp.ps is not None and exp.proc is not None and sim.proc is not None
    ready = time.monotonic()
    at_ready = sample(exp.ps)
    session = requests.Session()
    url = f"{exp.base_url}/metrics"
    meter = LoadMeter(exp.proc.pid, sim.proc.pid, os.getpid())
    walls: list[float] = []
    rows: list[dict[str, Any]] = []
    in_scrape_cpu = 0.0
    first_full = None
    polls = 0
    try:
        # First scrape(s): until every account is exported with up=1 (the master's first scrape after
        # discovery fetches all sub-accounts at once).
        while True:
            answer = fetch(session, url, args.scrape_timeout + 30, args.scrape_timeout)
            polls += 1
            info = read_metrics(answer.body) if answer.status == 200 else {"up": 0}
            if info["up"] >= expected:
                first_full = time.monotonic()
                first_wall = answer.seconds
                break
            if time.monotonic() - spawned > DISCOVERY_DEADLINE_S:
                log(f"  warning: only {info['up']}/{expected} up after {DISCOVERY_DEADLINE_S:g}s")
                first_wall = answer.seconds
                break
            time.sleep(0.1)
        after_first = sample(exp.ps)
        t0 = time.monotonic()
        for k in range(args.scrapes):
            delay = t0 + (k + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            before_cpu = sample(exp.ps)["cpu"]
            answer = fetch(session, url, args.scrape_timeout + 30, args.scrape_timeout)
            snap = sample(exp.ps)
            in_scrape_cpu += snap["cpu"] - before_cpu
            walls.append(answer.seconds)
            row = {"wall_s": answer.seconds, "status": answer.status, "bytes": len(answer.body),
                   "wire_bytes": answer.wire_bytes, "rss_mb": round(snap["rss"] / MB, 2), "cpu_s": snap["cpu"],
                   "threads": snap["threads"], **(read_metrics(answer.body) if answer.status == 200 else {})}
            rows.append(row)
        last = sample(exp.ps)
        peak = peak_rss(exp.proc.pid)
        load = meter.stop()
    finally:
        session.close()
        rc = exp.stop()
    after = sim.stats()
    entries = sim.requests(log_from)["entries"]
    stderr = exp.stderr()
    cpu = last["cpu"] - after_first["cpu"]
    n = args.scrapes
    statuses: dict[str, int] = defaultdict(int)
    for e in entries:
        statuses[str(e[4])] += 1
    sapi = [(e[0], float(e[5])) for e in entries if e[1].startswith(("/sapi/", "/api/"))]
    per_path: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in entries:
        per_path[e[1]].append((e[0], float(e[5])))
    return {
        "phase": "master" if master else "single",
        "accounts": expected,
        "interval_s": interval,
        "exporter_config": {k: v for k, v in cfg.items() if k != "accounts"},
        "ready_s": round(ready - spawned, 3),
        "first_full_scrape_s": None if first_full is None else round(first_full - spawned, 3),
        "first_scrape_wall_s": first_wall,
        "polls_until_full": polls,
        "scrapes": n,
        "wall_s": walls,
        "wall_median_s": median(walls),
        "wall_p95_s": percentile(walls, 95),
        "wall_max_s": max(walls),
        "cpu_s_total": cpu,
        "cpu_s_in_scrapes": in_scrape_cpu,
        "cpu_ms_per_scrape": cpu * 1000 / n,
        "cpu_ms_per_account_scrape": cpu * 1000 / n / expected,
        "cpu_ms_per_account_scrape_in_scrapes": in_scrape_cpu * 1000 / n / expected,
        "rss_mb_at_ready": at_ready["rss"] / MB,
        "rss_mb_after_first": after_first["rss"] / MB,
        "rss_mb_after_last": last["rss"] / MB,
        "rss_mb_peak_hwm": None if peak is None else peak / MB,
        "rss_mb_series": [r["rss_mb"] for r in rows],
        "threads_after_last": last["threads"],
        "connections": after["connections"] - before["connections"],
        "requests_by_path": {p: len(v) for p, v in sorted(per_path.items())},
        "answers_by_status": dict(statuses),
        "answers_429_418": statuses.get("429", 0) + statuses.get("418", 0),
        "worst_rolling_60s_weight_sapi_host": rolling_max(sapi)[0],
        "worst_rolling_60s_weight_by_path": {p: rolling_max(v)[0] for p, v in sorted(per_path.items())},
        "metrics_bytes": rows[-1]["bytes"] if rows else None,
        "metrics_wire_bytes_gzip": rows[-1]["wire_bytes"] if rows else None,
        "up_per_scrape": [r.get("up") for r in rows],
        "up_ok": sum(r.get("up", 0) for r in rows),
        "up_expected": expected * n,
        "non_200": sum(1 for r in rows if r["status"] != 200),
        "sub_accounts_gauge": rows[-1].get("sub_accounts_gauge") if rows else None,
        "fetches_deferred_total": max((r.get("fetches_deferred", 0) for r in rows), default=0),
        "exporter_used_weight_max": max((r.get("exporter_used_weight", 0) for r in rows), default=0),
        "discovery_log": [line for line in stderr.splitlines() if "sub-accounts discovered" in line
                          or "weight budget" in line],
        "stderr_lines": len(stderr.splitlines()),
        "stderr_tracebacks": stderr.count("Traceback"),
        "exit_code": rc,
        "other_load_pct": load["other_load_pct"],
    }


def run_profile(sim: SimProcess, args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    """py-spy on a separate master exporter: where the CPU of a sub-account scrape goes."""
    cfg = config(sim.base_url, True, args.interval, args)
    exp = ExporterProcess(cfg, workdir, name="profile").start()
    assert exp.proc is not None
    session = requests.Session()
    url = f"{exp.base_url}/metrics"
    t0 = 0.0
    count = 0

    def scrape() -> float:
        nonlocal t0, count
        if count == 0:
            t0 = time.monotonic()
        delay = t0 + count * args.interval - time.monotonic()
        count += 1
        if delay > 0:
            time.sleep(delay)
        return fetch(session, url, 60, args.scrape_timeout).seconds

    try:
        fetch(session, url, 60, args.scrape_timeout)  # warm-up: connections, first-use imports
        summary = py_spy_profile(exp.proc.pid, workdir, "profile-subaccounts", scrape, args.profile_scrapes, log)
    finally:
        session.close()
        exp.stop()
    return {**summary, "sub_accounts": args.sub_accounts}


def evaluate(single: dict[str, Any], master: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.sub_accounts
    targets = []
    ratio = master["wall_median_s"] / single["wall_median_s"]
    targets.append({"target": f"{n} sub-accounts @{args.latency_ms:g} ms: median scrape < {TARGET_RATIO:g}x one "
                              "account's", "result": "PASS" if ratio < TARGET_RATIO else "FAIL",
                    "value": round(ratio, 2),
                    "detail": f"{master['wall_median_s']:.3f} s / {single['wall_median_s']:.3f} s = {ratio:.2f}x "
                              f"(p95 {master['wall_p95_s']:.3f} s)"})
    cpu = master["cpu_ms_per_account_scrape"]
    targets.append({"target": f"CPU < {TARGET_CPU_MS:g} ms per sub-account per scrape",
                    "result": "PASS" if cpu < TARGET_CPU_MS else "FAIL", "value": round(cpu, 3),
                    "detail": f"{cpu:.3f} ms over the run ({master['cpu_ms_per_account_scrape_in_scrapes']:.3f} ms "
                              "inside the scrapes)"})
    peak = master["rss_mb_peak_hwm"] or max(master["rss_mb_series"])
    targets.append({"target": f"RSS < {TARGET_RSS_MB:g} MB (peak VmHWM)", "result": "PASS" if peak < TARGET_RSS_MB
                    else "FAIL", "value": round(peak, 1),
                    "detail": f"peak {peak:.1f} MB; after the first scrape {master['rss_mb_after_first']:.1f} MB, "
                              f"after the last {master['rss_mb_after_last']:.1f} MB"})
    cap = SAPI_LIMIT * SHARE
    worst = master["worst_rolling_60s_weight_sapi_host"]
    ok = worst <= cap and master["fetches_deferred_total"] == 0 and master["answers_429_418"] == 0
    targets.append({"target": f"within the /sapi budget {SAPI_LIMIT} x {SHARE:g} = {cap:g}/min: nothing deferred, "
                              "no 429/418", "result": "PASS" if ok else "FAIL", "value": worst,
                    "detail": f"worst rolling 60 s {worst:g} (exporter_used_weight max "
                              f"{master['exporter_used_weight_max']:g}); deferred {master['fetches_deferred_total']:g};"
                              f" 429/418 {master['answers_429_418']}"})
    errors = sum(r["up_expected"] - r["up_ok"] + r["non_200"] + r["stderr_tracebacks"] for r in (single, master))
    ok = errors == 0 and master["first_full_scrape_s"] is not None
    targets.append({"target": f"all {n} sub-accounts discovered and up in every scrape, no Traceback",
                    "result": "PASS" if ok else "FAIL", "value": errors,
                    "detail": f"discovered and exported {fmt(master['first_full_scrape_s'], 2)} s after start "
                              f"(ready {master['ready_s']:.2f} s); {errors} failed fetches / non-200 / tracebacks"})
    return targets


def render(single: dict[str, Any], master: dict[str, Any], targets: list[dict[str, Any]],
           profile: dict | None) -> str:
    rows = []
    for r in (single, master):
        rows.append([r["phase"], r["accounts"], r["scrapes"], f"{r['interval_s']:g}",
                     f"{fmt(r['wall_median_s'], 3)} / {fmt(r['wall_p95_s'], 3)}",
                     f"{fmt(r['cpu_ms_per_scrape'], 1)} / {fmt(r['cpu_ms_per_account_scrape'], 3)}",
                     f"{fmt(r['rss_mb_after_first'])} / {fmt(r['rss_mb_after_last'])} / {fmt(r['rss_mb_peak_hwm'])}",
                     r["connections"], f"{r['metrics_bytes']:,} ({r['metrics_wire_bytes_gzip']:,} gz)",
                     f"{r['up_ok']}/{r['up_expected']}", f"{r['other_load_pct']:.0f}%"])
    out = [md_table(["exporter", "accounts", "scrapes", "every (s)", "wall median / p95 (s)",
                     "CPU ms per scrape / per account", "RSS MB first / last / peak", "TCP conns", "/metrics bytes",
                     "up=1", "other load"], rows), "",
           f"Master: ready (clock sync + discovery) {master['ready_s']:.2f} s after spawn, all "
           f"{master['accounts']} sub-accounts exported {fmt(master['first_full_scrape_s'], 2)} s after spawn "
           f"(first scrape {master['first_scrape_wall_s']:.3f} s); requests {master['requests_by_path']}; "
           f"worst rolling 60 s /sapi weight {master['worst_rolling_60s_weight_sapi_host']:g}; "
           f"fetches_deferred_total {master['fetches_deferred_total']:g}.", "",
           "### Targets", "",
           md_table(["result", "target", "measured"], [[t["result"], t["target"], t.get("detail", "")]
                                                      for t in targets]), ""]
    if profile and "top_self" in profile:
        out += [f"### Profile (py-spy, {profile['sub_accounts']} sub-accounts, {profile['scrapes']} scrapes, "
                f"{profile['samples']} samples of the GIL holder)", "",
                md_table(["self %", "package/file"], [[p["pct"], p["name"]] for p in profile["self_by_package"][:10]]),
                "", md_table(["inclusive %", "function"],
                             [[p["pct"], p["name"]] for p in profile["top_inclusive"][:15]]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = progress_log(started)

    profile = None
    with tempfile.TemporaryDirectory(prefix="bench-subaccounts-") as tmp:
        workdir = Path(tmp)
        log(f"simulator: master with {args.sub_accounts} sub-accounts + 1 account, latency {args.latency_ms:g} ms")
        with SimProcess(2, args.assets, args.latency_ms, weight_limit=2400, sub_accounts=args.sub_accounts,
                        request_log=True) as sim:
            log(f"single account: 1 + {args.scrapes} scrapes every {args.baseline_interval:g}s")
            single = run_phase(sim, False, args, workdir, log)
            log(f"  median {single['wall_median_s']:.3f}s")
            log(f"master: discovery, then 1 + {args.scrapes} scrapes every {args.interval:g}s")
            master = run_phase(sim, True, args, workdir, log)
            log(f"  ready {master['ready_s']:.2f}s, all up {master['first_full_scrape_s']}s, median "
                f"{master['wall_median_s']:.3f}s, cpu {master['cpu_ms_per_account_scrape']:.3f} ms/sub-account")
            if args.profile == "on":
                log(f"profile: py-spy on a master exporter, {args.profile_scrapes} scrapes")
                profile = run_profile(sim, args, workdir, log)
    targets = evaluate(single, master, args)
    report = {
        **report_head("subaccounts", argv, args),
        "single": single,
        "master": master,
        "targets": targets,
        "profile": profile,
        "duration_s": round(time.monotonic() - started, 1),
    }
    write_json(args.output, report)
    m = report["machine"]
    print(f"## Sub-account benchmark: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['date']}\n")
    print(f"{args.sub_accounts} sub-accounts x {args.assets} assets, latency {args.latency_ms:g} ms\n")
    print(render(single, master, targets, profile))
    print(f"JSON: {args.output}  (total {report['duration_s']:.0f}s)")
    return exit_code(targets, args.strict)


if __name__ == "__main__":
    sys.exit(main())
