"""The weight budget of one Binance host: never the cause of a 429.

Binance counts request weight per IP and minute, and the user's trading bots
share that limit, so the exporter holds itself to `weight_limit x
weight_budget_share` per rolling 60 s (the cap; see WINDOW_SLACK_S), counting every request it
makes at Binance's documented weights, and sends nothing more in a minute for
which Binance reports the IP's total (bots included) near `weight_limit`.

Within the cap, requests are paced (a GCRA, i.e. a token bucket in virtual
time): when a full round of refreshes fits the cap, a whole round may go at
once, so a scrape costs one round trip; when it does not, refreshes flow at
the cap's steady rate, so every account is refreshed equally often instead of
a burst at the top of each minute followed by a stall. Credit for a burst only
builds up while nothing waits: after a stall (cap, IP total, a back-off) the
flow resumes at the steady rate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0
# Weight is counted when a request is admitted, Binance counts it when the request
# arrives: a request that waited a moment (a thread, a clock measurement, the network)
# lands later than its admission. The cap therefore holds over a window this much
# longer than a minute, so it holds at Binance for every delay up to the slack.
WINDOW_SLACK_S = 1.0
# Binance's X-MBX-USED-WEIGHT-1M counts the bots too. Stop at 90 % of the limit:
# the figure is as old as our last answer, bots may spend weight meanwhile, and
# what they need is worth more than one more refresh of ours.
IP_RESERVE_SHARE = 0.10
# Our estimate of Binance's clock is good to a fraction of the round trip: a figure
# from an answer whose request was in flight this close to a minute boundary may
# belong to either minute.
MINUTE_EDGE_MS = 500.0


class Admission:
    """Weight taken from the budget at one moment: what a refund gives back to."""

    __slots__ = ("at", "weight")

    def __init__(self, at: float, weight: int) -> None:
        self.at = at
        self.weight = weight


class Governor:
    def __init__(self, weight_limit: int, share: float, server_ms: Callable[[], int],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.weight_limit = weight_limit
        self.cap = float(weight_limit) * share
        self._rate = self.cap / (WINDOW_S + WINDOW_SLACK_S)  # weight per second: the steady flow
        self._server_ms = server_ms
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sent: deque[Admission] = deque()
        self._sent_sum = 0
        self._tat: float | None = None  # theoretical arrival time (GCRA)
        self._tau = 0.0  # burst tolerance, seconds
        self._reported_minute = -1
        self._reported_used = 0
        self._since_report = 0  # weight admitted after Binance's latest figure (not yet in it)

    @property
    def rate(self) -> float:
        """The steady flow, weight per second: what the budget sustains with no burst."""
        return self._rate

    # ---- configuration -------------------------------------------------------------------
    def reconfigure(self, weight_limit: int, share: float) -> None:
        """A reloaded config's limit and share, keeping what was sent: the last minute still counts
        at Binance, so a new governor would let a full budget go on top of it. Call plan() after."""
        with self._lock:
            self.weight_limit = weight_limit
            self.cap = float(weight_limit) * share
            self._rate = self.cap / (WINDOW_S + WINDOW_SLACK_S)

    def plan(self, round_weight: int, interval_s: float, largest_call: int, other_per_minute: float = 0.0) -> None:
        """Burst freely (within the cap) when rounds at `interval_s` fit it; else pace every call.

        `round_weight`: what refreshing every account on this host once costs;
        `other_per_minute`: the host's other periodic reads (metadata, keep-alives).
        When it fits, the cap alone limits (an extra scrape or an HA pair can only
        borrow from the same 60 s). When it doesn't, bursts would come back every
        minute as the window slides; a steady flow refreshes accounts evenly.
        """
        per_minute = round_weight * WINDOW_S / interval_s + other_per_minute
        burst = self.cap if per_minute <= self.cap else largest_call
        with self._lock:
            self._tau = min(burst, self.cap) / self._rate

    # ---- accounting ----------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0].at <= now - WINDOW_S - WINDOW_SLACK_S:
            self._sent_sum -= self._sent.popleft().weight

    def _ip_blocked(self, weight: int) -> float:
        """Seconds until the next Binance minute, if the IP's total leaves no room now; else 0."""
        server_ms = self._server_ms()
        if server_ms // 60000 != self._reported_minute:
            return 0.0
        if self._reported_used + self._since_report + weight <= self.weight_limit * (1 - IP_RESERVE_SHARE):
            return 0.0
        return (60000 - server_ms % 60000) / 1000.0 + 0.05

    def _cap_wait(self, now: float, weight: int) -> float:
        if self._sent_sum + weight <= self.cap:
            return 0.0
        need = self._sent_sum + weight - self.cap
        for entry in self._sent:
            need -= entry.weight
            if need <= 0:
                return entry.at + WINDOW_S + WINDOW_SLACK_S - now
        return WINDOW_S  # a single request heavier than the cap: never (caller caps weights)

    def _pace_wait(self, now: float) -> float:
        if self._tat is None:
            return 0.0
        return max(0.0, self._tat - self._tau - now)

    def wait_time(self, weight: int, pace: bool = True) -> float:
        """Seconds until `try_acquire(weight, pace)` can succeed, as far as the budget is concerned."""
        with self._lock:
            now = self._monotonic()
            self._expire(now)
            return max(self._cap_wait(now, weight), self._ip_blocked(weight), self._pace_wait(now) if pace else 0.0)

    def try_acquire(self, weight: int, pace: bool = True, headroom: int = 0) -> Admission | None:
        """Take `weight` from the budget for requests about to be sent; None: don't send them.

        `pace=False` is for single follow-ups of an admitted refresh (a retry, a clock
        re-sync) and for an account's first fetch (a cold start goes at the cap's
        speed): they still count against the cap and the IP total, but don't wait
        for the steady rate. `headroom`: weight that must still fit the cap after
        this (metadata keeps room for a round of data).
        """
        with self._lock:
            now = self._monotonic()
            self._expire(now)
            if headroom and self._cap_wait(now, weight + headroom) > 0:
                return None
            if self._cap_wait(now, weight) > 0 or self._ip_blocked(weight) > 0:
                self._stall_locked(now)
                return None
            if pace and self._pace_wait(now) > 0:
                return None
            tat = now if self._tat is None else max(self._tat, now)
            self._tat = tat + weight / self._rate
            admission = Admission(now, weight)
            self._sent.append(admission)
            self._sent_sum += weight
            self._since_report += weight
            return admission

    def ip_room(self, weight: int) -> bool:
        """Does the IP's total (as last reported) still leave room for `weight` this minute?"""
        with self._lock:
            return self._ip_blocked(weight) == 0

    def refund(self, admission: Admission, weight: int) -> None:
        """Give back `weight` of `admission` for requests that were then not sent (e.g. the
        IP's total ran out meanwhile, or another scrape's fetch serves this one)."""
        with self._lock:
            weight = min(weight, admission.weight)
            admission.weight -= weight
            self._expire(self._monotonic())
            if self._sent and admission.at >= self._sent[0].at:  # still in the window it was counted in
                self._sent_sum -= weight
            self._since_report = max(0, self._since_report - weight)

    def stall(self) -> None:
        """Demand is waiting (e.g. on a back-off): let no burst credit build up meanwhile."""
        with self._lock:
            self._stall_locked(self._monotonic())

    def _stall_locked(self, now: float) -> None:
        self._tat = max(self._tat if self._tat is not None else now, now + self._tau)

    def note_reported(self, used: int, sent_at: float | None = None) -> None:
        """Binance's X-MBX-USED-WEIGHT-1M from an answer: the IP's total in its minute.

        `sent_at` (monotonic) is when the request left. A request that crossed a
        minute boundary carries a figure that may belong to the minute that ended
        (taken as this minute's, 1180 of the last minute would block us for the
        rest of this one), and so may one that left within MINUTE_EDGE_MS of the
        boundary: such a figure is not used; the next answer tells.
        """
        now_ms = self._server_ms()
        minute = now_ms // 60000
        if sent_at is not None:
            elapsed_ms = max(0.0, self._monotonic() - sent_at) * 1000.0
            if (now_ms - elapsed_ms - MINUTE_EDGE_MS) // 60000 != minute:
                return
        with self._lock:
            if minute != self._reported_minute:
                self._reported_minute, self._reported_used = minute, used
                self._since_report = 0
            elif used >= self._reported_used:  # an older answer arriving late tells nothing new
                self._reported_used = used
                self._since_report = 0

    # ---- reading -------------------------------------------------------------------------
    def used_last_minute(self) -> int:
        """Weight this exporter sent to the host in the last 60 s."""
        with self._lock:
            now = self._monotonic()
            self._expire(now)
            return sum(entry.weight for entry in self._sent if entry.at > now - WINDOW_S)

    def reported_this_minute(self) -> int | None:
        """Binance's figure for the IP, only while it is about the current minute."""
        minute = self._server_ms() // 60000
        with self._lock:
            return self._reported_used if minute == self._reported_minute else None
