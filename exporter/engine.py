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
scrape wanted, each once, and empty as they are served. The exceptions are
a user data stream (`user_stream: true`), whose events and reconnects put the
account at the front of its host's queue (see `stream_refresh`), and an
account's metadata (margin modes), read on its own schedule once its data is
in: both within the same budget.

The engine ties the parts together: targets and their state (here), the
host queues, dispatchers, admission and budget plan (scheduler.py), the
metadata kinds (metadata.py), sub-account discovery (discovery.py) and the
user data streams (streams.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from decimal import Decimal

from exporter.client import ScrapeError, Skipped, public_call
from exporter.config import AccountConfig, Config
from exporter.discovery import Discovery, DiscoveryView
from exporter.discovery import start as discovery_start
from exporter.discovery import view as discovery_view
from exporter.endpoints import SUB_ACCOUNT_PAGE_SIZE
from exporter.governor import Admission
from exporter.hosts import Host
from exporter.labelvalues import DEFERRED, STALE
from exporter.liverisk import LIVE_MARKETS, LiveRiskBook
from exporter.logs import fields
from exporter.metadata import MetaJob
from exporter.metakinds import KINDS
from exporter.parsing import Bracket, Snapshot
from exporter.scheduler import (
    KEEPALIVE_EVERY_S,
    KEEPALIVE_WEIGHT,
    Attempt,
    BudgetPlan,
    PeriodicRead,
    Scheduler,
    TargetState,
    age_key,
    compute_plans,
    log_budget,
    ordered,
)
from exporter.streams.events import StreamView
from exporter.streams.manager import StreamManager
from exporter.streams.market import MarketStreams
from exporter.streams.tuning import Tuning
from exporter.targets import Target, TargetKey, Topology
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
    down_reason: str | None = None  # why `up` is 0: an error reason, "deferred" or "stale"
    # What the view was made from, compared item by item (`is`, then ==): equal while nothing it
    # shows changed, so the renderer reuses what it encoded for it (render.Fragments).
    version: tuple[object, ...] = ()


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
        self.states: dict[TargetKey, TargetState] = {}
        self.by_alias: dict[str, list[TargetKey]] = {}
        self.pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="fetch")
        self._cond = threading.Condition()  # an RLock: the dispatchers ask waiting_data() while holding it
        self.scheduler = Scheduler(self._cond, self._current, self._start, self._urgent_due, self._run_meta,
                                   self._waiting_data)
        self.meta: dict[tuple[TargetKey, str], MetaJob] = {}  # (target key, kind): one per target and kind
        self.discoveries: dict[str, Discovery] = {}  # replaced, never changed in place: read without a lock
        self._subs_of: dict[str, list[str]] = {}  # master alias -> sub-account aliases, in order
        self._started = False
        for account in config.accounts:
            self._register(account.alias, *self._build(account))
        self.default_budget = max((a.timeout_seconds for a in config.accounts), default=5.0)
        self.streams = StreamManager(self._streaming(), self.stream_refresh, config.stream_connections_per_5m,
                                     self.pools, stream_tuning, on_modes=self._modes_changed,
                                     keys_per_connection=config.stream_keys_per_connection)
        # Live risk: the public mark-price streams run on the user streams' layer (one loop, one
        # connection-attempt limiter: Binance counts every WebSocket attempt of the IP).
        self.market_streams = MarketStreams(self.streams.layer, _market_bases(config), self._mark)
        self.live = LiveRiskBook(self.market_streams.watch, self.market_streams.state)

        self.replan()

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

    def _modes_changed(self, key: TargetKey) -> None:
        """ACCOUNT_CONFIG_UPDATE: the modes the REST side caches are old; read them soon (in leftover weight)."""
        with self._cond:
            jobs = [self.meta.get((key, kind)) for kind in ("modes", "brackets")]
        for job in jobs:
            if job is not None:
                job.expire(time.monotonic())
        with self._cond:
            self._cond.notify_all()

    def _current(self, state: TargetState) -> bool:
        """Is this still the target's state (not removed or replaced by a reload)?"""
        with self._cond:
            return self.states.get(state.target.key) is state

    def _waiting_data(self, host: Host) -> bool:
        """Does a first data fetch a scrape asked for still wait on this host? Metadata waits for it."""
        with self._cond:
            return any(s.last is None and (s.asked or s.queued or s.inflight is not None)
                       for s in self.states.values() if s.target.host is host)

    def _run_meta(self, job: MetaJob, admission: Admission) -> Future[None] | None:
        """Read one metadata job in a fetch thread; None: not started (its weight goes back)."""
        try:
            job.inflight = future = self.pool.submit(self._read_meta, job, admission)
        except RuntimeError:  # shut down, or replaced by a reload
            return None
        return future

    def _read_meta(self, job: MetaJob, admission: Admission) -> None:
        deadline = time.monotonic() + self.default_budget
        try:
            if job.kind.public:  # unsigned (COIN-M exchangeInfo): no key, no signature
                answer = public_call(job.host, job.client.transport, job.call, deadline, admission)
            else:
                answer = job.client.call_admitted(job.call, deadline, admission)
        except Skipped:
            job.retry_soon(time.monotonic())
            return
        except ScrapeError as exc:
            log.warning(f"reading the account's {job.kind.name} failed; keeping what is known", extra=fields(
                alias=job.key[0], market=job.key[1], reason=exc.reason, status=exc.status, code=exc.code,
                error=exc.detail))
            detach(exc)
            job.done(time.monotonic(), None, failed=True)
            return
        except Exception as exc:  # a bug: never let it out of the thread
            log.error("unexpected error reading metadata", exc_info=True,
                      extra=fields(alias=job.key[0], market=job.key[1]))
            detach(exc)
            job.done(time.monotonic(), None, failed=True)
            return
        job.done(time.monotonic(), job.kind.value(answer), failed=False)

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

    def remove_target(self, key: TargetKey, state: TargetState | None = None) -> None:
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

    def _sync_meta(self) -> None:
        """One metadata job per target and kind that applies (call with _cond held); kept targets keep theirs."""
        jobs: dict[tuple[TargetKey, str], MetaJob] = {}
        for key, state in self.states.items():
            target = state.target
            for kind in KINDS:
                if kind.applies(target):
                    job = self.meta.get((key, kind.name))
                    if job is None or job.client is not target.client:
                        job = MetaJob(kind, key, target.host, target.client, kind.call(target))
                    jobs[(key, kind.name)] = job
        for gone in self.meta.keys() - jobs.keys():
            self.meta[gone].alive = False
        self.meta = jobs

    def replan(self, log_hosts: Iterable[Host] = ()) -> None:
        """After the targets changed: metadata jobs to match, and each host's governor and queue told
        what a full round costs (whether to pace), which metadata to read and the refresh interval
        the plan promises; log `log_hosts`' plan."""
        with self._cond:
            self._sync_meta()
            targets = [s.target for s in self.states.values()]
            jobs = list(self.meta.values())
        plans = compute_plans(targets, jobs, self.config.scrape_interval_seconds, self._periodic())
        largest: dict[Host, int] = {}
        for target in targets:
            largest[target.host] = max(largest.get(target.host, 0), target.weight)
        by_host: dict[Host, list[MetaJob]] = {}
        for job in jobs:
            by_host.setdefault(job.host, []).append(job)
        for host, plan in plans.items():
            host.governor.plan(plan.round_weight, self.config.scrape_interval_seconds, largest.get(host, 1),
                               plan.other_per_minute)
        for host in {*plans, *by_host}:
            known = plans.get(host)
            self.scheduler.set_host_plan(host, by_host.get(host, []), known.round_weight if known else 0,
                                         known.refresh_every_s if known else float("inf"))
        log_hosts = list(log_hosts)
        if log_hosts:
            log_budget(p for h, p in plans.items() if h in log_hosts)

    def _periodic(self) -> dict[Host, list[PeriodicRead]]:
        """The periodic reads that are not metadata jobs: listenKey keep-alives, sub-account lists."""
        extra: dict[Host, list[PeriodicRead]] = {}
        streaming = self._streaming()
        for target in streaming:
            extra.setdefault(target.host, []).append(
                PeriodicRead("listenKey keep-alive", KEEPALIVE_WEIGHT, KEEPALIVE_EVERY_S, 1))
        for discovery in self.discoveries.values():
            rules = discovery.master.sub_accounts
            if rules is not None:
                with self._cond:
                    subs = len(self._subs_of.get(discovery.master.alias, ()))
                pages = subs // SUB_ACCOUNT_PAGE_SIZE + 1
                extra.setdefault(discovery.host, []).append(
                    PeriodicRead("sub-account list", pages, rules.discovery_interval_seconds, 1))
        return {h: _merge_reads(r) for h, r in extra.items()}

    def budget_plans(self, hosts: Iterable[Host] | None = None) -> list[BudgetPlan]:
        """What the accounts cost each host and, within its budget, how fresh their data will be."""
        with self._cond:
            self._sync_meta()
            targets = [s.target for s in self.states.values()]
            jobs = list(self.meta.values())
        return list(compute_plans(targets, jobs, self.config.scrape_interval_seconds, self._periodic(),
                                  hosts).values())

    def log_budget(self, hosts: Iterable[Host] | None = None) -> None:
        """Say what freshness the accounts get within each host's weight budget (at start, after discovery)."""
        log_budget(self.budget_plans(hosts))

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
            order: dict[str, list[TargetKey]] = {}  # config order, each master followed by its subs
            for account in config.accounts:
                for name in (account.alias, *self._subs_of.get(account.alias, ())):
                    if name in self.by_alias:
                        order[name] = self.by_alias[name]
            self.by_alias = {**order, **self.by_alias}
            self.scheduler.drop_hosts(dropped)
        if config.max_concurrency != previous.max_concurrency:
            pool, self.pool = self.pool, ThreadPoolExecutor(max_workers=config.max_concurrency,
                                                           thread_name_prefix="fetch")
            pool.shutdown(wait=False)  # its fetches in flight finish, then its threads end
            self.pools.resize(config.max_concurrency)  # as many connections per host as fetch threads
        self.default_budget = max((a.timeout_seconds for a in config.accounts), default=5.0)
        self.replan()
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
        self.scheduler.close()
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

    def keys_for(self, aliases: Iterable[str]) -> list[TargetKey]:
        """The targets of these accounts; a master's include its sub-accounts'."""
        keys: dict[TargetKey, None] = {}
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
        for state in states:  # all of them before any starts: a fast first answer must not let metadata in
            state.asked = True
        waits: list[Future[None]] = []
        for state in sorted(states, key=age_key):
            future = self._refresh(state, now, deadline)
            if future is not None:
                waits.append(future)
        if waits:
            wait_futures(waits, timeout=max(0.0, deadline - time.monotonic()) + WAIT_GRACE_S)
        # Metadata after the data: what the weight left over admits now goes within this scrape.
        jobs = [job for st in states for kind in KINDS if (job := self.meta.get((st.target.key, kind.name)))]
        for job, admission in self.scheduler.leftover_meta(jobs) if jobs else ():
            if self._run_meta(job, admission) is None:
                job.host.governor.refund(admission, admission.weight)
                job.retry_soon(time.monotonic())
        reads = [f for job in jobs if (f := job.inflight) is not None and not f.done()]
        if reads:
            wait_futures(reads, timeout=max(0.0, deadline - time.monotonic()) + WAIT_GRACE_S)
        with self._cond:  # targets removed meanwhile (a sub-account without that futures account) are gone
            states = [s for s in states if self.states.get(s.target.key) is s]
        hosts = {s.target.host for s in states} | {d.host for d in masters}
        return ScrapeResult([self.view(s) for s in states], [host_view(h) for h in ordered(hosts)],
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
        if not queued:
            admission = self.scheduler.admit(state)
            if admission is not None:
                return self._start(state, min(deadline, now + target.account.timeout_seconds), admission)
        host.count_deferred()
        self.scheduler.enqueue(state)
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
        if error is None:  # its metadata may be read now (in leftover weight)
            due = False
            for kind in KINDS:
                job = self.meta.get((target.key, kind.name))
                if job is not None:
                    due = job.data_arrived(finished) or due
            if due:
                self.scheduler.notify()
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
        metadata: list[object] = []
        for kind in KINDS:
            job = self.meta.get((target.key, kind.name))
            if job is not None:
                value = job.value
                metadata.append(value)
                if snapshot is not None and value is not None:
                    snapshot = kind.apply(snapshot, value)
        stream = self.streams.state(target.key)
        if stream is not None and snapshot is not None and ok is not None:
            snapshot = stream.overlay(snapshot, ok.started, target.account.positions)
        marks: Mapping[str, Decimal] = {}
        sizes: Mapping[str, Decimal] = {}
        if snapshot is not None and ok is not None and self._live_risk(target):
            sizes = self._sizes_of(target)
            marks = self.live.marks_for(target.market, snapshot, ok.started, sizes)
            snapshot = self.live.at(target.key, target.market, snapshot, marks, self._brackets_of(target), sizes)
        if up:
            down = None
        elif last is not None and last.error is not None:
            down = last.error.reason  # the latest fetch failed
        elif ok is not None:
            down = STALE  # its latest values are older than max_data_age_seconds
        else:
            down = DEFERRED  # no fetch yet: waiting for the budget (a cold start) or a back-off, or in flight
        stream_view = None if stream is None else stream.view()
        return TargetView(
            # live risk: the marks it was recomputed at (and the contract sizes) are part of what it shows
            version=(target, target.host.label, up, down, last, ok, errors, stream_view, *metadata,
                     tuple(marks.items()), sizes),
            target=target, up=up, snapshot=snapshot, down_reason=down,
            duration=None if last is None else last.finished - last.started,
            last_success=None if ok is None else ok.fetched_at, errors=errors,
            assets=frozenset(row.asset for row in ok.snapshot.assets) if ok and ok.snapshot else frozenset(),
            stream=stream_view,
        )

    # ---- live risk -----------------------------------------------------------------------------
    @staticmethod
    def _live_risk(target: Target) -> bool:
        """Recomputed at the marks: own-key accounts with live_risk (a sub-account's brackets need its key)."""
        return target.account.live_risk_on and target.master is None

    def _brackets_of(self, target: Target) -> Mapping[str, Sequence[Bracket]]:
        job = self.meta.get((target.key, "brackets"))
        value = job.value if job is not None else None
        return value if value is not None else {}

    def _sizes_of(self, target: Target) -> Mapping[str, Decimal]:
        """COIN-M contract sizes: the target's own read; Portfolio Margin: a COIN-M account's on the same host."""
        if target.market == "usdm":
            return {}
        if target.market == "coinm":
            job = self.meta.get((target.key, "contract_sizes"))
            return job.value if job is not None and job.value is not None else {}
        base = target.account.base_url_for("coinm")
        for (_, kind), job in list(self.meta.items()):
            if kind == "contract_sizes" and job.value is not None and job.host.base_url == base:
                sizes: Mapping[str, Decimal] = job.value
                return sizes
        return {}

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
    def stream_refresh(self, key: TargetKey, gap: bool) -> None:
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
            if state is None or self.scheduler.closed:
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
            self.scheduler.later(state, now + wait)
            return
        self.scheduler.enqueue(state, front=True)

    def _urgent_due(self, state: TargetState) -> None:
        with state.lock:
            if not state.urgent_pending:  # a gap's refresh came first and covers it
                return
            state.urgent_pending = False
            state.urgent_at = time.monotonic()
        self.scheduler.enqueue(state, front=True)

    # ---- sub-accounts (discovery.Members) ------------------------------------------------
    def _start_discovery(self, discovery: Discovery) -> Future[None] | None:
        return discovery_start(discovery, lambda run: self.pool.submit(run), self)

    def _exported_subs(self, master: str) -> int:
        with self._cond:
            return sum(1 for alias in self._subs_of.get(master, ()) if self.by_alias.get(alias))

    def discovery_current(self, discovery: Discovery) -> bool:
        with self._cond:
            return self.discoveries.get(discovery.master.alias) is discovery

    def taken_aliases(self, master: str) -> set[str]:
        with self._cond:
            return {a for a in self.by_alias if a not in self._subs_of.get(master, ())}

    def swap_subs(self, discovery: Discovery, wanted: dict[TargetKey, Target],
                  aliases: list[str]) -> list[str] | None:
        master = discovery.master.alias
        with self._cond:
            if self.discoveries.get(master) is not discovery:
                return None
            previous = list(self._subs_of[master])
            old = {key for alias in previous for key in self.by_alias.get(alias, ())}
            for key in old - wanted.keys():
                self.remove_target(key)
            for key, target in wanted.items():
                if key not in self.states:
                    self.add_target(target)
            self._subs_of[master] = aliases
        return previous

    def _no_futures_account(self, state: TargetState) -> None:
        """A sub-account without this futures account: no target and no error, for a while."""
        target = state.target
        discovery = self.discoveries.get(target.master or "")
        if discovery is not None and target.email is not None:
            discovery.note_without_futures(target.email, target.market, time.monotonic())
        self.remove_target(target.key, state)
        log.info("sub-account has no futures account of this market", extra=fields(
            master=target.master, alias=target.alias, market=target.market))



def _market_bases(config: Config) -> dict[str, str]:
    return {"usdm": config.market_stream_base_url, "coinm": config.coinm_market_stream_base_url}

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


def _merge_reads(reads: list[PeriodicRead]) -> list[PeriodicRead]:
    """Equal reads as one line with their count."""
    merged: dict[tuple[str, int, float], int] = {}
    for read in reads:
        key = (read.kind, read.weight, read.interval_s)
        merged[key] = merged.get(key, 0) + read.count
    return [PeriodicRead(k, w, i, n) for (k, w, i), n in merged.items()]
