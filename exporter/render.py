"""Scrape results to metric families: the only place that knows metric names, help and labels.

It reads `ScrapeResult` (what the engine decided to show), never the engine's
internals, and emits families in a fixed order with series in config order, so
the exposition is stable enough to pin in golden files.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from exporter import __version__, build_revision
from exporter.catalogue import ACCOUNT_FAMILIES, ASSET_FAMILIES, FAMILIES, POSITION_FAMILIES, Family
from exporter.discovery import DiscoveryView
from exporter.engine import HostView, ScrapeResult, TargetView
from exporter.exposition import EncodedFamily, Encoder, Part, encode_parts
from exporter.parsing import Snapshot
from exporter.schema import PM_ACCOUNT_STATUSES
from exporter.targets import TargetKey


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


class _Spec:
    """A per-target family's name, help and type: made once, shared by every target's sink."""

    __slots__ = ("documentation", "name", "once_per_alias", "sample_name", "type")

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.sample_name = name + "_total" if typ == "counter" else name
        self.once_per_alias = False


_SPECS: dict[str, _Spec] = {}


def _spec(name: str) -> _Spec:
    """A per-target family's spec, from its declaration in the catalogue."""
    spec = _SPECS.get(name)
    if spec is None:
        family = FAMILIES[name]
        spec = _SPECS[name] = _Spec(family.full_name, family.help, family.type)
    return spec


Pairs = list[tuple[dict[str, str], float]]  # (labels, value): Samples only when asked for
Fragment = dict[_Spec, Pairs]  # one target's samples, by family (only families with samples)


def _tgauges(families: tuple[Family, ...]) -> dict[str, _Spec]:
    return {f.name: _spec(f.name) for f in families}


def _tput(out: Fragment, spec: _Spec, labels: dict[str, str], value: float) -> None:
    pairs = out.get(spec)
    if pairs is None:
        pairs = out[spec] = []
    pairs.append((labels, value))


