"""Scrape-driven collection: fetch accounts in parallel, turn results into metric families.

`Exporter` holds what lives across scrapes (connection pools, host state, error
counters, the thread pool). Each HTTP request builds a `ScrapeCollector`
bound to its own deadline and target list, the blackbox_exporter pattern:
nothing is polled in the background and nothing stale is exported.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.client import REASONS, AccountClient, ScrapeError, sync_clock
from exporter.config import AccountConfig, Config
from exporter.hosts import HostState
from exporter.parsing import BalanceSnapshot

log = logging.getLogger("exporter.collector")

NS = "binance_futures"
BALANCE_GAUGES = (
    ("balance", "balance", "Wallet balance (Binance field balance)."),
    ("available_balance", "available_balance", "Available balance (availableBalance)."),
    ("cross_wallet_balance", "cross_wallet_balance", "Cross wallet balance (crossWalletBalance)."),
    ("cross_unrealized_pnl", "cross_unrealized_pnl", "Unrealized PnL of cross positions (crossUnPnl)."),
    ("max_withdraw_amount", "max_withdraw_amount", "Maximum amount for transfer out (maxWithdrawAmount)."),
)


@dataclass(frozen=True)
class AccountResult:
    alias: str
    snapshot: BalanceSnapshot | None
    error: ScrapeError | None
    duration: float
    finished_at: float  # monotonic


class AccountScraper:
    """One account's fetches, shared between concurrent scrapes.

    An HA Prometheus pair, or /metrics and /probe at once, must not double the
    API weight: a scrape that arrives while a fetch is in flight waits for that
    fetch instead of starting another, and `cache_seconds` lets a result that
    young serve further scrapes.
    """

    def __init__(self, account: AccountConfig, client: AccountClient, exporter: "Exporter") -> None:
        self.account = account
        self.client = client
        self._exporter = exporter
        self._lock = threading.Lock()
        self._inflight: Future[AccountResult] | None = None
        self._last: AccountResult | None = None

    def start(self, deadline: float, pool: ThreadPoolExecutor) -> Future[AccountResult] | AccountResult:
        with self._lock:
            last = self._last
            if last is not None and self.account.cache_seconds > 0 \
                    and time.monotonic() - last.finished_at < self.account.cache_seconds:
                return last
            if self._inflight is None:
                self._inflight = pool.submit(self._run, deadline)
            return self._inflight

    def _run(self, deadline: float) -> AccountResult:
        started = time.monotonic()
        snapshot: BalanceSnapshot | None = None
        error: ScrapeError | None = None
        try:
            snapshot = self.client.fetch(deadline)
        except ScrapeError as exc:
            error = exc
        except Exception as exc:  # never let a bug take the scrape down
            log.exception("unexpected error alias=%s", self.account.alias)
            error = ScrapeError("bad_response", f"internal error: {type(exc).__name__}")
        finished = time.monotonic()
        result = AccountResult(self.account.alias, snapshot, error, finished - started, finished)
        if error is not None:
            self._exporter.count_error(self.account.alias, error)
        with self._lock:
            self._last = result
            self._inflight = None
        return result


class Exporter:
    """Everything that outlives a single scrape."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts: dict[str, HostState] = {}
        for acc in config.accounts:
            if acc.base_url not in self.hosts:
                self.hosts[acc.base_url] = HostState(acc.base_url, acc.host, weight_limit=config.weight_limit)
        self.scrapers: dict[str, AccountScraper] = {
            acc.alias: AccountScraper(acc, AccountClient(acc, self.hosts[acc.base_url]), self)
            for acc in config.accounts
        }
        self._errors: dict[tuple[str, str], int] = {
            (acc.alias, reason): 0 for acc in config.accounts for reason in REASONS
        }
        self._errors_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="fetch")
        self.default_budget = max(acc.timeout_seconds for acc in config.accounts)

    def sync_clocks(self) -> list[Future[bool]]:
        """Measure every host's clock once at start, so the first scrape signs correctly."""
        futures = []
        for host in self.hosts.values():
            client = next(s.client for s in self.scrapers.values() if s.account.base_url == host.base_url)
            futures.append(self.pool.submit(sync_clock, host, client.http,
                                            min(client.account.timeout_seconds, 5.0)))
        return futures

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for scraper in self.scrapers.values():
            scraper.client.close()

    def count_error(self, alias: str, error: ScrapeError) -> None:
        with self._errors_lock:
            self._errors[(alias, error.reason)] = self._errors.get((alias, error.reason), 0) + 1
        # While a host is paused every scrape "fails" without a request; say so once per
        # pause (at the 429/418 itself) and keep the per-scrape repeats at debug.
        level = logging.DEBUG if error.status is None and error.reason in ("rate_limited", "ip_banned") \
            else logging.WARNING
        extra = "".join(f" {k}={v}" for k, v in (("status", error.status), ("code", error.code)) if v is not None)
        log.log(level, "scrape failed alias=%s reason=%s%s error=%r", alias, error.reason, extra, error.detail)

    def error_counts(self, aliases: Iterable[str]) -> list[tuple[str, str, int]]:
        wanted = set(aliases)
        with self._errors_lock:
            return [(a, r, n) for (a, r), n in self._errors.items() if a in wanted]

    def scrape(self, aliases: Sequence[str], budget: float | None) -> list[AccountResult]:
        """Fetch the given accounts in parallel, each bounded by the scrape deadline."""
        budget = self.default_budget if budget is None else budget
        deadline = time.monotonic() + budget
        pending: list[tuple[str, Future[AccountResult] | AccountResult, float]] = []
        for alias in aliases:
            scraper = self.scrapers[alias]
            acc_deadline = min(deadline, time.monotonic() + scraper.account.timeout_seconds)
            pending.append((alias, scraper.start(acc_deadline, self.pool), acc_deadline))
        results: list[AccountResult] = []
        for alias, item, acc_deadline in pending:
            if isinstance(item, AccountResult):
                results.append(item)
                continue
            try:
                results.append(item.result(timeout=max(0.0, acc_deadline - time.monotonic()) + 0.25))
            except FutureTimeout:
                error = ScrapeError("timeout", "no answer before the scrape deadline")
                self.count_error(alias, error)
                results.append(AccountResult(alias, None, error, budget, time.monotonic()))
            except Exception as exc:  # cancelled at shutdown
                results.append(AccountResult(alias, None, ScrapeError("connection", type(exc).__name__),
                                             0.0, time.monotonic()))
        return results


