"""The monitoring mixin: prometheus/mixin.yaml + prometheus/mixin/ -> rules, alerts, dashboard, PrometheusRule.

- The checked-in files are the generator's output with the default config (so they never drift);
- a config of one's own changes the job selector and the runbook URL in all four files, and an alert
  added to prometheus/mixin/alerts.yml alone shows up everywhere, runbook_url and selector included;
- the promtool unit tests pass against rules generated with another runbook URL pattern;
- a bad config is one line naming the file, the key and what is wrong, exit 2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from stack_helpers import PROM, REPO, require_tool

sys.path.insert(0, str(PROM / "mixin"))
import generate  # prometheus/mixin/generate.py

GENERATOR = PROM / "mixin" / "generate.py"
DEFAULT = yaml.safe_load((PROM / "mixin.yaml").read_text())
RAW = re.compile(generate._RAW)
MINE = {
    "job_selector": 'job="my-binance"',
    "runbook_url_pattern": "https://wiki.example.com/ops/binance#%s",
    "extra_labels": {"team": "trading"},
    "dashboard": {"title": "My Binance", "uid": "my-binance", "tags": ["mine"]},
}


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def rules_of(text: str) -> list[dict]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def raw_series_without(expr: str, matchers: str) -> list[str]:
    """Raw series in `expr` (outside strings) not immediately followed by {matchers."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr.replace("{" + matchers, "\x00"))
    return [m.group(0) for m in RAW.finditer(bare) if not bare[m.end():].startswith("\x00")]


@pytest.fixture(scope="module")
def mine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("mixin")
    config = out / "my-mixin.yaml"
    config.write_text(yaml.safe_dump(MINE))
    res = run_generator("--config", str(config), "--out", str(out / "out"))
    assert res.returncode == 0, res.stderr
    files = {p.name: p.read_text() for p in (out / "out").iterdir()}
    assert set(files) == {"rules.yml", "alerts.yml", "binance-futures.json", "prometheusrule.yaml"}
    return files


def test_checked_in_files_are_the_default_configs_output():
    """Edit prometheus/mixin/ or prometheus/mixin.yaml, then `make mixin`: never the generated files."""
    res = run_generator("--check")
    assert res.returncode == 0, res.stderr
    assert generate.stale(generate.generate(generate.load_config())) == []


def test_check_fails_on_a_drifted_file(tmp_path, monkeypatch):
    drifted = tmp_path / "alerts.yml"
    drifted.write_text((PROM / "alerts.yml").read_text().replace("severity: critical", "severity: page", 1))
    monkeypatch.setitem(generate.CHECKED_IN, "alerts.yml", drifted)
    assert generate.stale(generate.generate(generate.load_config())) == [str(drifted)]
    assert generate.main(["--check"]) == 1


def test_make_mixin_passes_config_and_out():
    res = subprocess.run(["make", "-n", "mixin", "CONFIG=my.yaml", "OUT=out/"], capture_output=True, text=True,
                         cwd=REPO, timeout=30)
    assert res.returncode == 0, res.stderr
    assert re.search(r"prometheus/mixin/generate\.py +--config my\.yaml +--out out/", res.stdout), res.stdout


def test_default_selector_is_on_every_raw_series_of_every_checked_in_rule():
    selector = DEFAULT["job_selector"]
    for path in (PROM / "rules.yml", PROM / "alerts.yml"):
        for rule in rules_of(path.read_text()):
            assert raw_series_without(rule["expr"], selector) == [], (path.name, rule.get("alert") or rule["record"])
    prometheusrule = yaml.safe_load((REPO / "deploy/kubernetes/base/prometheusrule.yaml").read_text())
    assert prometheusrule["spec"]["groups"] == [g for p in (PROM / "rules.yml", PROM / "alerts.yml")
                                                 for g in yaml.safe_load(p.read_text())["groups"]]


def test_own_config_changes_selector_and_runbook_url_in_every_file(mine):
    for name in ("rules.yml", "alerts.yml"):
        text = mine[name]
        assert "binance-futures.*" not in text.split("groups:", 1)[1].replace(
            "(default job=~\"binance-futures.*\")", ""), name
        for rule in rules_of(text):
            assert raw_series_without(rule["expr"], MINE["job_selector"]) == [], rule
            if "alert" in rule:
                assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/ops/binance#{rule['alert'].lower()}"
                assert rule["labels"]["team"] == "trading"
    # Alerts on recorded series only (host:..., binance_futures:...) get the selector through the rules.
    with_raw = [r for r in rules_of(mine["alerts.yml"]) if "alert" in r and RAW.search(r["expr"])]
    assert len(with_raw) > 15 and all('job="my-binance"' in r["expr"] for r in with_raw)
    assert rules_of(mine["rules.yml"])[0]["labels"]["url"] == "https://wiki.example.com/ops/binance"

    dash = json.loads(mine["binance-futures.json"])
    assert (dash["title"], dash["uid"], dash["tags"]) == ("My Binance", "my-binance", ["mine"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["job"]["query"]["query"] == 'label_values(up{job="my-binance"}, job)'
    assert [link["url"] for link in dash["links"]] == ["https://wiki.example.com/ops/binance"]

    manifest = yaml.safe_load(mine["prometheusrule.yaml"])
    assert manifest["spec"]["groups"] == [g for n in ("rules.yml", "alerts.yml")
                                          for g in yaml.safe_load(mine[n])["groups"]]


def test_own_config_output_passes_promtool_check(mine, tmp_path):
    promtool = require_tool("promtool")
    for name in ("rules.yml", "alerts.yml"):
        (tmp_path / name).write_text(mine[name])
        res = subprocess.run([promtool, "check", "rules", str(tmp_path / name)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_pass_with_another_runbook_url_pattern(tmp_path):
    """Every pinned runbook_url of the alert unit tests, with the pattern set in the one place."""
    promtool = require_tool("promtool")
    config = tmp_path / "my.yaml"
    config.write_text("runbook_url_pattern: 'https://wiki.example.com/ops/binance-futures-runbooks#%s'\n")
    res = run_generator("--config", str(config), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    default_page = DEFAULT["runbook_url_pattern"].replace("#%s", "")
    for name in ("alerts_test.yml", "rules_test.yml"):
        tests = (PROM / "tests" / name).read_text()
        assert default_page in tests
        tests = tests.replace("../rules.yml", "rules.yml").replace("../alerts.yml", "alerts.yml")
        (tmp_path / name).write_text(tests.replace(default_page, "https://wiki.example.com/ops/binance-futures-runbooks"))
    alerts = [r for r in rules_of((PROM / "alerts.yml").read_text()) if "alert" in r]
    assert (PROM / "tests" / "alerts_test.yml").read_text().count(f'runbook_url: "{default_page}#') >= len(alerts)
    res = subprocess.run([promtool, "test", "rules", "alerts_test.yml", "rules_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def test_an_alert_added_to_the_source_alone_shows_up_everywhere(tmp_path, monkeypatch):
    """docs/development.md's recipe: one edit in prometheus/mixin/alerts.yml, nothing else by hand."""
    sources = tmp_path / "mixin"
    shutil.copytree(PROM / "mixin", sources, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (sources / "alerts.yml").read_text()
    (sources / "alerts.yml").write_text(text.rstrip("\n") + """

      # Test: a new alert, written like the others (plain metric names, no runbook_url).
      - alert: BinanceFuturesTestAdded
        expr: max by (alias, market) (binance_futures_stream_up) == 0
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "test {{ $labels.alias }}"
          description: "test {{ $value }}"
""")
    monkeypatch.setattr(generate, "SOURCES", sources)
    files = generate.generate(generate.load_config())
    added = [r for r in rules_of(files["alerts.yml"]) if r.get("alert") == "BinanceFuturesTestAdded"]
    assert added == [{
        "alert": "BinanceFuturesTestAdded",
        "expr": 'max by (alias, market) (binance_futures_stream_up{job=~"binance-futures.*"}) == 0',
        "for": "1m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "test {{ $labels.alias }}", "description": "test {{ $value }}",
                        "runbook_url": DEFAULT["runbook_url_pattern"].replace("%s", "binancefuturestestadded")},
    }]
    manifest = yaml.safe_load(files["prometheusrule.yaml"])
    assert added[0] in manifest["spec"]["groups"][-1]["rules"]


@pytest.mark.parametrize("expr, want", [
    ("up == 0", 'up{J} == 0'),
    ("absent(up)", "absent(up{J})"),
    ('binance_futures_balance{market!="pm"}', 'binance_futures_balance{J,market!="pm"}'),
    ("rate(binance_futures_x_total[5m]) offset 1m", "rate(binance_futures_x_total{J}[5m]) offset 1m"),
    ("binance_futures:margin_ratio > 1", "binance_futures:margin_ratio > 1"),
    ("market_asset:binance_futures_balance:sum", "market_asset:binance_futures_balance:sum"),
    ('label_replace(binance_futures_up, "up", "binance_futures_up", "", "")',
     'label_replace(binance_futures_up{J}, "up", "binance_futures_up", "", "")'),
    ("binance_futures_up{}", "binance_futures_up{J}"),
    ("scrape_duration_seconds", "scrape_duration_seconds{J}"),
])
def test_add_selector(expr, want):
    assert generate.add_selector(expr, "J") == want


@pytest.mark.parametrize("config, message", [
    ("runbook_url_pattern: docs/runbooks.md#%s", "runbook_url_pattern: must be an absolute http(s) URL"),
    ("runbook_url_pattern: 'https://x/%s/%s'", "runbook_url_pattern: must be an absolute http(s) URL"),
    ("job_selector: binance", "job_selector: must be PromQL label matchers"),
    ("thresholds: {api_weight_ratio: high}", "thresholds.api_weight_ratio: must be a number"),
    ("thresholds: {exporter_absent_for: soon}", "thresholds.exporter_absent_for: must be a duration"),
    ("thresholds: {nope: 1}", "thresholds.nope: unknown threshold"),
    ("jobSelector: x", "jobSelector: unknown setting"),
    ("extra_labels: [a]", "extra_labels: must be a mapping"),
    ("dashboard: {uid: 'a b'}", "dashboard.uid: must be"),
    ("- a list", "must be a mapping of settings"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config + "\n")
    res = run_generator("--config", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {path}: "), res.stderr
    assert message in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_config_without_out_refuses_to_overwrite_the_checked_in_files(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("job_selector: 'job=\"x\"'\n")
    res = run_generator("--config", str(path))
    assert res.returncode == 2 and "--out" in res.stderr
    assert generate.stale(generate.generate(generate.load_config())) == []
