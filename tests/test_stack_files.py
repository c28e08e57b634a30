"""The monitoring stack files we ship: dashboard, rules, Alertmanager, provisioning, Dockerfile, compose.

Static checks (structure, references between files), most of them against the exporter's metric
catalogue: exporter/schema.py and exporter/render.py, read by stack_helpers.metric_catalogue without
running the exporter. So every `binance_futures_*` name the dashboard, the rules and the alert texts use
must be one the exporter emits (with the labels the queries filter on) or one of our recording rules.

Needs a live process:
- test_catalogue_matches_the_demo_exporter: the demo exporter (`python -m exporter --demo`), to check the
  catalogue reading against real output;
- test_alertmanager_inhibition: Alertmanager (Debian: prometheus-alertmanager), fed alerts over its API.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stack_helpers import (
    DASHBOARD,
    PROM,
    REPO,
    RULE_FILES,
    demo_exporter,
    fetch,
    free_port,
    http_get,
    metric_catalogue,
    process,
    require_tool,
)

PROMTOOL_TESTS = sorted((PROM / "tests").glob("*.yml"))
DS_PROVISIONING = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVISIONING = REPO / "grafana" / "provisioning" / "dashboards" / "binance-futures.yml"
ALERTMANAGER = REPO / "alertmanager" / "alertmanager.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
DASHBOARD_UID = "binance-futures-exporter"

# Labels of each recording rule's series (checked against the promtool unit tests' expected samples).
RECORDED_LABELS: dict[str, frozenset[str]] = {
    "binance_futures:runbook_base_url:info": frozenset({"url"}),
    "binance_futures:available_balance": frozenset({"alias", "market", "asset"}),
    "binance_futures:available_balance:threshold_ratio": frozenset({"alias", "market", "asset"}),
    "binance_futures:margin_ratio": frozenset({"alias", "market"}),
    "binance_futures:pool_maint_margin": frozenset({"alias", "market", "pool", "asset"}),
    "binance_futures:pool_margin_balance": frozenset({"alias", "market", "pool", "asset"}),
    "binance_futures:pool_margin_ratio": frozenset({"alias", "market", "pool", "asset"}),
    "binance_futures:isolated_margin_ratio": frozenset({"alias", "market", "symbol", "position_side"}),
    "binance_futures:account_available_balance_usd": frozenset({"alias", "market"}),
    "binance_futures:min_account_available_balance_usd": frozenset({"alias", "market"}),
    "market:binance_futures_account_available_balance_usd:sum": frozenset({"market"}),
    "market_asset:binance_futures_unrealized_pnl:sum": frozenset({"market", "asset"}),
    "binance_futures:position_liquidation_distance": frozenset({"alias", "market", "symbol", "position_side"}),
    "binance_futures:account_host_info": frozenset({"alias", "market", "host"}),
    "market_asset:binance_futures_balance:sum": frozenset({"market", "asset"}),
    "market_asset:binance_futures_available_balance:sum": frozenset({"market", "asset"}),
    "market_asset:binance_futures_cross_wallet_balance:sum": frozenset({"market", "asset"}),
    "market_asset:binance_futures_cross_unrealized_pnl:sum": frozenset({"market", "asset"}),
    "host:binance_futures_used_weight:ratio": frozenset({"host", "interval"}),
    "host:binance_futures_exporter_used_weight:budget_ratio": frozenset({"host"}),
}


# --------------------------------------------------------------------------- helpers

def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names_in(expr: str) -> set[str]:
    """Names in a PromQL expression that belong to us: raw metrics and our recording rules."""
    tokens = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", strip_strings(expr))
    return {t for t in tokens if "binance_futures_" in t or "binance_futures:" in t}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict]:
    out = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            out += [r for r in group["rules"] if kind in r]
    return out


def annotation_queries(alert: dict) -> list[str]:
    """The PromQL inside an alert's annotation templates (`printf \\`query\\` ... | query`)."""
    return re.findall(r"`([^`]*)`", " ".join(alert["annotations"].values()))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL in panels, variables and annotations."""
    out = []
    for p in all_panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']}", a["expr"]))
    return out


@pytest.fixture(scope="module")
def catalogue() -> dict[str, frozenset[str]]:
    """{series name: label names}: what the exporter emits, and our recording rules."""
    return {**metric_catalogue(), **RECORDED_LABELS}


def promtool_tests() -> list[dict]:
    return [t for path in PROMTOOL_TESTS for t in load_yaml(path)["tests"]]


def firing_cases(alertname: str) -> list[tuple[dict, dict]]:
    """(test group, alert_rule_test case) for every case in which `alertname` is expected to fire."""
    return [(t, c) for t in promtool_tests() for c in t.get("alert_rule_test", [])
            if c["alertname"] == alertname and c.get("exp_alerts")]


def series_labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


# --------------------------------------------------------------------------- the catalogue

def test_metric_catalogue_reads_the_exporter_source():
    """The reader of exporter/render.py finds the families the rules depend on, with their labels."""
    cat = metric_catalogue()
    assert len(cat) > 50
    assert cat["binance_futures_up"] == {"alias", "market"}
    assert cat["binance_futures_available_balance"] == {"alias", "market", "asset"}
    assert cat["binance_futures_position_liquidation_price"] == {"alias", "market", "symbol", "position_side"}
    assert cat["binance_futures_scrape_errors_total"] == {"alias", "market", "reason"}
    assert cat["binance_futures_rate_limited_responses_total"] == {"host", "status"}
    assert cat["binance_futures_used_weight"] == {"host", "interval"}
    assert cat["binance_futures_max_margin_ratio"] == {"alias", "market"}


def test_catalogue_matches_the_demo_exporter():
    """Needs the live exporter: every series of the demo's /metrics is in the catalogue, with its labels.

    Guards the source reading above; the demo only covers USD-M balances, so it cannot show the reverse.
    """
    seen: dict[str, set[str]] = {}
    with demo_exporter() as base:
        for path in ("/metrics", "/probe?target=grid-bot"):
            for family in text_string_to_metric_families(fetch(base + path)):
                for sample in family.samples:
                    if sample.name.startswith("binance_futures_"):
                        seen.setdefault(sample.name, set()).update(sample.labels)
    cat = metric_catalogue()
    assert "binance_futures_up" in seen
    wrong = {n: (sorted(labels), sorted(cat.get(n, ()))) for n, labels in seen.items() if cat.get(n) != labels}
    assert not wrong, f"demo output vs catalogue (emitted, catalogue): {wrong}"


# --------------------------------------------------------------------------- dashboard

def test_dashboard_is_importable_json_with_inputs_and_fixed_uid():
    dash = dashboard()
    assert dash["uid"] == DASHBOARD_UID
    assert dash.get("id") is None, "an exported dashboard must not carry a database id"
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert dash["title"] and dash["schemaVersion"] >= 36
    used = {p["type"] for p in all_panels(dash["panels"])} - {"row"}
    required = {r["id"] for r in dash["__requires"] if r["type"] == "panel"}
    assert used <= required, f"panel types missing from __requires: {sorted(used - required)}"


def test_dashboard_panel_ids_unique_and_layout_sane():
    panels = list(all_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_dashboard_every_query_uses_the_ds_prometheus_input():
    for p in all_panels(dashboard()["panels"]):
        if p["type"] == "row":
            continue
        assert p["title"] and p["targets"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", (p["title"], t["refId"])
            assert t["expr"].strip(), (p["title"], t["refId"])


def test_dashboard_template_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    # Datasource variable named like the import input: makes ${DS_PROMETHEUS}
    # resolve for provisioned dashboards too (Grafana only substitutes
    # __inputs on UI/API import).
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    queries = {}
    for name in ("market", "alias", "asset"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert v["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert v["allValue"] == ".*"
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert re.fullmatch(rf"label_values\(binance_futures_\w+(\{{[^}}]*\}})?, {name}\)", query), query
        queries[name] = query
    # Chained: accounts of the selected markets, assets of the selected accounts and markets.
    assert '$market' in queries["alias"]
    assert '$market' in queries["asset"] and '$alias' in queries["asset"]


def test_dashboard_job_and_instance_variables_filter_every_raw_query():
    """Issue 26: `job` (from the mixin's job selector) and `instance` variables, on every raw series."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    selector = load_yaml(PROM / "mixin.yaml")["job_selector"]
    assert variables["job"]["query"]["query"] == f"label_values(up{{{selector}}}, job)"
    assert variables["instance"]["query"]["query"] == 'label_values(up{job=~"$job"}, instance)'
    for name in ("job", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and "allValue" not in v, name
        assert v["datasource"]["uid"] == "${DS_PROMETHEUS}"
    for where, expr in dashboard_exprs(dashboard()):
        if where.startswith("annotation") or where in ("variable job", "variable instance"):
            continue
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for m in re.finditer(r"(?<![\w:])(binance_futures_\w+|up|scrape_\w+)(?![\w:(])", bare):
            assert bare[m.end():].startswith('{job=~""'), f"{where}: {m.group(1)} not filtered by $job/$instance"
        if re.search(r"(?<![\w:])(binance_futures_\w+|scrape_\w+)(?![\w:(])", bare):
            assert 'job=~"$job",instance=~"$instance"' in expr, where


def test_dashboard_every_value_panel_has_an_explicit_unit():
    """Time series, stat, gauge and bar gauge: a unit, `none` where the values are in mixed assets."""
    mixed = re.compile(r"balance|pnl|Totals", re.I)
    for p in all_panels(dashboard()["panels"]):
        if p["type"] not in ("timeseries", "stat", "gauge", "bargauge"):
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"panel {p['id']} {p['title']!r} has no unit"
        if mixed.search(p["title"]) and "threshold" not in p["title"] or p["title"].startswith("Available balance and"):
            assert unit == "none", f"panel {p['id']} {p['title']!r}: values in mixed assets need unit none, not {unit}"


def test_dashboard_links_to_the_runbooks():
    pattern = load_yaml(PROM / "mixin.yaml")["runbook_url_pattern"]
    dash = dashboard()
    assert [link["url"] for link in dash["links"]] == [pattern.replace("#%s", "")]
    firing = next(p for p in all_panels(dash["panels"]) if p["title"] == "Firing alerts")
    assert [link["url"] for link in firing["links"]] == [pattern.replace("#%s", "")]


def test_dashboard_queries_filter_and_use_rate_interval(catalogue):
    """Ranges are $__rate_interval; a query on per-account (market, asset) series follows $alias ($market, $asset)."""
    for where, expr in dashboard_exprs(dashboard()):
        for rng in re.findall(r"\[([^\]]+)\]", expr):
            assert rng == "$__rate_interval", f"{where}: hard-coded range [{rng}] in {expr}"
        if where.startswith("variable"):
            continue  # chained variables: test_dashboard_template_variables
        for name in metric_names_in(expr):
            for label in ("alias", "market", "asset"):
                if label in catalogue.get(name, ()):
                    assert f"${label}" in expr, f"{where}: {name} has {label} but the query ignores ${label}: {expr}"


def test_dashboard_covers_the_required_topics():
    dash = dashboard()
    used = set().union(*(metric_names_in(e) for _, e in dashboard_exprs(dash)))
    required = {
        "market_asset:binance_futures_balance:sum", "market_asset:binance_futures_available_balance:sum",
        "market_asset:binance_futures_cross_unrealized_pnl:sum",
        "binance_futures:available_balance", "binance_futures:available_balance:threshold_ratio",
        "binance_futures_min_available_balance",
        "binance_futures_balance", "binance_futures_cross_unrealized_pnl", "binance_futures_up",
        "binance_futures_scrape_errors_total", "binance_futures_request_duration_seconds",
        "binance_futures_last_success_timestamp_seconds",
        # risk
        "binance_futures:margin_ratio", "binance_futures_max_margin_ratio",
        "binance_futures:position_liquidation_distance", "binance_futures_min_liquidation_distance",
        "binance_futures_position_notional", "binance_futures_position_unrealized_pnl",
        "binance_futures_pm_uni_mmr", "binance_futures_min_uni_mmr",
        # API hosts
        "binance_futures_used_weight", "binance_futures_weight_limit", "binance_futures_backoff_seconds",
        "binance_futures_time_offset_seconds", "binance_futures_exporter_used_weight",
        "host:binance_futures_exporter_used_weight:budget_ratio",
        "binance_futures_rate_limited_responses_total", "binance_futures_fetches_deferred_total",
    }
    assert required <= used, f"no panel for {sorted(required - used)}"
    exprs = " ".join(e for _, e in dashboard_exprs(dash))
    assert "increase(binance_futures_scrape_errors_total{" in exprs
    panels = [p for p in all_panels(dash["panels"]) if p["type"] != "row"]

    def panel_names(p: dict) -> set[str]:
        return set().union(*(metric_names_in(t["expr"]) for t in p["targets"]))

    # Each risk value is drawn against its threshold in the same panel.
    for value, threshold in (("binance_futures:margin_ratio", "binance_futures_max_margin_ratio"),
                             ("binance_futures_pm_uni_mmr", "binance_futures_min_uni_mmr"),
                             ("binance_futures:available_balance", "binance_futures_min_available_balance")):
        assert any({value, threshold} <= panel_names(p) for p in panels), f"no panel shows {value} vs {threshold}"
    # The positions table: symbol, side, notional, PnL and distance, closest to liquidation first.
    (table,) = [p for p in panels if p["type"] == "table"
                and "binance_futures:position_liquidation_distance" in panel_names(p)]
    assert {"binance_futures_position_notional", "binance_futures_position_unrealized_pnl"} <= panel_names(table)
    distance_ref = next(t["refId"] for t in table["targets"]
                        if "binance_futures:position_liquidation_distance" in t["expr"])
    organize = next(t["options"] for t in table["transformations"] if t["id"] == "organize")
    assert table["options"]["sortBy"] == [{"displayName": organize["renameByName"][f"Value #{distance_ref}"],
                                           "desc": False}]
    assert all("symbol, position_side" in t["expr"] or "binance_futures:" in t["expr"] for t in table["targets"])


def test_dashboard_and_rule_metric_names_exist(catalogue):
    """Every name in the dashboard, the rules and the alert texts is emitted, recorded or awaited."""
    recorded = {r["record"] for r in rules("record")}
    assert recorded == set(RECORDED_LABELS), "update RECORDED_LABELS with the recording rules"
    sources = dashboard_exprs(dashboard()) + [
        (f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules("expr")]
    sources += [(f"annotation of {a['alert']}", q) for a in rules("alert") for q in annotation_queries(a)]
    missing = {f"{where}: {name}" for where, expr in sources for name in metric_names_in(expr)
               if name not in catalogue}
    assert not missing, "names neither in the exporter's catalogue nor recorded:\n" + "\n".join(sorted(missing))


# --------------------------------------------------------------------------- rules

def test_alert_rules_have_severity_annotations_and_runbooks(catalogue):
    alerts = rules("alert")
    assert len(alerts) >= 12
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        name = a["alert"]
        assert a["labels"]["severity"] in ("warning", "critical"), name
        ann = a["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        assert "$value" in ann["description"], f"{name}: description must show the value"
        assert ann["runbook_url"].endswith("#" + name.lower()), f"{name}: runbook anchor"
        text = ann["summary"] + ann["description"]
        label_sets = [catalogue[m] for m in metric_names_in(a["expr"]) if m in catalogue]
        outer = re.match(r"\s*(?:max|min|sum) by \(([^)]*)\)", a["expr"])  # labels an outer aggregation keeps
        kept = {label.strip() for label in outer.group(1).split(",")} if outer else None
        for label in ("alias", "market", "asset", "symbol", "position_side", "host"):
            if kept is not None and label not in kept:
                continue  # aggregated away on purpose (BinanceFuturesMarginCall: one alert per account)
            if label_sets and all(label in ls for ls in label_sets):
                assert f"$labels.{label}" in text, f"{name}: annotations should name the {label}"


def test_alert_annotations_use_only_labels_the_alert_has():
    """An alert's text uses only labels its unit tests show it firing with (no $labels.instance after `by`)."""
    for a in rules("alert"):
        kept = {label for _, case in firing_cases(a["alert"]) for alert in case["exp_alerts"]
                for label in alert["exp_labels"]}
        used = set(re.findall(r"\$labels\.(\w+)", " ".join(a["annotations"].values())))
        assert used <= kept, f"{a['alert']}: annotations use {sorted(used - kept)}, which it never carries"


# Alerts about one exporter process (a scrape target), not an account or host: they keep job and instance.
TARGET_ALERTS = ("BinanceFuturesExporterDown", "BinanceFuturesExporterConfigReloadFailed")


def test_alerts_fire_once_per_account_or_host_and_are_tested_with_duplicates():
    """Only the TARGET_ALERTS keep job/instance; every other alert is tested firing with
    its data arriving more than once (two jobs, or replicas) and fires once regardless."""
    for a in rules("alert"):
        name = a["alert"]
        cases = firing_cases(name)
        assert cases, name
        for _, case in cases:
            for alert in case["exp_alerts"]:
                has_target = {"job", "instance"} & set(alert["exp_labels"])
                assert bool(has_target) == (name in TARGET_ALERTS), (name, alert["exp_labels"])
        if name in TARGET_ALERTS:
            continue
        targets_per_test = [{(series_labels(s["series"]).get("job"), series_labels(s["series"]).get("instance"))
                             for s in group["input_series"]} for group, _ in cases]
        assert any(len(t) > 1 for t in targets_per_test), f"{name}: no firing test with duplicated data"


def test_every_alert_has_firing_and_not_firing_unit_tests():
    fires: set[str] = set()
    silent: set[str] = set()
    for t in promtool_tests():
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {a["alert"] for a in rules("alert")}
    assert names <= fires, f"no firing test for {sorted(names - fires)}"
    assert names <= silent, f"no must-not-fire test for {sorted(names - silent)}"


def test_low_balance_alert_keeps_firing_through_a_tested_gap():
    """Issue 8: keep_firing_for (Prometheus >= 2.42), and a unit test whose series have a stale gap."""
    alerts = {a["alert"]: a for a in rules("alert")}
    assert "keep_firing_for" in alerts["BinanceFuturesAvailableBalanceLow"]
    gap_tests = [group for group, _ in firing_cases("BinanceFuturesAvailableBalanceLow")
                 if any("stale" in s["values"] for s in group["input_series"])]
    assert gap_tests, "no firing unit test of the low-balance alert with a gap (stale marker) in its series"


def test_every_recording_rule_has_a_unit_test_with_its_labels():
    tested: set[str] = set()
    for t in promtool_tests():
        for case in t.get("promql_expr_test", []):
            names = metric_names_in(case["expr"])
            tested |= names
            for sample in case.get("exp_samples", []):
                name = sample["labels"].split("{", 1)[0]
                if name in RECORDED_LABELS:
                    assert set(series_labels(sample["labels"])) <= RECORDED_LABELS[name], sample["labels"]
    names = {r["record"] for r in rules("record")}
    assert names <= tested, f"untested recording rules: {sorted(names - tested)}"


def test_promtool_tests_cover_all_rule_files():
    covered = set()
    for path in PROMTOOL_TESTS:
        covered |= {(path.parent / f).resolve() for f in load_yaml(path)["rule_files"]}
    assert {p.resolve() for p in RULE_FILES} <= covered


def test_prometheus_configs_reference_rule_files_and_jobs():
    for name in ("prometheus.yml", "prometheus.compose.yml"):
        cfg = load_yaml(PROM / name)
        for rf in cfg["rule_files"]:
            assert (PROM / rf).is_file(), f"{name}: {rf}"
        jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
        # BinanceFuturesExporterDown matches up{job=~"binance-futures.*"}.
        assert any(j.startswith("binance-futures") for j in jobs), name
        assert cfg["alerting"]["alertmanagers"]
    probe = {j["job_name"]: j for j in load_yaml(PROM / "prometheus.yml")["scrape_configs"]}["binance-futures-probe"]
    assert probe["metrics_path"] == "/probe"
    relabels = probe["relabel_configs"]
    assert {"source_labels": ["__address__"], "target_label": "__param_target"} in relabels
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in relabels
    assert any(r.get("target_label") == "__address__" and "replacement" in r for r in relabels)
    assert "action: hashmod" in (PROM / "prometheus.yml").read_text()


# --------------------------------------------------------------------------- Alertmanager

def test_alertmanager_inhibition_rules_match_the_alerts_labels():
    """Each inhibition's sources carry its `equal` labels, and the host rule's targets carry `host`."""
    alerts = {a["alert"] for a in rules("alert")}
    inhibit = load_yaml(ALERTMANAGER)["inhibit_rules"]

    def matching(matchers: list[str]) -> set[str]:
        out = set(alerts)
        for m in matchers:
            label, op, value = re.fullmatch(r'(\w+)(=~|!=|=)"(.*)"', m).groups()
            assert label == "alertname", m
            test = {"=": lambda n, value=value: n == value, "!=": lambda n, value=value: n != value,
                    "=~": lambda n, value=value: re.fullmatch(value, n) is not None}[op]
            out = {n for n in out if test(n)}
        return out

    def labels_of(name: str) -> set[str]:
        return {label for _, c in firing_cases(name) for a in c["exp_alerts"] for label in a["exp_labels"]}

    host_rule_targets: set[str] = set()
    for rule in inhibit:
        sources, targets = matching(rule["source_matchers"]), matching(rule["target_matchers"])
        assert sources and targets, rule
        for name in sources:
            assert set(rule["equal"]) <= labels_of(name), (rule, name)
        if rule["equal"] == ["host"] and "BinanceFuturesAccountDataStale" in targets:
            host_rule_targets = targets
            for name in targets:
                assert "host" in labels_of(name), f"{name} never has a host label to be inhibited by"
    assert host_rule_targets == {"BinanceFuturesAccountScrapeFailing", "BinanceFuturesAccountDataStale"}


def _alert(name: str, **labels: str) -> dict:
    now = datetime.now(timezone.utc)
    return {"labels": {"alertname": name, "severity": "critical", **labels},
            "annotations": {"summary": name},
            "startsAt": (now - timedelta(minutes=1)).isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat()}


def test_alertmanager_inhibition(tmp_path):
    """Needs Alertmanager: our config, fed alerts over its API, mutes per-account alerts of a banned host only.

    One cause, one page: the ban on fapi.binance.com mutes the stale-data alerts of the accounts on that
    host, the 429 and back-off alerts of that host, but neither accounts on other hosts, nor an account
    without a host label, nor the risk alerts (a ban does not make a margin ratio less real).
    """
    binary = shutil.which("alertmanager") or require_tool("prometheus-alertmanager")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [binary, f"--config.file={ALERTMANAGER}", f"--storage.path={tmp_path}",
           f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"]
    sent = [
        _alert("BinanceFuturesIpBanned", host="fapi.binance.com"),
        _alert("BinanceFuturesRateLimited", host="fapi.binance.com", severity="warning"),
        _alert("BinanceFuturesRateLimitBackoff", host="fapi.binance.com", severity="warning"),
        _alert("BinanceFuturesAccountDataStale", alias="main", market="usdm", host="fapi.binance.com"),
        _alert("BinanceFuturesAccountScrapeFailing", alias="hedge", market="usdm", host="fapi.binance.com"),
        _alert("BinanceFuturesAccountDataStale", alias="coin", market="coinm", host="dapi.binance.com"),
        _alert("BinanceFuturesAccountDataStale", alias="legacy", market="usdm"),
        _alert("BinanceFuturesMarginRatioHigh", alias="main", market="usdm"),
        # Failing fetches explain stale data of the same account and market only.
        _alert("BinanceFuturesAccountScrapeFailing", alias="sub1", market="usdm", host="api.binance.com"),
        _alert("BinanceFuturesAccountDataStale", alias="sub1", market="usdm", host="api.binance.com"),
        _alert("BinanceFuturesAccountDataStale", alias="sub1", market="coinm", host="api.binance.com"),
    ]
    muted = {("BinanceFuturesRateLimited", ""), ("BinanceFuturesRateLimitBackoff", ""),
             ("BinanceFuturesAccountDataStale", "main/usdm"), ("BinanceFuturesAccountScrapeFailing", "hedge/usdm"),
             ("BinanceFuturesAccountDataStale", "sub1/usdm")}

    def key(labels: dict) -> tuple[str, str]:
        account = f"{labels['alias']}/{labels['market']}" if "alias" in labels else ""
        return labels["alertname"], account

    with process(cmd, f"{base}/-/ready", "alertmanager"):
        req = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(sent).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        deadline = time.monotonic() + 20
        while True:
            status, body = http_get(f"{base}/api/v2/alerts")
            assert status == 200, body
            got = {key(a["labels"]): a["status"] for a in json.loads(body)}
            inhibited = {k for k, s in got.items() if s["inhibitedBy"]}
            if len(got) == len(sent) and inhibited == muted:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"inhibited {sorted(inhibited)}, expected {sorted(muted)}; all: {got}")
            time.sleep(0.2)
    assert all(got[k]["state"] == "suppressed" for k in muted)
    assert all(got[k]["state"] == "active" for k in set(got) - muted)


# --------------------------------------------------------------------------- provisioning

def test_grafana_datasource_provisioning():
    doc = load_yaml(DS_PROVISIONING)
    assert doc["apiVersion"] == 1
    sources = doc["datasources"]
    prom = [d for d in sources if d["type"] == "prometheus"]
    assert len(prom) == 1 and prom[0]["isDefault"] is True
    assert prom[0]["url"] == "http://prometheus:9090"
    # $__rate_interval is derived from timeInterval: keep it equal to the scrape interval.
    scrape = load_yaml(PROM / "prometheus.compose.yml")["global"]["scrape_interval"]
    assert prom[0]["jsonData"]["timeInterval"] == scrape


def test_grafana_dashboard_provisioning_points_at_the_mounted_dashboards():
    doc = load_yaml(DASH_PROVISIONING)
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    mounts = compose_bind_mounts("grafana")
    assert mounts.get(path) == REPO / "grafana" / "dashboards", mounts
    assert mounts.get("/etc/grafana/provisioning") == REPO / "grafana" / "provisioning"


# --------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_dockerfile_multi_stage_pinned_slim_base():
    args = dict(a.split("=", 1) for i, a in dockerfile_instructions() if i == "ARG" and "=" in a)
    froms = [a for i, a in dockerfile_instructions() if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0])
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), f"unpinned base {image}"
    build, final = stages()[0], stages()[-1]
    assert " AS " in froms[0].upper()
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    assert any("from=build" in a.replace("--from=", "from=") for i, a in final if i in ("RUN", "COPY"))
    assert any(i == "RUN" and "pip install" in a for i, a in final)


def test_dockerfile_runtime_settings():
    final = stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "9894") in final
    health = [a for i, a in final if i == "HEALTHCHECK"]
    assert health and "http://127.0.0.1:9894/-/healthy" in health[0] and "python" in health[0]
    assert "curl" not in health[0] and "wget" not in health[0]
    entry = [a for i, a in final if i == "ENTRYPOINT"]
    cmd = [a for i, a in final if i == "CMD"]
    assert json.loads(entry[-1]) == ["binance-futures-exporter"]
    assert json.loads(cmd[-1]) == ["--config.file=/etc/binance-futures-exporter/config.yaml"]


def copy_sources() -> list[str]:
    out = []
    for ins, args in dockerfile_instructions():
        if ins in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            if not any(a.startswith("--from") for a in shlex.split(args)):
                out += parts[:-1]
    return out


def test_dockerfile_copies_no_config_or_secrets():
    sources = copy_sources()
    assert sources, "expected COPY of the sources into the build stage"
    for src in sources:
        assert not re.search(r"(config|secret|\.env|\.pem|\.key|web[-_]config|credential)", src, re.I), src
        assert src not in (".", "./"), "COPY . copies whatever is in the context; list what the wheel needs"
        assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore semantics, enough for our patterns (last match wins, `!` re-includes)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if pat.startswith("**/"):
            tail = pat[3:]
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], tail) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_out_and_sources_in():
    for src in copy_sources():
        assert not dockerignored(src.rstrip("/")), src
    assert not dockerignored("exporter/cli.py")
    for secret in ("config.yaml", ".env", "secrets/key.pem", ".git/config", ".venv/bin/python",
                   "exporter/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(secret), secret


# --------------------------------------------------------------------------- compose

def compose() -> dict:
    return load_yaml(COMPOSE)


def compose_bind_mounts(service: str) -> dict[str, Path]:
    """{container path: host path} for a compose service's ./relative bind mounts."""
    out = {}
    for vol in compose()["services"][service].get("volumes", []):
        src, dst, *_ = vol.split(":")
        if src.startswith("."):
            out[dst] = (REPO / src).resolve()
    return out


def test_compose_services_and_files_exist():
    doc = compose()
    services = doc["services"]
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    exporter = services["exporter"]
    assert (REPO / exporter["build"] / "Dockerfile").is_file()
    assert "--demo" in exporter["command"] and "--web.listen-address=0.0.0.0:9894" in exporter["command"]
    for name, svc in services.items():
        if "image" in svc and name != "exporter":
            tag = svc["image"].rpartition(":")[2]
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: pin the image version ({svc['image']})"
        for dst, src in compose_bind_mounts(name).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
    for vol in {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                if not v.startswith(".")}:
        assert vol in (doc.get("volumes") or {}), f"undeclared named volume {vol}"


def test_compose_prometheus_wiring():
    services = compose()["services"]
    mounts = compose_bind_mounts("prometheus")
    cmd = " ".join(services["prometheus"]["command"])
    config_path = re.search(r"--config.file=(\S+)", cmd).group(1)
    assert mounts[config_path] == PROM / "prometheus.compose.yml"
    cfg = load_yaml(PROM / "prometheus.compose.yml")
    # rule_files resolve relative to the config file inside the container.
    config_dir = config_path.rsplit("/", 1)[0]
    for rf in cfg["rule_files"]:
        assert mounts.get(f"{config_dir}/{rf}") == PROM / rf, rf
    targets = {t for job in cfg["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "exporter:9894" in targets
    am = {t for a in cfg["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]}
    assert am == {"alertmanager:9093"}
    am_cmd = " ".join(services["alertmanager"]["command"])
    am_config = re.search(r"--config.file=(\S+)", am_cmd).group(1)
    am_file = compose_bind_mounts("alertmanager")[am_config]
    route = load_yaml(am_file)
    receivers = {r["name"] for r in route["receivers"]}
    assert route["route"]["receiver"] in receivers


def test_alertmanager_config_is_valid_if_amtool_is_present(tmp_path):
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian: prometheus-alertmanager); structure checked above")
    res = subprocess.run([amtool, "check-config", str(REPO / "alertmanager" / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr

