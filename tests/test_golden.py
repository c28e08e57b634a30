"""Golden expositions: the whole text of /metrics and /probe, pinned in tests/golden/.

Every family the exporter can emit, with its HELP, TYPE, label names and
values, family order and label order exactly as rendered, for a fixed
simulator dataset (DATASET below). A change to the output fails here with a
unified diff; if the change is intended, regenerate the files with

    make golden        # UPDATE_GOLDEN=1 pytest tests/test_golden.py

and review the diff of tests/golden/ like any other code.

Each file comes from its own fresh simulator and exporter, so one case never
depends on another (`-k probe-pm` alone gives the same text). The exporter is
started as the CLI starts it (`Engine.start()`: clocks measured, sub-account
discovery in the background); the test polls /-/ready until that is done, then
scrapes the path once to warm up (a sub-account without a futures account of a
market is dropped at its first fetch) and pins the second scrape: the steady
state a user sees. With the default cache (data younger than 12 s is not
fetched again) the second scrape serves the warm-up's fetches, so every
counter counts exactly one fetch per account. DATASET covers every family
render.py can emit; test_the_dataset_exercises_every_family keeps it so.

Normalisations, the only differences allowed between runs (NORMALISED below):

* the value of `request_duration_seconds`, `last_success_timestamp_seconds`
  (and `exporter_config_last_reload_success_timestamp_seconds`) and
  `time_offset_seconds` becomes `<duration>`, `<timestamp>`, `<offset>`;
  the series line stays, so its label set is still pinned;
* the simulator's random port in `host` labels becomes `<port>` (PORT_RE);
* the `version` label of exporter_build_info becomes `<version>`: it is git's
  (setuptools-scm), different at every commit (test_scrape pins it).

Everything else is pinned as it is, `used_weight` included: Binance (and the
simulator) count weight per minute of *server* time, so the simulator's clock
is set a second past the start of a minute (`clock_skew_ms`), leaving the test
59 s before a minute boundary could reset the count. (That skew is also why
`time_offset_seconds` reads tens of seconds before normalisation.)

The process_* and python_* families of /metrics come from prometheus_client's
collectors: they are left out of the golden file (their values change every
run, their set depends on the platform, and their HELP texts belong to the
library's version, not to this project). Whether they are there at all is
checked separately (test_metrics_keeps_the_client_collectors).

`promtool check metrics` (lint included) must pass on each live exposition a
golden file was made from, and on the file itself with its placeholders
replaced by a number (skipped without promtool, except under CI=true).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import wait_until
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.httpserver import serve
from exporter.reload import Reloader
from exporter.simulator import SimAccount, SimFutures, SimPortfolio, SimPosition, SimSubAccount, balance_row, pm_row
from exporter.simulator.market import SimMarket
from exporter.web import make_app
from exporter.webconfig import WebConfig
from stack_helpers import metric_catalogue, require_tool
from testkit import Simulator

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# ---- the dataset -------------------------------------------------------------------------------
# Every series below is fixed: amounts, updateTime values, emails. Credentials are made up.
CREDENTIALS = {alias: (f"key-golden-{alias}-" + "k" * 16, f"secret-golden-{alias}-" + "s" * 40)
               for alias in ("desk", "pm", "master", "broken")}
WRONG_SECRET = "secret-golden-wrong-" + "w" * 40
SECRETS = [v for pair in CREDENTIALS.values() for v in pair] + [WRONG_SECRET]
T0 = 1_700_000_000_000  # a fixed updateTime (ms)
SUBS = "@sub.test"

DATASET = {
    # Account endpoints (`endpoint` applies to both markets) with positions: USD-M one with a
    # liquidation price and one without (isolated, and open orders), COIN-M one. USDT available below
    # its threshold; BNB all zero but kept by its threshold; ETH all zero and skipped.
    "desk": (dict(
        account_alias="Dk7q",
        balances=[balance_row("USDT", "10000", "4000", cross="9650", update_time=T0 + 123),
                  balance_row("BNB", 0), balance_row("ETH", 0)],
        positions=[SimPosition("BTCUSDT", "0.500", "60000", "62000", leverage=10, liquidation_price="54000.5",
                               adl=2),
                   SimPosition("ETHUSDT", "-2.000", "3000", "3100", leverage=20, open_order_margin="12.5",
                               isolated=True, isolated_wallet="300")],
        coinm_balances=[balance_row("BTC", "0.25", "0.21", coin=True, update_time=T0 + 456)],
        coinm_positions=[SimPosition("BTCUSD_PERP", "40", "61200.5", "62750.1", leverage=10)],
    ), {"markets": ["usdm", "coinm"], "endpoint": "account", "positions": True,
        "min_available_balance": {"USDT": 5000, "BNB": 0.5}, "min_account_available_balance": 2000,
        "max_margin_ratio": 0.8, "min_liquidation_distance": 0.1}),
    # Portfolio Margin: every field filled (no "" blanks), a zero asset skipped, a uniMMR threshold,
    # a UM and a CM position.
    "pm": (dict(
        pm=SimPortfolio(balances=[pm_row("USDT", "42000", "-850.5", cm_wallet="1000", cm_pnl="12.5", free="5000",
                                         locked="250", update_time=T0 + 789),
                                  pm_row("BTC", "0", free="0.5", cm_pnl="0"),
                                  pm_row("BNB", "0", cm_pnl="0")],
                        maint_margin="14500", initial_margin="21000", collateral_rate="0.97", blanks=False,
                        update_time=T0,
                        um_positions=[SimPosition("BTCUSDT", "-0.5", "60000", "61000", "SHORT",
                                                  liquidation_price="62000")],
                        cm_positions=[SimPosition("ETHUSD_PERP", "10", "3000", "3100")]),
    ), {"markets": ["pm"], "min_uni_mmr": 2.0, "positions": True, "user_stream": True}),
    # A master key: its own USD-M balance endpoint (accountAlias, marginAvailable), and sub-accounts:
    # alpha aliased, with a position (its margins, and the row of the sub-account positionRisk); beta
    # without COIN-M, its zero BNB skipped; nofutures without any futures account; test-1 excluded.
    "master": (dict(
        account_alias="Mstr",
        balances=[balance_row("USDT", "15000", "14100", update_time=T0 + 1000)],
        sub_accounts=[
            SimSubAccount("alpha" + SUBS, SimFutures([balance_row("USDT", "5230.5", "4100")],
                                                     [SimPosition("BTCUSDT", "0.050", "63000", "62750.1")]),
                          SimFutures([balance_row("BTC", "0.42", coin=True)])),
            SimSubAccount("beta" + SUBS, SimFutures([balance_row("USDT", "2100"), balance_row("BNB", 0)])),
            SimSubAccount("nofutures" + SUBS, usdm=None),
            SimSubAccount("test-1" + SUBS, SimFutures([balance_row("USDT", "1")])),
        ],
    ), {"min_available_balance": {"USDT": 1000}, "positions": True,
        "sub_accounts": {"include": ["*" + SUBS], "exclude": ["test-*"], "markets": ["usdm", "coinm"],
                         "aliases": {"alpha" + SUBS: "alpha"}}}),
    # Configured with a wrong secret: signature error, up 0.
    "broken": (dict(account_alias="Brkn", balances=[balance_row("USDT", "1")]), {}),
}

CASES = {
    "metrics": "/metrics",
    "probe-desk": "/probe?target=desk",
    "probe-pm": "/probe?target=pm",
    "probe-master": "/probe?target=master",
}
NORMALISED = {
    "binance_futures_request_duration_seconds": "<duration>",
    "binance_futures_last_success_timestamp_seconds": "<timestamp>",
    "binance_futures_exporter_config_last_reload_success_timestamp_seconds": "<timestamp>",
    "binance_futures_time_offset_seconds": "<offset>",
    "binance_futures_stream_last_event_timestamp_seconds": "<timestamp>",
}
PORT_RE = re.compile(r'host="127\.0\.0\.1:(\d+)')  # the simulator's port, in host labels
CLIENT_FAMILIES = ("process_", "python_")


# Live risk: the market's marks are the dataset's and never move (volatility 0); the simulator still
# publishes them every second, and its REST answers are Binance's figures at them.
MARKS = {"BTCUSDT": "62000", "ETHUSDT": "3100", "BTCUSD_PERP": "62750.1", "ETHUSD_PERP": "3100"}
LIVE = (("desk", "usdm"), ("desk", "coinm"), ("pm", "pm"))  # the accounts live risk recomputes


def simulator() -> Simulator:
    accounts = [SimAccount(api_key=key, api_secret=secret, **DATASET[alias][0])
                for alias, (key, secret) in CREDENTIALS.items()]
    simulator = Simulator(accounts, market=SimMarket(marks=dict(MARKS), volatility=0.0))
    simulator.auto_liquidate = False
    return simulator


def config(base_url: str, stream_url: str, market_url: str, coinm_market_url: str) -> dict:
    urls = {k: base_url for k in ("base_url", "coinm_base_url", "pm_base_url", "sapi_base_url")}
    urls.update(stream_base_url=stream_url + "/private", coinm_stream_base_url=stream_url,
                pm_stream_base_url=stream_url + "/pm")
    accounts = []
    for alias, (key, secret) in CREDENTIALS.items():
        accounts.append({"alias": alias, "api_key": key,
                         "api_secret": WRONG_SECRET if alias == "broken" else secret, **DATASET[alias][1]})
    return {"defaults": {**urls, "timeout_seconds": 3}, "accounts": accounts,
            "market_stream_base_url": market_url, "coinm_market_stream_base_url": coinm_market_url}


def start_of_minute_skew(now_ms: int) -> int:
    """A clock skew that puts the simulator's clock 1 s past the start of the next minute."""
    return 60_000 - now_ms % 60_000 + 1_000


