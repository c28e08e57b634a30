"""The stream layer's tuning, limits and back-off: every number the connections live by, in one place.

Binance's limits (developers.binance.com, WebSocket API and user data stream pages): 300
connection attempts per 5 minutes per IP, 10 incoming messages per second per connection
(ping and pong frames count, as do SUBSCRIBE/UNSUBSCRIBE), 1,024 streams per connection, a
cut at 24 h. The exporter stays under each with room, and bounds what a hostile server can
make it hold or send.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed


@dataclass
class Tuning:
    """Timings and bounds a test or benchmark may change, each written once: the default is the
    production value (as in exporter/httpserver/limits.py)."""

    handshake_timeout_s: float = 10.0
    # Binance pings every 3-5 minutes; our own ping finds a silent dead peer.
    ping_interval_s: float = 60.0
    ping_timeout_s: float = 30.0
    # A listenKey lives 60 minutes; a failed PUT is retried well inside that.
    keepalive_s: float = 30 * 60.0
    # Binance cuts every connection at 24 h.
    planned_reconnect_s: float = 23.5 * 3600
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    # One ACCOUNT_UPDATE carries the changed assets and positions only (~150 bytes each): 256 KiB
    # is well over a thousand. With at most 4 frames buffered before websockets stops reading the
    # socket, one connection holds about 1 MiB at worst, whatever the server sends.
    max_message_bytes: int = 256 * 1024
    # Binance's user streams carry a handful of events a second at most; past this a server is
    # flooding: messages per second, sustained, per member.
    flood_rate: float = 200.0
    flood_burst: float = 2000.0
    # What we send back is bounded too. Each ping a server sends costs a pong (and Binance counts
    # pongs against its 10 messages a second): pings past this rate (per second, sustained; Binance
    # pings every 3-5 minutes) drop the connection.
    ping_rate: float = 1.0
    ping_burst: float = 10.0
    # Bytes waiting to be written: past this, or past websockets' write limit for longer than the
    # ping timeout, the peer is not reading: dropped like one that does not answer.
    outgoing_max_bytes: int = 64 * 1024
    # SUBSCRIBE / UNSUBSCRIBE: one message carries many names; at most one message per this many
    # seconds (Binance allows 10 incoming messages a second, pings and pongs included).
    send_interval_s: float = 0.5


# The default the weight plan counts keep-alives at (exporter/scheduler.py), which builds no Tuning.
KEEPALIVE_S = Tuning.keepalive_s

# Not tunable.
KEEPALIVE_RETRY_S = 60.0
ATTEMPT_WINDOW_S = 300.0  # Binance: 300 connection attempts per 5 minutes per IP
MAX_QUEUE = 4  # frames websockets buffers before it stops reading the socket
STABLE_AFTER_S = 60.0  # a connection that lived this long resets the back-off
MAX_PARAMS = 200  # names per SUBSCRIBE message
MAX_STREAMS_PER_CONNECTION = 1024  # Binance's limit
RESPONSE_TIMEOUT_S = 10.0  # a SUBSCRIBE unanswered this long counts as refused
REST_THREADS = 4
CLOSE_TOO_BIG = 1009  # what websockets closes with when a message exceeds max_size


class Renew(Exception):
    """The key is gone (listenKeyExpired, -1125, a refused handshake): new key, new connection."""


class Degraded(Exception):
    """The server misbehaves (garbage, binary frames, flooding, not reading): reconnect with back-off."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def closed_why(exc: ConnectionClosed, tuning: Tuning) -> tuple[str, bool]:
    """Why a connection closed, and whether it was our close for a message over the size limit."""
    if exc.sent is not None and exc.sent.code == CLOSE_TOO_BIG:
        return f"a message over {tuning.max_message_bytes} bytes", True
    return f"connection closed (code {exc.rcvd.code if exc.rcvd else 'none'})", False


def backoff_delay(failures: int, tuning: Tuning, rng: random.Random) -> float:
    """Exponential back-off with jitter (half fixed, half random), so a fleet does not reconnect in step."""
    ceiling = min(tuning.backoff_max_s, tuning.backoff_base_s * 2.0 ** min(failures - 1, 20))
    return ceiling / 2 + rng.random() * ceiling / 2


class AttemptLimiter:
    """At most `limit` connection attempts per rolling 5 minutes, for the whole process (one IP)."""

    def __init__(self, limit: int, window_s: float = ATTEMPT_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def wait_time(self, now: float) -> float:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window_s - now

    async def acquire(self) -> None:
        while (wait := self.wait_time(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        self._times.append(time.monotonic())


class Bucket:
    """Token bucket counting messages (or frames) of one connection: flood detection."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
