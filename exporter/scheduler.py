"""When each read may go: the host queues, their dispatchers, admission, and the budget plan.

Binance counts weight per IP and minute, so everything here is per host. A
scrape admits what fits at once (`admit`) and queues the rest; each host's
dispatcher drains its queue oldest data first as the budget and a back-off
allow. Two classes of read share a host's budget, in this order:

* data (balance, account, positions): what a scrape asked for. A target
  never fetched yet goes first and is not paced (a cold start goes at the
  speed the budget's 60 s window allows, not one account at a time).
* metadata (`metadata.py`: margin modes, and any other kind listed in
  metakinds.py): values that change rarely, read every `interval_s`. A host's
  metadata waits until every target on the host has had its first data
  fetch; then it runs in the weight data leaves over (while no data waits
  and a full round of data still fits the window; not paced, so where a
  round fits the cap it goes at once), or failing that in its
  planned share of the budget (`meta_rate`), one read at a time, so a whole
  round of it spreads over its interval instead of going at once after a
  restart or a reload.

The plan (`compute_plans`) counts every periodic read: data rounds at the
scrape interval, metadata at its interval, listenKey keep-alives and
sub-account discovery, and turns the budget into the refresh interval the
start-up log and the README promise.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from exporter.client import ScrapeError
from exporter.governor import WINDOW_S, Admission
from exporter.hosts import Host
from exporter.labelvalues import SCRAPE_ERROR_REASONS
from exporter.logs import fields
from exporter.metadata import MetaJob
from exporter.parsing import Snapshot
from exporter.streams.tuning import KEEPALIVE_S
from exporter.targets import Target

log = logging.getLogger("exporter.engine")  # the budget lines keep the logger they always had

# A refresh whose data is older than this share of the plan's refresh interval is not paced:
# enough above 1 that the steady flow (each account refreshed about every refresh_every_s) never
# takes it, so only refreshes a cold start's burst held back at the cap catch up at once.
OVERDUE_SHARE = 1.25
# listenKey keep-alive (PUT, weight 1) per user data stream, at the stream layer's period: counted in the plan.
KEEPALIVE_WEIGHT = 1
KEEPALIVE_EVERY_S = KEEPALIVE_S


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
    asked: bool = False  # a scrape asked for it: until its first attempt, metadata of its host waits
    last: Attempt | None = None
    last_ok: Attempt | None = None
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCRAPE_ERROR_REASONS, 0))

    @property
    def cold(self) -> bool:
        """Never fetched (nor admitted): its first data fetch is still to come."""
        return self.admitted_at is None and self.last is None


@dataclass(frozen=True)
class PeriodicRead:
    """One line of the plan: a kind of read, what one costs, how often, how many."""

    kind: str
    weight: int  # per read (a round's for data)
    interval_s: float
    count: int

    @property
    def per_minute(self) -> float:
        return self.weight * self.count * WINDOW_S / self.interval_s if self.interval_s > 0 else 0.0


@dataclass(frozen=True)
class BudgetPlan:
    host: str
    accounts: int
    round_weight: int  # refreshing every account on the host once
    demand_per_minute: float  # data at the configured scrape interval, plus every periodic read
    budget_per_minute: float
    refresh_every_s: float  # how often each account can be refreshed within the budget
    max_data_age_s: float
    periodic: tuple[PeriodicRead, ...] = ()  # metadata, keep-alives, discovery: what the data shares the budget with

    @property
    def fits(self) -> bool:
        return self.demand_per_minute <= self.budget_per_minute

    @property
    def other_per_minute(self) -> float:
        return sum(p.per_minute for p in self.periodic)


def compute_plans(targets: Iterable[Target], jobs: Iterable[MetaJob], interval: float,
                  extra: dict[Host, list[PeriodicRead]] | None = None,
                  hosts: Iterable[Host] | None = None) -> dict[Host, BudgetPlan]:
    """What the reads cost each host and, within its budget, how fresh the data will be (hosts in label order)."""
    wanted = None if hosts is None else set(hosts)
    rounds: dict[Host, list[Target]] = {}
    for target in targets:
        if wanted is None or target.host in wanted:
            rounds.setdefault(target.host, []).append(target)
    periodic: dict[Host, dict[tuple[str, int, float], int]] = {}
    for job in jobs:
        if job.host in rounds:
            line = periodic.setdefault(job.host, {})
            key = (job.kind.name, job.weight, job.kind.interval_s)
            line[key] = line.get(key, 0) + 1
    plans = {}
    others = [h for h in (extra or {}) if (wanted is None or h in wanted) and h not in rounds]
    for host in ordered([*rounds, *others]):  # a master's /sapi host lists sub-accounts before it has any
        weights = [t.weight for t in rounds.get(host, ())]
        reads = [PeriodicRead(k, w, i, n) for (k, w, i), n in sorted(periodic.get(host, {}).items())]
        reads += (extra or {}).get(host, [])
        other = sum(p.per_minute for p in reads)
        demand = sum(weights) * WINDOW_S / interval + other
        rate = host.governor.rate  # weight per second: the cap over its 61 s window
        data_rate = max(rate - other / WINDOW_S, rate * 0.05)
        every = max(interval, sum(weights) / data_rate)
        max_age = min((t.account.max_data_age_seconds for t in rounds.get(host, ())), default=float("inf"))
        plans[host] = BudgetPlan(host.label, len(weights), sum(weights), demand, host.governor.cap, every, max_age,
                                 tuple(reads))
    return plans


def log_budget(plans: Iterable[BudgetPlan]) -> None:
    """Say what freshness the accounts get within each host's weight budget (at start, after discovery)."""
    for plan in plans:
        if not plan.accounts:  # only periodic reads (a master's sub-account list before any sub-account)
            continue
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


