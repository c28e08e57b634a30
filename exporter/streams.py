"""User data streams: every streaming account's WebSocket on ONE asyncio loop in ONE thread.

Hundreds of accounts cost hundreds of sockets, not hundreds of threads: the
loop multiplexes them, and the only other threads are a small pool for the
blocking listenKey REST calls. Per account and market, one task loops:

  listenKey (POST) -> connection slot (Binance's per-IP attempt limit) ->
  connect (bounded handshake, message size and queue) -> read events
  (keep-alive PUT every 30 minutes meanwhile, a planned reconnect before
  Binance's 24 h cut) -> on any failure, back off with jitter and start over.

A refused handshake, -1125 on keep-alive and listenKeyExpired all mean a new
key and a new connection. A stream that is down never holds a scrape and never
stops polling: the account is then exactly what it is without a stream.

Each connection only reads: the exporter sends nothing but pongs and its own
pings, well under Binance's 10 incoming messages per second.

Secrets: the listenKey is part of the URL, so neither the URL nor a websockets
exception text is ever logged; websockets' own logger gets nothing either.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from exporter import stream_mux
from exporter.listenkey import ListenKeyError, ListenKeys
from exporter.logs import fields
from exporter.loopthread import LoopThread
from exporter.parsing import BadResponse
from exporter.secrets import Secret
from exporter.stream_events import Event, StreamState, parse_event
from exporter.targets import Target
from exporter.transport import Pools

log = logging.getLogger("exporter.streams")
_T = TypeVar("_T")
# websockets logs request lines (with the listenKey in the path) at debug: keep it silent.
WIRE_LOG = logging.getLogger("exporter.streams.wire")
WIRE_LOG.propagate = False
WIRE_LOG.disabled = True

USDM_EVENTS = ("ACCOUNT_UPDATE", "MARGIN_CALL", "ACCOUNT_CONFIG_UPDATE", "listenKeyExpired")
KEEPALIVE_S = 30 * 60.0  # the key lives 60 minutes; a failed PUT is retried well inside that
KEEPALIVE_RETRY_S = 60.0
PLANNED_RECONNECT_S = 23.5 * 3600  # Binance cuts every connection at 24 h
ATTEMPT_WINDOW_S = 300.0  # Binance: 300 connection attempts per 5 minutes per IP
# One ACCOUNT_UPDATE carries the changed assets and positions only (~150 bytes each): 256 KiB
# is well over a thousand. With at most 4 frames buffered before websockets stops reading the
# socket, one connection holds about 1 MiB at worst, whatever the server sends.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_QUEUE = 4
HANDSHAKE_TIMEOUT_S = 10.0
PING_INTERVAL_S = 60.0  # Binance pings every 3-5 minutes; our own ping finds a silent dead peer
PING_TIMEOUT_S = 30.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
STABLE_AFTER_S = 60.0  # a connection that lived this long resets the back-off
# Binance's user streams carry a handful of events a second at most; past this a server is flooding.
FLOOD_RATE = 200.0  # messages per second, sustained
FLOOD_BURST = 2000.0
REST_THREADS = 4
CLOSE_TOO_BIG = 1009  # what websockets closes with when a message exceeds max_size


@dataclass
class Tuning:
    """Timings, overridable by tests and benchmarks (defaults are the production values)."""

    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    ping_interval_s: float = PING_INTERVAL_S
    ping_timeout_s: float = PING_TIMEOUT_S
    keepalive_s: float = KEEPALIVE_S
    planned_reconnect_s: float = PLANNED_RECONNECT_S
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    flood_rate: float = FLOOD_RATE
    flood_burst: float = FLOOD_BURST


class _Renew(Exception):
    """The key is gone (listenKeyExpired, -1125, a refused handshake): new key, new connection."""


class _Degraded(Exception):
    """The server misbehaves (garbage, binary frames, flooding): reconnect with back-off."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def stream_url(base: str, market: str, key: Secret) -> str:
    """Binance's user data URL of one listenKey (see config's defaults for the bases)."""
    if market == "usdm":
        return f"{base}/ws?listenKey={key.reveal()}&events={'/'.join(USDM_EVENTS)}"
    return f"{base}/ws/{key.reveal()}"


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


