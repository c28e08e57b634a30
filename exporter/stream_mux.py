"""Shared USD-M user data connections: several accounts' listenKeys on one private WebSocket.

Binance's private endpoint has a "stream mode" that carries several listenKeys
on one connection ("Important WebSocket Change Notice"):

  {stream_base_url}/stream?listenKey=<k1>&events=E1/E2&listenKey=<k2>&events=E1/E2

(the exporter names as many keys as fit in MAX_URL_CHARS there) and accepts
JSON `SUBSCRIBE` / `UNSUBSCRIBE` of listenKeys on a live connection
(the official SDK sends `{"method": "SUBSCRIBE", "params": [<listenKey>], "id": ...}`
to `/private/stream`, 0.5 s apart). Every event then arrives in the
combined-stream envelope `{"stream": <listenKey>, "data": {...}}`, which says
whose event it is.

One `Mux` is one such connection with up to `stream_keys_per_connection`
member accounts. It keeps every guarantee of the one-account connection:

* a (re)connect is a gap for every member: each is refreshed by REST;
* events are routed by the envelope's key to that account only, in E order;
  a message naming no member key, or none at all, is counted (`invalid`) on
  every member and dropped; a bad event naming a member key is counted on that
  member only; garbage that is no JSON object and flooding of the whole
  connection reconnect it with back-off, like a one-account connection;
* listenKeyExpired, -1125 on keep-alive and a refused SUBSCRIBE renew only that
  account's key, and the new key is SUBSCRIBEd on the same connection;
* members added by a reload are SUBSCRIBEd, removed ones UNSUBSCRIBEd, on the
  live connection (the keys are never DELETEd);
* the exporter sends at most one message per SEND_INTERVAL_S (2 a second,
  Binance allows 10), connection attempts go through the process-wide limiter.

Keys added by SUBSCRIBE carry no event list (Binance documents none for it):
their other events are counted as `other` and dropped, as on any stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from exporter import streams as core
from exporter.listenkey import ListenKeyError
from exporter.logs import fields
from exporter.parsing import BadResponse
from exporter.stream_events import parse_data, split_envelope

if TYPE_CHECKING:
    from exporter.streams import StreamManager, _Stream

log = logging.getLogger("exporter.streams")
# A request line much over a few KiB is refused by common servers (HTTP 414; websockets' own
# limit is 8 KiB) and Binance documents none: the connect URL names the keys that fit in this,
# and the rest are SUBSCRIBEd on the open connection (about 27 keys of 64 characters fit).
MAX_URL_CHARS = 4096
SEND_INTERVAL_S = 0.5  # the official SDK's pause between SUBSCRIBE messages; Binance allows 10 messages/s
RESPONSE_TIMEOUT_S = 10.0  # a SUBSCRIBE unanswered this long counts as refused


def shared_url(base: str, keys: list[str], events: tuple[str, ...]) -> tuple[str, int]:
    """Binance's stream-mode URL of the first listenKeys (each with the events wanted) that fit in
    MAX_URL_CHARS (at least one), and how many it names."""
    wanted = "/".join(events)
    url, count = f"{base}/stream?", 0
    for key in keys:
        part = f"{'&' if count else ''}listenKey={key}&events={wanted}"
        if count and len(url) + len(part) > MAX_URL_CHARS:
            break
        url, count = url + part, count + 1
    return url, count


class Mux:
    """One shared private connection and the accounts on it (all on the manager's loop)."""

    def __init__(self, manager: StreamManager, base: str) -> None:
        self.manager = manager
        self.base = base
        self.members: dict[tuple[str, str], _Stream] = {}
        self.task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._by_key: dict[str, _Stream] = {}  # listenKey -> member, for the live connection
        self._outbox: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[bool]] = {}
        self._ids = itertools.count(1)
        self._helpers: dict[tuple[str, str], asyncio.Task[None]] = {}  # per member: join or keep-alive
        self._changed = asyncio.Event()

    @property
    def full(self) -> bool:
        return len(self.members) >= self.manager.keys_per_connection

    # ---- membership (reload) -------------------------------------------------------------------
    def add(self, stream: _Stream) -> None:
        self.members[stream.target.key] = stream
        if self._ws is not None:
            self._helper(stream, self._join(stream))
        else:
            self._changed.set()

    def remove(self, key: tuple[str, str]) -> None:
        stream = self.members.pop(key, None)
        if stream is None:
            return
        self._stop_helper(key)
        value = next((k for k, m in self._by_key.items() if m is stream), None)
        if value is not None:
            del self._by_key[value]
            self._outbox.put_nowait(("UNSUBSCRIBE", value, next(self._ids)))
        stream.state.disconnected()

    def _helper(self, stream: _Stream, coro: Any) -> None:
        self._stop_helper(stream.target.key)
        self._helpers[stream.target.key] = asyncio.create_task(coro)

    def _stop_helper(self, key: tuple[str, str]) -> None:
        task = self._helpers.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ---- the connection ------------------------------------------------------------------------
    async def run(self) -> None:
        manager, tuning = self.manager, self.manager.tuning
        failures = 0
        while True:
            started = time.monotonic()
            why = ""
            try:
                await self._connect_and_read()
                why = "closed by the server"
            except asyncio.CancelledError:
                self._down()
                raise
            except InvalidStatus as exc:  # refused: some key may be invalid, which one is not said
                if exc.response.status_code != 414:  # (URI too long says nothing about the keys)
                    for stream in self.members.values():
                        stream.key = None  # a POST returns a still active key unchanged: harmless
                why = f"handshake refused with HTTP {exc.response.status_code}"
            except _NoKeys:
                why = "no listenKey"
            except core._Degraded as exc:
                why = exc.why
            except ConnectionClosed as exc:
                why, too_big = core.closed_why(exc, tuning)
                if too_big:
                    self._count_all("invalid")
            except (OSError, TimeoutError, InvalidHandshake, asyncio.TimeoutError) as exc:
                why = type(exc).__name__  # never str(exc): it may quote the URL
            except Exception as exc:  # noqa: BLE001 - a bug: never let it end the connection for good
                log.error("shared user stream: unexpected error", extra=fields(error=type(exc).__name__))
                why = f"internal error: {type(exc).__name__}"
            self._down()
            stable = time.monotonic() - started >= core.STABLE_AFTER_S and any(
                m.connected_once for m in self.members.values())
            failures = 1 if stable else failures + 1
            delay = 0.0 if why == "planned reconnect" else core.backoff_delay(failures, tuning, manager.rng)
            (log.info if why == "planned reconnect" else log.warning)(
                "shared user stream down", extra=fields(accounts=len(self.members), reason=why,
                                                        retry_in_s=round(delay, 1)))
            await asyncio.sleep(delay)
            if not self.members:  # all removed by a reload: wait for one to be added
                await self._changed.wait()
            self._changed.clear()

    async def _connect_and_read(self) -> None:
        manager, tuning = self.manager, self.manager.tuning
        if not self.members:
            raise _NoKeys
        members = list(self.members.values())
        await asyncio.gather(*(self._ensure_key(m) for m in members if m.key is None))
        keyed = [m for m in members if m.key is not None and m.target.key in self.members]
        if not keyed:
            raise _NoKeys
        await manager.limiter.acquire()
        url, named = shared_url(self.base, [m.key.reveal() for m in keyed if m.key is not None], core.USDM_EVENTS)
        keyed = keyed[:named]  # the others are SUBSCRIBEd once the connection is open
        async with connect(url, open_timeout=tuning.handshake_timeout_s, ping_interval=tuning.ping_interval_s,
                           ping_timeout=tuning.ping_timeout_s, close_timeout=1.0, max_size=tuning.max_message_bytes,
                           max_queue=core.MAX_QUEUE, compression=None, logger=core.WIRE_LOG,
                           user_agent_header="binance-futures-exporter") as ws:
            self._ws = ws
            self._outbox = asyncio.Queue()
            now = time.monotonic()
            for stream in keyed:
                if stream.key is None or stream.target.key not in self.members:
                    continue  # renewed or removed while connecting: joins below
                self._by_key[stream.key.reveal()] = stream
                self._up(stream, now)
            log.info("shared user stream connected", extra=fields(accounts=len(self._by_key)))
            for stream in self.members.values():
                if stream not in self._by_key.values():
                    self._helper(stream, self._join(stream))
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                await asyncio.wait_for(self._read(ws), tuning.planned_reconnect_s)
            except (asyncio.TimeoutError, TimeoutError):
                raise core._Degraded("planned reconnect") from None
            finally:
                sender.cancel()

    def _up(self, stream: _Stream, now: float) -> None:
        """A member's key is live on the connection: a gap, so refresh it by REST; keep the key alive."""
        if stream.connected_once:
            with stream.state.lock:
                stream.state.reconnects += 1
        stream.connected_once = True
        stream.state.connected(now)
        self.manager.gap(stream)
        self._helper(stream, self._keepalive(stream))

    def _down(self) -> None:
        self._ws = None
        self._by_key.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_result(False)
        self._pending.clear()
        for key in list(self._helpers):
            self._stop_helper(key)
        for stream in self.members.values():
            stream.state.disconnected()

    def _count_all(self, kind: str) -> None:
        for stream in self.members.values():
            stream.state.count(kind)

    async def _ensure_key(self, stream: _Stream) -> None:
        try:
            stream.key = await self.manager.rest(stream.keys.create)
        except ListenKeyError as exc:
            log.warning("user stream: no listenKey", extra=fields(
                alias=stream.target.alias, market=stream.target.market, reason=exc.reason))

    # ---- one member on the live connection ------------------------------------------------------
    async def _join(self, stream: _Stream) -> None:
        """A new key for the member (if needed), SUBSCRIBEd on the live connection; retried with back-off."""
        failures = 0
        while stream.target.key in self.members and self._ws is not None:
            if stream.key is None:
                await self._ensure_key(stream)
            if stream.key is not None:
                value = stream.key.reveal()
                self._by_key[value] = stream  # its events are its own from now on
                if await self._request("SUBSCRIBE", value):
                    self._helpers.pop(stream.target.key, None)
                    self._up(stream, time.monotonic())
                    return
                self._by_key.pop(value, None)
                stream.key = None  # refused: the key is not valid (any more)
                log.warning("user stream: SUBSCRIBE refused, renewing the listenKey", extra=fields(
                    alias=stream.target.alias, market=stream.target.market))
            failures += 1
            await asyncio.sleep(core.backoff_delay(failures, self.manager.tuning, self.manager.rng))

    def renew(self, stream: _Stream, why: str) -> None:
        """Only this member's key is gone: drop it from the connection, join again with a new one."""
        value = next((k for k, m in self._by_key.items() if m is stream), None)
        if value is not None:
            del self._by_key[value]
        stream.key = None
        stream.state.disconnected()
        log.warning("user stream down", extra=fields(alias=stream.target.alias, market=stream.target.market,
                                                      reason=why, shared=True))
        if self._ws is not None and stream.target.key in self.members:
            self._helper(stream, self._join(stream))

    async def _keepalive(self, stream: _Stream) -> None:
        tuning = self.manager.tuning
        delay = tuning.keepalive_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.manager.rest(stream.keys.keepalive)
                delay = tuning.keepalive_s
            except ListenKeyError as exc:
                if exc.gone:
                    self.renew(stream, "listenKey expired on keep-alive")
                    return
                delay = min(core.KEEPALIVE_RETRY_S, tuning.keepalive_s)

    # ---- sending ---------------------------------------------------------------------------------
    async def _request(self, method: str, value: str) -> bool:
        """Queue one message; True once Binance answered it with a result, False on an error or no answer."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        ident = next(self._ids)
        self._pending[ident] = future
        wait = RESPONSE_TIMEOUT_S + self._outbox.qsize() * SEND_INTERVAL_S  # the queue ahead goes out first
        self._outbox.put_nowait((method, value, ident))
        try:
            return await asyncio.wait_for(future, wait)
        except (asyncio.TimeoutError, TimeoutError):
            return False
        finally:
            self._pending.pop(ident, None)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """The only writer: one message per SEND_INTERVAL_S at most (Binance: 10 incoming per second)."""
        while True:
            method, value, ident = await self._outbox.get()
            try:
                await ws.send(json.dumps({"method": method, "params": [value], "id": ident}))
            except ConnectionClosed:
                return  # the reader sees it too and reconnects
            await asyncio.sleep(SEND_INTERVAL_S)

    # ---- reading ---------------------------------------------------------------------------------
    async def _read(self, ws: ClientConnection) -> None:
        tuning = self.manager.tuning
        scale = max(1, len(self.members))
        bucket = core._Bucket(tuning.flood_rate * scale, tuning.flood_burst * scale)
        per_member: dict[int, core._Bucket] = {}
        async for message in ws:
            if not bucket.take():
                self._count_all("invalid")
                raise core._Degraded("flooding")
            try:
                stream_name, data = split_envelope(message)
            except BadResponse as exc:
                self._count_all("invalid")
                raise core._Degraded(f"invalid message: {exc}") from None
            if stream_name is None:
                if _is_response(data):
                    self._answer(data)
                else:
                    self._count_all("invalid")  # an unwrapped event on a shared connection: whose?
                continue
            stream = self._by_key.get(stream_name)
            if stream is None:
                self._count_all("invalid")  # names a key not on this connection: nobody's here
                continue
            own = per_member.setdefault(id(stream), core._Bucket(tuning.flood_rate, tuning.flood_burst))
            if not own.take():
                stream.state.count("invalid")  # one account flooding: its messages dropped, not the others'
                continue
            try:
                event = parse_data(data, stream_name)
            except BadResponse:
                stream.state.count("invalid")
                continue
            if self.manager.deliver(stream, event):
                self.renew(stream, "listenKeyExpired")

    def _answer(self, data: Mapping[str, Any]) -> None:
        future = self._pending.get(data["id"]) if isinstance(data.get("id"), int) else None
        if future is not None and not future.done():
            future.set_result("error" not in data)


class _NoKeys(Exception):
    """No member has a listenKey (or there are no members): nothing to connect."""


def _is_response(data: Any) -> bool:
    return isinstance(data, dict) and "id" in data and ("result" in data or "error" in data) and "e" not in data
