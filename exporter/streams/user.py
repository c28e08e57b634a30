"""User data streams: the kind of connection that carries accounts' listenKeys.

One account's connection uses Binance's `/ws?listenKey=` form (COIN-M and Portfolio
Margin: `/ws/<key>`) and holds one member. USD-M accounts may share one connection
(`stream_keys_per_connection` > 1) in Binance's stream mode:

  {stream_base_url}/stream?listenKey=<k1>&events=E1/E2&listenKey=<k2>&events=E1/E2

naming as many keys as fit in MAX_URL_CHARS, the rest SUBSCRIBEd (batched) once
connected; every event then arrives in the envelope `{"stream": <listenKey>, "data": {...}}`.

A (re)connect is a gap for every member: each asks for a REST resync. Events are
routed by the envelope's key to that account only; a message naming no member key
is counted `invalid` on every member, except one naming a key this connection
dropped (a reload removed the account, or the key expired): that is dropped and
counted nowhere. listenKeyExpired, -1125 on keep-alive and a refused SUBSCRIBE renew
only that account's key: the expired one is UNSUBSCRIBEd, the new one SUBSCRIBEd.
Nothing ever DELETEs a key (the user's bots may share it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from exporter.forced_close import classify, may_be_forced_close
from exporter.listenkey import ListenKeyError, ListenKeys
from exporter.logs import fields
from exporter.parsing import BadResponse
from exporter.secrets import Secret
from exporter.streams.connection import Connection, Link, Member, is_response
from exporter.streams.events import Event, StreamState, parse_data, split_envelope
from exporter.streams.tuning import KEEPALIVE_RETRY_S, Bucket, Degraded, Renew
from exporter.targets import Target, TargetKey

log = logging.getLogger("exporter.streams")
# ORDER_TRADE_UPDATE: only its forced closes (liquidation, ADL) are counted; every other order
# event is dropped before it is parsed (`handle`): a busy bot sends thousands a minute.
USDM_EVENTS = ("ACCOUNT_UPDATE", "MARGIN_CALL", "ACCOUNT_CONFIG_UPDATE", "listenKeyExpired", "ORDER_TRADE_UPDATE")
ORDER_EVENT = "ORDER_TRADE_UPDATE"
ORDER_EVENT_BYTES = ORDER_EVENT.encode()
# A request line much over a few KiB is refused by common servers (HTTP 414; websockets' own
# limit is 8 KiB) and Binance documents none: the connect URL names the keys that fit in this,
# and the rest are SUBSCRIBEd on the open connection (about 27 keys of 64 characters fit).
MAX_URL_CHARS = 4096


def stream_url(base: str, market: str, key: Secret) -> str:
    """Binance's user data URL of one listenKey (see config's defaults for the bases)."""
    if market == "usdm":
        return f"{base}/ws?listenKey={key.reveal()}&events={'/'.join(USDM_EVENTS)}"
    return f"{base}/ws/{key.reveal()}"


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


class UserMember(Member):
    """One account's stream in one market: its listenKey calls, the key in use, its state."""

    def __init__(self, target: Target, keys: ListenKeys, state: StreamState) -> None:
        super().__init__(target.key)
        self.target = target
        self.keys = keys
        self.state = state
        self.key: Secret | None = None

    def __repr__(self) -> str:
        return f"UserMember({self.target.alias!r}, {self.target.market!r})"  # never the key


@dataclasses.dataclass
class UserLink:
    """What user connections need beyond the Link: the account's REST resync and event delivery."""

    resync: Callable[[TargetKey], None]  # a gap: refresh the account by REST, at once
    refresh: Callable[[TargetKey], None]  # an applied event: refresh it (spaced)
    modes_changed: Callable[[TargetKey], None] | None


