"""Write the PrometheusRule of deploy/kubernetes/base from prometheus/rules.yml and prometheus/alerts.yml.

prometheus/*.yml is the one source of the rules: Prometheus loads those files
as they are (compose, the e2e tests, promtool unit tests), and the Prometheus
Operator gets the same groups wrapped in a PrometheusRule. This script does the
wrapping, so the two never drift: `make prometheusrule` rewrites the manifest,
`--check` (run by the test suite) fails when the manifest is not what the
rule files give today.

    python deploy/kubernetes/prometheusrule.py          # rewrite the manifest
    python deploy/kubernetes/prometheusrule.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCES = (REPO / "prometheus" / "rules.yml", REPO / "prometheus" / "alerts.yml")
TARGET = REPO / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
NAME = "binance-futures-exporter"

HEADER = """\
# GENERATED from prometheus/rules.yml and prometheus/alerts.yml by
# deploy/kubernetes/prometheusrule.py: do not edit, run `make prometheusrule`.
# The test suite fails when this file and prometheus/*.yml disagree.
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the PromQL expressions), so the manifest reads like the sources."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def groups(sources: tuple[Path, ...] = SOURCES) -> list[dict[str, Any]]:
    """Every rule group of the sources, in file order."""
    out: list[dict[str, Any]] = []
    for path in sources:
        out.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return out


def manifest(sources: tuple[Path, ...] = SOURCES) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {"groups": groups(sources)},
    }


def render(sources: tuple[Path, ...] = SOURCES) -> str:
    body = yaml.dump(manifest(sources), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest is stale, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run `make prometheusrule`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)} ({sum(len(g['rules']) for g in manifest()['spec']['groups'])} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
