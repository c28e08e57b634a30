"""Generate the monitoring mixin (rules, alerts, dashboard, PrometheusRule) from prometheus/mixin/ and a config.

The sources are prometheus/mixin/rules.yml, alerts.yml and dashboard.json,
written with plain metric names; the settings are prometheus/mixin.yaml (job
selector, runbook URL pattern, thresholds, extra alert labels, dashboard title
and uid), shaped like the _config of node-mixin and kubernetes-mixin. The
output keeps the sources' comments, so the generated rule files read like
hand-written ones, and Prometheus, promtool and compose load them as they are.

    python prometheus/mixin/generate.py                          # rewrite the checked-in files
    python prometheus/mixin/generate.py --config my.yaml --out d # the four files into d/
    python prometheus/mixin/generate.py --check                  # exit 1 if a checked-in file is stale

Why text and not a YAML round trip: the rule files carry the reasoning behind
every rule as comments, which a dump would drop. Each rewritten file is then
loaded again and compared with the same edits made on the parsed source, so a
text edit that changed anything else fails here, not in Prometheus.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "prometheus" / "mixin"
DEFAULT_CONFIG = REPO / "prometheus" / "mixin.yaml"
# Output file name -> where the default config's output is checked in.
CHECKED_IN = {
    "rules.yml": REPO / "prometheus" / "rules.yml",
    "alerts.yml": REPO / "prometheus" / "alerts.yml",
    "binance-futures.json": REPO / "grafana" / "dashboards" / "binance-futures.json",
    "prometheusrule.yaml": REPO / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml",
}

# Raw series the job selector applies to: the exporter's own, and what
# Prometheus records per target. Recording rules' output (a colon in the
# name) has no job label and is left alone.
_RAW = r"(?<![\w:])(?:binance_futures_[a-z0-9_]*[a-z0-9]|up|scrape_[a-z_]*[a-z])(?![\w:(])"
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|' + _RAW)
_PLACEHOLDER = re.compile(r"\[\[(\w+)\]\]")
_DURATION = re.compile(r"[0-9]+(ms|s|m|h|d|w|y)")


class MixinConfigError(ValueError):
    """A bad setting: the message is one line naming the file, the key and what is wrong."""


@dataclass(frozen=True)
class Config:
    source: str  # the config file's name, for the generated files' headers
    job_selector: str
    runbook_url_pattern: str
    thresholds: dict[str, str]
    extra_labels: dict[str, str]
    dashboard_title: str
    dashboard_uid: str
    dashboard_tags: list[str]
    rule_name: str
    rule_labels: dict[str, str]

    def runbook_url(self, alert: str) -> str:
        return self.runbook_url_pattern.replace("%s", alert.lower())

    @property
    def runbook_page(self) -> str:
        return self.runbook_url_pattern.replace("%s", "").rstrip("#")

    def placeholders(self) -> dict[str, str]:
        """[[name]] values of the sources: the thresholds, ratios also as percentages, and a few settings."""
        values = dict(self.thresholds)
        for key, value in self.thresholds.items():
            if key.endswith("_ratio"):
                values[key + "_percent"] = f"{float(value) * 100:g}%"
        values["job_selector"] = self.job_selector
        values["runbook_page"] = self.runbook_page
        return values


# --------------------------------------------------------------------------- config

def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "extra_labels":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MixinConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MixinConfigError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MixinConfigError(f"{path}: must be a mapping of settings")
    return data


def _strings(path: Path, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w./-]*", k)
                                              for k in value):
        raise MixinConfigError(f"{path}: {key}: must be a mapping of label names to values")
    out = {}
    for k, v in value.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise MixinConfigError(f"{path}: {key}.{k}: must be a string or a number")
        out[k] = str(v)
    return out


def load_config(path: Path | None = None) -> Config:
    """The defaults of prometheus/mixin.yaml with `path`'s settings on top, checked."""
    defaults = _read(DEFAULT_CONFIG)
    where = path or DEFAULT_CONFIG
    data = _merge(defaults, _read(path)) if path else defaults
    unknown = set(data) - set(defaults)
    if unknown:
        raise MixinConfigError(f"{where}: {sorted(unknown)[0]}: unknown setting (known: {', '.join(defaults)})")
    selector = data["job_selector"]
    if not isinstance(selector, str) or not re.fullmatch(r'(\s*\w+\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*,?)*',
                                                         selector):
        raise MixinConfigError(f'{where}: job_selector: must be PromQL label matchers, e.g. job=~"binance-futures.*"')
    pattern = data["runbook_url_pattern"]
    if not isinstance(pattern, str) or not re.fullmatch(r"https?://\S+", pattern) or pattern.count("%s") != 1:
        raise MixinConfigError(f"{where}: runbook_url_pattern: must be an absolute http(s) URL with one %s "
                               "(the alert name in lower case)")
    thresholds = _strings(where, "thresholds", data["thresholds"])
    for key, value in thresholds.items():
        if key.endswith("_for"):
            if not _DURATION.fullmatch(value):
                raise MixinConfigError(f"{where}: thresholds.{key}: must be a duration such as 10m")
        else:
            try:
                float(value)
            except ValueError:
                raise MixinConfigError(f"{where}: thresholds.{key}: must be a number") from None
    missing = set(defaults["thresholds"]) - set(thresholds)
    if missing or set(thresholds) - set(defaults["thresholds"]):
        bad = sorted(missing or set(thresholds) - set(defaults["thresholds"]))[0]
        raise MixinConfigError(f"{where}: thresholds.{bad}: unknown threshold")
    dash = data["dashboard"]
    if not isinstance(dash, dict) or set(dash) != set(defaults["dashboard"]):
        raise MixinConfigError(f"{where}: dashboard: must have exactly {', '.join(defaults['dashboard'])}")
    if not isinstance(dash["uid"], str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]):
        raise MixinConfigError(f"{where}: dashboard.uid: must be 1 to 40 letters, digits, - or _")
    if not isinstance(dash["title"], str) or not dash["title"].strip():
        raise MixinConfigError(f"{where}: dashboard.title: must be a non-empty string")
    if not isinstance(dash["tags"], list) or not all(isinstance(t, str) for t in dash["tags"]):
        raise MixinConfigError(f"{where}: dashboard.tags: must be a list of strings")
    rule = data["prometheus_rule"]
    if not isinstance(rule, dict) or not isinstance(rule.get("name"), str) or not rule["name"]:
        raise MixinConfigError(f"{where}: prometheus_rule.name: must be a non-empty string")
    return Config(
        source=str(where.relative_to(REPO)) if where.is_relative_to(REPO) else where.name,
        job_selector=selector.strip().rstrip(","),
        runbook_url_pattern=pattern,
        thresholds=thresholds,
        extra_labels=_strings(where, "extra_labels", data["extra_labels"] or {}),
        dashboard_title=dash["title"],
        dashboard_uid=dash["uid"],
        dashboard_tags=list(dash["tags"]),
        rule_name=rule["name"],
        rule_labels=_strings(where, "prometheus_rule.labels", rule.get("labels") or {}),
    )


