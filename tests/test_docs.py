"""The documentation's links: runbook URLs of the alerts, and links between the Markdown files.

- Every alert's `runbook_url` is `<page>#<alert name in lower case>`, the page coming from one place, the
  `url` label of the recording rule binance_futures:runbook_base_url:info; with the default, the link is a
  file of this repository and the anchor a heading of it, by GitHub's anchor rules. No `OWNER` placeholder.
- A `url` set in that rule reaches every alert (promtool, on every pinned annotation of the unit tests),
  and an alert whose rule is not loaded falls back to the same default.
- Every relative link in the Markdown files, and every `<file>.md#anchor` the other shipped files quote
  (rules, configs, code), points at a file that exists and at a heading or `<a id>` it has, so moving a
  section out of the README cannot leave a dead link behind.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml

from stack_helpers import PROM, REPO, require_tool

RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_RULE = "binance_futures:runbook_base_url:info"
RUNBOOK_TEMPLATE = re.compile(
    r"\{\{ with query `" + re.escape(RUNBOOK_RULE) + r"` \}\}\{\{ \. \| first \| label \"url\" \}\}"
    r"\{\{ else \}\}(?P<default>[^{}]+)\{\{ end \}\}#(?P<anchor>[a-z0-9-]+)")
MARKDOWN = sorted(p for p in REPO.rglob("*.md") if not ({".venv", ".git", "node_modules"} & set(p.parts)))
# Shipped text files that may quote a Markdown file's anchor (`README.md#...`, `docs/x.md#...`).
QUOTING = [p for pattern in ("prometheus/*.yml", "prometheus/tests/*.yml", "alertmanager/*.yml", "deploy/**/*.y*ml",
                             "deploy/**/*.service", "exporter/**/*.py", "config.example.yaml", "Dockerfile",
                             "Makefile", "compose.yaml", "grafana/**/*.json")
           for p in sorted(REPO.glob(pattern))]


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: inline markup dropped, lower case, punctuation but - and _ removed, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def outside_code(text: str) -> str:
    """The Markdown without fenced code blocks and inline code spans' contents stay (they are heading text)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file has on GitHub: its headings (repeats get -1, -2, ...) and <a id/name>."""
    text = outside_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"] if "alert" in r]


def runbook_rule() -> dict:
    return yaml.safe_load((PROM / "rules.yml").read_text())["groups"][0]["rules"][0]


# --------------------------------------------------------------------------- runbook links

def test_github_slug_follows_githubs_rules():
    assert github_slug("BinanceFuturesMarginCall") == "binancefuturesmargincall"
    assert github_slug("The weight budget: never the cause of a 429") == "the-weight-budget-never-the-cause-of-a-429"
    assert github_slug("Where `runbook_url` points") == "where-runbook_url-points"
    assert github_slug("Recording rules (`prometheus/rules.yml`)") == "recording-rules-prometheusrulesyml"
    assert github_slug("Account kinds: markets and sub-accounts") == "account-kinds-markets-and-sub-accounts"


def test_the_runbook_page_is_set_in_one_rule_first_in_rules_yml():
    """The first rule (the PrometheusRule patch path /spec/groups/0/rules/0 in docs/deploy.md relies on it)."""
    rule = runbook_rule()
    assert rule == {"record": RUNBOOK_RULE, "expr": "vector(1)", "labels": {"url": "docs/runbooks.md"}}
    assert (REPO / rule["labels"]["url"]).is_file()