class UserConnection(Connection):
    """Accounts' listenKeys on one connection: one (unshared form) or many (stream mode)."""

    what = "user stream"

    def __init__(self, link: Link, user: UserLink, base: str, capacity: int, shared: bool) -> None:
        super().__init__(link, base, capacity)
        self.user = user
        self.subscribes = shared
        self._own: dict[str, Bucket] = {}

    def log_fields(self, member: Member) -> dict[str, object]:
        assert isinstance(member, UserMember)
        return {"alias": member.target.alias, "market": member.target.market}

    def _members(self) -> list[UserMember]:
        return [m for m in self.members.values() if isinstance(m, UserMember)]

    async def name(self, member: Member) -> str | None:
        assert isinstance(member, UserMember)
        if member.key is None:
            try:
                member.key = await self.link.rest(member.keys.create)
            except ListenKeyError as exc:
                if not self.subscribes:  # the unshared loop's own reason for this round
                    raise Degraded(_key_why(exc)) from None
                log.warning("user stream: no listenKey", extra=fields(**self.log_fields(member), reason=exc.reason))
                return None
        return member.key.reveal() if member.key is not None else None

    def url(self, names: list[str]) -> tuple[str, int]:
        if not self.subscribes:
            member = self._members()[0]
            assert member.key is not None
            return stream_url(self.base, member.target.market, member.key), 1
        return shared_url(self.base, names, USDM_EVENTS)

    def current_name(self, member: Member) -> str | None:
        assert isinstance(member, UserMember)
        return member.key.reveal() if member.key is not None else None

    def forget_name(self, member: Member) -> None:
        assert isinstance(member, UserMember)
        member.key = None

    def member_up(self, member: Member, again: bool) -> None:
        """A member's key is live: a gap, so resync it by REST at once; keep the key alive."""
        assert isinstance(member, UserMember)
        if again and self.subscribes:  # shared: counted when it is back (not per refused SUBSCRIBE)
            member.state.reconnected()
        member.state.connected(time.monotonic())
        log.info("user stream connected", extra=fields(**self.log_fields(member), shared=self.subscribes))
        self.user.resync(member.target.key)
        self._helper(member, self._keepalive(member))

    def member_attempt(self, member: Member) -> None:
        assert isinstance(member, UserMember)
        if member.connected_once and not self.subscribes:  # one account: every connection attempt
            member.state.reconnected()

    def member_down(self, member: Member) -> None:
        assert isinstance(member, UserMember)
        member.state.disconnected()

    def count_all(self, kind: str) -> None:
        for member in self._members():
            member.state.count(kind)

    # ---- messages ----------------------------------------------------------------------------
    def handle(self, text: str | bytes) -> None:
        # Order events first, without parsing: nearly all are ordinary orders, dropped here for the
        # cost of two substring searches (benchmarks/liverisk.py: 1,000 a second well under 10 % of a core).
        if (ORDER_EVENT in text) if isinstance(text, str) else (ORDER_EVENT_BYTES in text):
            if may_be_forced_close(text):
                self._forced_close(text)
            return
        tuning = self.link.tuning
        try:
            stream, data = split_envelope(text)
        except BadResponse as exc:
            self.count_all("invalid")
            raise Degraded(f"invalid message: {exc}") from None
        if stream is None and self.subscribes:
            if is_response(data):
                self.answer(data)
            else:
                self.count_all("invalid")  # an unwrapped event on a shared connection: whose?
            return
        if stream is None:
            member = next(iter(self._live.values()), None)
        else:
            member = self._live.get(stream)
        if member is None:
            if stream is None or not self.retired(stream):
                self.count_all("invalid")  # names a key not on this connection: nobody's here
            return  # a key this connection dropped: late, and no one's business
        assert isinstance(member, UserMember)
        if self.subscribes:
            bucket = self._own.setdefault(stream or "", Bucket(tuning.flood_rate, tuning.flood_burst))
            if not bucket.take():
                member.state.count("invalid")
                return  # one account flooding a shared connection: its messages dropped, not the others'
        try:
            event = parse_data(data, stream)
        except BadResponse as exc:
            member.state.count("invalid")
            if not self.subscribes:
                raise Degraded(f"invalid message: {exc}") from None
            return
        if self.deliver(member, event):
            if self.subscribes:
                self.renew(member, "listenKeyExpired")
            else:
                member.key = None
                raise Renew("listenKeyExpired")

    def _forced_close(self, text: str | bytes) -> None:
        """A message that may be a forced close: parsed, classified, counted once per order on its account."""
        try:
            stream, data = split_envelope(text)
        except BadResponse:
            return  # not one we can read: an order event, so no one's business
        member = next(iter(self._live.values()), None) if stream is None and not self.subscribes \
            else self._live.get(stream or "")
        if not isinstance(member, UserMember) or not isinstance(data, dict):
            return
        close = classify(data)
        if close is not None:
            member.state.forced_close(close, time.time())

    def deliver(self, member: UserMember, event: Event) -> bool:
        """Apply one of the account's events; True: its key expired, renew it."""
        state = member.state
        if event.kind == "ACCOUNT_UPDATE" and member.target.market == "pm":
            # Portfolio Margin's wallet rows are totals over UM, CM and margin: its events' UM
            # wallet balances are not those figures. Counted, and the account refreshed.
            event = dataclasses.replace(event, assets={}, positions={})
        if event.kind == "listenKeyExpired":
            mine = member.key.reveal() if member.key is not None else None
            if event.listen_key is not None and event.listen_key != mine:
                state.count("invalid")  # about another account's key: not ours to act on
                return False
            state.apply(event, time.monotonic(), time.time())
            return True
        if state.apply(event, time.monotonic(), time.time()) and event.kind != "other":
            if event.modes and self.user.modes_changed is not None:
                self.user.modes_changed(member.target.key)
            self.user.refresh(member.target.key)
        return False

    async def _keepalive(self, member: UserMember) -> None:
        """PUT every 30 minutes; a key Binance no longer knows is renewed (shared) or reconnected."""
        tuning = self.link.tuning
        delay = tuning.keepalive_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.link.rest(member.keys.keepalive)
                delay = tuning.keepalive_s
            except ListenKeyError as exc:
                if exc.gone:
                    if self.subscribes:
                        self.renew(member, "listenKey expired on keep-alive")
                    else:
                        member.key = None
                        log.warning("user stream: listenKey expired on keep-alive, renewing",
                                    extra=fields(**self.log_fields(member)))
                        if self._ws is not None:
                            await self._ws.close()
                    return
                delay = min(KEEPALIVE_RETRY_S, tuning.keepalive_s)


def _key_why(exc: ListenKeyError) -> str:
    return f"listenKey {exc.reason}" + (f" status={exc.status}" if exc.status else "") + \
        (f" code={exc.code}" if exc.code is not None else "")
