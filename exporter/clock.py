"""Binance's clock for one host: the offset we sign with, and when and how it is measured.

Binance rejects a signed request whose timestamp is more than recvWindow behind
its clock or 1 s ahead of it, so we sign with local time plus a measured
offset. The offset is taken at the midpoint of a time request's round trip.
One caller measures at a time; others wait for that measurement with their own
deadline (never on a lock held across network I/O), or, when an older offset
exists, simply sign with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RESYNC_AFTER_S = 300.0
# After a failed measurement (the time endpoint down, slow or trickling), sign with
# what we have for this long instead of making every fetch wait on another try.
RETRY_FAILED_AFTER_S = 30.0
MEASURE_TIMEOUT_S = 2.0

# Measures once: returns Binance's clock in ms, or None on any failure. Bounded by its caller's deadline.
ServerTime = Callable[[float], "int | None"]


class Clock:
    def __init__(self) -> None:
        self.offset_ms = 0
        self._synced_at: float | None = None  # monotonic
        self._lock = threading.Lock()
        self._running: threading.Event | None = None  # set when the sync in progress ends
        self._failed_at: float | None = None  # monotonic

    # Looked up on each call (not bound at import) so freezegun can steer them.
    @staticmethod
    def wall() -> float:
        return time.time()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    def now_ms(self) -> int:
        """Binance's clock as we best know it: local time plus the measured offset."""
        return int(self.wall() * 1000) + self.offset_ms

    def age(self) -> float | None:
        """Seconds since the last successful measurement; None if there was none."""
        with self._lock:
            return None if self._synced_at is None else self.monotonic() - self._synced_at

    def fresh(self) -> bool:
        age = self.age()
        return age is not None and age < RESYNC_AFTER_S

    def ensure(self, measure: ServerTime, deadline: float) -> None:
        """Before signing: measure if the offset is stale; wait for a first measurement in progress."""
        age = self.age()
        if age is not None and age < RESYNC_AFTER_S:
            return
        with self._lock:
            failed = self._failed_at
        if failed is not None and self.monotonic() - failed < RETRY_FAILED_AFTER_S:
            return  # the last try failed moments ago: sign with what we have
        self.sync(measure, deadline, wait=age is None)

    def sync(self, measure: ServerTime, deadline: float, wait: bool = True) -> bool:
        """Measure the offset now (single flight). True if this call or the one it joined succeeded.

        A measurement takes at most MEASURE_TIMEOUT_S (and the caller's deadline),
        so a hostile time endpoint delays a fetch by that much, once per
        RETRY_FAILED_AFTER_S, and never holds a lock while it does.
        """
        deadline = min(deadline, self.monotonic() + MEASURE_TIMEOUT_S)
        with self._lock:
            running = self._running
            if running is None:
                self._running = running = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            if not wait:
                return False  # someone else is measuring; the old offset is still good
            running.wait(max(0.0, deadline - self.monotonic()))
            return self.fresh()
        try:
            start = self.wall()
            server_ms = measure(deadline)
            end = self.wall()
            if server_ms is None:
                with self._lock:
                    self._failed_at = self.monotonic()
                return False
            offset = server_ms - int((start + end) / 2 * 1000)
            with self._lock:
                self.offset_ms = offset
                self._synced_at = self.monotonic()
                self._failed_at = None
            return True
        finally:
            with self._lock:
                self._running = None
            running.set()
