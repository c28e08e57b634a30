"""The one connection loop: every stream connection of the exporter, whatever it carries.

A `Connection` is one WebSocket and its members (an account's listenKey, a market's
symbol). It owns the loop every kind shares:

  names for the members (a listenKey POST for user streams) -> a slot of the
  process-wide connection-attempt limiter -> connect (bounded handshake, message
  size and queue, pings; outgoing bytes and pongs bounded) -> members up, the
  ones the URL could not name SUBSCRIBEd in batches -> read -> on any failure,
  back off with jitter and start over; a planned reconnect before Binance's 24 h cut.

A kind (user data, market) says only what differs, through a few hooks: how a
member gets its stream name, the URL of a list of names, what a message means,
and what a member coming up or going down does. A one-account user connection
is this loop with one member that cannot SUBSCRIBE (the `/ws?listenKey=` form);
a shared one has many.

Connections get a narrow `Link` (tuning, the attempt limiter, a random source,
a way to run blocking REST calls): never the manager that placed them.

Secrets: a listenKey is part of the URL and of SUBSCRIBE messages, so neither the
URL, nor a message, nor a websockets exception text is ever logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode

from exporter.logs import fields
from exporter.streams.tuning import (
    MAX_PARAMS,
    MAX_QUEUE,
    RESPONSE_TIMEOUT_S,
    STABLE_AFTER_S,
    AttemptLimiter,
    Bucket,
    Degraded,
    Renew,
    Tuning,
    backoff_delay,
    closed_why,
)

log = logging.getLogger("exporter.streams")
# websockets logs request lines (with the listenKey in the path) at debug: keep it silent.
WIRE_LOG = logging.getLogger("exporter.streams.wire")
WIRE_LOG.propagate = False
WIRE_LOG.disabled = True
_T = TypeVar("_T")


@dataclass
class Link:
    """What a connection may use of the layer around it."""

    tuning: Tuning
    limiter: AttemptLimiter
    rng: random.Random
    rest: Callable[[Callable[[], Any]], Awaitable[Any]]  # run a blocking call off the loop


class Member:
    """One subscriber of a connection: its identity, and whether it was ever up (back-off, reconnects)."""

    def __init__(self, ident: Hashable) -> None:
        self.ident = ident
        self.connected_once = False


class BoundedConnection(ClientConnection):
    """websockets' client connection with what we send back bounded.

    Every ping costs a pong that websockets writes at once, whether the peer reads or
    not: pings past the tuning's rate, more than `outgoing_max_bytes` waiting to be
    written, or any bytes stuck past the write limit for longer than the ping timeout
    (our own ping then waits on drain and its timeout never starts) drop the connection.
    """

    tuning: Tuning = Tuning()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped: str | None = None
        self._pings = Bucket(self.tuning.ping_rate, self.tuning.ping_burst)
        self._stuck_since: float | None = None

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING and not self._pings.take():
            self.drop("ping flood")
        super().process_event(event)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.check_outgoing()

    def check_outgoing(self) -> None:
        """Drop a peer that does not read what we send (called on every read and every second)."""
        transport = getattr(self, "transport", None)
        if transport is None or self.dropped is not None:
            return
        size = transport.get_write_buffer_size()
        if size > self.tuning.outgoing_max_bytes:
            self.drop("the server does not read")
            return
        if size > self.write_limit_high:
            now = time.monotonic()
            self._stuck_since = self._stuck_since or now
            if now - self._stuck_since > self.tuning.ping_timeout_s:
                self.drop("the server does not read")
        else:
            self._stuck_since = None

    def drop(self, why: str) -> None:
        if self.dropped is None:
            self.dropped = why
            self.transport.abort()


class _NoNames(Exception):
    """No member has a stream name (or there are no members): nothing to connect."""


class Connection:
    """One WebSocket and its members (all on the layer's loop). Subclasses are the kinds."""

    subscribes = True  # members join and leave a live connection by SUBSCRIBE / UNSUBSCRIBE
    what = "stream"  # for logs

    def __init__(self, link: Link, base: str, capacity: int) -> None:
        self.link = link
        self.base = base
        self.capacity = capacity
        self.members: dict[Hashable, Member] = {}
        self.task: asyncio.Task[None] | None = None
        self._ws: BoundedConnection | None = None
        self._live: dict[str, Member] = {}  # stream name -> member, on the live connection
        self._retired: dict[str, None] = {}  # names unsubscribed lately: their late messages are dropped
        self._outbox: asyncio.Queue[tuple[str, str, asyncio.Future[bool] | None]] = asyncio.Queue()
        self._pending: dict[int, list[asyncio.Future[bool] | None]] = {}
        self._ids = itertools.count(1)
        self._helpers: dict[Hashable, asyncio.Task[None]] = {}  # per member: join or keep-alive
        self._changed = asyncio.Event()

    # ---- the hooks a kind fills in -------------------------------------------------------------
    async def name(self, member: Member) -> str | None:
        """The member's stream name on the wire (may call REST); None: not now (retried)."""
        raise NotImplementedError

    def url(self, names: list[str]) -> tuple[str, int]:
        """The URL of a connection carrying these names, and how many of them it names."""
        raise NotImplementedError

    def handle(self, text: str | bytes) -> None:
        """One message: route it to its member(s). Degraded: reconnect; Renew: new key, new connection."""
        raise NotImplementedError

    def member_up(self, member: Member, again: bool) -> None:
        """A member's name is live on the connection (`again`: it was before)."""

    def member_attempt(self, member: Member) -> None:
        """The member's name is about to be tried on a connection (counts reconnects)."""

    def member_down(self, member: Member) -> None:
        """A member is no longer live (connection down, removed, renewed)."""

    def current_name(self, member: Member) -> str | None:
        """The member's name as it stands (no REST): None once renewed or refused."""
        raise NotImplementedError

    def forget_name(self, member: Member) -> None:
        """The member's name was refused: get a new one next time."""

    def count_all(self, kind: str) -> None:
        """A message that belongs to no one member (garbage, flooding): counted on every member."""

    # ---- membership ------------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.members) >= self.capacity

    def add(self, member: Member) -> None:
        self.members[member.ident] = member
        if self._ws is not None and self.subscribes:
            self._helper(member, self._join(member))
        else:
            self._changed.set()

    def remove(self, ident: Hashable) -> None:
        member = self.members.pop(ident, None)
        if member is None:
            return
        self._stop_helper(ident)
        self._unsubscribe(member)
        self.member_down(member)

    def name_of(self, member: Member) -> str | None:
        return next((name for name, m in self._live.items() if m is member), None)

    def _unsubscribe(self, member: Member) -> None:
        """Take the member's name off the live connection: UNSUBSCRIBEd, its late messages dropped."""
        name = self.name_of(member)
        if name is None:
            return
        del self._live[name]
        self._retired[name] = None
        while len(self._retired) > 4 * self.link.tuning.flood_burst:
            del self._retired[next(iter(self._retired))]
        if self._ws is not None and self.subscribes:
            self._outbox.put_nowait(("UNSUBSCRIBE", name, None))

    def renew(self, member: Member, why: str) -> None:
        """Only this member's name is gone (an expired key): off the connection, then join again."""
        self._unsubscribe(member)
        self.forget_name(member)
        self.member_down(member)
        log.warning(f"{self.what} down", extra=fields(**self.log_fields(member), reason=why, shared=True))
        if self._ws is not None and member.ident in self.members:
            self._helper(member, self._join(member))

    def log_fields(self, member: Member) -> dict[str, object]:
        return {}

    def _helper(self, member: Member, coro: Any) -> None:
        self._stop_helper(member.ident)
        self._helpers[member.ident] = asyncio.create_task(coro)

    def _stop_helper(self, ident: Hashable) -> None:
        task = self._helpers.pop(ident, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ---- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        tuning = self.link.tuning
        failures = 0
        while True:
            started = time.monotonic()
            why = ""
            try:
                await self._session()
                why = "closed by the server"
            except asyncio.CancelledError:
                self._down()
                raise
            except Renew as exc:
                why = str(exc)
            except InvalidStatus as exc:  # refused: a key may be invalid (which one is not said)
                if exc.response.status_code != 414:  # (URI too long says nothing about the keys)
                    for member in self.members.values():
                        self.forget_name(member)  # a POST returns a still active key unchanged: harmless
                why = f"handshake refused with HTTP {exc.response.status_code}"
            except _NoNames:
                why = "no stream name"
            except Degraded as exc:
                why = exc.why
            except ConnectionClosed as exc:
                why, too_big = closed_why(exc, tuning)
                if too_big:
                    self.count_all("invalid")
            except (OSError, TimeoutError, InvalidHandshake, asyncio.TimeoutError) as exc:
                why = type(exc).__name__  # never str(exc): it may quote the URL
            except Exception as exc:  # noqa: BLE001 - a bug: never let it end the connection for good
                # No traceback: an exception's text may quote the URL, and the URL may hold a listenKey.
                log.error(f"{self.what}: unexpected error", extra=fields(error=type(exc).__name__))
                why = f"internal error: {type(exc).__name__}"
            self._down()
            stable = time.monotonic() - started >= STABLE_AFTER_S and any(
                m.connected_once for m in self.members.values())
            failures = 1 if stable else failures + 1
            planned = why == "planned reconnect"
            delay = 0.0 if planned else backoff_delay(failures, tuning, self.link.rng)
            one = next(iter(self.members.values()), None) if len(self.members) == 1 else None
            extra = self.log_fields(one) if one is not None else {"members": len(self.members)}
            (log.info if planned else log.warning)(f"{self.what} down", extra=fields(
                **extra, reason=why, retry_in_s=round(delay, 1)))
            await asyncio.sleep(delay)
            if not self.members:  # all removed by a reload: wait for one to be added
                await self._changed.wait()
            self._changed.clear()

    async def _session(self) -> None:
        tuning = self.link.tuning
        if not self.members:
            raise _NoNames
        members = list(self.members.values())
        names = await asyncio.gather(*(self.name(m) for m in members))
        named = [(m, n) for m, n in zip(members, names, strict=True) if n is not None and m.ident in self.members]
        if not named:
            raise _NoNames
        await self.link.limiter.acquire()
        url, count = self.url([n for _, n in named])
        if not self.subscribes:
            named = named[:count]
        for member, _ in named[:count]:
            self.member_attempt(member)
        BoundedConnection.tuning = tuning
        async with connect(url, open_timeout=tuning.handshake_timeout_s, ping_interval=tuning.ping_interval_s,
                           ping_timeout=tuning.ping_timeout_s, close_timeout=1.0, max_size=tuning.max_message_bytes,
                           max_queue=MAX_QUEUE, compression=None, logger=WIRE_LOG, create_connection=BoundedConnection,
                           user_agent_header="binance-futures-exporter") as ws:
            assert isinstance(ws, BoundedConnection)
            self._ws = ws
            self._outbox = asyncio.Queue()
            for member, name in named[:count]:
                if member.ident in self.members and self.current_name(member) == name:  # not renewed meanwhile
                    self._live[name] = member
                    self._up(member)
            log.info(f"{self.what} connected", extra=fields(members=len(self._live)))
            if self.subscribes:
                for member in self.members.values():
                    if member not in self._live.values():
                        self._helper(member, self._join(member))
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                await asyncio.wait_for(self._read(ws), tuning.planned_reconnect_s)
            except (asyncio.TimeoutError, TimeoutError):
                raise Degraded("planned reconnect") from None
            except ConnectionClosed:
                if ws.dropped is not None:
                    self.count_all("invalid")
                    raise Degraded(ws.dropped) from None
                raise
            finally:
                sender.cancel()

    def _up(self, member: Member) -> None:
        again, member.connected_once = member.connected_once, True
        self.member_up(member, again)

    def _down(self) -> None:
        self._ws = None
        self._live.clear()
        for futures in self._pending.values():
            for future in futures:
                if future is not None and not future.done():
                    future.set_result(False)
        self._pending.clear()
        for ident in list(self._helpers):
            self._stop_helper(ident)
        for member in self.members.values():
            self.member_down(member)

    async def _read(self, ws: ClientConnection) -> None:
        tuning = self.link.tuning
        scale = max(1, len(self.members))
        bucket = Bucket(tuning.flood_rate * scale, tuning.flood_burst * scale)
        async for message in ws:
            if not bucket.take():
                self.count_all("invalid")
                raise Degraded("flooding")
            self.handle(message)

    # ---- one member on the live connection ------------------------------------------------------
    async def _join(self, member: Member) -> None:
        """A name for the member (if needed), SUBSCRIBEd on the live connection; retried with back-off."""
        failures = 0
        while member.ident in self.members and self._ws is not None:
            name = await self.name(member)
            if name is not None:
                self._live[name] = member  # its messages are its own from now on
                if await self._request("SUBSCRIBE", name):
                    self._helpers.pop(member.ident, None)
                    self._up(member)
                    return
                self._live.pop(name, None)
                self.forget_name(member)  # refused: the name is not valid (any more)
                log.warning(f"{self.what}: SUBSCRIBE refused", extra=fields(**self.log_fields(member)))
            failures += 1
            await asyncio.sleep(backoff_delay(failures, self.link.tuning, self.link.rng))

    # ---- sending ---------------------------------------------------------------------------------
    async def _request(self, method: str, name: str) -> bool:
        """Queue one name; True once Binance answered its message with a result, False otherwise."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        batches_ahead = self._outbox.qsize() // MAX_PARAMS + 1
        self._outbox.put_nowait((method, name, future))
        try:
            return await asyncio.wait_for(future, RESPONSE_TIMEOUT_S + batches_ahead * self.link.tuning.send_interval_s)
        except (asyncio.TimeoutError, TimeoutError):
            return False

    async def _send_loop(self, ws: BoundedConnection) -> None:
        """The only writer: one message per send interval at most, each naming up to MAX_PARAMS names of
        one method (Binance: 10 incoming messages per second, pings and pongs included); and once a
        second, a look at what the peer has not read."""
        while True:
            try:
                first = await asyncio.wait_for(self._outbox.get(), 1.0)
            except (asyncio.TimeoutError, TimeoutError):
                ws.check_outgoing()
                continue
            method = first[0]
            batch = [first]
            held: list[tuple[str, str, asyncio.Future[bool] | None]] = []
            while len(batch) < MAX_PARAMS and not self._outbox.empty():
                item = self._outbox.get_nowait()
                (batch if item[0] == method else held).append(item)
            for item in held:  # the other method goes in the next message, in order
                self._outbox.put_nowait(item)
            ident = next(self._ids)
            self._pending[ident] = [future for _, _, future in batch]
            try:
                await ws.send(json.dumps({"method": method, "params": [name for _, name, _ in batch], "id": ident}))
            except ConnectionClosed:
                return  # the reader sees it too and reconnects
            ws.check_outgoing()
            await asyncio.sleep(self.link.tuning.send_interval_s)

    def answer(self, data: Mapping[str, Any]) -> None:
        """A response to one of our messages: settles every name it carried."""
        futures = self._pending.pop(data["id"], None) if isinstance(data.get("id"), int) else None
        for future in futures or ():
            if future is not None and not future.done():
                future.set_result("error" not in data)

    def retired(self, name: str) -> bool:
        return name in self._retired


def is_response(data: Any) -> bool:
    return isinstance(data, dict) and "id" in data and ("result" in data or "error" in data) and "e" not in data
