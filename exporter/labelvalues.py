"""The fixed label values some families carry, each set declared once.

The catalogue (exporter/catalogue.py) names the families that carry them and docs/metrics.md
lists them from here; the code that counts by them (client, scheduler, discovery, the stream
layer) imports them from here. This module imports nothing, so any layer may read it.
"""

from __future__ import annotations

# Why a fetch failed: the `reason` of binance_futures_scrape_errors_total and
# binance_futures_sub_account_discovery_errors_total, and of down_reason while the latest fetch failed.
SCRAPE_ERROR_REASONS = (
    "timeout",
    "connection",
    "rate_limited",
    "ip_banned",
    "auth",
    "signature",
    "timestamp",
    "http_error",
    "bad_response",
)
# Why up is 0 besides a failed fetch: no fetch yet, or values older than max_data_age_seconds.
DEFERRED = "deferred"
STALE = "stale"
DOWN_REASONS = SCRAPE_ERROR_REASONS + (DEFERRED, STALE)

# The `event` of binance_futures_stream_events_total.
STREAM_EVENT_KINDS = ("ACCOUNT_UPDATE", "MARGIN_CALL", "ACCOUNT_CONFIG_UPDATE", "riskLevelChange",
                      "listenKeyExpired", "other", "invalid")