def _put(family: Metric, labels: dict[str, str], value: float) -> None:
    """family.add_metric, given the label dict: the ~10-60 samples of one account, asset or position
    share one dict instead of zipping a new one each (half of the renderer's CPU at 500 sub-accounts).
    Counters take their `_total` sample name, as CounterMetricFamily.add_metric gives it."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value, None))


class _TargetSpecs:
    """The per-target families, in exposition order (their declarations are in the catalogue)."""

    def __init__(self) -> None:
        assets = _tgauges(ASSET_FAMILIES)
        totals = _tgauges(ACCOUNT_FAMILIES)
        positions = _tgauges(POSITION_FAMILIES)
        min_available = _spec("min_available_balance")
        min_account_available = _spec("min_account_available_balance")
        position_info = _spec("position_info")
        info = _spec("account_info")
        status = _spec("pm_account_status")
        max_margin_ratio = _spec("max_margin_ratio")
        min_liq_distance = _spec("min_liquidation_distance")
        min_uni_mmr = _spec("min_uni_mmr")
        host_info = _spec("account_host_info")
        sub_info = _spec("sub_account_info")
        up = _spec("up")
        down_reason = _spec("down_reason")
        duration = _spec("request_duration_seconds")
        last_success = _spec("last_success_timestamp_seconds")
        errors = _spec("scrape_errors")
        sub_info.once_per_alias = True  # a sub-account's markets are several targets: one series
        self.assets, self.totals, self.positions = assets, totals, positions
        self.info, self.status, self.position_info = info, status, position_info
        self.order = [*assets.values(), min_available, min_account_available, info, *totals.values(), status,
                      *positions.values(), position_info, max_margin_ratio, min_liq_distance, min_uni_mmr,
                      host_info, sub_info, up, down_reason, duration, last_success, errors]
        self.named = dict(min_available=min_available, min_account_available=min_account_available,
                          max_margin_ratio=max_margin_ratio, min_liq_distance=min_liq_distance,
                          min_uni_mmr=min_uni_mmr, host_info=host_info, sub_info=sub_info, up=up,
                          down_reason=down_reason, duration=duration, last_success=last_success, errors=errors)


_TARGET_SPECS: _TargetSpecs | None = None


def _target_specs() -> _TargetSpecs:
    global _TARGET_SPECS
    if _TARGET_SPECS is None:
        _TARGET_SPECS = _TargetSpecs()
    return _TARGET_SPECS


def target_fragment(view: TargetView, skip_zero: bool) -> Fragment:
    """Everything labelled by one account and market: balances, totals, positions, thresholds, health;
    by family, only the families with samples (`_TargetSpecs.order` puts targets' fragments together)."""
    specs = _target_specs()
    named = specs.named
    min_available, min_account_available = named["min_available"], named["min_account_available"]
    max_margin_ratio, min_liq_distance = named["max_margin_ratio"], named["min_liq_distance"]
    min_uni_mmr, host_info, sub_info, up = named["min_uni_mmr"], named["host_info"], named["sub_info"], named["up"]
    down_reason, duration, last_success = named["down_reason"], named["duration"], named["last_success"]
    errors = named["errors"]
    out: Fragment = {}
    target = view.target
    account = target.account
    acct = {"alias": target.alias, "market": target.market}
    if target.market != "pm":
        for asset, amount in account.min_available_balance.items():
            if asset in view.assets:  # only assets the account holds in this market
                _tput(out, min_available, {**acct, "asset": asset}, amount)
        if target.market == "usdm" and account.min_account_available_balance is not None:
            _tput(out, min_account_available, acct, account.min_account_available_balance)
        if account.max_margin_ratio is not None:
            _tput(out, max_margin_ratio, acct, account.max_margin_ratio)
    elif account.min_uni_mmr is not None:
        _tput(out, min_uni_mmr, acct, account.min_uni_mmr)
    if account.min_liquidation_distance is not None:  # Portfolio Margin has positions too
        _tput(out, min_liq_distance, acct, account.min_liquidation_distance)
    _tput(out, host_info, {**acct, "host": target.host.label}, 1.0)
    if target.master is not None:
        _tput(out, sub_info, {"alias": target.alias, "master": target.master, "email": target.email or ""}, 1.0)
    _tput(out, up, acct, 1.0 if view.up else 0.0)
    if view.down_reason is not None:
        _tput(out, down_reason, {**acct, "reason": view.down_reason}, 1.0)
    if view.duration is not None:
        _tput(out, duration, acct, view.duration)
    if view.last_success is not None:
        _tput(out, last_success, acct, view.last_success)
    for reason, count in view.errors:
        _tput(out, errors, {**acct, "reason": reason}, count)
    snap = view.snapshot
    if snap is not None:
        _snapshot(out, acct, view, snap, skip_zero, specs)
    return out


def _snapshot(out: Fragment, acct: dict[str, str], view: TargetView, snap: Snapshot, skip_zero: bool,
              specs: _TargetSpecs) -> None:
    """The samples of one target's values."""
    account = view.target.account
    assets, totals, positions, info, status, position_info = (specs.assets, specs.totals, specs.positions, specs.info,
                                                               specs.status, specs.position_info)
    if snap.account_alias:
        _tput(out, info, {**acct, "account_alias": snap.account_alias}, 1.0)
    for row in snap.assets:  # the hot loop: samples appended directly
        if skip_zero and row.zero and row.asset not in account.min_available_balance:
            continue
        labels = {**acct, "asset": row.asset}
        for name, value in row.values.items():
            spec = assets[name]
            pairs = out.get(spec)
            if pairs is None:
                pairs = out[spec] = []
            pairs.append((labels, value))
    for name, value in snap.totals.items():
        _tput(out, totals[name], acct, value)
    if snap.status is not None:
        states = PM_ACCOUNT_STATUSES if snap.status in PM_ACCOUNT_STATUSES else (*PM_ACCOUNT_STATUSES,
                                                                                  snap.status)
        for state in states:
            _tput(out, status, {**acct, "status": state}, 1.0 if state == snap.status else 0.0)
    for pos in snap.positions:
        labels = {**acct, "symbol": pos.symbol, "position_side": pos.side}
        for name, value in pos.values.items():
            _tput(out, positions[name], labels, value)
        if pos.margin_type is not None:
            _tput(out, position_info, {**labels, "margin_type": pos.margin_type,
                                 "margin_asset": pos.margin_asset or ""}, 1.0)


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


# The text kept for reuse, at most: a quarter of what the HTTP front may buffer for answers in flight
# (httpserver.MAX_BUFFERED_BYTES, 64 MiB); 500 accounts with 5 assets take 2.3 MB.
FRAGMENTS_MAX_BYTES = 16 << 20


class Fragments:
    """Each target's families rendered and encoded once per change of what it shows, reused until then.

    Keyed by target; an entry holds the view's `version` it was made from and,
    per family, the samples and their text-format lines. A scrape takes the
    bytes of every unchanged target as they are, whatever the format (the
    samples serve OpenMetrics) and the `name[]` filter (whole families). One
    entry per target, each about the size of its part of the exposition, up
    to `max_bytes` of text in all (past it, further targets are encoded at
    every scrape, as before). Entries of targets no longer seen go at the
    next /metrics scrape.
    """

    def __init__(self, max_bytes: int = FRAGMENTS_MAX_BYTES) -> None:
        self._lock = threading.Lock()
        self._entries: dict[TargetKey, _Entry] = {}
        self._sizes: dict[TargetKey, int] = {}
        self._bytes = 0
        self.max_bytes = max_bytes

    def get(self, view: TargetView, skip_zero: bool) -> dict[_Spec, Part]:
        key = view.target.key
        version = (*view.version, skip_zero)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and _same(entry[0], version):
            return entry[1]
        # The target's label strings outlive its values: a new fetch re-encodes the values only.
        encoder = entry[2] if entry is not None and entry[0][0] is view.target else Encoder()
        items = list(target_fragment(view, skip_zero).items())
        with encoder.lock:  # two scrapes of one changed target (/metrics and /probe) may meet here
            encoded = encode_parts([(spec.sample_name, pairs) for spec, pairs in items], encoder)
        parts = {spec: (pairs, text) for (spec, pairs), text in zip(items, encoded, strict=True)}
        size = sum(len(text) for _, text in parts.values())
        with self._lock:
            kept = self._bytes - self._sizes.get(key, 0) + size
            if kept <= self.max_bytes:  # past the bound: this target is encoded at every scrape instead
                self._entries[key] = (version, parts, encoder)
                self._sizes[key] = size
                self._bytes = kept
        return parts

    def prune(self, keep: set[TargetKey]) -> None:
        with self._lock:
            if len(self._entries) > len(keep):
                self._entries = {k: v for k, v in self._entries.items() if k in keep}
                self._sizes = {k: v for k, v in self._sizes.items() if k in keep}
                self._bytes = sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._entries)


