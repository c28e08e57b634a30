"""What every account on one Binance host shares: back-off, clock, weight budget, counters.

Binance counts request weight and bans per IP, and its clock is the same for
all accounts, so these live per base URL rather than per account: one 429
pauses every account on that host, one time request fixes the clock for all.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from exporter.clock import Clock
from exporter.governor import Governor

DEFAULT_429_BACKOFF_S = 60.0
DEFAULT_418_BACKOFF_S = 120.0
MAX_BACKOFF_S = 3 * 24 * 3600.0  # Binance's longest ban
BAN_UNTIL_RE = re.compile(r"banned until ([0-9]{12,14})")  # ASCII digits: \d takes any script
SECONDS_RE = re.compile(r"\s*([0-9]{1,9})\s*")
WEIGHT_RE = re.compile(r"\s*([0-9]{1,9})\s*")


def retry_after_seconds(raw: str | None) -> float | None:
    """Retry-After in seconds, or None when missing, unparsable or absurd (then a default applies)."""
    if raw is None:
        return None
    match = SECONDS_RE.fullmatch(raw)
    if not match:
        return None
    seconds = float(match.group(1))
    return seconds if 0 < seconds <= MAX_BACKOFF_S else None


def parse_weight(raw: str | None) -> int | None:
    """X-MBX-USED-WEIGHT-1M as a small integer; anything else is ignored."""
    match = WEIGHT_RE.fullmatch(raw) if raw is not None else None
    return int(match.group(1)) if match else None


@dataclass
class Backoff:
    """The pause after a 429/418. One event pauses once; only a repeat after a pause escalates.

    Answers to requests that were already in flight when a pause began are the
    same event (they were sent before we knew): they extend nothing. A 429/418
    to a request sent after a pause ended, with no success in between, doubles
    the default pause, because Binance escalates bans for repeat offenders.
    """

    until: float = 0.0  # monotonic
    started: float = float("-inf")  # monotonic start of the latest pause
    reason: str = ""  # "rate_limited" or "ip_banned"
    penalties: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    @staticmethod
    def wall() -> float:
        return time.time()

    def remaining(self) -> tuple[float, str]:
        with self.lock:
            left = max(0.0, self.until - self.monotonic())
            return left, (self.reason if left > 0 else "")

    def note(self, status: int, retry_after: str | None, message: str | None, sent_at: float) -> float:
        """Record a 429/418 to a request sent at `sent_at` (monotonic); return the pause left."""
        banned = status == 418
        explicit = retry_after_seconds(retry_after)
        if explicit is None and banned and message:
            match = BAN_UNTIL_RE.search(message)
            if match:
                left = int(match.group(1)) / 1000.0 - self.wall()
                explicit = left if 0 < left <= MAX_BACKOFF_S else None
        with self.lock:
            now = self.monotonic()
            if sent_at < self.started:
                # In flight when the pause began: the same event. Binance's own
                # "until" can only make us wait for what it already enforces.
                if explicit is not None and now + explicit > self.until:
                    self.until = now + explicit
                if banned:
                    self.reason = "ip_banned"
                return max(0.0, self.until - now)
            repeat = self.started > float("-inf") and self.until <= now and self.penalties > 0
            self.penalties = self.penalties + 1 if repeat else 1
            if explicit is None:
                base = DEFAULT_418_BACKOFF_S if banned else DEFAULT_429_BACKOFF_S
                explicit = min(base * 2 ** min(self.penalties - 1, 20), MAX_BACKOFF_S)
            self.until = max(self.until, now + explicit)
            self.started = now
            self.reason = "ip_banned" if banned else "rate_limited"
            return self.until - now

    def note_success(self) -> None:
        with self.lock:
            self.penalties = 0


@dataclass(eq=False)  # compared and hashed by identity: a dict key of the engine
class Host:
    """One Binance API host (one base URL) and everything its accounts share."""

    base_url: str
    label: str  # the `host` label
    kind: str  # "usdm", "coinm", "pm" or "sapi": which time endpoint and weight header apply
    governor: Governor
    clock: Clock
    backoff: Backoff = field(default_factory=Backoff)
    deferred: int = 0
    limited_responses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_deferred(self, n: int = 1) -> None:
        with self.lock:
            self.deferred += n

    def count_limited(self, status: int) -> None:
        with self.lock:
            self.limited_responses[status] += 1

    def counters(self) -> tuple[int, dict[int, int]]:
        with self.lock:
            return self.deferred, dict(self.limited_responses)
