"""Scrape results to metric families: the values only. Every family (name, type, help, labels) is
declared in catalogue.py; this module creates them from there and fills them.

It reads `ScrapeResult` (what the engine decided to show), never the engine's
internals, and emits families in a fixed order with series in config order, so
the exposition is stable enough to pin in golden files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from exporter import __version__, build_revision
from exporter.catalogue import ACCOUNT_FAMILIES, ASSET_FAMILIES, FAMILIES, POSITION_FAMILIES, Family
from exporter.discovery import DiscoveryView
from exporter.engine import HostView, ScrapeResult
from exporter.schema import PM_ACCOUNT_STATUSES


def _gauge(name: str) -> GaugeMetricFamily:
    family = FAMILIES[name]
    assert family.type == "gauge", name
    return GaugeMetricFamily(family.full_name, family.help, labels=list(family.labels))


def _counter(name: str) -> CounterMetricFamily:
    family = FAMILIES[name]
    assert family.type == "counter", name
    return CounterMetricFamily(family.full_name, family.help, labels=list(family.labels))


def _gauges(families: tuple[Family, ...]) -> dict[str, GaugeMetricFamily]:
    return {f.name: _gauge(f.name) for f in families}


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
    min_available = _gauge("min_available_balance")
    min_account_available = _gauge("min_account_available_balance")
    position_info = _gauge("position_info")
    info = _gauge("account_info")
    status = _gauge("pm_account_status")
    max_margin_ratio = _gauge("max_margin_ratio")
    min_liq_distance = _gauge("min_liquidation_distance")
    min_uni_mmr = _gauge("min_uni_mmr")
    host_info = _gauge("account_host_info")
    sub_info = _gauge("sub_account_info")
    up = _gauge("up")
    duration = _gauge("request_duration_seconds")
    last_success = _gauge("last_success_timestamp_seconds")
    errors = _counter("scrape_errors")
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
    yield from (max_margin_ratio, min_liq_distance, min_uni_mmr, host_info, sub_info, up, duration, last_success,
                errors)


def stream_families(result: ScrapeResult) -> Iterator[Metric]:
    """Per account with `user_stream: true`: its user data stream's state, events and margin calls."""
    up = _gauge("stream_up")
    events = _counter("stream_events")
    reconnects = _counter("stream_reconnects")
    last_event = _gauge("stream_last_event_timestamp_seconds")
    margin_calls = _counter("margin_call_events")
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


def risk_families(liquidations: Iterable[tuple[str, str, str, str, float]],
                  market_streams: Iterable[tuple[str, bool]]) -> Iterator[Metric]:
    """Live risk (issue 24): forced closes per account and symbol, and the public market streams.

    `liquidations`: (alias, market, symbol, kind, count) with kind "liquidation" or "adl"
    (exporter.forced_close); `market_streams`: (market, up). `liquidations_of` and the engine's
    ScrapeResult.market_streams feed them.
    """
    forced = _counter("liquidation_events")
    up = _gauge("market_stream_up")
    for alias, market, symbol, kind, count in liquidations:
        _put(forced, {"alias": alias, "market": market, "symbol": symbol, "kind": kind}, count)
    for market, connected in market_streams:
        _put(up, {"market": market}, 1.0 if connected else 0.0)
    yield from (forced, up)


def liquidations_of(result: ScrapeResult) -> Iterator[tuple[str, str, str, str, float]]:
    """The forced closes the scraped accounts' user data streams counted, for risk_families."""
    for view in result.targets:
        if view.stream is not None:
            for symbol, kind, count in view.stream.forced_closes:
                yield view.target.alias, view.target.market, symbol, kind, float(count)


def host_families(hosts: list[HostView]) -> Iterator[Metric]:
    """Per API host: Binance's figure, our budget and use, back-off, clock."""
    used = _gauge("used_weight")
    limit = _gauge("weight_limit")
    budget = _gauge("weight_budget")
    ours = _gauge("exporter_used_weight")
    backoff = _gauge("backoff_seconds")
    offset = _gauge("time_offset_seconds")
    deferred = _counter("fetches_deferred")
    limited = _counter("rate_limited_responses")
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
    found = _gauge("sub_accounts")
    errors = _counter("sub_account_discovery_errors")
    for view in discoveries:
        if view.found is not None:
            found.add_metric([view.master], float(view.found))
        for reason, count in view.errors:
            errors.add_metric([view.master, reason], count)
    yield from (found, errors)


def build_info() -> Metric:
    build = _gauge("exporter_build_info")
    build.add_metric([__version__, build_revision()], 1.0)
    return build


def reload_families(successful: bool, success_at: float) -> Iterator[Metric]:
    """The config's latest (re)load, as Prometheus exports its own (prometheus_config_last_reload_*)."""
    ok = _gauge("exporter_config_last_reload_successful")
    ok.add_metric([], 1.0 if successful else 0.0)
    at = _gauge("exporter_config_last_reload_success_timestamp_seconds")
    at.add_metric([], success_at)
    yield from (ok, at)


def families(result: ScrapeResult, skip_zero: bool, include_exporter: bool) -> Iterator[Metric]:
    """Every family with at least one sample (an empty family says nothing)."""
    for metric in (*target_families(result, skip_zero), *stream_families(result),
                   *risk_families(liquidations_of(result), result.market_streams),
                   *discovery_families(result.discoveries),
                   *host_families(result.hosts)):
        if metric.samples:
            yield metric
    if include_exporter:
        yield build_info()
