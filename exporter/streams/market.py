"""Public market streams: mark prices, one connection per market, on the same connection loop.

Binance publishes every symbol's mark price each second at no request weight and with no
listenKey: `<symbol>@markPrice@1s` (lower-case symbol) on its public market streams,
USD-M on `wss://fstream.binance.com/market`, COIN-M on `wss://dstream.binance.com`.
A symbol is one member of its market's connection, SUBSCRIBEd once however many accounts
hold it (the caller says which symbols to watch) and UNSUBSCRIBEd when none does. The
URL names the first streams that fit in 4 KiB (`/stream?streams=a/b`), the rest are
SUBSCRIBEd in batches; a connection carries at most 1,024 streams (Binance's limit),
more symbols open a second one.

Each `markPriceUpdate` ({"e": "markPriceUpdate", "E": ms, "s": "BTCUSDT", "p": "11794.15", ...})
goes to the sink given at construction as (market, symbol, mark price as Decimal, E).
What the sink does with it (risk recomputation) is not this module's business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation

from exporter.parsing import SYMBOL_RE, BadResponse
from exporter.streams.connection import Connection, Link, Member, is_response
from exporter.streams.events import EVENT_FUTURE_S, EVENT_PAST_S, split_envelope
from exporter.streams.manager import Layer
from exporter.streams.tuning import MAX_STREAMS_PER_CONNECTION, Degraded

log = logging.getLogger("exporter.streams")
MARK_SUFFIX = "@markPrice@1s"
MAX_URL_CHARS = 4096
MAX_PRICE_CHARS = 40

MarkSink = Callable[[str, str, Decimal, int], None]


def mark_stream(symbol: str) -> str:
    """Binance's stream name of a symbol's mark price, every second."""
    return f"{symbol.lower()}{MARK_SUFFIX}"


def parse_mark(data: object, symbol: str) -> tuple[Decimal, int]:
    """(mark price, E) of one markPriceUpdate of `symbol`; BadResponse when it is not sane."""
    if not isinstance(data, dict) or data.get("e") != "markPriceUpdate":
        raise BadResponse("not a markPriceUpdate")
    if data.get("s") != symbol:
        raise BadResponse("s is not the subscribed symbol")
    raw, time_ms = data.get("p"), data.get("E")
    if isinstance(time_ms, bool) or not isinstance(time_ms, int) or time_ms <= 0:
        raise BadResponse("E is not a millisecond timestamp")
    if not isinstance(raw, str) or len(raw) > MAX_PRICE_CHARS:
        raise BadResponse("p is not a decimal string")
    try:
        price = Decimal(raw)
    except InvalidOperation:
        raise BadResponse("p is not a decimal string") from None
    if not price.is_finite() or price <= 0:
        raise BadResponse("p is not a positive price")
    return price, time_ms


class MarkMember(Member):
    """One symbol of one market."""

    def __init__(self, market: str, symbol: str) -> None:
        super().__init__((market, symbol))
        self.market, self.symbol = market, symbol


class MarketConnection(Connection):
    """A market's public connection: symbols SUBSCRIBEd as `<symbol>@markPrice@1s`."""

    what = "market stream"

    def __init__(self, link: Link, market: str, base: str, sink: MarkSink, status: MarketStatus) -> None:
        super().__init__(link, base, MAX_STREAMS_PER_CONNECTION)
        self.market = market
        self.sink = sink
        self.status = status

    def log_fields(self, member: Member) -> dict[str, object]:
        return {"market": self.market}

    async def name(self, member: Member) -> str | None:
        return self.current_name(member)

    def current_name(self, member: Member) -> str | None:
        assert isinstance(member, MarkMember)
        return mark_stream(member.symbol)

    def url(self, names: list[str]) -> tuple[str, int]:
        url, count = f"{self.base}/stream?streams=", 0
        for name in names:
            part = f"{'/' if count else ''}{name}"
            if count and len(url) + len(part) > MAX_URL_CHARS:
                break
            url, count = url + part, count + 1
        return url, count

    def member_up(self, member: Member, again: bool) -> None:
        self.status.set(self, True)

    def member_down(self, member: Member) -> None:
        if not self._live:
            self.status.set(self, False)

    def count_all(self, kind: str) -> None:
        self.status.count_invalid(self.market)

    def handle(self, text: str | bytes) -> None:
        try:
            stream, data = split_envelope(text)
        except BadResponse as exc:
            self.status.count_invalid(self.market)
            raise Degraded(f"invalid message: {exc}") from None
        if stream is None:
            if is_response(data):
                self.answer(data)
            else:
                self.status.count_invalid(self.market)
            return
        member = self._live.get(stream)
        if not isinstance(member, MarkMember):
            if not self.retired(stream):
                self.status.count_invalid(self.market)
            return
        try:
            price, time_ms = parse_mark(data, member.symbol)
        except BadResponse:
            self.status.count_invalid(self.market)
            return
        if not -EVENT_PAST_S <= time_ms / 1000.0 - time.time() <= EVENT_FUTURE_S:
            self.status.count_invalid(self.market)
            return
        self.sink(self.market, member.symbol, price, time_ms)


