"""The benchmark harnesses still run end to end (quick modes). No timing asserts: the harness measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # generous: a loaded CI box must not turn a smoke test into a flake


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"benchmark did not finish within {TIMEOUT_S}s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


def test_scrape_and_soak_quick(tmp_path: Path) -> None:
    scrape_json = tmp_path / "scrape.json"
    soak_json = tmp_path / "soak.json"
    # Both at once: they use separate simulators and exporters on free loopback ports.
    scrape = _start(["-m", "benchmarks.scrape", "--quick", "--accounts", "1,5", "--scrapes", "3",
                     "--latency-ms", "50", "--output", str(scrape_json)])
    soak = _start(["benchmarks/soak.py", "--seconds", "5", "--output", str(soak_json)])
    scrape_out = _finish(scrape)
    soak_out = _finish(soak)

    assert "| N |" in scrape_out and "### Targets" in scrape_out
    report = json.loads(scrape_json.read_text())
    assert {"machine", "params", "runs", "targets", "profile", "duration_s"} <= report.keys()
    assert {"cpu_count", "cpu_model", "python", "date"} <= report["machine"].keys()
    runs = {(r["mode"], r["accounts"]) for r in report["runs"]}
    assert runs == {("parallel", 1), ("parallel", 5), ("sequential", 1), ("sequential", 5)}
    for run in report["runs"]:
        assert {"wall_median_s", "wall_p95_s", "cpu_ms_per_scrape", "cpu_ms_per_account_scrape",
                "rss_mb_after_first", "rss_mb_after_last", "rss_mb_peak_hwm", "connections",
                "metrics_bytes"} <= run.keys()
        assert len(run["wall_s"]) == run["scrapes"]
        assert run["metrics_bytes"] > 0
        # Correctness, not speed: every account answered in every scrape.
        assert run["up_ok"] == run["up_expected"] == run["accounts"] * run["scrapes"]
    assert all(t["result"] in ("PASS", "FAIL", "SKIP") for t in report["targets"])

    assert "scrapes" in soak_out
    soak_report = json.loads(soak_json.read_text())
    assert {"machine", "scrapes", "scrapes_per_second", "rss_mb", "threads", "fds", "samples",
            "non_200", "stderr_tracebacks", "body_tracebacks", "targets"} <= soak_report.keys()
    assert soak_report["scrapes"] > 0 and len(soak_report["samples"]) >= 2
    for key in ("first", "last", "max"):
        assert key in soak_report["rss_mb"] and key in soak_report["threads"] and key in soak_report["fds"]
    # Correctness under faults (not timing): no leaked secrets, no tracebacks, no non-200 answers.
    assert soak_report["body_secret_leaks"] == 0 and soak_report["stderr_secret_leaks"] == 0
    assert soak_report["body_tracebacks"] == 0 and soak_report["stderr_tracebacks"] == 0
    assert soak_report["non_200"] == 0
    # The faults reached the exporter and were counted (every scrape asks the API: cache_seconds 0).
    assert sum(soak_report["scrape_errors_by_reason"].values()) > 0


def test_budget_and_subaccounts_quick(tmp_path: Path) -> None:
    budget_json = tmp_path / "budget.json"
    subs_json = tmp_path / "subaccounts.json"
    budget = _start(["-m", "benchmarks.budget", "--quick", "--output", str(budget_json)])
    subs = _start(["-m", "benchmarks.subaccounts", "--quick", "--output", str(subs_json)])
    budget_out = _finish(budget)
    subs_out = _finish(subs)

    assert "### Targets" in budget_out
    report = json.loads(budget_json.read_text())
    assert {"machine", "params", "scrapes", "simulator", "targets", "wall_median_s", "wall_p95_s",
            "up_per_scrape", "fetches_deferred_total", "exporter_used_weight_max", "duration_s"} <= report.keys()
    sim = report["simulator"]
    assert {"answers_429", "answers_418", "worst_rolling_60s_weight", "worst_fixed_minute_weight",
            "first_fetch_s", "refresh_interval_s", "end_gap_s"} <= sim.keys()
    accounts = report["params"]["accounts"]
    # Correctness, not speed: the quick run asks for more than the budget, so the governor paces
    # (deferred fetches), yet nothing is refused, every account gets fetched and ends up.
    assert sim["answers_429"] == sim["answers_418"] == 0
    assert sim["worst_rolling_60s_weight"] <= report["budget_per_minute"]
    assert sim["accounts_never_fetched"] == 0
    assert report["fetches_deferred_total"] > 0
    assert report["up_per_scrape"][-1] == accounts
    assert all(s["status"] == 200 for s in report["scrapes"]) and report["stderr_tracebacks"] == 0
    assert all(t["result"] in ("PASS", "FAIL") for t in report["targets"])

    assert "### Targets" in subs_out
    report = json.loads(subs_json.read_text())
    assert {"machine", "params", "single", "master", "targets", "profile", "duration_s"} <= report.keys()
    n = report["params"]["sub_accounts"]
    for phase in (report["single"], report["master"]):
        assert {"ready_s", "first_full_scrape_s", "wall_median_s", "wall_p95_s", "cpu_ms_per_account_scrape",
                "rss_mb_peak_hwm", "connections", "answers_429_418",
                "worst_rolling_60s_weight_sapi_host"} <= phase.keys()
        assert phase["up_ok"] == phase["up_expected"] and phase["non_200"] == 0 and phase["stderr_tracebacks"] == 0
        assert phase["answers_429_418"] == 0
    master = report["master"]
    assert master["accounts"] == n and master["sub_accounts_gauge"] == n
    assert master["requests_by_path"]["/sapi/v2/sub-account/futures/account"] >= n * (master["scrapes"] + 1)
    assert master["fetches_deferred_total"] == 0
    assert all(t["result"] in ("PASS", "FAIL") for t in report["targets"])


def test_streams_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "streams.json"
    out = _finish(_start(["-m", "benchmarks.streams", "--quick", "--accounts", "5", "--phase-seconds", "3",
                          "--latency-samples", "5", "--output", str(out_json)]))
    assert "| run |" in out and "latency" in out
    report = json.loads(out_json.read_text())
    assert report["latency"]["samples"] == 5
    for phase in ("idle", "load", "polling"):
        assert {"rss_mb", "threads", "cpu_pct", "weight_per_min"} <= report[phase].keys()
    alone, shared = report["connect"]  # one connection per account, then shared ones
    assert (alone["connections"], shared["connections"]) == (5, 1) and shared["subscriptions"] == 5


def test_slowreaders_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "slowreaders.json"
    out = _finish(_start(["-m", "benchmarks.slowreaders", "--quick", "--output", str(out_json)]))
    assert "### Targets" in out and "### Stalled TLS handshakes" in out
    report = json.loads(out_json.read_text())
    assert {"machine", "params", "slow_readers", "tls_floods", "targets", "duration_s"} <= report.keys()
    slow = report["slow_readers"]
    assert slow["metrics_bytes"] > 0
    for phase in ("baseline", "attack"):
        assert {"healthy", "scrape"} <= slow[phase].keys()
    # Correctness, not speed: every probe and scrape answered 200 while the slow readers sat there.
    assert slow["attack"]["healthy"]["n"] > 0 and slow["attack"]["scrape"]["n"] > 0
    assert slow["attack"]["healthy_non_200"] == 0 and slow["attack"]["scrape_non_200"] == 0
    floods = report["tls_floods"]["floods"]
    assert floods and all(f["connections"] > 0 and f["healthy_status"] == 200 for f in floods)
    assert all(t["result"] in ("PASS", "FAIL") for t in report["targets"])


def test_reloadstorm_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "reloadstorm.json"
    out = _finish(_start(["-m", "benchmarks.reloadstorm", "--quick", "--output", str(out_json)]))
    assert "### Targets" in out
    report = json.loads(out_json.read_text())
    assert {"machine", "params", "baseline", "storm", "targets", "duration_s"} <= report.keys()
    storm = report["storm"]
    # Correctness, not speed: every reload answered 200 (by at most one run each), every scrape 200.
    assert storm["answers"] == {"200": 30 * 2} and 1 <= storm["reload_runs"] <= 30 * 2
    assert report["baseline"]["non_200"] == 0 and storm["non_200"] == 0
    assert all(t["result"] in ("PASS", "FAIL") for t in report["targets"])


def test_forced_close_quick(tmp_path: Path) -> None:
    output = tmp_path / "forced_close.json"
    out = _finish(_start(["-m", "benchmarks.forced_close", "--quick", "--output", str(output)]))
    assert "whole_path_ordinary_ns" in out
    results = json.loads(output.read_text())["results"]
    assert {"prefilter_ordinary_str_ns", "json_loads_ordinary_ns", "forced_close_whole_path_ns",
            "core_share_at_1000_events_per_s"} <= results.keys()
    assert all(value > 0 for value in results.values())


def test_liverisk_quick(tmp_path: Path) -> None:
    output = tmp_path / "liverisk.json"
    _finish(_start(["-m", "benchmarks.liverisk", "--quick", "--accounts", "4", "--seconds", "2", "--samples", "2",
                    "--output", str(output)]))
    report = json.loads(output.read_text())
    assert [f["symbols_held"] for f in report["stream_forms"]] == [50, 550]
    live, polling = report["live_risk"], report["polling_only"]
    assert live["market_streams"]["connections"] == 1 and live["market_streams"]["subscriptions"] == 4 * 5
    # The harness found the new mark in the exposition (a sample may miss it when the simulator's own
    # second-by-second walk moves the mark first: a smoke test, not a timing test).
    assert live["latency"]["metrics"]["samples"] >= 1 and live["latency"]["probe"]["samples"] >= 1
    assert {"cpu_pct", "rss_mb", "rest_weight_per_min"} <= polling.keys()


def test_encode_quick_beside_another_checkout(tmp_path: Path) -> None:
    """Quick mode, with this checkout as its own baseline: both trees run, both cases, every answer 200."""
    out_json = tmp_path / "encode.json"
    out = _finish(_start(["-m", "benchmarks.encode", "--accounts", "5", "--scrapes", "2", "--baseline", str(REPO),
                          "--output", str(out_json)]))
    assert "| N | case |" in out
    report = json.loads(out_json.read_text())
    runs = {(r["tree"], r["accounts"], r["case"]) for r in report["runs"]}
    assert runs == {(t, 5, c) for t in ("this", "baseline") for c in ("changed", "unchanged")}
    assert all(r["body_bytes"] > 0 for r in report["runs"])
