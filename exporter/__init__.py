"""Prometheus exporter for Binance USD-M Futures account balances."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

__version__ = "0.1.0"

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
