"""Scrape-driven fetching: which accounts to refresh now, within the weight budget, and their results.

A scrape asks for the accounts it covers. An account whose data is younger
than `refresh_after` (default 0.8 x scrape_interval_seconds, or cache_seconds)
is served as it is, so an HA pair of Prometheus servers costs the weight of
one. Older ones are refreshed, oldest first: at once if their host's budget
has room (the scrape then waits for them, up to its deadline), otherwise they
join their host's queue, which a dispatcher drains as the budget allows and a
back-off ends. A scrape never waits for budget: meanwhile it exports the
account's last successful fetch, for at most `max_data_age_seconds`.

Nothing runs unless a scrape asked for it: the queues only hold accounts a
scrape wanted, each once, and empty as they are served. The one exception is
a user data stream (`user_stream: true`): its events and reconnects put the
account at the front of its host's queue (see `stream_refresh`), within the
same budget.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from decimal import Decimal

from exporter.client import REASONS, ScrapeError, Skipped
from exporter.config import AccountConfig, Config
from exporter.discovery import DISCOVERY_TIMEOUT_S, Discovery, DiscoveryView, list_emails, select
from exporter.discovery import view as discovery_view
from exporter.governor import Admission
from exporter.hosts import Host
from exporter.liverisk import LIVE_MARKETS, ContractSizes, LiveRiskBook
from exporter.logs import fields
from exporter.parsing import Snapshot
from exporter.streams.events import StreamView
from exporter.streams.manager import StreamManager
from exporter.streams.market import MarketStreams
from exporter.streams.tuning import Tuning
from exporter.targets import Target, Topology
from exporter.transport import Pools, Watchdog, detach

log = logging.getLogger("exporter.engine")

WAIT_GRACE_S = 0.05  # a fetch cut at the deadline reports within milliseconds
STARTUP_SYNC_S = 5.0
# "future account not exists" / "future account or sub relation not exists": the
# sub-account has no futures account of that type. Not an error of the sub-account.
NO_FUTURES_CODES = (-5011, -5012)
# Stream events ask for a REST refresh (the event carries no available balance or margins).
# A burst of events costs one refresh: at most one such refresh per account in this interval,
# or in refresh_after (cache_seconds) if longer, so events bring refreshes forward but never
# make an account cost more weight than scrapes at the configured interval would.
STREAM_REFRESH_GAP_S = 5.0
# A 429/418 pauses the whole host: the account whose request drew it is treated like the others.
PAUSE_REASONS = ("rate_limited", "ip_banned")


@dataclass(frozen=True)
class Attempt:
    started: float  # monotonic
    finished: float  # monotonic
    fetched_at: float  # wall clock, when the answer arrived
    snapshot: Snapshot | None
    error: ScrapeError | None


@dataclass
class TargetState:
    target: Target
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    inflight: Future[None] | None = None
    queued: bool = False
    admitted_at: float | None = None  # monotonic start of the latest admitted refresh
    again: bool = False  # a stream event arrived during the refresh in flight: one more after it
    again_gap: bool = False  # ... and it was a gap: the one after it is not spaced
    urgent_at: float = float("-inf")  # monotonic time of the latest stream-requested refresh
    urgent_pending: bool = False  # a stream-requested refresh waits for its spacing (queue.later)
    last: Attempt | None = None
    last_ok: Attempt | None = None
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


@dataclass(frozen=True)
class TargetView:
    """What the renderer reads about one target in one scrape."""

    target: Target
    up: bool
    snapshot: Snapshot | None  # only when up
    duration: float | None
    last_success: float | None  # wall clock
    errors: tuple[tuple[str, int], ...]
    assets: frozenset[str] = frozenset()  # the assets of the latest successful fetch, even if too old now
    stream: StreamView | None = None  # user_stream accounts only


@dataclass(frozen=True)
class HostView:
    label: str
    used_weight: int | None  # Binance's figure, only for the current minute
    weight_limit: int
    budget: float
    exporter_used_weight: int
    backoff_seconds: float
    offset_seconds: float
    deferred: int
    limited: dict[int, int]


@dataclass(frozen=True)
class ScrapeResult:
    targets: list[TargetView]
    hosts: list[HostView]
    discoveries: list[DiscoveryView] = field(default_factory=list)
    market_streams: list[tuple[str, bool]] = field(default_factory=list)  # (market, up) live risk follows


@dataclass(frozen=True)
class BudgetPlan:
    host: str
    accounts: int
    round_weight: int  # refreshing every account on the host once
    demand_per_minute: float  # at the configured scrape interval
    budget_per_minute: float
    refresh_every_s: float  # how often each account can be refreshed within the budget
    max_data_age_s: float

    @property
    def fits(self) -> bool:
        return self.demand_per_minute <= self.budget_per_minute


class _HostQueue:
    """Targets of one host waiting for budget or the end of a back-off, oldest data first."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, TargetState]] = []
        # Stream-requested refreshes waiting for their spacing: (due, seq, state), soonest first.
        self.later: list[tuple[float, int, TargetState]] = []
        self.thread: threading.Thread | None = None
        self.stopped = False  # its host left the config: the dispatcher ends