class _Bucket:
    """Token bucket counting messages of one connection (flood detection)."""

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


class _Stream:
    def __init__(self, target: Target, keys: ListenKeys, state: StreamState) -> None:
        self.target = target
        self.keys = keys
        self.state = state
        self.key: Secret | None = None
        self.connected_once = False


class StreamManager:
    """The user data streams of every account configured with `user_stream: true`."""

    def __init__(self, targets: Iterable[Target], on_event: Callable[[tuple[str, str], bool], None],
                 connections_per_5m: int, pools: Pools, tuning: Tuning | None = None,
                 on_modes: Callable[[tuple[str, str]], None] | None = None, keys_per_connection: int = 1) -> None:
        """`on_event(key, gap)`: an event (or a gap, then True) asks for a REST refresh of the account.
        `on_modes(key)`: ACCOUNT_CONFIG_UPDATE changed the account's modes (re-read them by REST).
        `keys_per_connection` > 1: USD-M accounts share private connections (see stream_mux)."""
        self.tuning = tuning or Tuning()
        self._on_event = on_event
        self._on_modes = on_modes
        self.limiter = AttemptLimiter(connections_per_5m)
        self.keys_per_connection = keys_per_connection
        self.muxes: list[stream_mux.Mux] = []  # shared connections, on the loop
        self._mux_of: dict[tuple[str, str], stream_mux.Mux] = {}
        self.rng = random.Random()
        self._pools = pools  # listenKey calls share each host's pool with the REST refreshes
        self._lock = threading.Lock()
        self.streams: dict[tuple[str, str], _Stream] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        for target in targets:
            self.streams[target.key] = self._stream(target)
        self._pool = ThreadPoolExecutor(max_workers=REST_THREADS, thread_name_prefix="listenkey")
        self._loop = LoopThread("user-streams")

    def _stream(self, target: Target) -> _Stream:
        transport = self._pools.get(target.host.base_url)
        keys = ListenKeys(target.host, transport, target.account.api_key, target.market,
                          target.account.timeout_seconds)
        return _Stream(target, keys, StreamState())

    def update(self, targets: Iterable[Target], keys_per_connection: int | None = None) -> None:
        """A reloaded config: streams of targets that are gone or replaced close (their listenKey
        is left alone, never DELETEd), new targets' streams open; unchanged ones carry on.
        A changed `keys_per_connection` applies to the streams opened from now on."""
        if keys_per_connection is not None:
            self.keys_per_connection = keys_per_connection
        wanted = {target.key: target for target in targets}
        with self._lock:
            gone = [key for key, stream in self.streams.items()
                    if key not in wanted or wanted[key] is not stream.target]
            for key in gone:
                del self.streams[key]
            added = [self._stream(target) for key, target in wanted.items() if key not in self.streams]
            for stream in added:
                self.streams[stream.target.key] = stream
        self._loop.call(self._respawn, gone, added)  # not running yet: start() opens them all

    def _respawn(self, gone: list[tuple[str, str]], added: list[_Stream]) -> None:
        """On the loop: cancel the tasks of streams that are gone, start the new ones."""
        for key in gone:
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
            mux = self._mux_of.pop(key, None)
            if mux is not None:
                mux.remove(key)  # UNSUBSCRIBEd on the live connection
                if not mux.members and mux.task is not None:
                    mux.task.cancel()
                    self.muxes.remove(mux)
        for stream in added:
            self._spawn(stream)

    def _shares(self, stream: _Stream) -> bool:
        return self.keys_per_connection > 1 and stream.target.market == "usdm"

    def _spawn(self, stream: _Stream) -> None:
        if self._shares(stream):
            self._join_mux(stream)
            return
        running = self._tasks.get(stream.target.key)
        if running is not None and not running.done():  # started by _main and by an update
            return
        task = asyncio.create_task(self._run(stream), name=f"stream-{stream.target.alias}")
        self._tasks[stream.target.key] = task
        key = stream.target.key

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                self._tasks.pop(key, None)

        task.add_done_callback(forget)

    def _join_mux(self, stream: _Stream) -> None:
        """Put a USD-M stream on a shared connection with room (same base URL), or open a new one."""
        key = stream.target.key
        if key in self._mux_of:
            return
        base = stream.target.account.stream_url_for(stream.target.market)
        mux = next((m for m in self.muxes if m.base == base and not m.full), None)
        if mux is None:
            mux = stream_mux.Mux(self, base)
            self.muxes.append(mux)
            mux.add(stream)
            mux.task = asyncio.create_task(mux.run(), name=f"stream-shared-{len(self.muxes)}")
        else:
            mux.add(stream)
        self._mux_of[key] = mux

    def connections(self) -> int:
        """Connections the streams use (open or being opened): one per unshared stream, one per Mux."""
        return len(self._tasks) + len(self.muxes)

    def gap(self, stream: _Stream) -> None:
        """The account's stream (re)started: refresh it by REST before trusting its events."""
        self._on_event(stream.target.key, True)

    def state(self, key: tuple[str, str]) -> StreamState | None:
        stream = self.streams.get(key)
        return None if stream is None else stream.state

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.streams and not self._loop.started:
            self._loop.start(self._main)

    def close(self, timeout: float = 2.0) -> None:
        """Close every connection (never DELETE a listenKey: the user's bots may share it)."""
        self._loop.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _main(self, stop: asyncio.Event) -> None:
        with self._lock:
            streams = list(self.streams.values())
        for stream in streams:
            self._spawn(stream)
        await stop.wait()
        tasks = list(self._tasks.values()) + [m.task for m in self.muxes if m.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- one account's stream ----------------------------------------------------------------
    async def rest(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _run(self, stream: _Stream) -> None:
        target = stream.target
        failures = 0
        while True:
            started = time.monotonic()
            why = ""
            try:
                if stream.key is None:
                    stream.key = await self.rest(stream.keys.create)
                await self._connect_and_read(stream)
                why = "closed by the server"
            except asyncio.CancelledError:
                stream.state.disconnected()
                raise
            except _Renew as exc:
                stream.key, why = None, str(exc)
            except InvalidStatus as exc:  # the handshake was refused: the key may be invalid
                stream.key, why = None, f"handshake refused with HTTP {exc.response.status_code}"
            except ListenKeyError as exc:
                if exc.gone:
                    stream.key = None
                why = f"listenKey {exc.reason}" + (f" status={exc.status}" if exc.status else "") + \
                      (f" code={exc.code}" if exc.code is not None else "")
            except _Degraded as exc:
                why = exc.why
            except ConnectionClosed as exc:
                why, too_big = closed_why(exc, self.tuning)
                if too_big:
                    stream.state.count("invalid")
            except (OSError, TimeoutError, InvalidHandshake, asyncio.TimeoutError) as exc:
                why = type(exc).__name__  # never str(exc): it may quote the URL
            except Exception as exc:  # noqa: BLE001 - a bug: never let it end the stream for good
                # No traceback: an exception's text may quote the URL, and the URL holds the listenKey.
                log.error("user stream: unexpected error", extra=fields(
                    alias=target.alias, market=target.market, error=type(exc).__name__))
                why = f"internal error: {type(exc).__name__}"
            stream.state.disconnected()
            failures = 1 if time.monotonic() - started >= STABLE_AFTER_S and stream.connected_once \
                else failures + 1
            delay = 0.0 if why == "planned reconnect" else backoff_delay(failures, self.tuning, self.rng)
            (log.info if why == "planned reconnect" else log.warning)(
                "user stream down", extra=fields(alias=target.alias, market=target.market, reason=why,
                                                 retry_in_s=round(delay, 1)))
            await asyncio.sleep(delay)

    async def _connect_and_read(self, stream: _Stream) -> None:
        target, tuning = stream.target, self.tuning
        assert stream.key is not None
        await self.limiter.acquire()
        if stream.connected_once:
            with stream.state.lock:
                stream.state.reconnects += 1
        url = stream_url(target.account.stream_url_for(target.market), target.market, stream.key)
        async with connect(url, open_timeout=tuning.handshake_timeout_s, ping_interval=tuning.ping_interval_s,
                           ping_timeout=tuning.ping_timeout_s, close_timeout=1.0, max_size=tuning.max_message_bytes,
                           max_queue=MAX_QUEUE, compression=None, logger=WIRE_LOG,
                           user_agent_header="binance-futures-exporter") as ws:
            stream.connected_once = True
            stream.state.connected(time.monotonic())
            log.info("user stream connected", extra=fields(alias=target.alias, market=target.market))
            self.gap(stream)  # refresh by REST before trusting the stream
            keepalive = asyncio.create_task(self._keepalive(stream, ws))
            try:
                await asyncio.wait_for(self._read(stream, ws), tuning.planned_reconnect_s)
            except (asyncio.TimeoutError, TimeoutError):
                raise _Degraded("planned reconnect") from None
            finally:
                keepalive.cancel()

    async def _read(self, stream: _Stream, ws: ClientConnection) -> None:
        bucket = _Bucket(self.tuning.flood_rate, self.tuning.flood_burst)
        state = stream.state
        async for message in ws:
            if not bucket.take():
                state.count("invalid")
                raise _Degraded("flooding")
            try:
                event = parse_event(message)
            except BadResponse as exc:
                state.count("invalid")
                raise _Degraded(f"invalid message: {exc}") from None
            mine = stream.key.reveal() if stream.key is not None else None
            if event.stream is not None and event.stream != mine:
                state.count("invalid")  # an envelope naming another listenKey: another account's event
                continue
            if self.deliver(stream, event):
                raise _Renew("listenKeyExpired")

    def deliver(self, stream: _Stream, event: Event) -> bool:
        """Apply one of the account's events (E order, refresh, modes); True: its key expired, renew it."""
        state = stream.state
        if event.kind == "ACCOUNT_UPDATE" and stream.target.market == "pm":
            # Portfolio Margin's wallet rows are totals over UM, CM and margin: its events' UM
            # wallet balances are not those figures. Counted, and the account refreshed.
            event = dataclasses.replace(event, assets={}, positions={})
        if event.kind == "listenKeyExpired":
            mine = stream.key.reveal() if stream.key is not None else None
            if event.listen_key is not None and event.listen_key != mine:
                state.count("invalid")  # about another account's key: not ours to act on
                return False
            state.apply(event, time.monotonic(), time.time())
            return True
        if state.apply(event, time.monotonic(), time.time()) and event.kind not in ("other",):
            if event.modes and self._on_modes is not None:
                self._on_modes(stream.target.key)
            self._on_event(stream.target.key, False)
        return False

    async def _keepalive(self, stream: _Stream, ws: ClientConnection) -> None:
        """PUT every 30 minutes; a key Binance no longer knows closes the connection for a new one."""
        delay = self.tuning.keepalive_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.rest(stream.keys.keepalive)
                delay = self.tuning.keepalive_s
            except ListenKeyError as exc:
                if exc.gone:
                    stream.key = None
                    log.warning("user stream: listenKey expired on keep-alive, renewing",
                                extra=fields(alias=stream.target.alias, market=stream.target.market))
                    await ws.close()
                    return
                delay = min(KEEPALIVE_RETRY_S, self.tuning.keepalive_s)
