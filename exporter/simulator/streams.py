"""The simulator's user data streams: listenKeys over its HTTP API, events over real WebSocket.

listenKeys behave as Binance documents them: one active key per account and
API family (fapi, dapi, papi); a POST returns the active key (a new one if
none) and extends it by 60 minutes; PUT extends it, or answers -1125 when it
no longer exists; DELETE closes it (the simulator counts DELETEs so tests can
assert the exporter never sends one).

WebSocket paths on the simulator's stream port (its `stream_url`):

* `/private/ws?listenKey=<key>&events=E1/E2` (USD-M): delivers only the
  events named (all of them when `events` is absent), unwrapped;
* `/private/stream?listenKey=<k1>&events=E1/E2&listenKey=<k2>&events=E1`
  (USD-M, Binance's "stream mode": several listenKeys on one connection, each
  with the events listed after it): every event arrives in the combined-stream
  envelope `{"stream": <listenKey>, "data": {...}}`. JSON
  `{"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params": [<listenKey>, ...], "id": n}`
  adds or removes keys on a live connection (a key added this way gets every
  event: Binance documents no per-key event list for SUBSCRIBE); the answer is
  `{"result": null, "id": n}`, or `{"error": {"code": 2, "msg": ...}, "id": n}`
  when a key is unknown or expired (then nothing changes);
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
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from exporter.loopthread import LoopThread

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
    keys: dict[str, tuple[_Key, frozenset[str] | None]]  # listenKey -> (key, events; None: every event)
    enveloped: bool  # /private/stream: {"stream": <listenKey>, "data": event}
    sent: int = 0
    requests: int = 0  # SUBSCRIBE / UNSUBSCRIBE / other JSON messages received

    def carries(self, api_key: str | None, family: str | None) -> bool:
        return any((api_key is None or k.api_key == api_key) and (family is None or k.family == family)
                   for k, _ in self.keys.values())


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


Route = tuple[str, list[tuple[str, frozenset[str] | None]], bool]


def _route(path: str) -> Route | None:
    """(family, [(listenKey, events)], enveloped) of a WebSocket request path; None if not a user stream."""
    parts = urlsplit(path)
    if parts.path in ("/private/ws", "/private/stream"):
        pairs: list[tuple[str, frozenset[str] | None]] = []
        for name, value in parse_qsl(parts.query):  # in order: each events= belongs to the key before it
            if name == "listenKey":
                pairs.append((value, None))
            elif name == "events" and pairs:
                pairs[-1] = (pairs[-1][0], frozenset(value.split("/")))
        stream = parts.path == "/private/stream"
        if not stream and len(pairs) > 1:
            return "fapi", [], False  # ws mode carries one key
        return "fapi", pairs, stream
    if parts.path.startswith("/pm/ws/"):
        return "papi", [(parts.path[len("/pm/ws/"):], None)], False
    if parts.path.startswith("/ws/"):
        return "dapi", [(parts.path[len("/ws/"):], None)], False
    return None


class StreamServer:
    """WebSocket user data streams on loopback, for one Simulator."""

    def __init__(self, keys: ListenKeyBook, host: str = "127.0.0.1") -> None:
        self.keys = keys
        self.host = host
        self._conns: set[_Conn] = set()
        self._loop = LoopThread("simulator-streams")
        self._server: Server | None = None
        self.url = ""
        self.connections = 0  # accepted handshakes, ever
        self.refuse_subscribes = 0  # tests: answer this many next SUBSCRIBEs with an error

    def start(self) -> str:
        ready = threading.Event()
        self._loop.start(lambda stop: self._main(ready, stop))
        ready.wait(5)
        return self.url

    async def _main(self, ready: threading.Event, stop: asyncio.Event) -> None:
        async with serve(self._handle, self.host, 0, process_request=self._check, max_size=1 << 16,
                         ping_interval=None, logger=QUIET) as server:
            self._server = server
            port = server.sockets[0].getsockname()[1]
            self.url = f"ws://{self.host}:{port}"
            ready.set()
            await stop.wait()
            server.close()

    def stop(self) -> None:
        self._loop.stop()

    def _check(self, connection: ServerConnection, request: Any) -> Any:
        route = _route(request.path)
        if route is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not a user data stream\n")
        family, pairs, stream = route
        if not pairs and not stream:
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid listenKey\n")
        if any(not value or self.keys.lookup(value, family) is None for value, _ in pairs):
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid listenKey\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set by the handshake, before the handler runs
        route = _route(ws.request.path)
        assert route is not None
        family, pairs, stream = route
        keys: dict[str, tuple[_Key, frozenset[str] | None]] = {}
        for value, events in pairs:
            key = self.keys.lookup(value, family)
            if key is None:
                return
            keys[value] = (key, events)
        conn = _Conn(ws, keys, stream)
        self._conns.add(conn)
        self.connections += 1
        try:
            async for message in ws:
                if stream:
                    await self._request(conn, family, message)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)

    async def _request(self, conn: _Conn, family: str, message: str | bytes) -> None:
        """SUBSCRIBE / UNSUBSCRIBE of listenKeys on a stream-mode connection, answered like Binance."""
        conn.requests += 1
        try:
            request = json.loads(message)
            method, params, ident = request["method"], request["params"], request["id"]
            if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list) \
                    or not all(isinstance(p, str) for p in params):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            await _send(conn.ws, json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if method == "UNSUBSCRIBE":
            for value in params:
                conn.keys.pop(value, None)
            await _send(conn.ws, json.dumps({"result": None, "id": ident}))
            return
        found = [(value, self.keys.lookup(value, family)) for value in params]
        refused, self.refuse_subscribes = self.refuse_subscribes > 0, max(0, self.refuse_subscribes - 1)
        if refused or any(key is None for _, key in found):
            await _send(conn.ws, json.dumps({"error": {"code": 2, "msg": "Invalid request: listenKey"},
                                             "id": ident}))
            return
        for value, key in found:
            assert key is not None
            conn.keys[value] = (key, None)
        await _send(conn.ws, json.dumps({"result": None, "id": ident}))

    # ---- pushing -------------------------------------------------------------------------------
    def open_streams(self, api_key: str | None = None, family: str | None = None) -> int:
        """Open connections carrying a key of the account (any account) in the family (any)."""
        return sum(1 for c in list(self._conns) if c.carries(api_key, family))

    def subscriptions(self, api_key: str | None = None, family: str | None = None) -> int:
        """Subscribed listenKeys over all open connections (a key on two connections counts twice)."""
        return sum(1 for c in list(self._conns) for k, _ in list(c.keys.values())
                   if (api_key is None or k.api_key == api_key) and (family is None or k.family == family))

    def requests_received(self) -> int:
        """JSON messages (SUBSCRIBE, UNSUBSCRIBE, anything else) clients sent, on open connections."""
        return sum(c.requests for c in list(self._conns))

    def push(self, api_key: str, family: str, event: dict[str, Any] | str | bytes) -> None:
        """Send an event (a dict, or raw text/bytes for hostile tests) to the account's connections."""
        self._loop.call(self._push, api_key, family, event)

    def _push(self, api_key: str, family: str, event: dict[str, Any] | str | bytes) -> None:
        for conn in list(self._conns):
            for value, (key, events) in list(conn.keys.items()):
                if key.api_key != api_key or key.family != family:
                    continue
                if isinstance(event, dict):
                    if events is not None and event.get("e") not in events:
                        continue
                    body = {"stream": value, "data": event} if conn.enveloped else event
                    message: str | bytes = json.dumps(body, separators=(",", ":"))
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
        def cut() -> None:
            for conn in list(self._conns):
                if conn.carries(api_key, None):
                    conn.ws.transport.abort()

        self._loop.call(cut)


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