def scrape_twice(path: str) -> str:
    """A fresh simulator and exporter; the second scrape of `path` after start-up is done."""
    sim = simulator()
    sim.clock_skew_ms = start_of_minute_skew(int(time.time() * 1000))
    sim.start()
    minute = sim.server_time_ms() // 60_000
    engine = Engine(parse_config(config(sim.base_url, sim.stream_url, sim.market_stream_url,
                                        sim.coinm_market_stream_url), "golden.yaml", {}))
    started = engine.start()
    reloader = Reloader(engine, WebConfig(), None, None)  # as the CLI wires it: the reload status too
    server = serve(make_app(engine, ready=lambda: all(f.done() for f in started), exporter_metrics=reloader.metrics),
                   "127.0.0.1:0")
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        wait_until(lambda: requests.get(url + "/-/ready", timeout=5).status_code == 200, timeout=10)
        assert engine.discoveries["master"].listed
        assert engine._subs_of["master"] == ["alpha", "beta@sub.test", "nofutures@sub.test"]  # test-1 excluded
        # pm streams: connected, its after-the-gap REST refresh done (so the scrapes below fetch it
        # exactly once, like every account), and one event that is neither applied nor refreshes.
        stream = engine.streams.state(("pm", "pm"))
        wait_until(lambda: stream.up and engine.states[("pm", "pm")].last_ok is not None, timeout=10)
        sim.push_event(CREDENTIALS["pm"][0], "pm", {"e": "TRADE_LITE", "E": int(time.time() * 1000)})  # near the clock
        wait_until(lambda: stream.last_event_wall is not None, timeout=10)
        # Forced closes (ORDER_TRADE_UPDATE): a liquidation (two updates of one order: counted once), an ADL.
        for status, client_id, order_id in (("NEW", "autoclose-1700000000000001", 7001), ("FILLED",
                                            "autoclose-1700000000000001", 7001), ("FILLED", "adl_autoclose", 7002)):
            sim.push_event(CREDENTIALS["pm"][0], "pm", {"e": "ORDER_TRADE_UPDATE", "E": int(time.time() * 1000),
                                                        "o": {"s": "BTCUSDT", "c": client_id, "i": order_id,
                                                              "X": status, "o": "LIQUIDATION" if order_id == 7001
                                                              else "MARKET"}})
        wait_until(lambda: len(stream.view().forced_closes) == 2, timeout=10)
        assert requests.get(url + path, timeout=10).status_code == 200
        # Live risk: every live account's marks arrived after its REST read (recomputed, as a user sees it).
        wanted = [key for key in LIVE if path == "/metrics" or path.endswith("=" + key[0])]
        wait_until(lambda: all(live_marks(engine, key) for key in wanted), timeout=10)
        resp = requests.get(url + path, timeout=10)
        assert resp.status_code == 200, resp.text
        assert sim.server_time_ms() // 60_000 == minute, "a minute boundary fell inside: used_weight is off"
        text = resp.text
    finally:
        server.shutdown()
        server.server_close()
        engine.close()
        sim.stop()
    assert sim.base_url == "http://127.0.0.1:" + PORT_RE.search(text).group(1)
    for secret in SECRETS:
        assert secret not in text
    return text


