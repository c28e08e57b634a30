"""The simulator's public market streams: mark prices over real WebSocket, as Binance serves them.

One server, both markets, Binance's paths (shared/binance-api.md §13.1):

* USD-M under `/market` (Binance's route since 2026-04-23): `/market/ws`,
  `/market/ws/<stream>` (raw payloads) and `/market/stream?streams=<a>/<b>`
  (combined: `{"stream": <name>, "data": <payload>}`);
* COIN-M at the root: `/ws`, `/ws/<stream>`, `/stream?streams=…`.

Streams: `<symbol>@markPrice@1s` (every second), `<symbol>@markPrice` (every
3 s), `!markPrice@arr@1s` / `!markPrice@arr` (every symbol of the market in one
array), and on COIN-M `<pair>@markPrice[@1s]` (the pair's symbols, an array).
Stream names are lower case; a well-formed name nothing matches is accepted
and stays silent, as on Binance.

Methods on a connection: `{"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params":
[...], "id": n}` → `{"result": null, "id": n}`; `LIST_SUBSCRIPTIONS` →
`{"result": [names], "id": n}`. Choices where Binance's docs are terse: a
request that is not JSON → `{"error": {"code": 3, "msg": "Invalid JSON"},
"id": null}`; a method or params not as above, or a name with upper-case
letters → `{"error": {"code": 2, "msg": …}, "id": n}`; past 1,024 streams on
one connection → code 2 and nothing added; more than 10 incoming messages in
one second → the connection is closed (policy violation, 1008).

`publish(marks, server_ms)` (from any thread) sends one tick: the simulator
calls it every second after moving the marks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from exporter.loopthread import LoopThread

from .accounts import format_decimal

MAX_STREAMS = 1024
MAX_INCOMING_PER_S = 10
SLOW_EVERY = 3  # <symbol>@markPrice: every 3 s
# <symbol in lower case>@<kind>[@<option>...], or !<kind>@arr...: the form of Binance's stream names.
STREAM_RE = re.compile(r"(![A-Za-z]{1,32}|[a-z0-9_]{1,64})(@[A-Za-z0-9_]{1,32}){1,3}")
ALL_MARKS = "!markPrice@arr"
QUIET = logging.getLogger("exporter.simulator.market_stream.wire")
QUIET.propagate = False
QUIET.disabled = True
FUNDING_INTERVAL_MS = 8 * 3600 * 1000
PING_INTERVAL_S = 180.0
PING_TIMEOUT_S = 600.0


def market_of(path: str) -> tuple[str, str] | None:
    """(market, path inside it) of a request path: /market/... is USD-M, the rest COIN-M."""
    if path == "/market" or path.startswith("/market/"):
        return "usdm", path[len("/market"):]
    return "coinm", path


def _route(path: str) -> tuple[str, list[str], bool] | None:
    """(market, streams named in the URL, combined) of a request path; None if not a market stream."""
    parts = urlsplit(path)
    found = market_of(parts.path)
    if found is None:
        return None
    market, inner = found
    if inner == "/ws" or inner == "/ws/":
        return market, [], False
    if inner.startswith("/ws/"):
        return market, [name for name in inner[len("/ws/"):].split("/") if name], False
    if inner == "/stream":
        streams = dict(parse_qsl(parts.query)).get("streams", "")
        return market, [name for name in streams.split("/") if name], True
    return None


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    market: str
    combined: bool
    streams: list[str] = field(default_factory=list)
    incoming: deque[float] = field(default_factory=deque)
    requests: int = 0
    sent: int = 0


def _payload(symbol: str, mark: Decimal, server_ms: int) -> dict[str, Any]:
    delivery = "_" in symbol and not symbol.endswith("_PERP")
    next_funding = (server_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
    return {"e": "markPriceUpdate", "E": server_ms, "s": symbol, "p": format_decimal(mark),
            "i": format_decimal(mark * Decimal("0.9999")), "P": format_decimal(mark),
            "r": "" if delivery else "0.00010000", "T": 0 if delivery else next_funding}


class MarketStreamServer:
    """Mark price streams of both markets on one loopback port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._conns: set[_Conn] = set()
        self._loop = LoopThread("simulator-market-streams")
        self._server: Server | None = None
        self.url = ""  # ws://host:port (COIN-M base); USD-M is url + "/market"
        self.connections = 0
        self.ticks = 0

    def start(self) -> str:
        ready = threading.Event()
        self._loop.start(lambda stop: self._main(ready, stop))
        ready.wait(5)
        return self.url

    async def _main(self, ready: threading.Event, stop: asyncio.Event) -> None:
        # Binance pings every 3 minutes and drops a connection that has not answered within 10.
        async with serve(self._handle, self.host, 0, process_request=self._check, max_size=1 << 16,
                         ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S, logger=QUIET) as server:
            self._server = server
            self.url = f"ws://{self.host}:{server.sockets[0].getsockname()[1]}"
            ready.set()
            await stop.wait()
            server.close()

    def stop(self) -> None:
        self._loop.stop()

    def _check(self, connection: ServerConnection, request: Any) -> Any:
        route = _route(request.path)
        if route is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not a market stream\n")
        if len(route[1]) > MAX_STREAMS or any(not _valid(name) for name in route[1]):
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid stream name\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        route = _route(ws.request.path)
        assert route is not None
        market, streams, combined = route
        conn = _Conn(ws, market, combined, list(dict.fromkeys(streams)))
        self._conns.add(conn)
        self.connections += 1
        try:
            async for message in ws:
                now = time.monotonic()
                conn.incoming.append(now)
                while conn.incoming and conn.incoming[0] < now - 1.0:
                    conn.incoming.popleft()
                if len(conn.incoming) > MAX_INCOMING_PER_S:
                    await ws.close(1008, "Too many requests")
                    return
                await self._request(conn, message)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)

    async def _request(self, conn: _Conn, message: str | bytes) -> None:
        conn.requests += 1
        try:
            request = json.loads(message)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            await _send(conn.ws, json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        ident, method, params = request.get("id"), request.get("method"), request.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            await _send(conn.ws, json.dumps({"result": list(conn.streams), "id": ident}))
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list) \
                or not all(isinstance(p, str) and _valid(p) for p in params):
            await _send(conn.ws, json.dumps({"error": {"code": 2, "msg": "Invalid request: method or params"},
                                             "id": ident}))
            return
        if method == "UNSUBSCRIBE":
            conn.streams = [s for s in conn.streams if s not in params]
        else:
            added = [p for p in dict.fromkeys(params) if p not in conn.streams]
            if len(conn.streams) + len(added) > MAX_STREAMS:
                await _send(conn.ws, json.dumps({"error": {"code": 2, "msg": "Invalid request: too many streams"},
                                                 "id": ident}))
                return
            conn.streams.extend(added)
        await _send(conn.ws, json.dumps({"result": None, "id": ident}))

    # ---- ticks ---------------------------------------------------------------------------------
    def publish(self, marks: dict[str, Decimal], server_ms: int) -> None:
        """One second's mark price updates to every subscriber (from any thread)."""
        self._loop.call(self._publish, dict(marks), server_ms)

    def _publish(self, marks: dict[str, Decimal], server_ms: int) -> None:
        self.ticks += 1
        slow = self.ticks % SLOW_EVERY == 0
        for market in ("usdm", "coinm"):
            of_market = {s: m for s, m in marks.items() if ("USD_" in s) == (market == "coinm")}
            payloads = {s.lower(): _payload(s, m, server_ms) for s, m in of_market.items()}
            for conn in [c for c in self._conns if c.market == market]:
                for name in list(conn.streams):
                    data = _data(name, payloads, slow)
                    if data is None:
                        continue
                    body = {"stream": name, "data": data} if conn.combined else data
                    conn.sent += 1
                    asyncio.ensure_future(_send(conn.ws, json.dumps(body, separators=(",", ":"))))

    # ---- for tests -----------------------------------------------------------------------------
    def open_connections(self, market: str | None = None) -> int:
        return sum(1 for c in list(self._conns) if market in (None, c.market))

    def subscriptions(self, market: str | None = None) -> list[str]:
        """Every stream subscribed over the open connections (a stream on two connections: twice)."""
        return [s for c in list(self._conns) if market in (None, c.market) for s in list(c.streams)]

    def drop(self) -> None:
        """Cut every connection without a close frame: a network failure."""
        def cut() -> None:
            for conn in list(self._conns):
                conn.ws.transport.abort()

        self._loop.call(cut)


def _valid(name: str) -> bool:
    return STREAM_RE.fullmatch(name) is not None


def _data(name: str, payloads: dict[str, dict[str, Any]], slow: bool) -> Any:
    """What a stream name carries this tick, or None (silent this tick, or nothing it matches)."""
    if name.startswith(ALL_MARKS):
        head, marker, rest = ALL_MARKS, ALL_MARKS, name[len(ALL_MARKS):]
    else:
        head, marker, rest = name.partition("@markPrice")
    if not marker or rest not in ("", "@1s") or (rest == "" and not slow):
        return None
    if head == ALL_MARKS:
        return list(payloads.values()) or None
    if head in payloads:
        return payloads[head]
    pair = [p for s, p in payloads.items() if s.split("_")[0] == head]  # COIN-M <pair>@markPrice
    return pair or None


async def _send(ws: ServerConnection, message: str) -> None:
    try:
        await ws.send(message)
    except ConnectionClosed:
        pass
