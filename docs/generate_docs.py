"""Write the generated parts of docs/ from their one declaration in the code.

docs/configuration.md's key reference comes from the config dataclasses (each key declared on
its field, see exporter/configkeys.py), docs/metrics.md's tables from the metric catalogue
(exporter/catalogue.py). The generated part sits between two marker lines; the
rest of the page is written by hand. `make docs` rewrites it; `--check` (run by the test suite)
fails when a page is not what the code gives today.

    python docs/generate_docs.py          # rewrite the generated parts
    python docs/generate_docs.py --check  # exit 1 if one is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter import catalogue, config, configkeys  # noqa: E402  (the repository, whether installed or not)


def _config_keys() -> str:
    return configkeys.reference(config.SECTIONS)


# (page, part name, what writes it)
PARTS: tuple[tuple[Path, str, Callable[[], str]], ...] = (
    (REPO / "docs" / "configuration.md", "config keys", _config_keys),
    (REPO / "docs" / "metrics.md", "metrics", catalogue.reference),
)


def begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: edit the declaration, then run `make docs` -->\n"


def end(name: str) -> str:
    return f"<!-- END GENERATED {name} -->\n"


def render(text: str, name: str, body: str) -> str:
    """`text` with the part `name` replaced by `body`."""
    head, found, rest = text.partition(begin(name))
    if not found or end(name) not in rest:
        raise SystemExit(f"{name}: markers not found")
    _, _, tail = rest.partition(end(name))
    return head + begin(name) + body + end(name) + tail


def stale() -> list[str]:
    """The pages whose generated part differs from what the code gives."""
    out = []
    for page, name, write in PARTS:
        text = page.read_text(encoding="utf-8")
        if render(text, name, write()) != text:
            out.append(f"{page.relative_to(REPO)} ({name})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale")
    args = parser.parse_args()
    if args.check:
        pages = stale()
        for shown in pages:
            print(f"stale: {shown}; run `make docs`", file=sys.stderr)
        return 1 if pages else 0
    for page, name, write in PARTS:
        text = page.read_text(encoding="utf-8")
        page.write_text(render(text, name, write()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