def live_marks(engine: Engine, key: tuple[str, str]) -> bool:
    """Whether every symbol of the account has a fresh mark newer than its latest REST read."""
    state = engine.states[key]
    ok = state.last_ok
    if ok is None or ok.snapshot is None:
        return False
    symbols = {p.symbol for p in ok.snapshot.positions if p.values.get("position_amount")}
    return len(engine.live.fresh_marks(key[1], symbols, ok.started)) == len(symbols)


def family_of(line: str) -> str:
    if line.startswith("# "):
        return line.split(" ", 3)[2]
    return re.split(r"[{ ]", line, maxsplit=1)[0]


def normalise(text: str) -> str:
    """The exposition without prometheus_client's own families, varying values replaced."""
    out = []
    for line in text.splitlines():
        name = family_of(line)
        if name.startswith(CLIENT_FAMILIES):
            continue
        if not line.startswith("#") and name in NORMALISED:
            line = line.rpartition(" ")[0] + " " + NORMALISED[name]
        line = PORT_RE.sub(lambda m: m.group(0).replace(m.group(1), "<port>"), line)
        if name == "binance_futures_exporter_build_info" and not line.startswith("#"):
            line = re.sub(r'version="[^"]*"', 'version="<version>"', line)
        out.append(line)
    return "\n".join(out) + "\n"


