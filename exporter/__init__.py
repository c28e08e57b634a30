"""Prometheus exporter for Binance futures accounts: USD-M, COIN-M and Portfolio Margin, sub-accounts too."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# What the exporter is, in one line: `--help`, and (a test keeps them equal) pyproject's description.
SUMMARY = ("Prometheus exporter for Binance futures accounts (USD-M, COIN-M, Portfolio Margin, sub-accounts): "
           "balances, margin and liquidation risk, API weight")


def _version() -> str:
    """The version setuptools-scm took from git at build or install time (exporter/_version.py).

    Not importlib.metadata first: a source tree on sys.path next to some other
    installed copy would report that copy's version. A tree never built or
    installed has no _version.py: "0.0.0+unknown", as setuptools-scm's fallback.
    """
    try:
        from exporter._version import version
    except ImportError:
        return "0.0.0+unknown"
    return str(version)


__version__ = _version()

# Written by the Dockerfile's build stage from `--build-arg REVISION=...`
# (the commit the image is built from) and shipped in the wheel; a checkout
# or a wheel built without it has none.
_REVISION_FILE = Path(__file__).with_name("REVISION")


@lru_cache(maxsize=1)
def build_revision() -> str:
    """The VCS revision the build was told, or "unknown" (as the Go exporters' build_info says)."""
    try:
        text = _REVISION_FILE.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if re.fullmatch(r"[0-9A-Za-z._+-]{1,64}", text) else "unknown"
