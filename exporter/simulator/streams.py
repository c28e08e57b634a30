"""The simulator's user data streams: listenKeys over its HTTP API, events over real WebSocket.

listenKeys behave as Binance documents them: one active key per account and
API family (fapi, dapi, papi); a POST returns the active key (a new one if
none) and extends it by 60 minutes; PUT extends it, or answers -1125 when it
no longer exists; DELETE closes it (the simulator counts DELETEs so tests can
assert the exporter never sends one).

WebSocket paths on the simulator's stream port (its `stream_url`):

* `/private/ws?listenKey=<key>&events=E1/E2` (USD-M): delivers only the
  events named (all of them when `events` is absent);
* `/ws/<key>` (COIN-M) and `/pm/ws/<key>` (Portfolio Margin).

An unknown or expired key is refused at the handshake (HTTP 400). One thread
runs the asyncio loop of every connection; `push` may be called from any
thread. `expire` ends a key the way Binance does: a listenKeyExpired event on
its connections, then the key is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

KEY_TTL_S = 3600.0
LISTEN_KEY_FAMILIES = {"/fapi/v1/listenKey": "fapi", "/dapi/v1/listenKey": "dapi", "/papi/v1/listenKey": "papi"}
MSG_KEY_GONE = "This listenKey does not exist."
QUIET = logging.getLogger("exporter.simulator.streams.wire")  # websockets' per-connection lines: not wanted
QUIET.propagate = False
QUIET.disabled = True


@dataclass
class _Key:
    api_key: str
    family: str
    value: str
    expires: float  # monotonic


@dataclass(eq=False)  # kept in a set, by identity
class _Conn:
    ws: ServerConnection
    key: _Key
    events: frozenset[str] | None  # None: every event
    sent: int = 0


@dataclass
class ListenKeyBook:
    """Active keys by (api_key, family) and by value; what the exporter did to them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_account: dict[tuple[str, str], _Key] = field(default_factory=dict)
    by_value: dict[str, _Key] = field(default_factory=dict)
    posts: int = 0
    puts: int = 0
    deletes: int = 0

    def _live(self, api_key: str, family: str) -> _Key | None:
        key = self.by_account.get((api_key, family))
        if key is not None and key.expires <= time.monotonic():
            self._drop(key)
            return None
        return key

    def _drop(self, key: _Key) -> None:
        self.by_account.pop((key.api_key, key.family), None)
        self.by_value.pop(key.value, None)

    def post(self, api_key: str, family: str) -> str:
        with self.lock:
            self.posts += 1
            key = self._live(api_key, family)
            if key is None:
                key = _Key(api_key, family, secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")[:64], 0.0)
                self.by_account[(api_key, family)] = key
                self.by_value[key.value] = key
            key.expires = time.monotonic() + KEY_TTL_S
            return key.value

    def put(self, api_key: str, family: str) -> str | None:
        with self.lock:
            self.puts += 1
            key = self._live(api_key, family)
            if key is None:
                return None
            key.expires = time.monotonic() + KEY_TTL_S
            return key.value

    def delete(self, api_key: str, family: str) -> None:
        with self.lock:
            self.deletes += 1
            key = self._live(api_key, family)
            if key is not None:
                self._drop(key)

    def lookup(self, value: str, family: str) -> _Key | None:
        with self.lock:
            key = self.by_value.get(value)
            if key is None or key.family != family or key.expires <= time.monotonic():
                return None
            return key

    def forget(self, api_key: str, family: str) -> _Key | None:
        with self.lock:
            key = self.by_account.get((api_key, family))
            if key is not None:
                self._drop(key)
            return key


def _route(path: str) -> tuple[str, str | None, frozenset[str] | None] | None:
    """(family, listenKey, events) of a WebSocket request path; None if it is not a user stream."""
    parts = urlsplit(path)
    if parts.path == "/private/ws":
        query = parse_qs(parts.query)
        events, keys = query.get("events"), query.get("listenKey")
        return "fapi", keys[0] if keys else None, frozenset(events[0].split("/")) if events else None
    if parts.path.startswith("/pm/ws/"):
        return "papi", parts.path[len("/pm/ws/"):], None
    if parts.path.startswith("/ws/"):
        return "dapi", parts.path[len("/ws/"):], None
    return None


class StreamServer:
    """WebSocket user data streams on loopback, for one Simulator."""

    def __init__(self, keys: ListenKeyBook, host: str = "127.0.0.1") -> None:
        self.keys = keys
        self.host = host
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.url = ""
        self.connections = 0  # accepted handshakes, ever

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._main(ready))
            loop.close()

        self._thread = threading.Thread(target=run, name="simulator-streams", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self.url

    async def _main(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        async with serve(self._handle, self.host, 0, process_request=self._check, max_size=1 << 16,
                         ping_interval=None, logger=QUIET) as server:
            self._server = server
            port = server.sockets[0].getsockname()[1]
            self.url = f"ws://{self.host}:{port}"
            ready.set()
            await self._stopped.wait()
            server.close()

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(2.0)

    def _check(self, connection: ServerConnection, request: Any) -> Any:
        route = _route(request.path)
        if route is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not a user data stream\n")
        family, value, _ = route
        if not value or self.keys.lookup(value, family) is None:
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid listenKey\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set by the handshake, before the handler runs
        route = _route(ws.request.path)
        assert route is not None and route[1] is not None
        key = self.keys.lookup(route[1], route[0])
        if key is None:
            return
        conn = _Conn(ws, key, route[2])
        self._conns.add(conn)
        self.connections += 1
        try:
            async for _ in ws:  # clients send nothing we act on
                pass
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)

    # ---- pushing -------------------------------------------------------------------------------
    def open_streams(self, api_key: str | None = None, family: str | None = None) -> int:
        return sum(1 for c in list(self._conns)
                   if (api_key is None or c.key.api_key == api_key) and (family is None or c.key.family == family))

    def push(self, api_key: str, family: str, event: dict[str, Any] | str | bytes) -> None:
        """Send an event (a dict, or raw text/bytes for hostile tests) to the account's connections."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._push, api_key, family, event)

    def _push(self, api_key: str, family: str, event: dict[str, Any] | str | bytes) -> None:
        for conn in list(self._conns):
            if conn.key.api_key != api_key or conn.key.family != family:
                continue
            if isinstance(event, dict):
                if conn.events is not None and event.get("e") not in conn.events:
                    continue
                message: str | bytes = json.dumps(event, separators=(",", ":"))
            else:
                message = event
            conn.sent += 1
            asyncio.ensure_future(_send(conn.ws, message))

    def expire(self, api_key: str, family: str) -> None:
        """Binance's listenKeyExpired: pushed on the key's connections, then the key is gone."""
        key = self.keys.forget(api_key, family)
        if key is not None:
            self.push(api_key, family, {"e": "listenKeyExpired", "E": str(int(time.time() * 1000)),
                                        "listenKey": key.value})

    def drop(self, api_key: str | None = None) -> None:
        """Cut connections (all, or one account's) without a close frame: a network failure."""
        if self._loop is None:
            return

        def cut() -> None:
            for conn in list(self._conns):
                if api_key is None or conn.key.api_key == api_key:
                    conn.ws.transport.abort()

        self._loop.call_soon_threadsafe(cut)


async def _send(ws: ServerConnection, message: str | bytes) -> None:
    try:
        await ws.send(message)
    except ConnectionClosed:
        pass


# ---- events built from simulated accounts -------------------------------------------------------
def _positions_by_key(positions: list[Any]) -> dict[tuple[str, str], Any]:
    return {(p.symbol, p.side): p for p in positions}


def account_update(old: Any, new: Any, coin: bool, server_ms: int) -> dict[str, Any] | None:
    """ACCOUNT_UPDATE for what changed between two filled SimAccounts in one market; None if nothing did."""
    from .accounts import _position, format_decimal

    old_rows = {r.get("asset"): r for r in (old.coinm_balances if coin else old.balances) or []}
    new_rows = {r.get("asset"): r for r in (new.coinm_balances if coin else new.balances) or []}
    changed = [a for a, r in new_rows.items() if old_rows.get(a) != r]
    balances = [{"a": a, "wb": str(new_rows[a].get("balance")), "cw": str(new_rows[a].get("crossWalletBalance")),
                 "bc": "0"} for a in changed]
    old_pos = _positions_by_key(old.coinm_positions if coin else old.positions)
    new_pos = _positions_by_key(new.coinm_positions if coin else new.positions)
    rows = []
    for key in dict.fromkeys([*new_pos, *old_pos]):
        before, after = old_pos.get(key), new_pos.get(key)
        if before == after:
            continue
        if after is None:  # closed
            rows.append({"s": key[0], "pa": "0", "ep": "0", "bep": "0", "cr": "0", "up": "0", "mt": "cross",
                         "iw": "0", "ps": key[1]})
            continue
        values, _ = _position(after, coin)
        rows.append({"s": after.symbol, "pa": values["position_amount"], "ep": values["position_entry_price"],
                     "bep": str(values["position_break_even_price"]), "cr": "0",
                     "up": format_decimal(values["position_unrealized_pnl"]), "mt": values["marginType"],
                     "iw": values["position_isolated_wallet"], "ps": after.side})
    if not balances and not rows:
        return None
    return {"e": "ACCOUNT_UPDATE", "E": server_ms, "T": server_ms,
            "a": {"m": "ADJUSTMENT", "B": balances, "P": rows}}


def margin_call(position: Any, values: dict[str, Any], cross_wallet: str, server_ms: int) -> dict[str, Any]:
    """MARGIN_CALL for one position (the fields of Binance's example)."""
    return {"e": "MARGIN_CALL", "E": server_ms, "cw": cross_wallet,
            "p": [{"s": position.symbol, "ps": position.side, "pa": values["position_amount"],
                   "mt": values["marginType"].upper(), "iw": values["position_isolated_wallet"],
                   "mp": values["position_mark_price"], "up": str(values["position_unrealized_pnl"]),
                   "mm": str(values["position_maint_margin"])}]}


def risk_level_change(account: dict[str, Any], server_ms: int) -> dict[str, Any]:
    """Portfolio Margin riskLevelChange from a /papi/v1/account answer."""
    return {"e": "riskLevelChange", "E": server_ms, "u": str(account["uniMMR"]), "s": account["accountStatus"],
            "eq": str(account["accountEquity"]), "ae": str(account["actualEquity"]),
            "m": str(account["accountMaintMargin"])}
