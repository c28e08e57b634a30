"""End to end: the exporter in --demo mode, scraped by a real Prometheus running our rules.

The Prometheus config is prometheus/prometheus.yml as shipped (both the plain
/metrics job and the /probe multi-target job with its relabeling), rewritten
only where a test must: targets point at the test's exporter port, scrape and
evaluation interval 1s, no Alertmanager, no self-scrape. The rule files are
temp copies of ours with every `for:` shortened to 1s, so that alerts go
pending -> firing within seconds instead of minutes.

Then it polls Prometheus' HTTP API, with a deadline and no fixed sleeps, until
every PromQL of the Grafana dashboard returns data and the low-balance alert
fires for the demo account grid-bot (USDT), once although both jobs scrape it,
and not for main or hedge; that no risk alert fires for the healthy demo
(whose isolated position and Multi-Assets account have their figures); and
until the host alerts' expressions give one
series per Binance API host although every /probe scrape carries a copy of the
exporter's host metrics.

Without a `prometheus` binary this skips, except when CI is set (then it fails).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stack_helpers import DASHBOARD, PROM, RULE_FILES, demo_exporter, free_port, http_get, process, require_tool

EXPORTER_DEFAULT_ADDRESS = "localhost:9894"
LOW_BALANCE_ALERT = "BinanceFuturesAvailableBalanceLow"
DEADLINE_SECONDS = 45

# Grafana variables -> values for a direct Prometheus query. $alias/$asset are
# "All" (allValue .*); range variables get a window holding several 1s scrapes.
GRAFANA_VARS = {
    "job": "binance-futures|binance-futures-probe",
    "instance": ".*",
    "alias": ".*",
    "market": ".*",
    "asset": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1m",
}


def short_for_rules(tmp: Path) -> list[str]:
    """Copies of our rule files with every `for:` set to 1s (documented in the module docstring)."""
    paths = []
    for src in RULE_FILES:
        doc = yaml.safe_load(src.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        dst = tmp / src.name
        dst.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(str(dst))
    return paths


def prometheus_config(exporter_address: str, rule_files: list[str]) -> dict:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    cfg.pop("alerting", None)
    cfg["rule_files"] = rule_files
    jobs = []
    for job in cfg["scrape_configs"]:
        if not job["job_name"].startswith("binance-futures"):
            continue
        for sc in job.get("static_configs", []):
            sc["targets"] = [exporter_address if t == EXPORTER_DEFAULT_ADDRESS else t for t in sc["targets"]]
        for rc in job.get("relabel_configs", []):
            if rc.get("replacement") == EXPORTER_DEFAULT_ADDRESS:
                rc["replacement"] = exporter_address
        jobs.append(job)
    assert {j["job_name"] for j in jobs} == {"binance-futures", "binance-futures-probe"}
    cfg["scrape_configs"] = jobs
    return cfg


def grafana_to_promql(expr: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_VARS[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)
    assert "$" not in out, out
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel {p['id']} {p['title']!r} {t['refId']}", grafana_to_promql(t["expr"])))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", q)
            # label_values(selector, label) has data iff the selector has.
            out.append((f"variable {v['name']}", grafana_to_promql(m.group(1))))
    return out


class PromAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> dict:
        status, body = http_get(f"{self.base}{path}?{urllib.parse.urlencode(params)}", timeout=5)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]


@pytest.fixture(scope="module")
def prometheus_with_exporter(tmp_path_factory) -> Iterator[PromAPI]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    exporter_port, prom_port = free_port(), free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(f"127.0.0.1:{exporter_port}", short_for_rules(tmp)),
                                     sort_keys=False))
    prometheus_cmd = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
    with demo_exporter(port=exporter_port), \
            process(prometheus_cmd, f"http://127.0.0.1:{prom_port}/-/ready", "prometheus"):
        yield PromAPI(f"http://127.0.0.1:{prom_port}")


def poll(check, what: str, deadline: float):
    """Call `check()` until it returns a truthy value; its last falsy value explains a timeout."""
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}: {last}")


def test_dashboard_queries_return_data_and_low_balance_alert_fires(prometheus_with_exporter):
    api = prometheus_with_exporter
    deadline = time.monotonic() + DEADLINE_SECONDS
    queries = dashboard_queries()
    assert len(queries) >= 20

    # Every panel query returns data (a PromQL error fails at once via PromAPI), except the forced-close
    # panel: its series are born with a liquidation, which the demo's `degen` meets only minutes in
    # (test_live_risk counts them); its query is still run, so a PromQL error in it fails here.
    event_born = {w: q for w, q in queries if "binance_futures_liquidation_events_total" in q}
    assert len(event_born) == 1, event_born
    for expr in event_born.values():
        api.query(expr)
    pending = {w: q for w, q in queries if w not in event_born}

    def all_have_data():
        for where, expr in list(pending.items()):
            if api.query(expr):
                del pending[where]
        return not pending, {w: pending[w] for w in sorted(pending)}

    poll(all_have_data, "dashboard queries without data", deadline)

    # The low-balance alert: firing for grid-bot USDT (for: shortened to 1s).
    def grid_bot_firing():
        series = api.query(f'ALERTS{{alertname="{LOW_BALANCE_ALERT}",alertstate="firing"}}')
        hits = [s["metric"] for s in series if s["metric"]["alias"] == "grid-bot" and s["metric"]["asset"] == "USDT"]
        return bool(hits), [s["metric"] for s in api.query(f'ALERTS{{alertname="{LOW_BALANCE_ALERT}"}}')]

    poll(grid_bot_firing, f"{LOW_BALANCE_ALERT} firing for grid-bot/USDT", deadline)

    # ... and not for the accounts above their thresholds, in any state.
    others = api.query(f'ALERTS{{alertname="{LOW_BALANCE_ALERT}",alias=~"main|hedge"}}')
    assert others == [], others
    # Both jobs scrape grid-bot, yet there is exactly one alert, labelled by
    # alias and asset (no job/instance): the rule aggregates by (alias, asset).
    firing = api.query(f'ALERTS{{alertname="{LOW_BALANCE_ALERT}"}}')
    assert [(s["metric"]["alias"], s["metric"]["asset"]) for s in firing] == [("grid-bot", "USDT")], firing
    assert not {"job", "instance"} & set(firing[0]["metric"]), firing

    # A healthy demo raises none of the "exporter/account broken" alerts.
    broken = api.query('ALERTS{alertname=~"BinanceFutures(AccountScrapeFailing|AccountDataStale|ExporterDown|'
                       'IpBanned|RateLimited)"}')
    assert broken == [], broken


def test_liquidation_alert_fires_for_the_demo_position_near_liquidation(prometheus_with_exporter):
    """The demo's hedge account holds an ETHUSDT short within 7 % of its liquidation price (threshold 10 %):
    exactly that position fires, once, although both jobs scrape it; the BTCUSDT long (far away) does not,
    nor do the margin-ratio and uniMMR alerts (the demo's ratios are healthy)."""
    api = prometheus_with_exporter
    deadline = time.monotonic() + DEADLINE_SECONDS

    def near_liquidation_firing():
        series = api.query('ALERTS{alertname="BinanceFuturesPositionNearLiquidation",alertstate="firing"}')
        return bool(series), [s["metric"] for s in series]

    firing = poll(near_liquidation_firing, "BinanceFuturesPositionNearLiquidation firing", deadline)
    assert [(m["alias"], m["market"], m["symbol"], m["position_side"]) for m in firing] == [
        ("hedge", "usdm", "ETHUSDT", "SHORT")], firing
    assert api.query('ALERTS{alertname=~"BinanceFutures(MarginRatioHigh|IsolatedMarginRatioHigh|UniMMRLow|'
                     'PmAccountStatusNotNormal|AccountAvailableBalanceLow)"}') == []
    # The demo's isolated ADAUSDT long has its own ratio; the Multi-Assets account its pool in USD.
    isolated = api.query('binance_futures:isolated_margin_ratio{alias="hedge"}')
    assert [s["metric"]["symbol"] for s in isolated] == ["ADAUSDT"] and 0 < float(isolated[0]["value"][1]) < 0.1
    pool = api.query('binance_futures:account_available_balance_usd')
    assert [s["metric"]["alias"] for s in pool] == ["multi"] and 3000 < float(pool[0]["value"][1]) < 4000, pool
    distance = api.query('binance_futures:position_liquidation_distance{alias="hedge",symbol="ETHUSDT"}')
    assert 0.03 < float(distance[0]["value"][1]) < 0.07, distance
    # Its runbook link, as a real Prometheus serves it: absolute, from the mixin's runbook_url_pattern.
    pattern = yaml.safe_load((PROM / "mixin.yaml").read_text())["runbook_url_pattern"]
    alerts = [a for a in api.get("/api/v1/alerts")["alerts"]
              if a["labels"]["alertname"] == "BinanceFuturesPositionNearLiquidation" and a["state"] == "firing"]
    assert [a["annotations"]["runbook_url"] for a in alerts] == [
        pattern.replace("%s", "binancefuturespositionnearliquidation")], alerts


def test_probe_job_relabeling(prometheus_with_exporter):
    """prometheus.yml's /probe job: one target per alias, instance=<alias>, only that alias' metrics."""
    api = prometheus_with_exporter
    deadline = time.monotonic() + DEADLINE_SECONDS

    def probe_targets_up():
        ups = api.query('up{job="binance-futures-probe"}')
        return {s["metric"]["instance"]: s["value"][1] for s in ups} == {
            "main": "1", "hedge": "1", "grid-bot": "1"}, ups

    poll(probe_targets_up, "all /probe targets up", deadline)
    series = api.query('binance_futures_up{job="binance-futures-probe"}')
    assert {(s["metric"]["instance"], s["metric"]["alias"]) for s in series} == {
        ("main", "main"), ("hedge", "hedge"), ("grid-bot", "grid-bot")}


def test_rules_evaluate_without_errors(prometheus_with_exporter):
    """Recording rules have data, and no rule errors at runtime (e.g. a many-to-many match)."""
    api = prometheus_with_exporter
    deadline = time.monotonic() + DEADLINE_SECONDS

    def all_evaluated_ok():
        groups = api.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        return bool(rules) and not bad, bad

    poll(all_evaluated_ok, "all rules healthy", deadline)
    recorded = [r["record"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
                for r in g["rules"] if "record" in r]

    def all_recorded():
        empty = [name for name in recorded if not api.query(name)]
        return not empty, empty

    poll(all_recorded, "recording rules with data", deadline)


# Alerts on the exporter's per-host metrics and the labels they keep.
HOST_ALERTS = {
    "BinanceFuturesApiWeightHigh": {"host", "interval"},
    "BinanceFuturesRateLimitBackoff": {"host"},
    "BinanceFuturesClockSkew": {"host"},
}


def test_host_alerts_collapse_the_probe_copies(prometheus_with_exporter):
    """Every /probe scrape carries the exporter's host metrics: 1 + 3 copies per host here.

    Each host alert's expression, without its final threshold, must still give one series per host.
    """
    api = prometheus_with_exporter
    deadline = time.monotonic() + DEADLINE_SECONDS
    metrics = ["binance_futures_used_weight", "binance_futures_weight_limit",
               "binance_futures_backoff_seconds", "binance_futures_time_offset_seconds"]

    def all_copies_scraped():
        counts = {m: len(api.query(m)) for m in metrics}
        return min(counts.values()) >= 4, counts  # /metrics + /probe for main, hedge, grid-bot

    poll(all_copies_scraped, "host metrics from both jobs", deadline)
    alerts = {r["alert"]: r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    for name, labels in HOST_ALERTS.items():
        value_expr, n = re.subn(r"\s*>\s*[0-9.]+\s*$", "", alerts[name]["expr"])
        assert n == 1, alerts[name]["expr"]
        result = api.query(value_expr)
        assert result, f"{name}: {value_expr} has no data"
        assert all(set(s["metric"]) - {"__name__"} == labels for s in result), (name, result)
        hosts = [s["metric"]["host"] for s in result]
        assert len(hosts) == len(set(hosts)), f"{name}: more than one series per host: {result}"
