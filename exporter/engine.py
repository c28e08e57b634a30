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
scrape wanted, each once, and empty as they are served.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from exporter.client import REASONS, ScrapeError, Skipped
from exporter.config import Config
from exporter.discovery import DISCOVERY_TIMEOUT_S, Discovery, DiscoveryView, list_emails, select
from exporter.discovery import view as discovery_view
from exporter.governor import Admission
from exporter.hosts import Host
from exporter.logs import fields
from exporter.parsing import Snapshot
from exporter.targets import Target, Topology
from exporter.transport import Pools, Watchdog, detach

log = logging.getLogger("exporter.engine")

WAIT_GRACE_S = 0.05  # a fetch cut at the deadline reports within milliseconds
STARTUP_SYNC_S = 5.0
# "future account not exists" / "future account or sub relation not exists": the
# sub-account has no futures account of that type. Not an error of the sub-account.
NO_FUTURES_CODES = (-5011, -5012)
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
        self.thread: threading.Thread | None = None


class Engine:
    """Everything that outlives a single scrape."""

    def __init__(self, config: Config) -> None:
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
        self.discoveries: dict[str, Discovery] = {}
        self._subs_of: dict[str, list[str]] = {}  # master alias -> sub-account aliases, in order
        for account in config.accounts:
            for market in account.markets:
                self.add_target(self.topology.target(account, market))
            if account.sub_accounts is not None:
                host = self.topology.host(account, "sapi")
                # Reads every sub-account through the master's key: up to max_concurrency at once.
                client = self.topology.client(account, host, concurrency=config.max_concurrency)
                self.discoveries[account.alias] = Discovery(account, host, client)
                self._subs_of[account.alias] = []
                self.by_alias.setdefault(account.alias, [])
        self.default_budget = max((a.timeout_seconds for a in config.accounts), default=5.0)
        self.plan_budgets()

    def add_target(self, target: Target) -> None:
        with self._cond:
            self.states[target.key] = TargetState(target)
            self.by_alias.setdefault(target.alias, []).append(target.key)

    def remove_target(self, key: tuple[str, str]) -> None:
        with self._cond:
            state = self.states.pop(key, None)
            if state is None:
                return
            keys = self.by_alias.get(key[0], [])
            if key in keys:
                keys.remove(key)
            if not keys:
                self.by_alias.pop(key[0], None)

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
        deadline = time.monotonic() + STARTUP_SYNC_S
        futures = [self.pool.submit(clock.ensure, deadline) for clock in self.topology.clocks()]
        return futures + [f for f in (self._start_discovery(d) for d in self.discoveries.values()) if f]

    def close(self) -> None:
        """Stop promptly: cut every request in flight, whatever the upstream does."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
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
        masters = [self.discoveries[a] for a in aliases if a in self.discoveries]
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
                            [discovery_view(d, self._exported_subs(d.master.alias)) for d in masters])

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
            except RuntimeError:  # pool shut down
                state.inflight = None
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
                self._no_futures_account(target)
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
        return TargetView(
            target=target, up=up, snapshot=ok.snapshot if up and ok is not None else None,
            duration=None if last is None else last.finished - last.started,
            last_success=None if ok is None else ok.fetched_at, errors=errors,
            assets=frozenset(row.asset for row in ok.snapshot.assets) if ok and ok.snapshot else frozenset(),
        )

    # ---- sub-accounts --------------------------------------------------------------------
    def _start_discovery(self, discovery: Discovery) -> Future[None] | None:
        with discovery.lock:
            if discovery.running:
                return None
            discovery.running = True
            discovery.ran_at = time.monotonic()
        try:
            return self.pool.submit(self._discover, discovery)
        except RuntimeError:  # shut down
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

    def _no_futures_account(self, target: Target) -> None:
        """A sub-account without this futures account: no target and no error, for a while."""
        discovery = self.discoveries.get(target.master or "")
        if discovery is not None and target.email is not None:
            discovery.note_without_futures(target.email, target.market, time.monotonic())
        self.remove_target(target.key)
        log.info("sub-account has no futures account of this market", extra=fields(
            master=target.master, alias=target.alias, market=target.market))

    # ---- the queue -----------------------------------------------------------------------
    def _host_busy(self, host: Host) -> bool:
        with self._cond:
            queue = self._queues.get(host)
            return bool(queue and queue.heap)

    def _enqueue(self, state: TargetState) -> None:
        host = state.target.host
        with state.lock:
            if state.queued or state.inflight is not None:
                return
            state.queued = True
            age = state.admitted_at if state.admitted_at is not None else float("-inf")
        with self._cond:
            if self._closed:
                return
            queue = self._queues.setdefault(host, _HostQueue())
            heapq.heappush(queue.heap, (age, next(self._seq), state))
            if queue.thread is None:
                queue.thread = threading.Thread(target=self._dispatch, args=(host, queue),
                                                name=f"dispatch-{host.kind}", daemon=True)
                queue.thread.start()
            self._cond.notify_all()

    def _dispatch(self, host: Host, queue: _HostQueue) -> None:
        """Start queued refreshes of one host, oldest data first, as its budget and back-off allow."""
        while True:
            with self._cond:
                while not self._closed and not queue.heap:
                    self._cond.wait()
                if self._closed:
                    return
                state = queue.heap[0][2]
                if self.states.get(state.target.key) is not state:  # removed meanwhile
                    heapq.heappop(queue.heap)
                    continue
                paused = host.backoff.remaining()[0]
                wait = paused or host.governor.wait_time(state.target.weight)
                if paused:
                    host.governor.stall()
                if wait > 0:
                    self._cond.wait(min(wait, 1.0))
                    continue
                admission = host.governor.try_acquire(state.target.weight)
                if admission is None:
                    self._cond.wait(0.05)
                    continue
                heapq.heappop(queue.heap)
            self._start(state, time.monotonic() + state.target.account.timeout_seconds, admission)


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
