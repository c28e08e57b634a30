"""The documentation's links: runbook URLs of the alerts, and links between the Markdown files.

- Every alert's `runbook_url` is absolute: runbook_url_pattern of prometheus/mixin.yaml with the alert name
  in lower case, the anchor a heading of docs/runbooks.md by GitHub's anchor rules; the recording rule
  binance_futures:runbook_base_url:info carries the page. No `OWNER` placeholder. (Another pattern reaching
  every alert: tests/test_mixin.py.)
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

from stack_helpers import PROM, REPO

RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_RULE = "binance_futures:runbook_base_url:info"
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


def runbook_pattern() -> str:
    return yaml.safe_load((REPO / "prometheus" / "mixin.yaml").read_text())["runbook_url_pattern"]


def test_the_runbook_page_is_absolute_and_in_the_first_rule():
    pattern = runbook_pattern()
    assert re.fullmatch(r"https://\S+/docs/runbooks\.md#%s", pattern), pattern
    rule = runbook_rule()
    assert rule == {"record": RUNBOOK_RULE, "expr": "vector(1)", "labels": {"url": pattern[:-len("#%s")]}}


def test_every_alert_runbook_url_resolves_to_a_heading_of_docs_runbooks():
    pattern = runbook_pattern()
    have = anchors(RUNBOOKS)
    names = []
    for a in alerts():
        name = a["alert"]
        names.append(name)
        assert a["annotations"]["runbook_url"] == pattern.replace("%s", name.lower()), name
        assert name.lower() in have, f"docs/runbooks.md has no heading for {name} (#{name.lower()})"
    # One section per alert, and no section for an alert that no longer exists.
    sections = re.findall(r"^## (BinanceFutures\w+)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.M)
    assert sorted(sections) == sorted(names)


def test_no_owner_placeholder_is_left():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    hits = [f for f in tracked.stdout.split() if (REPO / f).is_file() and f != "tests/test_docs.py"
            and "github.com/OWNER" in (REPO / f).read_text(encoding="utf-8", errors="replace")]
    assert not hits, f"the OWNER placeholder is still in {hits}"


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
    for doc in ("docs/configuration.md", "docs/runbooks.md", "docs/deploy.md", "docs/metrics.md", "docs/operations.md",
                "CHANGELOG.md"):
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


def test_readme_is_a_first_day_read():
    """Issue 27: the README stays under 400 lines; the references live in docs/."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < 400, f"README.md has {lines} lines"


def test_architecture_lists_every_module():
    """docs/architecture.md names every module of exporter/ by its path (a new module fails here until it is
    described there)."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(p.relative_to(REPO / "exporter").as_posix() for p in (REPO / "exporter").rglob("*.py")
                     if p.name not in ("__init__.py", "_version.py"))
    assert "streams/manager.py" in modules and "httpserver/state.py" in modules and "labelvalues.py" in modules
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not list: {missing}"