_Entry = tuple[tuple[object, ...], dict[_Spec, Part], Encoder]


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


def target_families(result: ScrapeResult, skip_zero: bool, cache: Fragments | None = None) -> Iterator[Metric]:
    """Everything labelled by account, family by family, from each target's (cached) fragment."""
    cache = cache if cache is not None else Fragments()
    fragments = [(view.target.alias, cache.get(view, skip_zero)) for view in result.targets]
    for spec in _target_specs().order:
        parts: list[Part] = []
        seen: set[str] = set()
        for alias, fragment in fragments:
            part = fragment.get(spec)
            if part is not None:
                if spec.once_per_alias:
                    if alias in seen:
                        continue
                    seen.add(alias)
                parts.append(part)
        if parts:
            yield EncodedFamily(spec.name, spec.documentation, spec.type, spec.sample_name, parts)


def families(result: ScrapeResult, skip_zero: bool, include_exporter: bool,
             cache: Fragments | None = None) -> Iterator[Metric]:
    """Every family with at least one sample (an empty family says nothing)."""
    yield from target_families(result, skip_zero, cache)
    for metric in (*stream_families(result),
                   *risk_families(liquidations_of(result), result.market_streams),
                   *discovery_families(result.discoveries),
                   *host_families(result.hosts)):
        if metric.samples:
            yield metric
    if include_exporter:
        yield build_info()
