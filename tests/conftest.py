"""Shared fixtures: a live simulator, configs pointing at it, and the exporter as a real process."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.engine import Engine
from exporter.httpserver import serve
from exporter.web import make_app
from processes import REPO as REPO  # the repository root, for the test modules
from processes import ManagedProcess
from testkit import SimAccount, Simulator

# The official example row (binance-api.md §2.2) and a second, multi-asset account.
OFFICIAL_ROW = {"accountAlias": "SgsR", "asset": "USDT", "balance": "122607.35137903",
                "crossWalletBalance": "23.72469206", "crossUnPnl": "0.00000000",
                "availableBalance": "23.72469206", "maxWithdrawAmount": "23.72469206",
                "marginAvailable": True, "updateTime": 1617939110373}


def rows_b() -> list[dict]:
    return [
        {"accountAlias": "XqTz", "asset": "USDT", "balance": "1000.12345678", "crossWalletBalance": "990.00000001",
         "crossUnPnl": "-12.34567890", "availableBalance": "950.50000000", "maxWithdrawAmount": "900.00000000",
         "marginAvailable": True, "updateTime": 1700000000123},
        {"accountAlias": "XqTz", "asset": "BNB", "balance": "3.14159265", "crossWalletBalance": "3.14159265",
         "crossUnPnl": "0.00000000", "availableBalance": "2.71828182", "maxWithdrawAmount": "2.71828182",
         "marginAvailable": False, "updateTime": 0},
        {"accountAlias": "XqTz", "asset": "ETH", "balance": "0.00000000", "crossWalletBalance": "0.00000000",
         "crossUnPnl": "0.00000000", "availableBalance": "0.00000000", "maxWithdrawAmount": "0.00000000",
         "marginAvailable": True, "updateTime": 0},
    ]


@dataclass
class Acct:
    alias: str
    key: str
    secret: str


ACCOUNTS = [Acct("alpha", "key-alpha-" + "a" * 20, "secret-alpha-" + "1" * 40),
            Acct("bravo", "key-bravo-" + "b" * 20, "secret-bravo-" + "2" * 40),
            Acct("charlie", "key-charlie-" + "c" * 18, "secret-charlie-" + "3" * 40)]
ALL_SECRETS = [a.key for a in ACCOUNTS] + [a.secret for a in ACCOUNTS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll with a deadline instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_exc!r})")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`{(sample_name, sorted label items): value}` from exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    """One sample's value; series labelled `alias` default to market="usdm" (most tests use USD-M)."""
    if "alias" in labels and "market" not in labels and name != "binance_futures_sub_account_info":
        labels["market"] = "usdm"
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator([
        SimAccount(api_key=ACCOUNTS[0].key, api_secret=ACCOUNTS[0].secret, account_alias="SgsR",
                   balances=[dict(OFFICIAL_ROW)]),
        SimAccount(api_key=ACCOUNTS[1].key, api_secret=ACCOUNTS[1].secret, account_alias="XqTz",
                   balances=rows_b()),
        SimAccount(api_key=ACCOUNTS[2].key, api_secret=ACCOUNTS[2].secret, account_alias="Zz01",
                   balances=[dict(OFFICIAL_ROW, accountAlias="Zz01", asset="USDC")]),
    ])
    simulator.start()
    yield simulator
    simulator.stop()


def config_dict(base_url: str, accounts: list[Acct] = ACCOUNTS, **defaults: object) -> dict:
    return {
        # cache_seconds 0: every scrape refreshes (the default would serve data younger than 12 s).
        "defaults": {"base_url": base_url, "timeout_seconds": 3, "cache_seconds": 0, **defaults},
        "accounts": [{"alias": a.alias, "api_key": a.key, "api_secret": a.secret} for a in accounts],
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


class ExporterProcess(ManagedProcess):
    """`python -m exporter` on a loopback port, with helpers to scrape it."""

    def __init__(self, args: list[str], port: int, log_path: Path, env: dict | None = None,
                 scheme: str = "http") -> None:
        super().__init__([sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}", *args],
                         log_path, "exporter", env or {})
        self.args, self.port, self.scheme = args, port, scheme

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ExporterProcess:
        super().start()
        if wait:
            self.wait_ready(self._healthy, timeout=20)
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/healthy", timeout=1, verify=False).status_code in (200, 401)
        except requests.exceptions.SSLError:
            return True  # mutual TLS without a client certificate: the server is up

    def get(self, path: str = "/metrics", **kw: object) -> requests.Response:
        kw.setdefault("timeout", 15)
        return requests.get(self.url + path, **kw)  # type: ignore[arg-type]

    def metrics(self, path: str = "/metrics") -> dict:
        resp = self.get(path)
        assert resp.status_code == 200, resp.text
        return parse_metrics(resp.text)

    def logs(self) -> str:
        return self.output()


@pytest.fixture
def run_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(*args: str, wait: bool = True, env: dict | None = None, scheme: str = "http") -> ExporterProcess:
        proc = ExporterProcess(list(args), free_port(), tmp_path / f"exporter-{len(started)}.log", env,
                               scheme=scheme)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


class Harness:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.server = serve(make_app(engine), "127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def get(self, path: str = "/metrics", **kw: object) -> requests.Response:
        kw.setdefault("timeout", 20)
        return requests.get(self.url + path, **kw)  # type: ignore[arg-type]

    def scrape(self, path: str = "/metrics", **kw: object) -> dict:
        resp = self.get(path, **kw)
        assert resp.status_code == 200, resp.text
        assert "Traceback" not in resp.text
        for secret in ALL_SECRETS:
            assert secret not in resp.text
        return parse_metrics(resp.text)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.engine.close()


@pytest.fixture
def make_harness() -> Iterator:
    made: list[Harness] = []

    def make(data: dict) -> Harness:
        harness = Harness(Engine(parse_config(data, "test.yaml", {})))
        made.append(harness)
        return harness

    yield make
    for h in made:
        h.close()


def assert_no_secrets(text: str, secrets: list[str] = ALL_SECRETS) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked into output"


def run_cli(*args: str, env: dict | None = None, timeout: float = 20, **kw: object) -> subprocess.CompletedProcess:
    """The CLI as a process, under a 2 GiB address-space cap: a runaway read fails instead of swapping,
    and `timeout` turns a hang into a failure."""
    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap_memory, env=env, **kw)  # type: ignore[arg-type]


def one_error_line(proc: subprocess.CompletedProcess, source: Path) -> str:
    """The CLI refused a file: exit 1 and exactly one line, `error: <file>: ...`."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: "), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path
