"""State shared by every account on one Binance host: clock offset, back-off, used weight.

Binance counts request weight and bans per IP, and its clock is the same for
all accounts, so these live per `base_url` rather than per account: one 429
stops every account on that host, one /time call fixes the clock for all.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

DEFAULT_429_BACKOFF_S = 60.0
DEFAULT_418_BACKOFF_S = 120.0
MAX_BACKOFF_S = 3 * 24 * 3600.0
BAN_UNTIL_RE = re.compile(r"banned until (\d{12,14})")


@dataclass
class HostState:
    base_url: str
    host: str
    weight_limit: int = 2400
    offset_ms: int = 0
    synced_at: float | None = None  # monotonic time of the last successful /time
    used_weight: int | None = None
    backoff_until: float = 0.0  # monotonic
    backoff_reason: str = ""  # "rate_limited" or "ip_banned"
    _penalties: int = 0
    _weight_minute: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    sync_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # Looked up on each call (not bound at import) so freezegun/time-machine can steer them.
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def now_ms(self) -> int:
        """Binance's clock as we best know it: local time plus the measured offset."""
        return int(self.wall() * 1000) + self.offset_ms

    def backoff_remaining(self) -> float:
        with self.lock:
            return max(0.0, self.backoff_until - self.monotonic())

    def current_backoff(self) -> tuple[float, str]:
        with self.lock:
            remaining = max(0.0, self.backoff_until - self.monotonic())
            return remaining, (self.backoff_reason if remaining > 0 else "")

    def note_weight(self, value: str | None) -> None:
        if value is None:
            return
        try:
            weight = int(value)
        except ValueError:
            return
        # Answers to parallel requests arrive out of order; within one minute
        # window the counter only grows, so keep the highest value seen.
        minute = self.now_ms() // 60000
        with self.lock:
            if minute == self._weight_minute and self.used_weight is not None:
                weight = max(weight, self.used_weight)
            self.used_weight = weight
            self._weight_minute = minute

    def note_offset(self, offset_ms: int) -> None:
        with self.lock:
            self.offset_ms = offset_ms
            self.synced_at = self.monotonic()

    def sync_age(self) -> float | None:
        with self.lock:
            return None if self.synced_at is None else self.monotonic() - self.synced_at

    def note_limited(self, status: int, retry_after: str | None, message: str | None) -> float:
        """Record a 429/418 and return how long every account on this host now waits.

        Retry-After wins when present; a 418's "banned until <ms>" is next; else
        60 s (429) or 120 s (418), doubling for each repeat without a success
        in between, because Binance escalates bans for repeat offenders.
        """
        banned = status == 418
        seconds: float | None = None
        if retry_after is not None:
            try:
                seconds = float(int(retry_after.strip()))
            except ValueError:
                seconds = None
        if seconds is None and banned and message:
            match = BAN_UNTIL_RE.search(message)
            if match:
                seconds = int(match.group(1)) / 1000.0 - self.wall()
        with self.lock:
            if seconds is None or seconds <= 0:
                base = DEFAULT_418_BACKOFF_S if banned else DEFAULT_429_BACKOFF_S
                seconds = base * (2 ** min(self._penalties, 20))
            seconds = min(seconds, MAX_BACKOFF_S)
            self._penalties += 1
            until = self.monotonic() + seconds
            if until > self.backoff_until:
                self.backoff_until = until
                self.backoff_reason = "ip_banned" if banned else "rate_limited"
            elif banned:
                self.backoff_reason = "ip_banned"
            return max(0.0, self.backoff_until - self.monotonic())

    def note_success(self) -> None:
        with self.lock:
            self._penalties = 0
