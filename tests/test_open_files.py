"""File descriptors follow from the config, not from the number of accounts (issue 18).

Every account of a host shares the host's keep-alive pool of `max_concurrency`
connections; at start the exporter raises its soft RLIMIT_NOFILE to what that
needs, up to the hard limit, and refuses to start in one line when the hard
limit is too low. The limits are set on the exporter process with `prlimit`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import OFFICIAL_ROW, REPO, ExporterProcess, free_port, one_error_line, write_config
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.fdlimit import MIN_FRONT_CONNECTIONS
from exporter.httpserver import FD_RESERVE, MAX_CONNECTIONS
from testkit import SimAccount, Simulator

PRLIMIT = shutil.which("prlimit")
pytestmark = pytest.mark.skipif(PRLIMIT is None or not sys.platform.startswith("linux"),
                                reason="needs prlimit (util-linux) on Linux")


def limited_exporter(tmp_path: Path, config: Path, soft: int, hard: int) -> ExporterProcess:
    exp = ExporterProcess([f"--config.file={config}"], free_port(), tmp_path / "exporter.log")
    exp.cmd = [PRLIMIT, f"--nofile={soft}:{hard}", *exp.cmd]
    return exp


def open_files(pid: int) -> tuple[int, int]:
    """(descriptors open now, the soft limit) of a process."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
    return len(os.listdir(f"/proc/{pid}/fd")), soft


@pytest.mark.scale
def test_5000_accounts_under_a_soft_limit_of_1024_are_all_up(tmp_path: Path) -> None:
    """SCALE TEST (the suite's heaviest: ~15 s on 2 cores). One scrape of 5,000 accounts on one host,
    the exporter started with a soft limit of 1,024 and a hard one of 20,000: every account is up,
    over at most max_concurrency (512) connections."""
    n = 5000
    row = dict(OFFICIAL_ROW)
    sim = Simulator([SimAccount(f"k{i:05d}", f"s{i:05d}", balances=[row]) for i in range(n)],
                    weight_limit=10**9, latency_s=0.2)  # every fetch thread busy at once
    sim.start()
    exp = None
    try:
        config = write_config(tmp_path / "c.yaml", {
            "weight_limit": 1_000_000, "weight_budget_share": 1,
            "defaults": {"base_url": sim.base_url, "timeout_seconds": 120},
            "accounts": [{"alias": f"a{i:05d}", "api_key": f"k{i:05d}", "api_secret": f"s{i:05d}"}
                         for i in range(n)]})
        exp = limited_exporter(tmp_path, config, 1024, 20000)
        exp.start()
        exp.wait_ready(lambda: exp.get("/-/ready", timeout=5).status_code == 200, timeout=60)
        started = time.monotonic()
        with ThreadPoolExecutor(1) as scraper:
            scrape = scraper.submit(exp.get, timeout=180, headers={"X-Prometheus-Scrape-Timeout-Seconds": "150"})
            healthy = []  # the front keeps answering while 5,000 fetches run (it used to pause accepting)
            while not scrape.done():
                healthy.append(requests.get(f"{exp.url}/-/healthy", timeout=5).status_code)
                time.sleep(0.2)
            resp = scrape.result()
        took = time.monotonic() - started
        assert resp.status_code == 200
        assert healthy and set(healthy) == {200}
        # Counted from the text: 5,000 accounts' families parse for longer than they scrape.
        up = re.findall(r'^binance_futures_up\{alias="a\d{5}",market="usdm"\} (\S+)$', resp.text, re.M)
        assert len(up) == n and set(up) == {"1.0"}, {v: up.count(v) for v in set(up)}
        assert len(re.findall(r'^binance_futures_balance\{[^}]*asset="USDT"[^}]*\} 122607.35137903$',
                              resp.text, re.M)) == n
        fds, soft = open_files(exp.proc.pid)
        connections = sim.stats()["connections"]
        print(f"\n5,000 accounts: scrape {took:.1f} s, {connections} upstream connections, "
              f"{fds} fds open, soft limit raised from 1024 to {soft}")
        assert connections <= 512  # the host's pool, whatever the number of accounts
        assert soft == 512 + MAX_CONNECTIONS + FD_RESERVE  # what the config needs; not the hard limit
        assert fds < 512 + 100
        assert "Traceback" not in exp.logs()
    finally:
        if exp is not None and exp.proc is not None:
            exp.stop()
        sim.stop()


