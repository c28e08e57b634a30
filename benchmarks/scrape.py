"""Scrape benchmark (issue #5): wall time, CPU, memory and connections per number of accounts.

    python -m benchmarks.scrape                      # default: N = 1,10,100,300 @ 300 ms, ~8 min on 2 cores
    python -m benchmarks.scrape --quick              # smoke mode: N = 1,5 @ 50 ms, 3 scrapes, seconds
    python -m benchmarks.scrape --accounts 300 --scrapes 100 --no-baseline

For each N the simulator (its own process, per-request latency `--latency-ms`,
`--assets` non-zero balance rows per account) serves N accounts, and the
exporter runs as a real process twice:

* parallel: `max_concurrency: --max-concurrency` (default: the exporter's own default, read from exporter.config);
  one warm-up scrape, then `--scrapes` timed scrapes of /metrics (at the largest
  N >= 300, `--memory-scrapes` of them, for the memory target);
* sequential baseline: the same with `max_concurrency: 1`, i.e. one account
  after another as naive exporters do; fewer scrapes (a 300-account scrape at
  300 ms is 90 s), no scrape-timeout header, per-account timeout long enough.

Measured per run: scrape wall time (median, p95), exporter CPU (psutil user+sys
delta over the timed scrapes) per scrape and per account, RSS after the first
and the last scrape and the peak (VmHWM), TCP connections the simulator
accepted from that exporter, /metrics size. Writes a Markdown table to stdout
and JSON to `--output` (default benchmarks/results/latest.json; quick mode:
benchmarks/results/quick.json). With py-spy on PATH or in the venv (not
required), a separate profiling run at the largest N records where the
exporter's CPU goes.

What it measures is the exporter's work per scrape, not its weight budget
(benchmarks.budget does that): every exporter here runs with `cache_seconds: 0`,
so every scrape fetches every account (the default would serve scrapes closer
than 0.8 x scrape_interval_seconds from the cache), and with `weight_limit:
1000000` (the simulator's /fapi limit is 10^9), so the governor, whose budget
is weight_limit x weight_budget_share per rolling minute, never defers a fetch.
With Binance's 2400, 300 accounts scraped back to back would exceed that
budget within a second.

Connections: the accounts of a host share its keep-alive pool of
`max_concurrency` connections, which the clock sync uses too (issue 18), so the
target is <= min(accounts, max_concurrency) + 1 (the +1: a clock measurement
still in flight when the first scrape starts).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/scrape.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import (
    MB,
    PROMETHEUS_ACCEPT,
    RESULTS,
    BenchParser,
    ExporterProcess,
    LoadMeter,
    SimProcess,
    exit_code,
    exporter_config,
    fetch,
    fill_defaults,
    fmt,
    md_table,
    median,
    peak_rss,
    percentile,
    progress_log,
    py_spy,
    report_head,
    sample,
    write_json,
)
from exporter.config import Config

UP_RE = re.compile(rb"^binance_futures_up\{[^}]*\} (\S+)$", re.M)
MAX_TIMEOUT_S = 300.0  # the config's maximum timeout_seconds

TARGET_RATIO = {100: 2.0, 300: 3.0}
TARGET_CPU_MS_PER_ACCOUNT = 1.0
TARGET_RSS_MB = 60.0
RSS_TARGET_ACCOUNTS = 300
RSS_TARGET_SCRAPES = 100
RSS_TARGET_ASSETS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = BenchParser("scrape", __doc__, "latest.json", "quick.json")
    p.add_argument("--accounts", help="comma-separated account counts (default 1,10,100,300; quick 1,5)")
    p.add_argument("--latency-ms", type=float, help="simulated latency per balance request (default 300; quick 50)")
    p.add_argument("--scrapes", type=int, help="timed scrapes per N after one warm-up (default 20; quick 3)")
    p.add_argument("--memory-scrapes", type=int,
                   help=f"timed scrapes at the largest N >= {RSS_TARGET_ACCOUNTS} (default {RSS_TARGET_SCRAPES}; "
                        "quick 0 = same as --scrapes)")
    p.add_argument("--assets", type=int, default=RSS_TARGET_ASSETS, help="non-zero balance rows per account")
    p.add_argument("--max-concurrency", type=int, default=Config.__dataclass_fields__["max_concurrency"].default,
                   help="exporter max_concurrency of the parallel runs (default: the exporter's default)")
    p.add_argument("--timeout-seconds", type=float, default=10.0, help="exporter timeout_seconds of the parallel runs")
    p.add_argument("--scrape-timeout", type=float, default=10.0,
                   help="X-Prometheus-Scrape-Timeout-Seconds sent on parallel scrapes (0 = omit)")
    p.add_argument("--format", choices=("prometheus", "text"), default="prometheus",
                   help="Accept header: Prometheus' default (OpenMetrics preferred) or plain text 0.0.4")
    p.add_argument("--baseline-scrapes", type=int,
                   help="timed scrapes of the sequential baseline (default: 5 below N=100, else 2; quick 2)")
    p.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline")
    p.add_argument("--profile", choices=("auto", "on", "off"), default="auto",
                   help="py-spy profile at the largest N (auto = if py-spy is on PATH and not --quick)")
    p.add_argument("--profile-scrapes", type=int, default=20)
    args = p.parse(argv)
    q = args.quick
    args.accounts = [int(x) for x in (args.accounts or ("1,5" if q else "1,10,100,300")).split(",") if x.strip()]
    if not args.accounts or min(args.accounts) < 1:
        p.error("--accounts needs positive integers")
    fill_defaults(args, latency_ms=(50.0, 300.0), scrapes=(3, 20), memory_scrapes=(0, RSS_TARGET_SCRAPES))
    args.accept = PROMETHEUS_ACCEPT if args.format == "prometheus" else "text/plain;version=0.0.4"
    if args.profile == "auto":
        args.profile = "off" if q or py_spy() is None else "on"
    if args.profile == "on" and py_spy() is None:
        p.error("--profile on needs py-spy on PATH or in the venv (pip install py-spy)")
    return args


def count_up(body: bytes) -> tuple[int, int]:
    """(accounts with up 1, accounts listed) in one /metrics body."""
    values = UP_RE.findall(body)
    return sum(1 for v in values if float(v) == 1.0), len(values)


def run_phase(sim: SimProcess, n: int, mode: str, scrapes: int, warmup: bool,
              args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    """Start an exporter for the first `n` accounts, scrape it, return the measurements."""
    latency_s = args.latency_ms / 1000.0
    if mode == "parallel":
        concurrency, timeout_s = args.max_concurrency, args.timeout_seconds
        header = args.scrape_timeout or None
        waves = math.ceil(n / concurrency)
        client_timeout = max(60.0, 4 * waves * (latency_s + timeout_s))
    else:
        # Deadlines are taken when the scrape starts, so the last queued account needs
        # the whole sequential walk: give it that plus a margin (capped by the config's max).
        concurrency = 1
        timeout_s = min(MAX_TIMEOUT_S, math.ceil(n * latency_s * 1.5 + 30))
        header = None
        client_timeout = timeout_s + 60
        if n * latency_s > MAX_TIMEOUT_S * 0.8:
            log(f"  warning: {n} x {latency_s:.3f}s is close to the {MAX_TIMEOUT_S:.0f}s cap of timeout_seconds")
    before = sim.stats()
    config = exporter_config(sim.base_url, n, max_concurrency=concurrency, timeout_seconds=timeout_s)
    exp = ExporterProcess(config, workdir, name=f"{mode}-{n}").start()
    assert exp.ps is not None
    session = requests.Session()
    url = f"{exp.base_url}/metrics"
    walls: list[float] = []
    samples: list[dict[str, float]] = []
    up_ok = up_total = non_200 = 0
    body_bytes = wire_bytes = 0
    started = time.monotonic()
    assert exp.proc is not None and sim.proc is not None
    meter = LoadMeter(exp.proc.pid, sim.proc.pid, os.getpid())
    try:
        at_ready = sample(exp.ps)
        if warmup:
            answer = fetch(session, url, client_timeout, header, args.accept)
            non_200 += answer.status != 200
        first_cpu = sample(exp.ps)
        for i in range(scrapes):
            answer = fetch(session, url, client_timeout, header, args.accept)
            walls.append(answer.seconds)
            samples.append(sample(exp.ps))
            if answer.status != 200:
                non_200 += 1
                continue
            ok, listed = count_up(answer.body)
            up_ok += ok
            up_total += n
            body_bytes, wire_bytes = len(answer.body), answer.wire_bytes
            if listed != n:
                log(f"  warning: scrape {i} listed {listed} accounts, expected {n}")
        peak = peak_rss(exp.proc.pid)
        load = meter.stop()
    finally:
        session.close()
        rc = exp.stop()
    after = sim.stats()
    stderr = exp.stderr()
    cpu = samples[-1]["cpu"] - first_cpu["cpu"] if samples else 0.0
    per_scrape = cpu / scrapes if scrapes else None
    rss = [s["rss"] for s in samples]
    balance_path = "/fapi/v3/balance"
    return {
        "mode": mode,
        "accounts": n,
        "assets_per_account": args.assets,
        "latency_ms": args.latency_ms,
        "max_concurrency": concurrency,
        "timeout_seconds": timeout_s,
        "scrape_timeout_header": header,
        "warmup_scrape": warmup,
        "scrapes": scrapes,
        "wall_s": walls,
        "wall_median_s": median(walls),
        "wall_p95_s": percentile(walls, 95),
        "wall_min_s": min(walls) if walls else None,
        "wall_max_s": max(walls) if walls else None,
        "cpu_s_total": cpu,
        "cpu_user_s": samples[-1]["cpu_user"] - first_cpu["cpu_user"] if samples else 0.0,
        "cpu_sys_s": samples[-1]["cpu_sys"] - first_cpu["cpu_sys"] if samples else 0.0,
        "cpu_ms_per_scrape": None if per_scrape is None else per_scrape * 1000,
        "cpu_ms_per_account_scrape": None if per_scrape is None else per_scrape * 1000 / n,
        "rss_mb_at_ready": at_ready["rss"] / MB,
        "rss_mb_after_first": (first_cpu["rss"] if warmup else (rss[0] if rss else at_ready["rss"])) / MB,
        "rss_mb_after_last": rss[-1] / MB if rss else None,
        "rss_mb_max_sampled": max(rss) / MB if rss else None,
        "rss_mb_peak_hwm": None if peak is None else peak / MB,
        "rss_mb_series": [round(x / MB, 2) for x in rss],
        "threads_after_last": samples[-1]["threads"] if samples else None,
        "fds_after_last": samples[-1]["fds"] if samples else None,
        "connections": after["connections"] - before["connections"],
        "sim_requests": after["requests"] - before["requests"],
        "balance_requests": (after["requests_by_path"].get(balance_path, 0)
                             - before["requests_by_path"].get(balance_path, 0)),
        "metrics_bytes": body_bytes,
        "metrics_wire_bytes_gzip": wire_bytes,
        "up_ok": up_ok,
        "up_expected": up_total,
        "non_200": non_200,
        "stderr_lines": len(stderr.splitlines()),
        "stderr_tracebacks": stderr.count("Traceback"),
        "exit_code": rc,
        "phase_seconds": time.monotonic() - started,
        "other_cpu_s": load["other_cpu_s"],
        "other_load_pct": load["other_load_pct"],
    }


# -- profiling -----------------------------------------------------------------------------

def _category(frame: str) -> str:
    """'func (path/file.py)' -> a package-ish bucket for the summary."""
    m = re.search(r"\((.*)\)$", frame)
    path = m.group(1) if m else frame
    parts = path.replace("\\", "/").split("/")
    if "exporter" in parts:
        return "exporter/" + parts[-1]
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    head = parts[0]
    if head.endswith(".py"):
        head = head[:-3]
    return head


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares from py-spy's collapsed ('raw') output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    cat_counts: Counter[str] = Counter()
    incl_cat: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        cat_counts[_category(frames[-1])] += count
        for frame in set(frames):
            incl_counts[frame] += count
        for cat in {_category(f) for f in frames}:
            incl_cat[cat] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "samples": v, "pct": round(100.0 * v / total, 1)} for k, v in counter.most_common(top)]

    return {"samples": total, "top_self": share(self_counts), "top_inclusive": share(incl_counts),
            "self_by_package": share(cat_counts), "inclusive_by_package": share(incl_cat)}


def py_spy_profile(pid: int, workdir: Path, name: str, scrape: Callable[[], float], scrapes: int,
                   log: Any) -> dict[str, Any]:
    """Record py-spy on `pid` while `scrape` (returning its wall time) runs `scrapes` times.

    The collapsed stacks are kept as benchmarks/results/<name>.txt; the summary says
    where the samples went.
    """
    out_raw = workdir / f"{name}.txt"
    spy = subprocess.Popen([py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", "200", "--gil",
                            "--format", "raw", "--nolineno", "--output", str(out_raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let py-spy attach
        walls = [scrape() for _ in range(scrapes)]
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, spy_err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, spy_err = spy.communicate()
    if not out_raw.exists():
        log(f"  py-spy wrote nothing: {spy_err.strip()[-500:]}")
        return {"tool": "py-spy", "error": spy_err.strip()[-500:]}
    raw = out_raw.read_text(encoding="utf-8", errors="replace")
    keep = RESULTS / f"{name}.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(raw, encoding="utf-8")
    summary = summarize_profile(raw)
    summary.update({"tool": "py-spy record --rate 200 --gil --nolineno (samples of the thread holding the GIL)",
                    "scrapes": scrapes, "wall_median_s_under_profiler": median(walls),
                    "collapsed_stacks": str(keep.relative_to(RESULTS.parent.parent))})
    return summary


def run_profile(sim: SimProcess, n: int, args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    config = exporter_config(sim.base_url, n, max_concurrency=args.max_concurrency,
                             timeout_seconds=args.timeout_seconds)
    exp = ExporterProcess(config, workdir, name=f"profile-{n}").start()
    assert exp.proc is not None
    session = requests.Session()
    url = f"{exp.base_url}/metrics"
    header = args.scrape_timeout or None
    try:
        fetch(session, url, 120, header, args.accept)  # warm-up: connections, first-use imports
        summary = py_spy_profile(exp.proc.pid, workdir, f"profile-{n}",
                                 lambda: fetch(session, url, 120, header, args.accept).seconds,
                                 args.profile_scrapes, log)
    finally:
        session.close()
        exp.stop()
    return {**summary, "accounts": n}


# -- report --------------------------------------------------------------------------------

def baseline_plan(n: int, args: argparse.Namespace) -> tuple[int, bool]:
    """(timed scrapes, warm-up?) for the sequential baseline at N accounts."""
    if args.baseline_scrapes is not None:
        scrapes = args.baseline_scrapes
    elif args.quick:
        scrapes = 2
    else:
        scrapes = min(args.scrapes, 5) if n < 100 else 2
    # A warm-up only opens connections (< 1 ms each on loopback); at N >= 100 it would cost
    # another N x latency seconds, so the first timed scrape includes connection set-up there.
    return max(1, scrapes), n < 100


def evaluate(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    par = {r["accounts"]: r for r in runs if r["mode"] == "parallel"}
    targets: list[dict[str, Any]] = []
    one = par.get(1)
    for n, limit in TARGET_RATIO.items():
        name = f"parallel {n} accounts @{args.latency_ms:g} ms: median scrape < {limit:g}x single-account"
        if one is None or n not in par:
            targets.append({"target": name, "result": "SKIP", "detail": f"needs N=1 and N={n} in --accounts"})
            continue
        ratio = par[n]["wall_median_s"] / one["wall_median_s"]
        targets.append({"target": name, "result": "PASS" if ratio < limit else "FAIL",
                        "value": round(ratio, 2),
                        "detail": f"{par[n]['wall_median_s']:.3f}s / {one['wall_median_s']:.3f}s = {ratio:.2f}x"})
    # One shared pool per host: at most one connection per fetch thread, whatever the accounts.
    bad = [f"N={r['accounts']}: {r['connections']}" for r in par.values()
           if r["connections"] > min(r["accounts"], args.max_concurrency) + 1]
    targets.append({"target": "parallel: TCP connections to the API <= min(accounts, max_concurrency) + 1 "
                              "(one keep-alive pool per host; +1: the clock sync)",
                    "result": "FAIL" if bad else "PASS",
                    "detail": "; ".join(bad) if bad else ", ".join(
                        f"N={r['accounts']}: {r['connections']}" for r in par.values())})
    if par:
        largest = par[max(par)]
        cpu = largest["cpu_ms_per_account_scrape"]
        targets.append({"target": f"CPU < {TARGET_CPU_MS_PER_ACCOUNT:g} ms per account per scrape "
                                  f"(parallel, largest N={largest['accounts']})",
                        "result": "PASS" if cpu < TARGET_CPU_MS_PER_ACCOUNT else "FAIL",
                        "value": round(cpu, 3), "detail": f"{cpu:.3f} ms"})
    mem = par.get(RSS_TARGET_ACCOUNTS)
    name = (f"RSS < {TARGET_RSS_MB:g} MB with {RSS_TARGET_ACCOUNTS} accounts x {RSS_TARGET_ASSETS} assets "
            f"after {RSS_TARGET_SCRAPES} scrapes (peak VmHWM)")
    if mem is None or mem["scrapes"] < RSS_TARGET_SCRAPES or mem["assets_per_account"] < RSS_TARGET_ASSETS:
        targets.append({"target": name, "result": "SKIP",
                        "detail": f"needs N={RSS_TARGET_ACCOUNTS}, --memory-scrapes >= {RSS_TARGET_SCRAPES}, "
                                  f"--assets >= {RSS_TARGET_ASSETS}"})
    else:
        peak = mem["rss_mb_peak_hwm"] or mem["rss_mb_max_sampled"]
        targets.append({"target": name, "result": "PASS" if peak < TARGET_RSS_MB else "FAIL",
                        "value": round(peak, 1),
                        "detail": f"peak {peak:.1f} MB; after scrape 1 {mem['rss_mb_after_first']:.1f} MB, "
                                  f"after scrape {mem['scrapes'] + 1} {mem['rss_mb_after_last']:.1f} MB"})
    errors = sum(r["up_expected"] - r["up_ok"] + r["non_200"] + r["stderr_tracebacks"] for r in runs)
    targets.append({"target": "every scrape 200 with up=1 for all accounts, no Traceback on stderr",
                    "result": "PASS" if errors == 0 else "FAIL", "value": errors,
                    "detail": f"{errors} failed account fetches / non-200 / tracebacks"})
    return targets


def render(runs: list[dict[str, Any]], targets: list[dict[str, Any]], profile: dict | None) -> str:
    par = {r["accounts"]: r for r in runs if r["mode"] == "parallel"}
    seq = {r["accounts"]: r for r in runs if r["mode"] == "sequential"}
    one = par.get(1)
    rows = []
    for n in sorted(set(par) | set(seq)):
        p, s = par.get(n), seq.get(n)
        rows.append([
            n,
            f"{p['scrapes']}" if p else "-",
            f"{fmt(p['wall_median_s'], 3)} / {fmt(p['wall_p95_s'], 3)}" if p else "-",
            f"{p['wall_median_s'] / one['wall_median_s']:.2f}x" if p and one else "-",
            f"{s['scrapes']}" if s else "-",
            f"{fmt(s['wall_median_s'], 3)} / {fmt(s['wall_p95_s'], 3)}" if s else "-",
            f"{s['wall_median_s'] / p['wall_median_s']:.1f}x" if p and s else "-",
        ])
    out = ["### Scrape wall time (seconds, median / p95)", "",
           md_table(["N", "par. scrapes", "parallel", "vs N=1", "seq. scrapes", "sequential baseline",
                     "speed-up"], rows), ""]
    rows = []
    for r in sorted(runs, key=lambda r: (r["accounts"], r["mode"] != "parallel")):
        rows.append([
            r["accounts"], r["mode"], r["max_concurrency"],
            fmt(r["cpu_ms_per_scrape"], 1), fmt(r["cpu_ms_per_account_scrape"], 3),
            f"{fmt(r['rss_mb_after_first'])} / {fmt(r['rss_mb_after_last'])} / {fmt(r['rss_mb_peak_hwm'])}",
            f"{r['connections']} / {r['accounts']}",
            f"{r['metrics_bytes']:,} ({r['metrics_wire_bytes_gzip']:,} gz)",
            f"{r['up_ok']}/{r['up_expected']}",
            f"{r['other_load_pct']:.0f}%",
        ])
    out += ["### Exporter resources", "",
            md_table(["N", "mode", "max_conc.", "CPU ms/scrape", "CPU ms/account", "RSS MB first / last / peak",
                      "TCP conns / accounts", "/metrics bytes", "up=1", "other load"], rows), "",
            "(other load: CPU used on this machine by processes other than the exporter, the simulator and "
            "the driver during the run, as a share of all cores; high values mean a noisy row)", ""]
    out += ["### Targets", "", md_table(["result", "target", "measured"],
                                        [[t["result"], t["target"], t.get("detail", "")] for t in targets]), ""]
    if profile and "top_self" in profile:
        out += [f"### Profile (py-spy, N={profile['accounts']}, {profile['scrapes']} scrapes, "
                f"{profile['samples']} samples of the GIL holder)", "",
                md_table(["self %", "package/file"],
                         [[p["pct"], p["name"]] for p in profile["self_by_package"][:10]]), "",
                md_table(["self %", "function"], [[p["pct"], p["name"]] for p in profile["top_self"][:12]]), "",
                md_table(["inclusive %", "function"],
                         [[p["pct"], p["name"]] for p in profile["top_inclusive"][:15]]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = progress_log(started)

    largest = max(args.accounts)
    runs: list[dict[str, Any]] = []
    profile: dict | None = None
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        workdir = Path(tmp)
        log(f"simulator: {largest} accounts x {args.assets} assets, latency {args.latency_ms:g} ms")
        with SimProcess(largest, args.assets, args.latency_ms) as sim:
            for n in sorted(args.accounts):
                scrapes = args.scrapes
                if n == largest and n >= RSS_TARGET_ACCOUNTS and args.memory_scrapes:
                    scrapes = max(scrapes, args.memory_scrapes)
                log(f"N={n}: parallel, max_concurrency {args.max_concurrency}, 1 warm-up + {scrapes} scrapes")
                r = run_phase(sim, n, "parallel", scrapes, True, args, workdir, log)
                log(f"  median {r['wall_median_s']:.3f}s p95 {r['wall_p95_s']:.3f}s "
                    f"cpu {r['cpu_ms_per_account_scrape']:.3f} ms/account conns {r['connections']}")
                runs.append(r)
                if not args.no_baseline:
                    b_scrapes, b_warm = baseline_plan(n, args)
                    log(f"N={n}: sequential baseline, max_concurrency 1, "
                        f"{'1 warm-up + ' if b_warm else 'no warm-up, '}{b_scrapes} scrapes "
                        f"(~{(b_scrapes + b_warm) * n * args.latency_ms / 1000:.0f}s)")
                    r = run_phase(sim, n, "sequential", b_scrapes, b_warm, args, workdir, log)
                    log(f"  median {r['wall_median_s']:.3f}s conns {r['connections']}")
                    runs.append(r)
            if args.profile == "on":
                log(f"profile: py-spy on the exporter, N={largest}, {args.profile_scrapes} scrapes")
                profile = run_profile(sim, largest, args, workdir, log)
    targets = evaluate(runs, args)
    report = {
        **report_head("scrape", argv, args),
        "runs": runs,
        "targets": targets,
        "profile": profile,
        "duration_s": round(time.monotonic() - started, 1),
    }
    write_json(args.output, report)
    m = report["machine"]
    print(f"## Scrape benchmark: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['date']}\n")
    print(f"latency {args.latency_ms:g} ms per balance request, {args.assets} non-zero assets per account, "
          f"parallel max_concurrency {args.max_concurrency}\n")
    print(render(runs, targets, profile))
    print(f"JSON: {args.output}  (total {report['duration_s']:.0f}s)")
    return exit_code(targets, args.strict)


if __name__ == "__main__":
    sys.exit(main())
