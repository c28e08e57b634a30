"""Scrape CPU when every account changed and when none did, beside another checkout (issue 25).

    python -m benchmarks.encode                             # N = 100,500, 10 scrapes each, beside /work/main
    python -m benchmarks.encode --baseline ../main --accounts 100 --scrapes 5
    python -m benchmarks.encode --quick                     # smoke mode: N = 5, 2 scrapes, no baseline
    python -m benchmarks.encode --profile 500               # + py-spy of this tree at N=500, all changed

The simulator (its own process, no latency, `--assets` rows per account)
serves N accounts. For each checkout (this one, and `--baseline` if given)
and each N the exporter runs as a process twice, the way benchmarks.scrape
runs it (weight limit far above use):

* changed: `cache_seconds: 0`, so every scrape fetches every account and
  every account's data is new;
* unchanged: `cache_seconds: 3600`, so after the warm-up every scrape serves
  the same data: what a scrape costs when no account changed.

Measured: the exporter's CPU (user+sys, psutil) over `--scrapes` scrapes of
/metrics with Prometheus' Accept header and gzip, after two warm-up scrapes,
per scrape and per account. Every answer must be 200. Table to stdout, JSON
to `--output` (default benchmarks/results/encode.json; quick: encode-quick.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/encode.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import REPO, RESULTS, ExporterProcess, SimProcess, exporter_config, fetch, py_spy, sample

GOALS_MS = {"changed": 0.5, "unchanged": 0.1}  # CPU per account per scrape (issue 25)


def measure(repo: Path, sim_url: str, accounts: int, cache_seconds: float, scrapes: int,
            workdir: Path) -> dict[str, Any]:
    config = exporter_config(sim_url, accounts, max_concurrency=None, timeout_seconds=10.0,
                             cache_seconds=cache_seconds)
    exporter = ExporterProcess(config, workdir, name=f"exp-{accounts}-{int(cache_seconds)}", repo=repo).start()
    try:
        assert exporter.ps is not None
        url = f"{exporter.base_url}/metrics"
        with requests.Session() as session:
            for _ in range(2):
                warm = fetch(session, url, 60.0)
                if warm.status != 200:
                    raise RuntimeError(f"warm-up scrape answered {warm.status}")
            before = sample(exporter.ps)
            sizes = []
            for _ in range(scrapes):
                answer = fetch(session, url, 60.0)
                if answer.status != 200:
                    raise RuntimeError(f"scrape answered {answer.status}")
                sizes.append(len(answer.body))
            after = sample(exporter.ps)
        cpu = after["cpu"] - before["cpu"]
        return {"cpu_ms_per_scrape": cpu * 1000 / scrapes, "cpu_ms_per_account": cpu * 1000 / scrapes / accounts,
                "body_bytes": sizes[-1]}
    finally:
        exporter.stop()


def profile(repo: Path, sim_url: str, accounts: int, scrapes: int, workdir: Path) -> list[tuple[float, str]]:
    """py-spy (raw collapsed stacks) of the exporter during `scrapes` all-changed scrapes: the
    functions with the largest share of the samples, inclusive (a frame counted once per stack)."""
    spy = py_spy()
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    config = exporter_config(sim_url, accounts, max_concurrency=None, timeout_seconds=10.0, cache_seconds=0.0)
    exporter = ExporterProcess(config, workdir, name="profiled", repo=repo).start()
    out = workdir / "profile.txt"
    try:
        assert exporter.proc is not None
        recorder = subprocess.Popen([spy, "record", "--format", "raw", "--gil", "--rate", "250", "-o", str(out),
                                     "--pid", str(exporter.proc.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        with requests.Session() as session:
            for _ in range(scrapes):
                fetch(session, f"{exporter.base_url}/metrics", 60.0)
        recorder.send_signal(2)
        recorder.wait(30)
    finally:
        exporter.stop()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = {frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for frame in stack.split(";")}
        for frame in frames:
            inclusive[frame] += int(count)
    return [(100.0 * n / total, frame) for frame, n in inclusive.most_common(25)] if total else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", default=None, help="comma-separated account counts (default 100,500; quick 5)")
    p.add_argument("--scrapes", type=int, default=None, help="timed scrapes per run (default 10; quick 2)")
    p.add_argument("--assets", type=int, default=5, help="non-zero balance rows per account")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout to run side by side (default /work/main if it exists; quick: none)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--profile", type=int, default=0, help="also profile this tree at this N (py-spy)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    counts = [int(n) for n in (args.accounts or ("5" if args.quick else "100,500")).split(",")]
    scrapes = args.scrapes or (2 if args.quick else 10)
    baseline = None if args.no_baseline or args.quick else (args.baseline or Path("/work/main"))
    trees = [("this", REPO)] + ([("baseline", baseline)] if baseline is not None and baseline.exists() else [])
    results: dict[str, Any] = {"scrapes": scrapes, "assets": args.assets,
                               "trees": {name: str(path) for name, path in trees}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp, \
            SimProcess(max(counts + [args.profile]), assets=args.assets) as sim:
        for n in counts:
            for name, repo in trees:
                for case, cache in (("changed", 0.0), ("unchanged", 3600.0)):
                    run = {"tree": name, "accounts": n, "case": case,
                           **measure(repo, sim.base_url, n, cache, scrapes, Path(tmp))}
                    results["runs"].append(run)
                    print(f"{name:8} N={n:4} {case:9} {run['cpu_ms_per_account']:.3f} ms/account "
                          f"({run['cpu_ms_per_scrape']:.1f} ms/scrape, {run['body_bytes']} bytes)", flush=True)
        if args.profile:
            top = profile(REPO, sim.base_url, args.profile, scrapes, Path(tmp))
            results["profile"] = [{"share": round(share, 1), "frame": frame} for share, frame in top]
            for share, frame in top:
                print(f"{share:5.1f} %  {frame}")
    print()
    print("| N | case | " + " | ".join(f"{name} ms/account" for name, _ in trees) + " | goal |")
    print("|---|---|" + "---|" * len(trees) + "---|")
    for n in counts:
        for case in ("changed", "unchanged"):
            cells = [next(f"{r['cpu_ms_per_account']:.3f}" for r in results["runs"]
                          if r["tree"] == name and r["accounts"] == n and r["case"] == case) for name, _ in trees]
            print(f"| {n} | {case} | " + " | ".join(cells) + f" | < {GOALS_MS[case]} |")
    output = args.output or RESULTS / ("encode-quick.json" if args.quick else "encode.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