def _master(tmp_path: Path, **top: object) -> Path:
    """A master key reading its sub-accounts: up to max_concurrency requests at once on the /sapi host."""
    return write_config(tmp_path / "c.yaml", {**top, "accounts": [
        {"alias": "m", "api_key": "k", "api_secret": "s", "markets": [], "sub_accounts": {},
         "sapi_base_url": "http://127.0.0.1:9"}]})


def test_connections_needed_follow_from_the_config() -> None:
    """Per host: one per account and market, one for the clock, max_concurrency for a master's
    sub-accounts; never more than max_concurrency per host."""
    def needed(data: dict) -> int:
        engine = Engine(parse_config(data, "c.yaml", {}))
        try:
            return engine.pools.connections()
        finally:
            engine.close()

    acc = {"api_key": "k", "api_secret": "s", "markets": ["usdm", "coinm"]}
    three = [{"alias": f"a{i}", **acc} for i in range(3)]
    assert needed({"accounts": three}) == 8  # two hosts, 3 accounts and a clock each
    assert needed({"accounts": [*three, {"alias": "m", "api_key": "k", "api_secret": "s", "markets": [],
                                          "sub_accounts": {}}]}) == 8 + 512
    many = [{"alias": f"a{i}", "api_key": "k", "api_secret": "s"} for i in range(600)]
    assert needed({"accounts": many}) == 512
    assert needed({"max_concurrency": 100, "accounts": many}) == 100


def test_a_hard_limit_too_low_for_the_config_is_refused_in_one_line(tmp_path: Path) -> None:
    config = _master(tmp_path)
    least = 512 + MIN_FRONT_CONNECTIONS + FD_RESERVE
    proc = subprocess.run([PRLIMIT, f"--nofile={least - 1}:{least - 1}", sys.executable, "-m", "exporter",
                           f"--config.file={config}", f"--web.listen-address=127.0.0.1:{free_port()}"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    line = one_error_line(proc, config)
    assert line == (f"error: {config}: max_concurrency: needs at least {least} open files (512 connections "
                    f"to Binance, pooled and streams, {MIN_FRONT_CONNECTIONS} for scrapes, {FD_RESERVE} reserved) but may open only "
                    f"{least - 1} (hard limit {least - 1}); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, "
                    "--ulimit nofile=) or lower max_concurrency")


def test_the_same_limit_fits_a_config_with_fewer_connections(tmp_path: Path) -> None:
    """What is needed follows from the config: max_concurrency 64 starts under the limit 512 is refused."""
    config = _master(tmp_path, max_concurrency=64)
    least = 512 + MIN_FRONT_CONNECTIONS + FD_RESERVE
    exp = limited_exporter(tmp_path, config, least - 1, least - 1)
    try:
        exp.start()
        assert requests.get(f"{exp.url}/-/healthy", timeout=5).status_code == 200
        _, soft = open_files(exp.proc.pid)
        assert soft == least - 1  # already the hard limit: nothing to raise
        assert "open files" in exp.logs() and "http_connections=" + str(least - 1 - 64 - FD_RESERVE) in exp.logs()
    finally:
        exp.stop()


def test_the_demo_starts_under_a_containers_usual_limit(tmp_path: Path) -> None:
    """--demo holds both ends of its pooled connections; a hard limit of 1,024 (podman's default) fits."""
    exp = ExporterProcess(["--demo"], free_port(), tmp_path / "exporter.log")
    exp.cmd = [PRLIMIT, "--nofile=1024:1024", *exp.cmd]
    try:
        exp.start()
        exp.wait_ready(lambda: exp.get("/-/ready", timeout=5).status_code == 200, timeout=20)
        assert re.search(r'^binance_futures_up\{alias="bot-1",market="usdm"\} 1.0$', exp.get().text, re.M)
    finally:
        exp.stop()