class HostQueue:
    """Targets of one host waiting for budget or the end of a back-off, oldest data first."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, TargetState]] = []
        # Stream-requested refreshes waiting for their spacing: (due, seq, state), soonest first.
        self.later: list[tuple[float, int, TargetState]] = []
        self.meta: list[MetaJob] = []  # the host's metadata reads, each due at its own time
        self.meta_rate = 0.0  # weight per second: the plan's share for metadata
        self.meta_credit = 0.0
        self.meta_credit_at = time.monotonic()
        self.round_weight = 0  # a full round of the host's data: headroom kept for it
        self.refresh_every_s = float("inf")  # the plan's promise: data older than this (with slack) catches up
        self.thread: threading.Thread | None = None
        self.stopped = False  # its host left the config: the dispatcher ends


class Scheduler:
    """The host queues and their dispatchers. Shares the engine's condition: a target is queued
    only while it is the engine's current state for its key, and nothing after close."""

    def __init__(self, cond: threading.Condition, current: Callable[[TargetState], bool],
                 start: Callable[[TargetState, float, Admission], object],
                 urgent_due: Callable[[TargetState], None],
                 run_meta: Callable[[MetaJob, Admission], object | None],
                 waiting_data: Callable[[Host], bool]) -> None:
        self._cond = cond
        self._current = current
        self._start = start
        self._urgent_due = urgent_due
        self._run_meta = run_meta
        self._waiting_data = waiting_data
        self._queues: dict[Host, HostQueue] = {}
        self._seq = itertools.count()
        self.closed = False

    # ---- data -----------------------------------------------------------------------------
    def busy(self, host: Host) -> bool:
        with self._cond:
            queue = self._queues.get(host)
            return bool(queue and queue.heap)

    def paced(self, state: TargetState, now: float) -> bool:
        """Does this refresh wait for the steady rate? Not a target's first fetch (a cold start goes
        as fast as the 60 s cap allows), nor one whose data is well past the plan's promise (after a
        cold start's burst, the refreshes the cap held back go as soon as the window has room)."""
        if state.cold:
            return False
        queue = self._queues.get(state.target.host)
        promise = queue.refresh_every_s if queue is not None else float("inf")
        admitted = state.admitted_at
        return admitted is None or now - admitted <= promise * OVERDUE_SHARE

    def admit(self, state: TargetState) -> Admission | None:
        """Weight for a scrape's refresh now, if the host has room and nobody queued before it."""
        host = state.target.host
        if host.backoff.remaining()[0] != 0 or self.busy(host):
            return None
        return host.governor.try_acquire(state.target.weight, pace=self.paced(state, time.monotonic()))

    def enqueue(self, state: TargetState, front: bool = False) -> None:
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
            if self.closed or not self._current(state):
                # closing, or removed by a reload since the scrape looked at it (its host may be gone:
                # a queue now would start a dispatcher that waits forever)
                return
            heapq.heappush(self._queue(host).heap, (age, next(self._seq), state))
            self._cond.notify_all()

    def later(self, state: TargetState, due: float) -> None:
        """A stream-requested refresh, queued at the front when `due` (monotonic) comes."""
        with self._cond:
            if self.closed or not self._current(state):
                return
            heapq.heappush(self._queue(state.target.host).later, (due, next(self._seq), state))
            self._cond.notify_all()

    # ---- metadata ----------------------------------------------------------------------------
    def set_host_plan(self, host: Host, jobs: list[MetaJob], round_weight: int, refresh_every_s: float) -> None:
        """The host's metadata jobs (kept ones keep their schedule), what a round of its data weighs,
        and how often the plan promises to refresh each account."""
        with self._cond:
            if self.closed:
                return
            queue = self._queue(host) if jobs or host in self._queues else None
            if queue is None:
                return
            queue.meta = list(jobs)
            queue.meta_rate = sum(j.weight / j.kind.interval_s for j in jobs if j.kind.interval_s > 0)
            queue.round_weight = round_weight
            queue.refresh_every_s = refresh_every_s
            self._cond.notify_all()

    def leftover_meta(self, jobs: Iterable[MetaJob]) -> list[tuple[MetaJob, Admission]]:
        """Due metadata of a scrape's targets that the weight left over admits now, once no data
        waits on its host: read within the scrape that brought the data, when the budget has room
        (a config whose rounds fit the budget sees its modes from the first scrape on)."""
        admitted = []
        with self._cond:
            if self.closed:
                return []
            now = time.monotonic()
            for job in jobs:
                host = job.host
                queue = self._queues.get(host)
                if queue is None or queue.heap or not job.alive or not job.is_due(now) \
                        or host.backoff.remaining()[0] > 0 or self._waiting_data(host):
                    continue
                room = max(0, min(queue.round_weight, int(host.governor.cap) - job.weight))
                admission = host.governor.try_acquire(job.weight, pace=False, headroom=room)
                if admission is not None:
                    job.begin(now)
                    admitted.append((job, admission))
        return admitted

    def notify(self) -> None:
        """Something a dispatcher may wait for happened (data arrived: metadata may go)."""
        with self._cond:
            self._cond.notify_all()

    def _next_meta(self, host: Host, queue: HostQueue, now: float) -> tuple[MetaJob | None, Admission | None, float]:
        """A due metadata read and its admission, if one may go now; else when to look again."""
        if not queue.meta:
            return None, None, 1.0
        job = min((j for j in queue.meta if j.alive), key=lambda j: j.due_at, default=None)
        if job is None:
            return None, None, 1.0
        if job.due_at > now:
            return None, None, min(job.due_at - now, 1.0)
        if self._waiting_data(host):  # data before metadata: a first fetch asked for is still to come
            return None, None, 0.2
        if host.backoff.remaining()[0] > 0:
            return None, None, 1.0
        if not queue.heap:  # leftover: no data waits; keep a full data round's room in the window
            room = max(0, min(queue.round_weight, int(host.governor.cap) - job.weight))
            admission = host.governor.try_acquire(job.weight, pace=False, headroom=room)
            if admission is not None:
                return job, admission, 0.0
        # the planned share: credit accrues at meta_rate, one read's worth at most
        queue.meta_credit = min(float(job.weight), queue.meta_credit + (now - queue.meta_credit_at) * queue.meta_rate)
        queue.meta_credit_at = now
        if queue.meta_credit >= job.weight:
            if host.governor.wait_time(job.weight, pace=False) > 0:  # no room: wait without stalling the data
                return None, None, 0.5
            admission = host.governor.try_acquire(job.weight, pace=False)
            if admission is not None:
                queue.meta_credit -= job.weight
                return job, admission, 0.0
            return None, None, 0.5
        wait = (job.weight - queue.meta_credit) / queue.meta_rate if queue.meta_rate > 0 else 1.0
        return None, None, min(max(wait, 0.05), 1.0)

    # ---- hosts -------------------------------------------------------------------------------
    def drop_hosts(self, hosts: Iterable[Host]) -> None:
        """Hosts the config no longer uses: their dispatchers end (call with the condition held)."""
        for host in hosts:
            queue = self._queues.pop(host, None)
            if queue is not None:
                queue.stopped = True
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _queue(self, host: Host) -> HostQueue:
        """The host's queue, and its dispatcher thread from the first use on (call with the condition held)."""
        queue = self._queues.setdefault(host, HostQueue())
        if queue.thread is None:
            queue.thread = threading.Thread(target=self._dispatch, args=(host, queue),
                                            name=f"dispatch-{host.kind}", daemon=True)
            queue.thread.start()
        return queue

    def _dispatch(self, host: Host, queue: HostQueue) -> None:
        """Start queued refreshes of one host, oldest data first, as its budget and back-off allow;
        move stream-requested refreshes whose spacing has passed to the front of the queue;
        run metadata reads in what the data leaves over."""
        while True:
            due: list[TargetState] = []
            job: MetaJob | None = None
            admission: Admission | None = None
            with self._cond:
                if self.closed or queue.stopped:
                    return
                now = time.monotonic()
                while queue.later and queue.later[0][0] <= now:
                    due.append(heapq.heappop(queue.later)[2])
                if not due:
                    next_due = queue.later[0][0] - now if queue.later else 1.0
                    job, admission, meta_wait = self._next_meta(host, queue, now)
                    if job is not None:  # started under the condition: a scrape sees it begun or in flight
                        assert admission is not None
                        job.begin(now)
                        self._start_meta(host, job, admission)
                        continue
                    if not queue.heap:
                        self._cond.wait(min(next_due, meta_wait) if queue.meta else
                                        (queue.later[0][0] - now if queue.later else None))
                        continue
                    else:
                        state = queue.heap[0][2]
                        if not self._current(state) or not state.queued:  # removed, or started
                            heapq.heappop(queue.heap)
                            continue
                        paused = host.backoff.remaining()[0]
                        pace = self.paced(state, now)
                        wait = paused or host.governor.wait_time(state.target.weight, pace=pace)
                        if paused:
                            host.governor.stall()
                        if wait > 0:
                            self._cond.wait(min(wait, 1.0, next_due, meta_wait if queue.meta else 1.0))
                            continue
                        admission = host.governor.try_acquire(state.target.weight, pace=pace)
                        if admission is None:
                            self._cond.wait(0.05)
                            continue
                        heapq.heappop(queue.heap)
            if due:  # outside the condition: enqueue takes the state's lock first
                for waiting in due:
                    self._urgent_due(waiting)
                continue
            assert admission is not None  # `due` empty: a branch above acquired it or looped
            self._start(state, time.monotonic() + state.target.account.timeout_seconds, admission)

    def _start_meta(self, host: Host, job: MetaJob, admission: Admission) -> None:
        if self._run_meta(job, admission) is None:
            host.governor.refund(admission, admission.weight)
            job.retry_soon(time.monotonic())


def age_key(state: TargetState) -> float:
    return state.admitted_at if state.admitted_at is not None else float("-inf")


def ordered(hosts: Iterable[Host]) -> list[Host]:
    return sorted(hosts, key=lambda h: (h.label, h.kind))