def test_every_alert_runbook_url_resolves_to_a_heading_of_docs_runbooks():
    page = runbook_rule()["labels"]["url"]
    have = anchors(RUNBOOKS)
    names = []
    for a in alerts():
        name = a["alert"]
        names.append(name)
        m = RUNBOOK_TEMPLATE.fullmatch(a["annotations"]["runbook_url"])
        assert m, f"{name}: runbook_url is not <the rule's url>#<anchor>: {a['annotations']['runbook_url']!r}"
        assert m.group("default") == page, f"{name}: its fallback differs from the rule's default"
        assert REPO / m.group("default") == RUNBOOKS
        assert m.group("anchor") == name.lower(), name
        assert m.group("anchor") in have, f"docs/runbooks.md has no heading for {name} (#{m.group('anchor')})"
    # One section per alert, and no section for an alert that no longer exists.
    sections = re.findall(r"^## (BinanceFutures\w+)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.M)
    assert sorted(sections) == sorted(names)


def test_no_owner_placeholder_is_left():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    hits = [f for f in tracked.stdout.split() if (REPO / f).is_file() and f != "tests/test_docs.py"
            and "github.com/OWNER" in (REPO / f).read_text(encoding="utf-8", errors="replace")]
    assert not hits, f"the OWNER placeholder is still in {hits}"


def test_a_runbook_page_set_in_the_rule_reaches_every_alert(tmp_path):
    """Every pinned runbook_url of the alert unit tests, with another page set in the one place."""
    promtool = require_tool("promtool")
    page = "https://wiki.example.com/ops/binance-futures-runbooks"
    rules = (PROM / "rules.yml").read_text()
    assert rules.count("url: docs/runbooks.md\n") == 1
    (tmp_path / "rules.yml").write_text(rules.replace("url: docs/runbooks.md\n", f"url: {page}\n"))
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    tests = (PROM / "tests" / "alerts_test.yml").read_text()
    pinned = tests.count('runbook_url: "docs/runbooks.md#')
    assert pinned >= len(alerts())
    tests = tests.replace("../rules.yml", "rules.yml").replace("../alerts.yml", "alerts.yml")
    (tmp_path / "alerts_test.yml").write_text(tests.replace('runbook_url: "docs/runbooks.md#', f'runbook_url: "{page}#'))
    res = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def test_without_the_rule_alerts_link_to_the_default_page(tmp_path):
    """alerts.yml loaded alone (or before the rule's first evaluation): the default page, not a bare #anchor."""
    promtool = require_tool("promtool")
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": 'up{job="binance-futures",instance="exporter:9894"}', "values": "0x10"}],
            "alert_rule_test": [{"eval_time": "10m", "alertname": "BinanceFuturesExporterDown", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "job": "binance-futures", "instance": "exporter:9894"},
            }]}],
        }],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test))
    res = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # No annotations are expected, so promtool fails and prints the alert it got, annotations and all.
    got = res.stdout + res.stderr
    assert res.returncode == 1 and "got:[" in got, got[-3000:]
    assert 'runbook_url="docs/runbooks.md#binancefuturesexporterdown"' in got, got[-3000:]


# --------------------------------------------------------------------------- links between files

def markdown_links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", outside_code(path.read_text(encoding="utf-8")))
    return [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", text)]


def check_target(source: Path, target: str) -> str | None:
    """None if `target` (relative to `source`'s directory) exists with its anchor; else what is wrong."""
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{source.relative_to(REPO)}: {target}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{source.relative_to(REPO)}: {target}: {dest.relative_to(REPO)} has no heading #{anchor}"
    return None


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_markdown_links_resolve(path):
    broken = [problem for target in markdown_links(path)
              if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: are not ours
              for problem in [check_target(path, target)] if problem]
    assert not broken, "\n".join(broken)


def test_anchors_quoted_in_other_files_exist():
    """`README.md#x` or `docs/x.md#y` in rules, configs, manifests and code (resolved from the repository root)."""
    broken = []
    for path in QUOTING:
        for m in re.finditer(r"((?:docs/)?[\w.-]+\.md)#([\w-]+)", path.read_text(encoding="utf-8")):
            dest = REPO / m.group(1)
            if not dest.is_file() or m.group(2) not in anchors(dest):
                broken.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not broken, "\n".join(broken)


def test_readme_links_the_reference_docs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/configuration.md", "docs/runbooks.md", "docs/deploy.md", "CHANGELOG.md"):
        assert f"]({doc}" in readme, f"README.md does not link {doc}"


# --------------------------------------------------------------------------- config examples

def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)


def config_examples() -> list[tuple[str, str]]:
    """(where, YAML) of every config example of the README's Configuration section and of the config page."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Configuration\n"):readme.index("\n## Flags and endpoints\n")]
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    page = page[page.index("\n## The config file\n"):page.index("\n### Keys\n")]
    return ([(f"README.md Configuration #{i}", b) for i, b in enumerate(yaml_blocks(section))]
            + [(f"docs/configuration.md #{i}", b) for i, b in enumerate(yaml_blocks(page))])


def test_config_examples_are_valid(tmp_path):
    """What a user copies from the README's common cases is a config the exporter accepts."""
    from exporter.config import parse_config_text

    examples = config_examples()
    assert len(examples) >= 6
    secret = "s" * 64
    one = "accounts:\n  - {alias: one, api_key: x, api_secret: y}\n"
    for where, block in examples:
        text = block
        for path in set(re.findall(r"/run/secrets/\w+", text)):
            local = tmp_path / path.rsplit("/", 1)[1]
            local.write_text(secret + "\n")
            local.chmod(0o600)
            text = text.replace(path, str(local))
        if text.startswith("  - alias:"):
            text = "accounts:\n" + text  # a fragment of an accounts list
        elif "accounts:" not in text:
            text += one
        env = {name: secret for name in re.findall(r"\$\{(\w+)\}", text)}
        cfg = parse_config_text(text, where, env)
        assert cfg.accounts, where
        for account in cfg.accounts:
            assert secret not in repr(account)
