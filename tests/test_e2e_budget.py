"""The weight budget against real Prometheus servers: an HA pair, and replicas sharded with hashmod.

The simulator enforces a per-IP weight limit; the exporter runs as a process and
real `prometheus` binaries scrape it every second. Without a `prometheus` binary
this skips, except when CI is set (then it fails).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_e2e_prometheus import PromAPI, poll

from conftest import OFFICIAL_ROW, free_port, write_config
from stack_helpers import process, require_tool
from testkit import SimAccount, Simulator

ALIASES = ["desk-a", "desk-b", "desk-c", "desk-d", "desk-e", "desk-f"]
DEADLINE_SECONDS = 60


def sim_accounts() -> list[SimAccount]:
    return [SimAccount(f"key-{a}", f"secret-{a}", balances=[dict(OFFICIAL_ROW)]) for a in ALIASES]


def exporter_config(base_url: str, aliases: list[str], **top: object) -> dict:
    return {"defaults": {"base_url": base_url, "timeout_seconds": 2},
            "accounts": [{"alias": a, "api_key": f"key-{a}", "api_secret": f"secret-{a}"} for a in aliases], **top}


def start_prometheus(tmp: Path, name: str, scrape_configs: list[dict]) -> tuple[list[str], str]:
    prometheus = require_tool("prometheus")
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
           "scrape_configs": scrape_configs}
    (tmp / f"{name}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [prometheus, f"--config.file={tmp / f'{name}.yml'}", f"--storage.tsdb.path={tmp / name}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return cmd, f"http://127.0.0.1:{port}"


@pytest.fixture
def limited_sim() -> Iterator[Simulator]:
    sim = Simulator(sim_accounts(), weight_limit=240)
    sim.start()
    yield sim
    sim.stop()


def test_ha_pair_scraping_every_second_never_meets_a_429(limited_sim: Simulator, tmp_path: Path,
                                                         run_exporter) -> None:
    """Two Prometheus servers at 1 s would ask for 2 x 6 x 5 x 60 = 3600 weight a minute; the IP allows 240."""
    cfg = write_config(tmp_path / "c.yaml", exporter_config(limited_sim.base_url, ALIASES, weight_limit=240,
                                                             scrape_interval_seconds=1))
    exporter = run_exporter(f"--config.file={cfg}")
    job = {"job_name": "binance-futures", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}
    (cmd_a, url_a), (cmd_b, url_b) = (start_prometheus(tmp_path, n, [job]) for n in ("prom-a", "prom-b"))
    with process(cmd_a, f"{url_a}/-/ready", "prometheus a"), process(cmd_b, f"{url_b}/-/ready", "prometheus b"):
        apis = [PromAPI(url_a), PromAPI(url_b)]
        deadline = time.monotonic() + DEADLINE_SECONDS

        def all_up_everywhere():
            ups = [{s["metric"]["alias"]: s["value"][1] for s in api.query("binance_futures_up")} for api in apis]
            return all(up == dict.fromkeys(ALIASES, "1") for up in ups), ups

        poll(all_up_everywhere, "every account up on both Prometheus servers", deadline)
        time.sleep(5)  # let both keep scraping at full speed a while longer
        for api in apis:
            assert [s["value"][1] for s in api.query("min(binance_futures_up)")] == ["1"]
            limited = api.query("max(max_over_time(binance_futures_rate_limited_responses_total[1m]))")
            assert [s["value"][1] for s in limited] == ["0"]
            ours = api.query("max(max_over_time(binance_futures_exporter_used_weight[1m]))")
            assert float(ours[0]["value"][1]) <= 120  # weight_limit x weight_budget_share
    assert limited_sim.stats()["used_weight"] <= 120
    assert "level=warn" in exporter.logs() and "weight budget" in exporter.logs()
    assert "scrape failed" not in exporter.logs()


def prometheus_shard(value: str, modulus: int) -> int:
    """Prometheus' hashmod relabel action: md5, last 8 bytes as a big-endian integer, modulo."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def test_replicas_sharded_with_hashmod_fetch_disjoint_accounts(tmp_path: Path, run_exporter) -> None:
    shards = {alias: prometheus_shard(alias, 2) for alias in ALIASES}
    assert set(shards.values()) == {0, 1}, "the aliases must fall into both shards"
    sims = [Simulator(sim_accounts()), Simulator(sim_accounts())]  # one upstream per replica, to tell them apart
    for sim in sims:
        sim.start()
    try:
        exporters = [run_exporter(f"--config.file={write_config(tmp_path / f'c{i}.yaml', exporter_config(sim.base_url, ALIASES))}")
                     for i, sim in enumerate(sims)]
        jobs = []
        for shard, exporter in enumerate(exporters):
            jobs.append({
                "job_name": f"binance-futures-probe-{shard}", "metrics_path": "/probe",
                "static_configs": [{"targets": ALIASES}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"source_labels": ["__param_target"], "modulus": 2, "target_label": "__tmp_shard",
                     "action": "hashmod"},
                    {"source_labels": ["__tmp_shard"], "regex": str(shard), "action": "keep"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{exporter.port}"},
                ]})
        cmd, url = start_prometheus(tmp_path, "prom", jobs)
        with process(cmd, f"{url}/-/ready", "prometheus"):
            api = PromAPI(url)

            def all_up():
                up = {s["metric"]["alias"]: (s["metric"]["job"], s["value"][1])
                      for s in api.query("binance_futures_up")}
                return up == {a: (f"binance-futures-probe-{shards[a]}", "1") for a in ALIASES}, up

            poll(all_up, "every alias up, each from its own shard's job", time.monotonic() + DEADLINE_SECONDS)
        fetched = [{key.removeprefix("key-") for key in sim.stats()["requests_by_key"]} for sim in sims]
        assert fetched == [{a for a in ALIASES if shards[a] == s} for s in (0, 1)]
    finally:
        for sim in sims:
            sim.stop()
