"""promtool on everything we ship for Prometheus, and on the exporter's real output.

- `promtool check rules` on every rule file,
- `promtool test rules` on prometheus/tests/*.yml,
- `promtool check config` on both Prometheus configs (and on the commented
  hashmod sharding example, uncommented),
- `promtool check rules` on every PromQL of the Grafana dashboard (as recording
  rules, Grafana's variables filled in), so a query that does not parse fails here,
- `promtool check metrics` on /metrics and /probe of the exporter in --demo mode
  (the only tests here that need a working exporter).

Without promtool on PATH these tests skip, except when the CI environment
variable is set: there a missing promtool is a failure (CI installs Debian's
`prometheus` package, which ships promtool).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from stack_helpers import DASHBOARD, PROM, RULE_FILES, demo_exporter, fetch, require_tool

CONFIGS = [PROM / "prometheus.yml", PROM / "prometheus.compose.yml"]


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_check_rules(promtool, rule_file):
    res = run([promtool, "check", "rules", str(rule_file)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_unit_tests_for_rules(promtool):
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    res = run([promtool, "test", "rules", *map(str, tests)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stdout + res.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_check_config(promtool, config):
    # Rule files are resolved relative to the config file; promtool checks them too.
    res = run([promtool, "check", "config", str(config)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(yaml.safe_load(config.read_text())['rule_files'])} rule files found" in res.stdout


def uncommented_sharding_example() -> list[dict]:
    """The `hashmod` relabel rules commented out in prometheus.yml, parsed."""
    text = (PROM / "prometheus.yml").read_text()
    block = text.split("Replace the last relabel rule above with:", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        body = line.strip()
        if body == "#" and lines:
            break
        if body.startswith("#"):
            lines.append(body[1:])
    return yaml.safe_load("\n".join(lines))


def test_check_config_with_the_hashmod_sharding_example(promtool, tmp_path):
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg.pop("rule_files")
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "binance-futures-probe")
    sharding = uncommented_sharding_example()
    assert any(r.get("action") == "hashmod" for r in sharding)
    job["relabel_configs"] = job["relabel_configs"][:-1] + sharding
    path = tmp_path / "sharded.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = run([promtool, "check", "config", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


# Grafana's variables as a query would see them with "All" selected.
GRAFANA_VARS = {"job": "binance-futures|binance-futures-probe", "instance": ".*", "alias": ".*", "market": ".*", "asset": ".*", "__rate_interval": "1m", "__interval": "15s",
                "__range": "1h"}


def dashboard_promql() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and variable query, variables substituted."""
    def fill(expr: str) -> str:
        return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: GRAFANA_VARS[m.group(1) or m.group(2)], expr)

    dash = json.loads(DASHBOARD.read_text())
    out = []
    stack = list(dash["panels"])
    while stack:
        panel = stack.pop()
        stack += panel.get("panels", [])
        out += [(f"panel {panel['id']} {t['refId']}", fill(t["expr"])) for t in panel.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", fill(re.fullmatch(r"label_values\((.+), \w+\)", query).group(1))))
    return out


def test_dashboard_queries_parse(promtool, tmp_path):
    queries = dashboard_promql()
    assert len(queries) > 40
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run([promtool, "check", "rules", str(path)])
    where = {f"dashboard:query_{i}": w for i, (w, _) in enumerate(queries)}
    assert res.returncode == 0, re.sub(r"dashboard:query_\d+", lambda m: where.get(m.group(0), m.group(0)),
                                       res.stdout + res.stderr)


@pytest.fixture(scope="module")
def demo_bodies() -> dict[str, str]:
    with demo_exporter() as base:
        return {path: fetch(base + path) for path in ("/metrics", "/probe?target=grid-bot")}


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=grid-bot"])
def test_check_metrics_on_demo_output(promtool, demo_bodies, path):
    body = demo_bodies[path]
    assert re.search(r"^binance_futures_up\{", body, re.M), body[:2000]
    res = run([promtool, "check", "metrics"], input=body)
    # Lint findings are printed (to stderr) with exit code 1; clean output prints nothing.
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