class ScrapeCollector(Collector):
    """The metrics of one HTTP request: `/metrics` (all accounts) or `/probe` (one)."""

    def __init__(self, exporter: Exporter, aliases: Sequence[str], budget: float | None,
                 include_exporter: bool) -> None:
        self.exporter = exporter
        self.aliases = list(aliases)
        self.budget = budget
        self.include_exporter = include_exporter

    def collect(self) -> Iterator[Metric]:
        results = self.exporter.scrape(self.aliases, self.budget)
        yield from build_families(self.exporter, results, self.include_exporter)


def build_families(exporter: Exporter, results: Sequence[AccountResult],
                   include_exporter: bool) -> list[Metric]:
    config = exporter.config
    balance = {
        attr: GaugeMetricFamily(f"{NS}_{name}", doc, labels=["alias", "asset"])
        for name, attr, doc in BALANCE_GAUGES
    }
    margin = GaugeMetricFamily(f"{NS}_margin_available",
                               "1 if the asset can be used as margin in Multi-Assets mode (marginAvailable).",
                               labels=["alias", "asset"])
    updated = GaugeMetricFamily(f"{NS}_balance_update_timestamp_seconds",
                                "Last balance update time reported by Binance (updateTime), Unix seconds.",
                                labels=["alias", "asset"])
    threshold = GaugeMetricFamily(f"{NS}_min_available_balance",
                                  "Configured low-balance threshold (min_available_balance) per account and asset.",
                                  labels=["alias", "asset"])
    info = GaugeMetricFamily(f"{NS}_account_info", "Binance's accountAlias for each configured account.",
                             labels=["alias", "account_alias"])
    up = GaugeMetricFamily(f"{NS}_up", "1 if this scrape's balance request for the account succeeded.",
                           labels=["alias"])
    duration = GaugeMetricFamily(f"{NS}_request_duration_seconds",
                                 "Time this scrape's balance request for the account took.", labels=["alias"])
    for result in results:
        account = exporter.scrapers[result.alias].account
        up.add_metric([result.alias], 1.0 if result.snapshot is not None else 0.0)
        duration.add_metric([result.alias], result.duration)
        for asset, value in account.min_available_balance.items():
            threshold.add_metric([result.alias, asset], value)
        snap = result.snapshot
        if snap is None:
            continue
        if snap.account_alias:
            info.add_metric([result.alias, snap.account_alias], 1.0)
        for row in snap.assets:
            if config.skip_zero_balances and row.is_zero() and row.asset not in account.min_available_balance:
                continue
            labels = [result.alias, row.asset]
            for attr, family in balance.items():
                family.add_metric(labels, getattr(row, attr))
            if row.margin_available is not None:
                margin.add_metric(labels, 1.0 if row.margin_available else 0.0)
            if row.update_time_ms is not None:
                updated.add_metric(labels, row.update_time_ms / 1000.0)
    errors = CounterMetricFamily(f"{NS}_scrape_errors", "Failed balance requests by account and reason.",
                                 labels=["alias", "reason"])
    for alias, reason, count in exporter.error_counts(r.alias for r in results):
        errors.add_metric([alias, reason], count)
    families: list[Metric] = [*balance.values(), margin, updated, threshold, info, up, duration, errors]
    families.extend(host_families(exporter, {exporter.scrapers[r.alias].account.base_url for r in results}))
    if include_exporter:
        build = GaugeMetricFamily(f"{NS}_exporter_build_info", "Exporter version; always 1.",
                                  labels=["version"])
        build.add_metric([__version__], 1.0)
        families.append(build)
    return families


def host_families(exporter: Exporter, base_urls: set[str]) -> list[Metric]:
    weight = GaugeMetricFamily(f"{NS}_used_weight",
                               "Request weight Binance reports used by this IP: highest X-MBX-USED-WEIGHT-1M seen this minute.",
                               labels=["host", "interval"])
    limit = GaugeMetricFamily(f"{NS}_weight_limit", "Request weight limit per IP (config weight_limit).",
                              labels=["host", "interval"])
    backoff = GaugeMetricFamily(f"{NS}_backoff_seconds",
                                "Seconds left before requests to this host resume after a 429/418 (0 = none).",
                                labels=["host"])
    offset = GaugeMetricFamily(f"{NS}_time_offset_seconds",
                               "Binance server clock minus the local clock, as measured via /fapi/v1/time.",
                               labels=["host"])
    for base_url in sorted(base_urls):
        host = exporter.hosts[base_url]
        if host.used_weight is not None:
            weight.add_metric([host.host, "1m"], float(host.used_weight))
        limit.add_metric([host.host, "1m"], float(host.weight_limit))
        backoff.add_metric([host.host], host.backoff_remaining())
        offset.add_metric([host.host], host.offset_ms / 1000.0)
    return [weight, limit, backoff, offset]
