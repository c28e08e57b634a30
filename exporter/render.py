"""Scrape results to metric families: the only place that knows metric names, help and labels.

It reads `ScrapeResult` (what the engine decided to show), never the engine's
internals, and emits families in a fixed order with series in config order, so
the exposition is stable enough to pin in golden files.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from exporter import __version__, build_revision
from exporter.discovery import DiscoveryView
from exporter.engine import HostView, ScrapeResult
from exporter.schema import (
    ACCOUNT_FAMILIES,
    ACCOUNT_LABELS,
    ASSET_FAMILIES,
    ASSET_LABELS,
    NS,
    PM_ACCOUNT_STATUSES,
    POSITION_FAMILIES,
    POSITION_INFO_LABELS,
    Family,
)


def _gauges(families: tuple[Family, ...]) -> dict[str, GaugeMetricFamily]:
    return {f.name: GaugeMetricFamily(f"{NS}_{f.name}", f.help, labels=list(f.labels)) for f in families}


def _gauge(name: str, text: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", text, labels=list(labels))


def _put(family: Metric, labels: dict[str, str], value: float) -> None:
    """family.add_metric, given the label dict: the ~10-60 samples of one account, asset or position
    share one dict instead of zipping a new one each (half of the renderer's CPU at 500 sub-accounts).
    Counters take their `_total` sample name, as CounterMetricFamily.add_metric gives it."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value, None))


def target_families(result: ScrapeResult, skip_zero: bool) -> Iterator[Metric]:
    """Everything labelled by account: balances, totals, positions, thresholds, health."""
    assets = _gauges(ASSET_FAMILIES)
    totals = _gauges(ACCOUNT_FAMILIES)
    positions = _gauges(POSITION_FAMILIES)
    min_available = _gauge("min_available_balance", "Configured low-balance threshold "
                           "(min_available_balance) per account, market and asset.", ASSET_LABELS)
    min_account_available = _gauge("min_account_available_balance", "Configured account-level low-balance "
                                   "threshold (min_account_available_balance), USD value of a Multi-Assets mode "
                                   "account's pool; USD-M only.", ACCOUNT_LABELS)
    position_info = _gauge("position_info", "A position's margin type (cross or isolated) and margin asset "
                           "(COIN-M: the coin); always 1. Absent where Binance's answer does not say "
                           "(USD-M sub-accounts).", POSITION_INFO_LABELS)
    info = _gauge("account_info", "Binance's accountAlias for an account (balance endpoints only); always 1.",
                  ("alias", "market", "account_alias"))
    status = _gauge("pm_account_status", "Portfolio Margin accountStatus as a state set: 1 for the current "
                    "status, 0 for the other documented ones; a status Binance added since shows as its own "
                    "state (a plain upper-case word) or as OTHER.", ("alias", "market", "status"))
    max_margin_ratio = _gauge("max_margin_ratio", "Configured margin-ratio alert threshold (max_margin_ratio).",
                              ACCOUNT_LABELS)
    min_liq_distance = _gauge("min_liquidation_distance", "Configured minimum distance from mark price to "
                              "liquidation price, as a fraction of mark price (min_liquidation_distance).",
                              ACCOUNT_LABELS)
    min_uni_mmr = _gauge("min_uni_mmr", "Configured Portfolio Margin uniMMR alert threshold (min_uni_mmr).",
                         ACCOUNT_LABELS)
    host_info = _gauge("account_host_info", "The API host an account's market is fetched from (whose budget, "
                       "back-off and bans apply to it); always 1.", ("alias", "market", "host"))
    sub_info = _gauge("sub_account_info", "Sub-accounts found through a master account's key; always 1.",
                      ("alias", "master", "email"))
    up = _gauge("up", "1 while the account has values to export: its latest fetch succeeded, no longer "
                "ago than max_data_age_seconds.", ACCOUNT_LABELS)
    down_reason = _gauge("down_reason", "Why up is 0, while it is: 1 for the reason, one of the error reasons of "
                         "scrape_errors_total (the latest fetch failed), deferred (no fetch yet: waiting for the "
                         "weight budget, e.g. during a cold start, or for a back-off) or stale (the latest values "
                         "are older than max_data_age_seconds).", ("alias", "market", "reason"))
    duration = _gauge("request_duration_seconds", "How long the account's latest fetch took.", ACCOUNT_LABELS)
    last_success = _gauge("last_success_timestamp_seconds", "When the account's latest successful fetch "
                          "(the values exported) was made, Unix seconds.", ACCOUNT_LABELS)
    errors = CounterMetricFamily(f"{NS}_scrape_errors", "Failed fetches by account and reason.",
                                 labels=["alias", "market", "reason"])
    seen_sub: set[str] = set()
    for view in result.targets:
        target = view.target
        account = target.account
        acct = {"alias": target.alias, "market": target.market}
        if target.market != "pm":
            for asset, amount in account.min_available_balance.items():
                if asset in view.assets:  # only assets the account holds in this market
                    _put(min_available, {**acct, "asset": asset}, amount)
            if target.market == "usdm" and account.min_account_available_balance is not None:
                _put(min_account_available, acct, account.min_account_available_balance)
            if account.max_margin_ratio is not None:
                _put(max_margin_ratio, acct, account.max_margin_ratio)
        elif account.min_uni_mmr is not None:
            _put(min_uni_mmr, acct, account.min_uni_mmr)
        if account.min_liquidation_distance is not None:  # Portfolio Margin has positions too
            _put(min_liq_distance, acct, account.min_liquidation_distance)
        _put(host_info, {**acct, "host": target.host.label}, 1.0)
        if target.master is not None and target.alias not in seen_sub:
            seen_sub.add(target.alias)
            _put(sub_info, {"alias": target.alias, "master": target.master, "email": target.email or ""}, 1.0)
        _put(up, acct, 1.0 if view.up else 0.0)
        if view.down_reason is not None:
            _put(down_reason, {**acct, "reason": view.down_reason}, 1.0)
        if view.duration is not None:
            _put(duration, acct, view.duration)
        if view.last_success is not None:
            _put(last_success, acct, view.last_success)
        for reason, count in view.errors:
            _put(errors, {**acct, "reason": reason}, count)
        snap = view.snapshot
        if snap is None:
            continue
        if snap.account_alias:
            _put(info, {**acct, "account_alias": snap.account_alias}, 1.0)
        for row in snap.assets:  # the hot loop: samples appended directly, as GaugeMetricFamily would
            if skip_zero and row.zero and row.asset not in account.min_available_balance:
                continue
            labels = {**acct, "asset": row.asset}
            for name, value in row.values.items():
                family = assets[name]
                family.samples.append(Sample(family.name, labels, value, None))
        for name, value in snap.totals.items():
            family = totals[name]
            family.samples.append(Sample(family.name, acct, value, None))
        if snap.status is not None:
            states = PM_ACCOUNT_STATUSES if snap.status in PM_ACCOUNT_STATUSES else (*PM_ACCOUNT_STATUSES,
                                                                                      snap.status)
            for state in states:
                _put(status, {**acct, "status": state}, 1.0 if state == snap.status else 0.0)
        for pos in snap.positions:
            labels = {**acct, "symbol": pos.symbol, "position_side": pos.side}
            for name, value in pos.values.items():
                _put(positions[name], labels, value)
            if pos.margin_type is not None:
                _put(position_info, {**labels, "margin_type": pos.margin_type,
                                     "margin_asset": pos.margin_asset or ""}, 1.0)
    yield from assets.values()
    yield from (min_available, min_account_available, info)
    yield from totals.values()
    yield status
    yield from positions.values()
    yield position_info
    yield from (max_margin_ratio, min_liq_distance, min_uni_mmr, host_info, sub_info, up, down_reason, duration,
                last_success, errors)


def stream_families(result: ScrapeResult) -> Iterator[Metric]:
    """Per account with `user_stream: true`: its user data stream's state, events and margin calls."""
    up = _gauge("stream_up", "1 while the account's user data stream is connected with a valid listenKey.",
                ACCOUNT_LABELS)
    events = CounterMetricFamily(f"{NS}_stream_events", "User data stream messages by event: ACCOUNT_UPDATE, "
                                 "MARGIN_CALL, ACCOUNT_CONFIG_UPDATE, riskLevelChange, listenKeyExpired, other "
                                 "(any other event), invalid (not a sane event: dropped, and the connection "
                                 "is made again).", labels=["alias", "market", "event"])
    reconnects = CounterMetricFamily(f"{NS}_stream_reconnects", "User data stream connection attempts after the "
                                     "first connection (after a failure, a new listenKey, or the planned daily "
                                     "reconnect).",
                                     labels=["alias", "market"])
    last_event = _gauge("stream_last_event_timestamp_seconds", "When the account's latest user data stream event "
                        "was applied, Unix seconds.", ACCOUNT_LABELS)
    margin_calls = CounterMetricFamily(f"{NS}_margin_call_events", "Margin-call events on the user data stream: "
                                       "MARGIN_CALL (USD-M, COIN-M) and riskLevelChange (Portfolio Margin).",
                                       labels=["alias", "market"])
    for view in result.targets:
        stream = view.stream
        if stream is None:
            continue
        acct = {"alias": view.target.alias, "market": view.target.market}
        _put(up, acct, 1.0 if stream.up else 0.0)
        for event, count in stream.events:
            _put(events, {**acct, "event": event}, count)
        _put(reconnects, acct, stream.reconnects)
        if stream.last_event is not None:
            _put(last_event, acct, stream.last_event)
        _put(margin_calls, acct, stream.margin_calls)
    yield from (up, events, reconnects, last_event, margin_calls)


def host_families(hosts: list[HostView]) -> Iterator[Metric]:
    """Per API host: Binance's figure, our budget and use, back-off, clock."""
    used = _gauge("used_weight", "Request weight Binance reports used by this IP in the current minute: the "
                  "highest X-MBX-USED-WEIGHT-1M seen (X-SAPI-USED-IP-WEIGHT-1M on /sapi, counted per "
                  "endpoint); absent when no answer this minute reported it.", ("host", "interval"))
    limit = _gauge("weight_limit", "Binance's request-weight limit per minute and IP (config).", ("host", "interval"))
    budget = _gauge("weight_budget", "The exporter's own weight cap per rolling minute: weight_limit x "
                    "weight_budget_share.", ("host",))
    ours = _gauge("exporter_used_weight", "Weight this exporter sent to the host in the last 60 s.", ("host",))
    backoff = _gauge("backoff_seconds", "Seconds left before requests to this host resume after a 429/418 "
                     "(0 = none).", ("host",))
    offset = _gauge("time_offset_seconds", "Binance's clock minus the local clock, as measured.", ("host",))
    deferred = CounterMetricFamily(f"{NS}_fetches_deferred", "Fetches a scrape wanted but did not start "
                                   "at once, because of the weight budget or a back-off.", labels=["host"])
    limited = CounterMetricFamily(f"{NS}_rate_limited_responses", "429 and 418 answers received.",
                                  labels=["host", "status"])
    for host in hosts:
        if host.used_weight is not None:
            used.add_metric([host.label, "1m"], float(host.used_weight))
        limit.add_metric([host.label, "1m"], float(host.weight_limit))
        budget.add_metric([host.label], host.budget)
        ours.add_metric([host.label], float(host.exporter_used_weight))
        backoff.add_metric([host.label], host.backoff_seconds)
        offset.add_metric([host.label], host.offset_seconds)
        deferred.add_metric([host.label], host.deferred)
        for status in (429, 418):
            limited.add_metric([host.label, str(status)], host.limited[status])
    yield from (used, limit, budget, ours, backoff, offset, deferred, limited)


def discovery_families(discoveries: list[DiscoveryView]) -> Iterator[Metric]:
    """Per master account: how many sub-accounts its key found, and failed discoveries."""
    found = _gauge("sub_accounts", "Sub-accounts exported for this master: found through its key, kept by "
                   "include/exclude, with a futures account in at least one configured market.", ("master",))
    errors = CounterMetricFamily(f"{NS}_sub_account_discovery_errors", "Failed sub-account discoveries by "
                                 "master and reason.", labels=["master", "reason"])
    for view in discoveries:
        if view.found is not None:
            found.add_metric([view.master], float(view.found))
        for reason, count in view.errors:
            errors.add_metric([view.master, reason], count)
    yield from (found, errors)


def build_info() -> Metric:
    build = _gauge("exporter_build_info", "Exporter version and the VCS revision it was built from "
                   "(unknown unless the build was told); always 1.", ("version", "revision"))
    build.add_metric([__version__, build_revision()], 1.0)
    return build


def reload_families(successful: bool, success_at: float) -> Iterator[Metric]:
    """The config's latest (re)load, as Prometheus exports its own (prometheus_config_last_reload_*)."""
    ok = _gauge("exporter_config_last_reload_successful", "Whether the latest configuration reload "
                "(SIGHUP or POST /-/reload) succeeded; 1 at start. 0: the last good config keeps running.", ())
    ok.add_metric([], 1.0 if successful else 0.0)
    at = _gauge("exporter_config_last_reload_success_timestamp_seconds", "When the configuration was last "
                "loaded successfully (at start or by a reload), Unix seconds.", ())
    at.add_metric([], success_at)
    yield from (ok, at)


def families(result: ScrapeResult, skip_zero: bool, include_exporter: bool) -> Iterator[Metric]:
    """Every family with at least one sample (an empty family says nothing)."""
    for metric in (*target_families(result, skip_zero), *stream_families(result),
                   *discovery_families(result.discoveries),
                   *host_families(result.hosts)):
        if metric.samples:
            yield metric
    if include_exporter:
        yield build_info()