# --------------------------------------------------------------------------- PromQL

def add_selector(expr: str, matchers: str) -> str:
    """`expr` with `matchers` added to every raw series (not inside strings, not recording rules' names)."""
    if not matchers:
        return expr

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token[0] in "\"'`":
            return token
        return token + "\x00"  # marks the end of a name; the braces are placed below

    marked = _TOKENS.sub(one, expr)
    marked = re.sub(r"\x00(\s*)\{\s*\}", "{" + matchers + "}", marked)
    marked = re.sub(r"\x00(\s*)\{", "{" + matchers + ",", marked)
    return marked.replace("\x00", "{" + matchers + "}")


def fill(text: str, values: dict[str, str], where: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise MixinConfigError(f"{where}: [[{m.group(1)}]]: no such setting in prometheus/mixin.yaml")
        return values[m.group(1)]
    return _PLACEHOLDER.sub(one, text)


# --------------------------------------------------------------------------- rule files

def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the last non-blank line below lines[start] that is indented deeper than `indent`."""
    end = start + 1
    i = start + 1
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        if lines[i].strip():
            end = i + 1
        i += 1
    return end


def _edit_rule_text(text: str, cfg: Config) -> str:
    """The selector into every expr, runbook_url into every alert's annotations, extra_labels into its labels."""
    lines = text.split("\n")
    out: list[str] = []
    alert: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)- (alert|record): (\S+)", line)
        if m:
            alert = m.group(3) if m.group(2) == "alert" else None
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if m:
            indent, rest = m.groups()
            if rest in ("|-", "|", ">-", ">"):
                end = _block_end(lines, i, len(indent))
                out.append(line)
                out += [add_selector(ln, cfg.job_selector) for ln in lines[i + 1:end]]
                i = end
                continue
            value = add_selector(str(yaml.safe_load(rest)), cfg.job_selector)
            plain = not re.search(r": | #|^[-?:,\[\]{}#&*!|>'\"%@`]", value)
            out.append(f"{indent}expr: {value if plain else _quote(value)}")
            i += 1
            continue
        m = re.match(r"^(\s*)(labels|annotations):\s*$", line)
        if m and alert:
            end = _block_end(lines, i, len(m.group(1)))
            out += lines[i:end]
            pad = m.group(1) + "  "
            if m.group(2) == "labels":
                out += [f"{pad}{k}: {_quote(v)}" for k, v in cfg.extra_labels.items()]
            else:
                out.append(f"{pad}runbook_url: {_quote(cfg.runbook_url(alert))}")
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _expected(source: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """What the edited file must load as: the same edits, made on the parsed source."""
    want = copy.deepcopy(source)
    for group in want["groups"]:
        for rule in group["rules"]:
            rule["expr"] = add_selector(str(rule["expr"]), cfg.job_selector)
            if "alert" in rule:
                if "labels" not in rule or "annotations" not in rule:
                    raise MixinConfigError(f"{rule['alert']}: an alert needs labels (severity) and annotations")
                rule["labels"].update(cfg.extra_labels)
                rule["annotations"]["runbook_url"] = cfg.runbook_url(rule["alert"])
    return want


def render_rule_file(name: str, cfg: Config) -> str:
    source = fill((SOURCES / name).read_text(encoding="utf-8"), cfg.placeholders(), f"prometheus/mixin/{name}")
    text = _edit_rule_text(source, cfg)
    if yaml.safe_load(text) != _expected(yaml.safe_load(source), cfg):
        raise MixinConfigError(f"prometheus/mixin/{name}: the generated file does not load as intended; "
                               "check the job_selector and extra_labels quoting")
    header = (f"# GENERATED from prometheus/mixin/{name} and {cfg.source} by prometheus/mixin/generate.py:\n"
              "# do not edit, edit those and run `make mixin`.\n#\n")
    return header + text


# --------------------------------------------------------------------------- dashboard

def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    # No allValue: "All" is the list of the values found, so a job or instance
    # outside the selector never leaks into scrape_duration_seconds.
    return {
        "name": name, "label": label, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
        "current": {}, "options": [], "regex": "", "hide": 0,
    }


def render_dashboard(cfg: Config) -> str:
    dash: dict[str, Any] = json.loads((SOURCES / "dashboard.json").read_text(encoding="utf-8"))
    dash["title"] = cfg.dashboard_title
    dash["uid"] = cfg.dashboard_uid
    dash["tags"] = cfg.dashboard_tags
    dash["links"] = [{
        "title": "Runbooks", "type": "link", "icon": "doc", "url": cfg.runbook_page, "targetBlank": True,
        "tooltip": "What each alert means and what to do: one section per alert", "asDropdown": False,
        "includeVars": False, "keepTime": False, "tags": [],
    }]
    on_target = 'job=~"$job",instance=~"$instance"'
    variables = dash["templating"]["list"]
    for v in variables:
        if v["type"] == "query":
            v["query"]["query"] = add_selector(v["query"]["query"], on_target)
            v["definition"] = v["query"]["query"]
    at = next(i for i, v in enumerate(variables) if v["type"] == "datasource") + 1
    variables[at:at] = [
        _variable("job", "Job", f"label_values(up{{{cfg.job_selector}}}, job)"),
        _variable("instance", "Instance", 'label_values(up{job=~"$job"}, instance)'),
    ]

    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [q for p in items for q in [p, *panels(p.get("panels", []))]]

    for panel in panels(dash["panels"]):
        for target in panel.get("targets", []):
            target["expr"] = add_selector(target["expr"], on_target)
        for link in panel.get("links", []):
            link["url"] = fill(link["url"], {"runbook_page": cfg.runbook_page}, f"panel {panel['id']}")
    return json.dumps(dash, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- PrometheusRule

class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the PromQL), so the manifest reads like the rule files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render_prometheusrule(rule_files: list[str], cfg: Config) -> str:
    groups = [g for text in rule_files for g in yaml.safe_load(text)["groups"]]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": cfg.rule_name, "labels": cfg.rule_labels},
        "spec": {"groups": groups},
    }
    header = (f"# GENERATED from prometheus/mixin/ and {cfg.source} by prometheus/mixin/generate.py:\n"
              "# do not edit, run `make mixin`. The groups of prometheus/rules.yml and alerts.yml.\n")
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