@functools.cache
def exposition(name: str) -> str:
    """The raw text of one case, made once per test session (test_golden and the promtool check share it)."""
    return scrape_twice(CASES[name])


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    got = normalise(exposition(name))
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(got)
        return
    assert path.exists(), f"{path} is missing: run `make golden`"
    want = path.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            f"tests/golden/{name}.txt", f"{CASES[name]} now"))
        pytest.fail(f"{CASES[name]} differs from tests/golden/{name}.txt; if that is intended, run "
                    f"`make golden` and review the diff:\n{diff}", pytrace=False)


def test_the_dataset_exercises_every_family() -> None:
    """metrics.txt holds every series name the exporter can emit, with its labels: a new family without
    data here fails until DATASET gives it some."""
    names: dict[str, set[str]] = {}
    for line in (GOLDEN / "metrics.txt").read_text().splitlines():
        if not line.startswith("#"):
            name, rest = family_of(line), line.partition("{")[2]  # a series may have no labels
            names.setdefault(name, set()).update(re.findall(r'(\w+)="', rest.rpartition("}")[0]))
    catalogue = metric_catalogue()
    assert sorted(set(catalogue) - set(names)) == []
    assert sorted(set(names) - set(catalogue)) == []
    assert {n: frozenset(v) for n, v in names.items()} == catalogue


def test_metrics_keeps_the_client_collectors() -> None:
    """The families left out of metrics.txt are still served (their registration is not lost)."""
    names = {family_of(line) for line in exposition("metrics").splitlines() if line.startswith("# TYPE ")}
    assert {"python_info", "python_gc_objects_collected_total"} <= names
    if sys.platform == "linux":
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


@pytest.mark.parametrize("name", CASES)
def test_promtool_accepts_the_golden_output(name: str) -> None:
    """The live exposition behind the golden file, and the file itself with its placeholders filled,
    pass `promtool check metrics` without a lint finding."""
    promtool = require_tool("promtool")
    filled = re.sub(r" <\w+>$", " 1", (GOLDEN / f"{name}.txt").read_text(), flags=re.M)
    for text in (exposition(name), filled):
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
