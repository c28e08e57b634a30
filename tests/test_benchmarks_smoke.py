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