# --------------------------------------------------------------------------- all four

def generate(cfg: Config) -> dict[str, str]:
    """{output file name: text} for the four files."""
    rules = render_rule_file("rules.yml", cfg)
    alerts = render_rule_file("alerts.yml", cfg)
    return {
        "rules.yml": rules,
        "alerts.yml": alerts,
        "binance-futures.json": render_dashboard(cfg),
        "prometheusrule.yaml": render_prometheusrule([rules, alerts], cfg),
    }


def stale(files: dict[str, str]) -> list[str]:
    """The checked-in files that differ from `files` (the default config's output)."""
    return [str(path.relative_to(REPO) if path.is_relative_to(REPO) else path) for name, path in CHECKED_IN.items()
            if not path.exists() or path.read_text(encoding="utf-8") != files[name]]


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, help="your settings (only the keys you change); "
                        "default: prometheus/mixin.yaml")
    parser.add_argument("--out", type=Path, help="write the four files into this directory; "
                        "default: over the checked-in files (only with the default config)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in file is stale, write nothing")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        files = generate(cfg)
    except MixinConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        bad = stale(files)
        for path in bad:
            print(f"{path} is stale: run `make mixin`", file=sys.stderr)
        return 1 if bad else 0
    if args.out is None:
        if args.config is not None:
            print("error: --config without --out would overwrite the checked-in files: give --out", file=sys.stderr)
            return 2
        targets = CHECKED_IN
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        targets = {name: args.out / name for name in files}
    for name, target in targets.items():
        target.write_text(files[name], encoding="utf-8")
        out(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
