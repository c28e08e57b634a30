"""Per-IP request-weight accounting with Binance's 429 → 418 escalation.

Binance limits by IP, not by key, so every account the exporter polls shares
one budget; the simulator reproduces that so budget bugs show up in tests.
Windows are fixed 1-minute buckets aligned to whole minutes of server time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

WINDOW_MS = 60_000
FIRST_BAN_S = 120
MAX_BAN_S = 3 * 24 * 3600


@dataclass(frozen=True)
class Admission:
    """Outcome of charging one request; `status` is 200, 429 or 418."""

    status: int
    used_weight: int
    retry_after_s: int = 0
    banned_until_ms: int = 0

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass
class _IpState:
    window: int = -1
    used: int = 0
    seen_429: bool = False
    after_429: int = 0
    banned_until_ms: int = 0
    bans: int = 0


def _ceil_s(ms: int) -> int:
    return max(1, -(-ms // 1000))


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ips: dict[str, _IpState] = {}

    def _state(self, ip: str, now_ms: int) -> _IpState:
        st = self._ips.setdefault(ip, _IpState())
        window = now_ms // WINDOW_MS
        if st.window != window:
            st.window, st.used, st.seen_429, st.after_429 = window, 0, False, 0
        return st

    def admit(self, ip: str, weight: int, now_ms: int, *, limit: int, ban_after_429s: int) -> Admission:
        """Charge `weight` to `ip` and decide whether the request may proceed."""
        with self._lock:
            st = self._state(ip, now_ms)
            if st.banned_until_ms > now_ms:
                # Banned requests are refused before they cost anything.
                return Admission(418, st.used, _ceil_s(st.banned_until_ms - now_ms), st.banned_until_ms)
            st.used += weight
            if st.used <= limit:
                return Admission(200, st.used)
            if st.seen_429:
                st.after_429 += 1
                if st.after_429 > ban_after_429s:
                    ban_s = min(FIRST_BAN_S * 2**st.bans, MAX_BAN_S)
                    st.bans += 1
                    st.banned_until_ms = now_ms + ban_s * 1000
                    return Admission(418, st.used, ban_s, st.banned_until_ms)
            st.seen_429 = True
            window_end = (st.window + 1) * WINDOW_MS
            return Admission(429, st.used, _ceil_s(window_end - now_ms))

    def used_weight(self, ip: str, now_ms: int) -> int:
        with self._lock:
            st = self._ips.get(ip)
            if st is None or st.window != now_ms // WINDOW_MS:
                return 0
            return st.used

    def reset(self) -> None:
        """Forget all windows, bans and ban history (repeat-offender escalation starts over)."""
        with self._lock:
            self._ips.clear()
