"""The exporter as users run it: a real process, its flags, its logs, its shutdown."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    ACCOUNTS,
    ALL_SECRETS,
    REPO,
    ExporterProcess,
    assert_no_secrets,
    config_dict,
    free_port,
    value,
    wait_until,
    write_config,
)
from exporter import SUMMARY, __version__
from exporter.cli import DEMO_LISTEN_ADDRESS, default_listen_address
from testkit import Simulator


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == f"binance-futures-exporter {__version__}"


def test_help_lists_prometheus_style_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    for flag in ("--config.file", "--web.listen-address", "--web.telemetry-path", "--web.config.file",
                 "--web.enable-lifecycle", "--log.level", "--log.format", "--demo", "--version"):
        assert flag in out


def test_every_summary_names_what_the_exporter_is() -> None:
    """--help, the package summary and the package docstring: futures accounts of every kind, not "USD-M balances"."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    out = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    out = re.sub(r"-\s+", "-", " ".join(out.split()))  # argparse wraps lines, also after hyphens
    assert SUMMARY in out
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["description"] == SUMMARY
    for text in (SUMMARY, out, __import__("exporter").__doc__):
        assert "USD-M Futures account balances" not in text
        assert "COIN-M" in text and "Portfolio Margin" in text


def test_demo_listens_on_loopback_unless_told_and_prints_where_it_listens(tmp_path: Path) -> None:
    assert default_listen_address(demo=True) == DEMO_LISTEN_ADDRESS == "127.0.0.1:9894"
    assert default_listen_address(demo=False) == ":9894"
    out = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    assert "with --demo: 127.0.0.1:9894" in " ".join(out.split())
    # Told to listen on every interface, it says so: not just a loopback URL.
    port = free_port()
    exp = ExporterProcess(["--demo", f"--web.listen-address=:{port}"], port, tmp_path / "exporter.log")
    try:
        exp.start()
        logs = exp.logs()
    finally:
        exp.stop()
    (line,) = [ln for ln in logs.splitlines() if ln.startswith("Serving metrics at ")]
    assert re.fullmatch(r"Serving metrics at http://127\.0\.0\.1:(\d+)/metrics and on every other interface "
                        r"\(listening on :\1\)", line), line


def test_ready_log_line_counts_what_the_landing_page_lists(run_exporter) -> None:
    """--demo: 7 configured accounts; the landing page and the "ready" line also count the sub-accounts found."""
    exp = run_exporter("--demo")
    line = wait_until(lambda: next((ln for ln in exp.logs().splitlines() if 'msg=ready' in ln), None), timeout=30)
    counted = int(re.search(r"\baccounts=(\d+)", line).group(1))
    page = exp.get("/").text
    listed = re.findall(r'<li><a href="/probe\?target=', page)
    assert counted == len(listed) > 6, (line, len(listed))  # more than configured: the sub-accounts
    assert re.search(r'msg="demo mode: simulated Binance API" url=\S+ configured_accounts=7', exp.logs())


def test_serves_metrics_from_config_and_logs_no_secrets(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    data = config_dict(sim.base_url)
    data["accounts"][2]["api_secret"] = "not-the-right-secret-" + "7" * 20
    cfg = write_config(tmp_path / "config.yaml", data)
    exp = run_exporter(f"--config.file={cfg}", "--log.level=debug")
    m = exp.metrics()
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
    assert value(m, "binance_futures_up", alias="bravo") == 1.0
    assert value(m, "binance_futures_up", alias="charlie") == 0.0
    assert value(m, "binance_futures_scrape_errors_total", alias="charlie", reason="signature") == 1.0
    assert exp.stop() == 0
    logs = exp.logs()
    assert "Serving metrics at http://127.0.0.1:" in logs
    assert re.search(r'level=warn logger=exporter.engine msg="scrape failed" alias=charlie market=usdm '
                     r'reason=signature status=400 code=-1022 error="Signature for this request is not valid."', logs)
    assert "Traceback" not in logs
    assert_no_secrets(logs, ALL_SECRETS + ["not-the-right-secret-"])
    # debug level shows no signed URL either
    assert "signature=" not in logs


def test_custom_telemetry_path_and_json_logs(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    exp = run_exporter(f"--config.file={cfg}", "--web.telemetry-path=/balances", "--log.format=json")
    assert value(exp.metrics("/balances"), "binance_futures_up", alias="alpha") == 1.0
    assert exp.get("/metrics").status_code == 404
    exp.stop()
    import json

    lines = [json.loads(line) for line in exp.logs().splitlines() if line.startswith("{")]
    assert any(doc.get("msg") == "listening" for doc in lines)


def test_sigterm_stops_within_a_second(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url))
    exp = run_exporter(f"--config.file={cfg}")
    exp.metrics()
    assert exp.proc is not None
    start = time.monotonic()
    exp.proc.send_signal(__import__("signal").SIGINT)
    exp.proc.wait(timeout=5)
    assert time.monotonic() - start < 1.5
    assert exp.proc.returncode == 0


def test_demo_serves_balances(run_exporter) -> None:
    exp = run_exporter("--demo")
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_up", alias="grid-bot") == 1.0 else None)(exp.metrics()))
    for alias in ("main", "hedge", "grid-bot"):
        assert value(m, "binance_futures_up", alias=alias) == 1.0
    assert value(m, "binance_futures_available_balance", alias="grid-bot", asset="USDT") < \
        value(m, "binance_futures_min_available_balance", alias="grid-bot", asset="USDT")
    assert value(m, "binance_futures_available_balance", alias="main", asset="USDT") > \
        value(m, "binance_futures_min_available_balance", alias="main", asset="USDT")
    assert "Serving metrics at http://127.0.0.1:" in exp.logs()


def test_port_in_use_is_a_clear_error(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url))
    first = run_exporter(f"--config.file={cfg}")
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={cfg}",
                           f"--web.listen-address=127.0.0.1:{first.port}"], capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    assert proc.returncode == 1 and "cannot listen on" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_listen_address(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address=nonsense"],
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2 and "--web.listen-address must look like" in proc.stderr