@dataclass(frozen=True)
class Reconciled:
    """What a reloaded config changed, by configured alias."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    kept: tuple[str, ...]


class Engine:
    """Everything that outlives a single scrape."""

    def __init__(self, config: Config, stream_tuning: Tuning | None = None) -> None:
        self.config = config
        self.watchdog = Watchdog()
        # One pool per host, as many connections as fetch threads: fds follow from the config.
        self.pools = Pools(config.max_concurrency, self.watchdog)
        self.topology = Topology(config, self.pools)
        self.hosts = self.topology.hosts
        self.states: dict[tuple[str, str], TargetState] = {}
        self.by_alias: dict[str, list[tuple[str, str]]] = {}
        self.pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="fetch")
        self._cond = threading.Condition()
        self._queues: dict[Host, _HostQueue] = {}
        self._seq = itertools.count()
        self._closed = False
        self.discoveries: dict[str, Discovery] = {}  # replaced, never changed in place: read without a lock
        self._subs_of: dict[str, list[str]] = {}  # master alias -> sub-account aliases, in order
        self._started = False
        for account in config.accounts:
            self._register(account.alias, *self._build(account))
        self.default_budget = max((a.timeout_seconds for a in config.accounts), default=5.0)
        self.plan_budgets()
        self.streams = StreamManager(self._streaming(), self.stream_refresh, config.stream_connections_per_5m,
                                     self.pools, stream_tuning, on_modes=self._modes_changed,
                                     keys_per_connection=config.stream_keys_per_connection)
        # Live risk: the public mark-price streams run on the user streams' layer (one loop, one
        # connection-attempt limiter: Binance counts every WebSocket attempt of the IP).
        self.market_streams = MarketStreams(self.streams.layer, _market_bases(config), self._mark)
        self.live = LiveRiskBook(self.market_streams.watch, self.market_streams.state)

    def _mark(self, market: str, symbol: str, price: Decimal, time_ms: int) -> None:
        self.live.mark(market, symbol, price, time_ms)

    def upstream_sockets(self) -> int:
        """Sockets to Binance this config may hold: the hosts' pools, one per user data stream, and one per
        market's mark-price stream when an account has live risk (more past 1,024 symbols: rare)."""
        live = any(a.live_risk_on for a in self.config.accounts)
        return self.pools.connections() + len(self.streams.streams) + (len(LIVE_MARKETS) if live else 0)

    def _streaming(self) -> list[Target]:
        """The targets with a user data stream: own-key accounts with `user_stream: true`."""
        with self._cond:
            return [s.target for s in self.states.values()
                    if s.target.account.user_stream and s.target.master is None]

    def _modes_changed(self, key: tuple[str, str]) -> None:
        """ACCOUNT_CONFIG_UPDATE: the modes the REST side caches are old; read them at the next refresh."""
        with self._cond:
            state = self.states.get(key)
        if state is not None and state.target.modes is not None:
            state.target.modes.expire()
        if state is not None and state.target.brackets is not None:
            state.target.brackets.expire()

    def _build(self, account: AccountConfig) -> tuple[list[Target], Discovery | None]:
        """An account's targets and, for a master, its discovery; not yet known to scrapes."""
        targets = [self.topology.target(account, market) for market in account.markets]
        if account.sub_accounts is None:
            return targets, None
        host = self.topology.host(account, "sapi")
        # Reads every sub-account through the master's key: up to max_concurrency at once.
        client = self.topology.client(account, host, concurrency=self.config.max_concurrency)
        return targets, Discovery(account, host, client)

    def _register(self, alias: str, targets: list[Target], discovery: Discovery | None) -> None:
        with self._cond:
            for target in targets:
                self.add_target(target)
            if discovery is not None:
                self.discoveries = {**self.discoveries, alias: discovery}
                self._subs_of[alias] = []
                self.by_alias.setdefault(alias, [])

    def add_target(self, target: Target) -> None:
        with self._cond:
            self.states[target.key] = TargetState(target)
            self.by_alias.setdefault(target.alias, []).append(target.key)

    def remove_target(self, key: tuple[str, str], state: TargetState | None = None) -> None:
        """Forget a target (its series go with it); with `state`, only if that is still the target's state."""
        with self._cond:
            if state is not None and self.states.get(key) is not state:
                return
            state = self.states.pop(key, None)
            if state is None:
                return
            keys = self.by_alias.get(key[0], [])
            if key in keys:
                keys.remove(key)
            if not keys:
                self.by_alias.pop(key[0], None)
        self.live.forget(key)

    def plan_budgets(self) -> None:
        """Tell each host's governor what a full round costs, so it knows whether to pace."""
        rounds: dict[Host, int] = {}
        largest: dict[Host, int] = {}
        with self._cond:
            targets = [s.target for s in self.states.values()]
        for target in targets:
            rounds[target.host] = rounds.get(target.host, 0) + target.weight
            largest[target.host] = max(largest.get(target.host, 0), target.weight)
        for host, weight in rounds.items():
            host.governor.plan(weight, self.config.scrape_interval_seconds, largest[host])

    def budget_plans(self, hosts: Iterable[Host] | None = None) -> list[BudgetPlan]:
        """What the accounts cost each host and, within its budget, how fresh their data will be."""
        rounds: dict[Host, list[int]] = {}
        with self._cond:
            targets = [s.target for s in self.states.values()]
        wanted = None if hosts is None else set(hosts)
        for target in targets:
            if wanted is None or target.host in wanted:
                rounds.setdefault(target.host, []).append(target.weight)
        plans = []
        interval = self.config.scrape_interval_seconds
        for host in _ordered(rounds):
            weights = rounds[host]
            demand = sum(weights) * 60.0 / interval
            cap = host.governor.cap
            every = max(interval, sum(weights) / host.governor.rate)
            max_age = min(t.account.max_data_age_seconds for t in targets if t.host is host)
            plans.append(BudgetPlan(host.label, len(weights), sum(weights), demand, cap, every, max_age))
        return plans

    def log_budget(self, hosts: Iterable[Host] | None = None) -> None:
        """Say what freshness the accounts get within each host's weight budget (at start, after discovery)."""
        for plan in self.budget_plans(hosts):
            info = fields(host=plan.host, accounts=plan.accounts, demand_per_minute=round(plan.demand_per_minute),
                          budget_per_minute=round(plan.budget_per_minute),
                          refresh_every_s=round(plan.refresh_every_s, 1))
            if plan.fits:
                log.info("weight budget: every account refreshed each scrape", extra=info)
            elif plan.refresh_every_s <= plan.max_data_age_s:
                log.warning("weight budget: scraping every account every time would exceed the budget; "
                            "each account is refreshed about every refresh_every_s seconds instead", extra=info)
            else:
                log.warning("weight budget: accounts cannot be refreshed within max_data_age_seconds and will "
                            "show up=0 between refreshes; scrape less often, raise max_data_age_seconds, "
                            "or shard with /probe over several IPs", extra=info)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> list[Future[None]]:
        """Measure every host's clock once, so the first scrape signs correctly."""
        self._started = True
        deadline = time.monotonic() + STARTUP_SYNC_S
        futures = [self.pool.submit(clock.ensure, deadline) for clock in self.topology.clocks()]
        self.streams.start()
        return futures + [f for f in (self._start_discovery(d) for d in self.discoveries.values()) if f]

    def apply(self, config: Config) -> Reconciled:
        """Take a reloaded config without a restart.

        An account whose effective settings are equal (same AccountConfig, so
        same credentials too) keeps its targets as they are: data, errors, a
        fetch in flight; a master its discovery and sub-accounts. Hosts the
        config still uses keep their governor (the last minute's weight still
        counts at Binance), back-off and clock. A removed account's targets go,
        its sub-accounts' too, so their series disappear; a changed one is
        replaced by a fresh one; an added one starts like at start-up. New
        targets are built first and swapped in under the lock in one go, so a
        scrape sees the old accounts or the new ones, and waits milliseconds.
        """
        old = {a.alias: a for a in self.config.accounts}
        new = {a.alias: a for a in config.accounts}
        kept = tuple(a for a in new if a in old and old[a] == new[a])
        changed = tuple(a for a in new if a in old and old[a] != new[a])
        added = tuple(a for a in new if a not in old)
        removed = tuple(a for a in old if a not in new)
        hosts_before = set(self.topology.hosts.values())
        dropped = self.topology.update(config)
        previous, self.config = self.config, config
        built = [(alias, *self._build(new[alias])) for alias in new if alias in {*added, *changed}]
        with self._cond:
            for alias in (*removed, *changed):
                for name in (alias, *self._subs_of.pop(alias, ())):
                    for key in list(self.by_alias.get(name, ())):
                        self.remove_target(key)
                    self.by_alias.pop(name, None)
            self.discoveries = {a: d for a, d in self.discoveries.items() if a in kept}
            for master in kept:  # a sub-account whose alias a configured account now takes
                for sub in [s for s in self._subs_of.get(master, ()) if s in new]:
                    for key in list(self.by_alias.get(sub, ())):
                        self.remove_target(key)
                    self._subs_of[master].remove(sub)
            for alias, targets, discovery in built:
                self._register(alias, targets, discovery)
            order: dict[str, list[tuple[str, str]]] = {}  # config order, each master followed by its subs
            for account in config.accounts:
                for name in (account.alias, *self._subs_of.get(account.alias, ())):
                    if name in self.by_alias:
                        order[name] = self.by_alias[name]
            self.by_alias = {**order, **self.by_alias}
            for host in dropped:
                queue = self._queues.pop(host, None)
                if queue is not None:
                    queue.stopped = True
            self._cond.notify_all()
        if config.max_concurrency != previous.max_concurrency:
            pool, self.pool = self.pool, ThreadPoolExecutor(max_workers=config.max_concurrency,
                                                           thread_name_prefix="fetch")
            pool.shutdown(wait=False)  # its fetches in flight finish, then its threads end
            self.pools.resize(config.max_concurrency)  # as many connections per host as fetch threads
        self.default_budget = max((a.timeout_seconds for a in config.accounts), default=5.0)
        self.plan_budgets()
        self.streams.limiter.limit = config.stream_connections_per_5m  # read on the loop; an int is atomic
        self.streams.update(self._streaming(), config.stream_keys_per_connection)
        self.market_streams.bases = _market_bases(config)  # for connections opened from now on
        if self._started:
            self.streams.start()  # a no-op once running; the first streaming account may be new
            deadline = time.monotonic() + STARTUP_SYNC_S
            for host in set(self.topology.hosts.values()) - hosts_before:
                self.pool.submit(self.topology.host_clocks[(host.base_url, host.kind)].ensure, deadline)
            for _, _, discovery in built:
                if discovery is not None:
                    self._start_discovery(discovery)
        return Reconciled(added, removed, changed, kept)

    def close(self) -> None:
        """Stop promptly: cut every request in flight, whatever the upstream does."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.streams.close()
        self.watchdog.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pools.close()

    # ---- scraping ------------------------------------------------------------------------
    def aliases(self) -> list[str]:
        """Every account alias, configured ones in config order, each master followed by its sub-accounts."""
        with self._cond:
            return list(self.by_alias)

    def has_alias(self, alias: str) -> bool:
        with self._cond:
            return alias in self.by_alias

    def keys_for(self, aliases: Iterable[str]) -> list[tuple[str, str]]:
        """The targets of these accounts; a master's include its sub-accounts'."""
        keys: dict[tuple[str, str], None] = {}
        with self._cond:
            for alias in aliases:
                for name in (alias, *self._subs_of.get(alias, ())):
                    keys.update(dict.fromkeys(self.by_alias.get(name, ())))
        return list(keys)

    def scrape(self, aliases: Sequence[str], budget: float | None) -> ScrapeResult:
        now = time.monotonic()
        deadline = now + (self.default_budget if budget is None else budget)
        discoveries = self.discoveries
        masters = [discoveries[a] for a in aliases if a in discoveries]
        for discovery in masters:
            if discovery.due(now):
                self._start_discovery(discovery)  # in the background: this scrape uses what is known
        with self._cond:
            states = [self.states[k] for k in self.keys_for(aliases) if k in self.states]
        waits: list[Future[None]] = []
        for state in sorted(states, key=_age_key):
            future = self._refresh(state, now, deadline)
            if future is not None:
                waits.append(future)
        if waits:
            wait_futures(waits, timeout=max(0.0, deadline - time.monotonic()) + WAIT_GRACE_S)
        with self._cond:  # targets removed meanwhile (a sub-account without that futures account) are gone
            states = [s for s in states if self.states.get(s.target.key) is s]
        hosts = {s.target.host for s in states} | {d.host for d in masters}
        return ScrapeResult([self.view(s) for s in states], [host_view(h) for h in _ordered(hosts)],
                            [discovery_view(d, self._exported_subs(d.master.alias)) for d in masters],
                            self._market_states(states))

    def _market_states(self, states: Iterable[TargetState]) -> list[tuple[str, bool]]:
        """(market, stream up) of the mark-price streams the scraped accounts' live risk follows now."""
        wanted: set[str] = set()
        for state in states:
            if self._live_risk(state.target):
                wanted |= {"usdm", "coinm"} if state.target.market == "pm" else {state.target.market}
        return [(market, up) for market, up in self.live.markets() if market in wanted]

    def _refresh(self, state: TargetState, now: float, deadline: float) -> Future[None] | None:
        """Start, queue or skip one target's refresh; returns what the scrape should wait for."""
        target = state.target
        host = target.host
        with state.lock:
            if state.inflight is not None:
                return state.inflight
            if state.admitted_at is not None and now - state.admitted_at < self.config.refresh_after(target.account):
                return None
            queued = state.queued
        if not queued and host.backoff.remaining()[0] == 0 and not self._host_busy(host):
            admission = host.governor.try_acquire(target.weight)
            if admission is not None:
                return self._start(state, min(deadline, now + target.account.timeout_seconds), admission)
        host.count_deferred()
        self._enqueue(state)
        return None

    def _start(self, state: TargetState, deadline: float, admission: Admission) -> Future[None] | None:
        """Run a refresh whose weight was just taken from its host's budget."""
        with state.lock:
            if state.inflight is not None:  # another scrape won the race; its fetch serves both
                state.target.host.governor.refund(admission, admission.weight)
                return state.inflight
            previous, state.admitted_at = state.admitted_at, time.monotonic()
            state.queued = False
            try:
                state.inflight = future = self.pool.submit(self._run, state, deadline, previous, admission)
            except RuntimeError:  # pool shut down (closing, or replaced by a reload): nothing was sent
                state.inflight, state.admitted_at = None, previous
                state.target.host.governor.refund(admission, admission.weight)
                return None
            return future

    def _run(self, state: TargetState, deadline: float, previous: float | None, admission: Admission) -> None:
        target = state.target
        started = time.monotonic()
        snapshot: Snapshot | None = None
        error: ScrapeError | None = None
        try:
            snapshot = target.client.fetch(target.calls, deadline, admission)
            if target.modes is not None:  # read at start, then rarely (modes.py)
                snapshot = target.modes.refresh(target.client, deadline, snapshot)
            if target.brackets is not None and snapshot.positions:  # live risk: at start, hourly (liverisk.py)
                target.brackets.refresh(target.client, deadline)
                if target.market == "coinm":
                    self._sizes(target.host).refresh(target.host, self.pools.get(target.host.base_url), deadline)
        except Skipped:  # not sent: no attempt, no error; the account stays as old as it was
            target.host.count_deferred()
            with state.lock:
                state.inflight = None
                state.admitted_at = previous
            return
        except ScrapeError as exc:
            # Kept until the next attempt, so as a copy: the original's traceback and
            # chain would keep frames (and the answer's body) alive with it.
            error = ScrapeError(exc.reason, exc.detail, exc.status, exc.code)
            detach(exc)
            if target.master is not None and error.code in NO_FUTURES_CODES:
                self._no_futures_account(state)
                return
        except Exception as exc:  # never let a bug take the scrape down
            log.error("unexpected error", exc_info=True, extra=fields(alias=target.alias, market=target.market))
            error = ScrapeError("bad_response", f"internal error: {type(exc).__name__}")
            detach(exc)
        finished = time.monotonic()
        attempt = Attempt(started, finished, time.time(), snapshot, error)
        with state.lock:
            if error is not None and error.reason in PAUSE_REASONS:
                # The request that drew the host's 429/418 is no worse off than its neighbours,
                # whose refreshes the pause defers: it keeps its last values (up until
                # max_data_age_seconds) and is refreshed first when the pause ends. Counted once.
                state.errors[error.reason] += 1
                state.admitted_at = previous
            else:
                state.last = attempt
                if error is None:
                    state.last_ok = attempt
                else:
                    state.errors[error.reason] += 1
            state.inflight = None
            again, state.again = state.again, False
            again_gap, state.again_gap = state.again_gap, False
        if error is None and snapshot is not None:
            stream = self.streams.state(target.key)
            if stream is not None:  # what the stream applied before this read is in it: pruned now
                stream.rest_read(started, snapshot)
            self._hold(state)
        if again:
            self.stream_refresh(target.key, again_gap)
        if error is not None:
            log.warning("scrape failed", extra=fields(
                alias=target.alias, market=target.market, reason=error.reason, status=error.status,
                code=error.code, error=error.detail))

    def view(self, state: TargetState) -> TargetView:
        with state.lock:
            last, ok, errors = state.last, state.last_ok, tuple(state.errors.items())
        target = state.target
        up = (last is not None and last.error is None and ok is not None
              and time.monotonic() - ok.finished <= target.account.max_data_age_seconds)
        snapshot = ok.snapshot if up and ok is not None else None
        stream = self.streams.state(target.key)
        if stream is not None and snapshot is not None and ok is not None:
            snapshot = stream.overlay(snapshot, ok.started, target.account.positions)
        if snapshot is not None and ok is not None and self._live_risk(target):
            snapshot = self.live.at(target.key, target.market, snapshot, ok.started,
                                    target.brackets.values if target.brackets is not None else {},
                                    self._sizes_of(target))
        return TargetView(
            target=target, up=up, snapshot=snapshot,
            duration=None if last is None else last.finished - last.started,
            last_success=None if ok is None else ok.fetched_at, errors=errors,
            assets=frozenset(row.asset for row in ok.snapshot.assets) if ok and ok.snapshot else frozenset(),
            stream=None if stream is None else stream.view(),
        )

    # ---- live risk -----------------------------------------------------------------------------
    @staticmethod
    def _live_risk(target: Target) -> bool:
        """Recomputed at the marks: own-key accounts with live_risk (a sub-account's brackets need its key)."""
        return target.account.live_risk_on and target.master is None

    def _sizes(self, host: Host) -> ContractSizes:
        with self._cond:
            return self.live.sizes.setdefault(host.base_url, ContractSizes())

    def _sizes_of(self, target: Target) -> Mapping[str, Decimal]:
        if target.market == "usdm":
            return {}
        sizes = self.live.sizes.get(target.account.base_url_for("coinm"))
        return sizes.values if sizes is not None else {}

    def _hold(self, state: TargetState) -> None:
        """Follow the marks of the symbols in the account's latest coherent state (after a read or an event)."""
        target = state.target
        if not self._live_risk(target):
            return
        with state.lock:
            ok = state.last_ok
        snapshot = ok.snapshot if ok is not None else None
        stream = self.streams.state(target.key)
        if stream is not None and snapshot is not None and ok is not None:
            snapshot = stream.overlay(snapshot, ok.started, target.account.positions)
        with self._cond:
            if self.states.get(target.key) is not state:  # removed meanwhile: nothing to follow
                return
        self.live.hold(target.key, target.market, snapshot)

    # ---- user data streams -----------------------------------------------------------------
    def stream_refresh(self, key: tuple[str, str], gap: bool) -> None:
        """A stream event (or a gap in the stream) wants the account refreshed by REST, first in line.

        Coalesced: while one is queued or pending, more events add nothing; one arriving
        while a refresh is in flight gets exactly one more after it; and an account gets
        at most one stream-requested refresh per STREAM_REFRESH_GAP_S or refresh_after,
        whichever is longer. A gap (a reconnect, a new key) always gets its own, at once: it is
        queued first and never merged into one an earlier event scheduled for later (that one is
        dropped: the gap's refresh starts after its event). The refresh waits for the budget like
        any other: never a burst of requests.
        """
        with self._cond:
            state = self.states.get(key)
            if state is None or self._closed:
                return
        if not gap:
            self._hold(state)  # an event may have opened or closed a position: its mark followed at once
        with state.lock:
            if gap:
                state.urgent_pending = False  # the scheduled one, when due, finds nothing to do
            elif state.urgent_pending:
                return
            if state.inflight is not None:  # it started before this event or gap: one more after it
                state.again = True
                state.again_gap = state.again_gap or gap
                return
            spacing = max(STREAM_REFRESH_GAP_S, self.config.refresh_after(state.target.account))
            last = max(state.urgent_at, state.admitted_at if state.admitted_at is not None else float("-inf"))
            now = time.monotonic()
            wait = 0.0 if gap else last + spacing - now
            if wait > 0:
                state.urgent_pending = True
            else:
                state.urgent_at = now
        if wait > 0:  # the host's dispatcher queues it when due: no thread per waiting account
            with self._cond:
                if self._closed or self.states.get(key) is not state:
                    return
                queue = self._queue(state.target.host)
                heapq.heappush(queue.later, (now + wait, next(self._seq), state))
                self._cond.notify_all()
            return
        self._enqueue(state, front=True)

    def _urgent_due(self, state: TargetState) -> None:
        with state.lock:
            if not state.urgent_pending:  # a gap's refresh came first and covers it
                return
            state.urgent_pending = False
            state.urgent_at = time.monotonic()
        self._enqueue(state, front=True)

    # ---- sub-accounts --------------------------------------------------------------------
    def _start_discovery(self, discovery: Discovery) -> Future[None] | None:
        with discovery.lock:
            if discovery.running:
                return None
            discovery.running = True
            discovery.ran_at = time.monotonic()
        try:
            return self.pool.submit(self._discover, discovery)
        except RuntimeError:  # shut down (or replaced by a reload): again at the next scrape
            with discovery.lock:
                discovery.running, discovery.ran_at = False, None
            return None

    def _discover(self, discovery: Discovery) -> None:
        """List the master's sub-accounts, then add and remove their targets to match."""
        master = discovery.master
        try:
            emails = list_emails(discovery.client, time.monotonic() + DISCOVERY_TIMEOUT_S)
        except Skipped:
            log.info("sub-account discovery deferred (budget or back-off)", extra=fields(master=master.alias))
            with discovery.lock:
                discovery.running, discovery.ran_at = False, None  # again at the next scrape
            return
        except Exception as exc:  # a ScrapeError, or a bug: never let it out of the thread
            error = (ScrapeError(exc.reason, exc.detail, exc.status, exc.code) if isinstance(exc, ScrapeError)
                     else ScrapeError("bad_response", f"internal error: {type(exc).__name__}"))
            if not isinstance(exc, ScrapeError):
                log.error("unexpected error in sub-account discovery", exc_info=True,
                          extra=fields(master=master.alias))
            detach(exc)
            with discovery.lock:
                discovery.errors[error.reason] += 1
                discovery.running = False
            log.warning("sub-account discovery failed", extra=fields(
                master=master.alias, reason=error.reason, status=error.status, code=error.code, error=error.detail))
            return
        try:
            self._apply_discovery(discovery, emails)
        except Exception:  # a bug: log it, keep the targets as they were, try again next interval
            log.error("unexpected error applying sub-account discovery", exc_info=True,
                      extra=fields(master=master.alias))
        finally:
            with discovery.lock:
                discovery.running = False

    def _exported_subs(self, master: str) -> int:
        with self._cond:
            return sum(1 for alias in self._subs_of.get(master, ()) if self.by_alias.get(alias))

    def _apply_discovery(self, discovery: Discovery, emails: list[str]) -> None:
        master = discovery.master
        assert master.sub_accounts is not None
        with self._cond:
            if self.discoveries.get(master.alias) is not discovery:  # its master was removed or changed
                return
            taken = {a for a in self.by_alias if a not in self._subs_of[master.alias]}
        wanted: dict[tuple[str, str], Target] = {}
        aliases: list[str] = []
        now = time.monotonic()
        for email, alias in select(master.sub_accounts, emails):
            if alias in taken or alias in aliases:
                log.warning("sub-account skipped: its alias is taken", extra=fields(master=master.alias, alias=alias))
                continue
            aliases.append(alias)
            for market in master.sub_accounts.markets:
                if not discovery.skip(email, market, now):
                    wanted[(alias, market)] = self.topology.sub_account_target(master, alias, email, market,
                                                                              discovery.host, discovery.client)
        with self._cond:
            if self.discoveries.get(master.alias) is not discovery:
                return
            previous = list(self._subs_of[master.alias])
            old = {key for alias in previous for key in self.by_alias.get(alias, ())}
            for key in old - wanted.keys():
                self.remove_target(key)
            for key, target in wanted.items():
                if key not in self.states:
                    self.add_target(target)
            self._subs_of[master.alias] = aliases
        with discovery.lock:
            discovery.listed = True
        self.plan_budgets()
        log.info("sub-accounts discovered", extra=fields(master=master.alias, found=len(aliases),
                                                        listed=len(emails)))
        if set(aliases) != set(previous):
            self.log_budget([discovery.host])

    def _no_futures_account(self, state: TargetState) -> None:
        """A sub-account without this futures account: no target and no error, for a while."""
        target = state.target
        discovery = self.discoveries.get(target.master or "")
        if discovery is not None and target.email is not None:
            discovery.note_without_futures(target.email, target.market, time.monotonic())
        self.remove_target(target.key, state)
        log.info("sub-account has no futures account of this market", extra=fields(
            master=target.master, alias=target.alias, market=target.market))

    # ---- the queue -----------------------------------------------------------------------
    def _host_busy(self, host: Host) -> bool:
        with self._cond:
            queue = self._queues.get(host)
            return bool(queue and queue.heap)

    def _enqueue(self, state: TargetState, front: bool = False) -> None:
        """Queue a refresh, oldest data first; `front`: ahead of every other (a stream event).

        Moving a queued target to the front pushes a second entry; the dispatcher
        skips whichever entry comes second (the target is no longer queued then).
        """
        host = state.target.host
        with state.lock:
            if state.inflight is not None or (state.queued and not front):
                return
            state.queued = True
            age = float("-inf") if front or state.admitted_at is None else state.admitted_at
        with self._cond:
            if self._closed or self.states.get(state.target.key) is not state:
                # closing, or removed by a reload since the scrape looked at it (its host may be gone:
                # a queue now would start a dispatcher that waits forever)
                return
            heapq.heappush(self._queue(host).heap, (age, next(self._seq), state))
            self._cond.notify_all()

    def _queue(self, host: Host) -> _HostQueue:
        """The host's queue, and its dispatcher thread from the first use on (call with _cond held)."""
        queue = self._queues.setdefault(host, _HostQueue())
        if queue.thread is None:
            queue.thread = threading.Thread(target=self._dispatch, args=(host, queue),
                                            name=f"dispatch-{host.kind}", daemon=True)
            queue.thread.start()
        return queue

    def _dispatch(self, host: Host, queue: _HostQueue) -> None:
        """Start queued refreshes of one host, oldest data first, as its budget and back-off allow;
        move stream-requested refreshes whose spacing has passed to the front of the queue."""
        while True:
            due: list[TargetState] = []
            with self._cond:
                if self._closed or queue.stopped:
                    return
                now = time.monotonic()
                while queue.later and queue.later[0][0] <= now:
                    due.append(heapq.heappop(queue.later)[2])
                if not due:
                    next_due = queue.later[0][0] - now if queue.later else None
                    if not queue.heap:
                        self._cond.wait(next_due)
                        continue
                    state = queue.heap[0][2]
                    if self.states.get(state.target.key) is not state or not state.queued:  # removed, or started
                        heapq.heappop(queue.heap)
                        continue
                    paused = host.backoff.remaining()[0]
                    wait = paused or host.governor.wait_time(state.target.weight)
                    if paused:
                        host.governor.stall()
                    if wait > 0:
                        self._cond.wait(min(wait, 1.0, next_due if next_due is not None else 1.0))
                        continue
                    admission = host.governor.try_acquire(state.target.weight)
                    if admission is None:
                        self._cond.wait(0.05)
                        continue
                    heapq.heappop(queue.heap)
            if due:  # outside _cond: _enqueue takes the state's lock first
                for waiting in due:
                    self._urgent_due(waiting)
                continue
            assert admission is not None  # `due` empty: the branch above acquired it or looped
            self._start(state, time.monotonic() + state.target.account.timeout_seconds, admission)


def _market_bases(config: Config) -> dict[str, str]:
    return {"usdm": config.market_stream_base_url, "coinm": config.coinm_market_stream_base_url}


def _age_key(state: TargetState) -> float:
    return state.admitted_at if state.admitted_at is not None else float("-inf")


def _ordered(hosts: Iterable[Host]) -> list[Host]:
    return sorted(hosts, key=lambda h: (h.label, h.kind))


def host_view(host: Host) -> HostView:
    deferred, limited = host.counters()
    return HostView(
        label=host.label,
        used_weight=host.governor.reported_this_minute(),
        weight_limit=host.governor.weight_limit,
        budget=host.governor.cap,
        exporter_used_weight=host.governor.used_last_minute(),
        backoff_seconds=host.backoff.remaining()[0],
        offset_seconds=host.clock.offset_ms / 1000.0,
        deferred=deferred,
        limited={429: limited.get(429, 0), 418: limited.get(418, 0)},
    )
