"""Helpers shared by the monitoring-stack tests (test_promtool, test_stack_files, test_e2e_prometheus).

A plain module, imported like conftest (tests/ is on sys.path):

- `require_tool`: find promtool / prometheus on PATH, or skip (fail when CI is set),
- `process`: run a command until it answers 200 on a ready URL, stop it afterwards,
- `demo_exporter`: `python -m exporter --demo` on a free loopback port,
- `http_get` / `fetch`: plain urllib GETs (fetch asserts 200 and returns the body),
- `metric_catalogue`: every series name the exporter can emit and its labels, read from
  exporter/schema.py and exporter/render.py without running (or importing) the engine.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, free_port
from processes import ManagedProcess

__all__ = ["REPO", "PROM", "RULE_FILES", "DASHBOARD", "free_port", "require_tool", "http_get",
           "fetch", "process", "demo_exporter", "metric_catalogue"]

PROM = REPO / "prometheus"
RULE_FILES = [PROM / "rules.yml", PROM / "alerts.yml"]
DASHBOARD = REPO / "grafana" / "dashboards" / "binance-futures.json"
RENDER = REPO / "exporter" / "render.py"

def _const_labels(node: ast.AST, schema) -> tuple[str, ...]:
    """A label list in render.py: a literal tuple/list of strings, or a name from exporter.schema."""
    if isinstance(node, (ast.Tuple, ast.List)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return tuple(e.value for e in node.elts)
    if isinstance(node, ast.Name) and isinstance(getattr(schema, node.id, None), tuple):
        return getattr(schema, node.id)
    raise AssertionError(f"render.py:{node.lineno}: cannot read the labels {ast.unparse(node)!r}; "
                         "teach stack_helpers.metric_catalogue this form")


def _fstring_name(node: ast.AST, ns: str) -> str | None:
    """f"{NS}_scrape_errors" -> "binance_futures_scrape_errors"; None for anything computed."""
    if not isinstance(node, ast.JoinedStr):
        return None
    out = ""
    for part in node.values:
        if isinstance(part, ast.Constant):
            out += part.value
        elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id == "NS":
            out += ns
        else:
            return None
    return out


def metric_catalogue() -> dict[str, frozenset[str]]:
    """{sample name: label names} of every `binance_futures_*` series the exporter can emit.

    The families of balances, totals and positions come from exporter/schema.py (a module of plain
    dataclasses, imported); the rest (thresholds, health, hosts, build info) from the renderer's
    `_gauge("name", help, labels)` (`_tgauge`, `_tcounter`: the per-target families) and
    `CounterMetricFamily(f"{NS}_name", help, labels=[...])` calls,
    read with `ast`, so this works while the engine is being rebuilt. Counters get `_total`.
    """
    from exporter import schema

    families: dict[str, frozenset[str]] = {}
    tree = ast.parse(RENDER.read_text(), str(RENDER))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        fn, args = node.func.id, node.args
        kwargs = {k.arg: k.value for k in node.keywords}
        if fn in ("_gauges", "_tgauges") and args and isinstance(args[0], ast.Name):
            for family in getattr(schema, args[0].id):
                families[f"{schema.NS}_{family.name}"] = frozenset(family.labels)
        elif fn in ("_gauge", "_tgauge", "_tcounter") and args and isinstance(args[0], ast.Constant):
            labels = args[2] if len(args) > 2 else kwargs["labels"]
            suffix = "_total" if fn == "_tcounter" else ""
            families[f"{schema.NS}_{args[0].value}{suffix}"] = frozenset(_const_labels(labels, schema))
        elif fn in ("GaugeMetricFamily", "CounterMetricFamily") and args:
            name = _fstring_name(args[0], schema.NS)
            if name is None:  # f"{NS}_{f.name}": the schema families above
                continue
            labels = frozenset(_const_labels(kwargs["labels"], schema)) if "labels" in kwargs else frozenset()
            families[name + ("_total" if fn == "CounterMetricFamily" else "")] = labels
    return families


def require_tool(name: str, package: str = "apt-get install prometheus") -> str:
    """Path of `name` on PATH; skip without it, except under CI (then fail: CI installs it)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found on PATH (Debian/Ubuntu: {package})"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this must not be skipped")
    pytest.skip(msg)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def fetch(url: str, timeout: float = 15.0) -> str:
    """Body of a GET that must answer 200 (e.g. the exporter's /metrics or /probe)."""
    status, body = http_get(url, timeout=timeout)
    assert status == 200, f"{url}: HTTP {status}: {body[:500]}"
    return body


@contextlib.contextmanager
def process(cmd: list[str], ready_url: str, name: str, timeout: float = 30.0) -> Iterator[None]:
    """Run `cmd` until `ready_url` answers 200, stop it on exit (the tests' one process lifecycle)."""
    with tempfile.TemporaryDirectory() as tmp:
        managed = ManagedProcess(cmd, Path(tmp) / "output.log", name).start()
        try:
            managed.wait_ready(lambda: http_get(ready_url, timeout=2)[0] == 200, timeout)
            yield
        finally:
            managed.stop()


@contextlib.contextmanager
def demo_exporter(port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run `python -m exporter --demo` on 127.0.0.1:`port` (default: a free one); yield its base URL."""
    address = f"127.0.0.1:{port or free_port()}"
    cmd = [sys.executable, "-m", "exporter", "--demo", f"--web.listen-address={address}"]
    with process(cmd, f"http://{address}/-/ready", "exporter --demo", timeout=timeout):
        yield f"http://{address}"