class MarketStatus:
    """Which markets' connections are up, and how many messages were not sane (read by scrapes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up: dict[str, set[int]] = {}  # market -> ids of its connections that are up
        self.invalid: dict[str, int] = {}

    def set(self, conn: MarketConnection, up: bool) -> None:
        with self._lock:
            ups = self._up.setdefault(conn.market, set())
            (ups.add if up else ups.discard)(id(conn))

    def count_invalid(self, market: str) -> None:
        with self._lock:
            self.invalid[market] = self.invalid.get(market, 0) + 1

    def markets(self, wanted: Iterable[str]) -> dict[str, bool]:
        with self._lock:
            return {market: bool(self._up.get(market)) for market in wanted}


class MarketStreams:
    """Mark prices of the symbols asked for, one connection per market (more past 1,024 symbols).

    Runs on a `Layer` shared with the user data streams: the same loop, the same
    connection-attempt limiter (Binance counts every WebSocket attempt from the IP).
    """

    def __init__(self, layer: Layer, bases: dict[str, str], sink: MarkSink) -> None:
        self.layer = layer
        self.bases = dict(bases)  # market -> base URL, e.g. {"usdm": "wss://fstream.binance.com/market"}
        self.sink = sink
        self.status = MarketStatus()
        self._lock = threading.Lock()
        self._wanted: dict[str, set[str]] = {market: set() for market in bases}
        self._conn_of: dict[tuple[str, str], Connection] = {}

    def watch(self, market: str, symbols: Iterable[str]) -> None:
        """Follow exactly these symbols of `market` from now on (SUBSCRIBE new ones, UNSUBSCRIBE the rest)."""
        if market not in self.bases:
            raise ValueError(f"no market stream base for {market}")
        wanted = {s for s in symbols if SYMBOL_RE.fullmatch(s)}
        with self._lock:
            self._wanted[market] = wanted
        self.layer.start(self._apply)

    def _apply(self) -> None:
        """On the loop: members to match what is wanted."""
        with self._lock:
            wanted = {(market, symbol) for market, symbols in self._wanted.items() for symbol in symbols}
        for ident in [i for i in self._conn_of if i not in wanted]:
            self.layer.unplace(self._conn_of.pop(ident), ident)
        for market, symbol in sorted(wanted - self._conn_of.keys()):
            base = self.bases[market]

            def fits(conn: Connection, market: str = market) -> bool:
                return isinstance(conn, MarketConnection) and conn.market == market

            self._conn_of[(market, symbol)] = self.layer.place(
                MarkMember(market, symbol), fits,
                lambda market=market, base=base: MarketConnection(  # type: ignore[misc]
                    self.layer.link, market, base, self.sink, self.status))

    def state(self) -> dict[str, bool]:
        """Up (True) or down per market this instance serves."""
        return self.status.markets(self.bases)

