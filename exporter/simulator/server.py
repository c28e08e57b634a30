"""The simulator's HTTP server, routing and request pipeline.

Order of processing (documented because it decides which answer wins):

1. ``intercept("received")``: every request, before anything else;
2. charge its weight to (client IP, API family [, /sapi endpoint]) before
   any validation, like Binance: banned → 418, over the limit → 429;
3. ``intercept("request")``: every admitted request, before routing
   (global faults plug in here, for /time and /ping too);
4. method (non-GET → 405) and route (unknown path → 404);
5. signed endpoints: ``latency_s``, validation (see gate), then
   ``intercept("signed")`` (only requests that passed validation), then the
   payload (see accounts);
6. deformers returned by the hooks rewrite the 200 answer last, in order.

An ``intercept`` returns None (carry on), a Reply (answer that instead), or a
callable Reply → Reply (rewrite the normal 200 answer). The hooks are no-ops
here; testkit's Simulator plugs fault injection and request counters into them.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from . import accounts as a
from .accounts import AccountBook, SimAccount, SimPosition, SimSubAccount
from .drift import drift_account
from .gate import (
    MSG_METHOD_NOT_ALLOWED,
    MSG_NOT_FOUND,
    MSG_REJECTED_KEY,
    ApiError,
    RateLimiter,
    Reply,
    authenticate,
    banned_msg,
    too_many_requests_msg,
)
from .market import SimMarket, exchange_info, leverage_brackets, liquidated, live_account, order_trade_update
from .market_stream import MarketStreamServer
from .streams import (
    LISTEN_KEY_FAMILIES,
    MSG_KEY_GONE,
    ListenKeyBook,
    StreamServer,
    account_update,
    margin_call,
    risk_level_change,
)

IDLE_TIMEOUT_S = 60
MAX_DRAINED_BODY = 1 << 20
LOOPBACK = "127.0.0.1"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
SAPI_WEIGHT_HEADER = "X-SAPI-USED-IP-WEIGHT-1M"
FAMILIES = ("fapi", "dapi", "papi", "api", "sapi")

Builder = Callable[[SimAccount, dict[str, str]], Any]
# path -> (IP weight, builder); a None builder is unsigned (ping {} or time). Weights: spec §10.1.
ROUTES: dict[str, tuple[int, Builder | None]] = {
    "/fapi/v1/ping": (1, None),
    "/fapi/v1/time": (1, None),
    "/fapi/v3/balance": (5, a.usdm_balance),
    "/fapi/v2/balance": (5, a.usdm_balance),  # weight: Simulator.v2_balance_weight
    "/fapi/v3/account": (5, partial(a.usdm_account, version=3)),
    "/fapi/v2/account": (5, partial(a.usdm_account, version=2)),
    "/fapi/v3/positionRisk": (5, partial(a.usdm_position_risk, version=3)),
    "/fapi/v2/positionRisk": (5, partial(a.usdm_position_risk, version=2)),
    "/fapi/v1/accountConfig": (5, a.usdm_account_config),
    "/dapi/v1/time": (1, None),
    "/dapi/v1/balance": (1, a.coinm_balance),
    "/dapi/v1/account": (5, a.coinm_account),
    "/dapi/v1/positionRisk": (1, a.coinm_position_risk),
    "/papi/v1/ping": (1, None),  # Portfolio Margin has no time endpoint
    "/papi/v1/balance": (20, a.pm_balance),
    "/papi/v1/account": (20, a.pm_account),
    "/papi/v1/um/positionRisk": (5, a.pm_um_position_risk),
    "/papi/v1/cm/positionRisk": (1, a.pm_cm_position_risk),
    "/api/v3/time": (1, None),
    "/sapi/v1/sub-account/list": (1, a.sub_account_list),
    "/sapi/v2/sub-account/futures/account": (1, a.sub_account_futures),
    "/sapi/v2/sub-account/futures/positionRisk": (1, a.sub_account_position_risk),
}
# Live risk (market): path -> (IP weight, builder(market, account, params)); /dapi/v1/exchangeInfo is public.
# /dapi/v2/leverageBracket: the SDK's "2 without symbol" (every symbol is what the exporter reads).
MARKET_ROUTES: dict[str, tuple[int, Callable[[SimMarket, SimAccount, dict[str, str]], Any]]] = {
    "/fapi/v1/leverageBracket": (1, partial(leverage_brackets, coin=False)),
    "/papi/v1/um/leverageBracket": (1, partial(leverage_brackets, coin=False)),
    "/dapi/v2/leverageBracket": (2, partial(leverage_brackets, coin=True)),
}
PUBLIC_ROUTES = {"/dapi/v1/exchangeInfo": 1}
Intercept = Reply | Callable[[Reply], Reply] | None
MARKET_FAMILIES = {"usdm": "fapi", "coinm": "dapi", "pm": "papi"}
RISK_TICK_S = 1.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    api_key: str | None  # after validation (stage "signed"): the authenticated key
    client_ip: str


def family_of(path: str) -> str:
    """The API family whose weight budget a path draws on; anything unknown counts as fapi."""
    head = path.split("/", 2)[1] if path.count("/") >= 2 else ""
    return head if head in FAMILIES else "fapi"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "binance-futures-simulator"
    timeout = IDLE_TIMEOUT_S  # idle keep-alive connections are dropped, like a real front end
    # Headers and body leave in one segment; split writes would hit Nagle + delayed ACK (~40 ms).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _HTTPServer
    _weight_sent = False

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silenced: per-request logging would drown test and benchmark output."""

    # Every answer carries a weight header, http.server's own error pages included.
    def send_response(self, code: int, message: str | None = None) -> None:
        self._weight_sent = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() in (WEIGHT_HEADER.lower(), SAPI_WEIGHT_HEADER.lower()):
            self._weight_sent = True
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        if not self._weight_sent:
            self.send_header(WEIGHT_HEADER, str(self.server.sim.used_weight("fapi", self.client_address[0])))
        super().end_headers()

    def do_GET(self) -> None:
        self._drain_body()
        path, _, query = self.path.partition("?")
        request = Request(self.command, path, query, self.headers.get("X-MBX-APIKEY"), self.client_address[0])
        reply = self.server.sim.handle(request)
        if reply.reset:
            self._abort()
            return
        if reply.raw:
            self.send_response_only(reply.status)
            self._weight_sent = True
        else:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
        if not any(name.lower() == "content-length" for name, _ in reply.headers):
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # noqa: N815 - http.server's names

    def _drain_body(self) -> None:
        """Consume any request body so the next request on this connection parses cleanly."""
        length = self.headers.get("Content-Length")
        if "Transfer-Encoding" in self.headers or (length and not length.isdigit()):
            self.close_connection = True
        elif length and 0 < int(length) <= MAX_DRAINED_BODY:
            self.rfile.read(int(length))
        elif length and int(length) != 0:
            self.close_connection = True

    def _abort(self) -> None:
        """Drop the connection with a TCP RST and no answer (SO_LINGER 0, then close)."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # rfile/wfile hold references on the socket: the fd (and the RST) goes when the
        # last one closes. Nothing is buffered in wfile for this request.
        self.rfile.close()
        sock.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for slow or idle connections
    request_queue_size = 1024  # benchmarks open hundreds of connections at once

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self._open_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it, it can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.sim.on_connection()
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-answer (timeouts, stop()) are normal here, not bugs.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def abort_connections(self) -> None:
        """Wake every handler blocked on a client socket so its thread ends promptly."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Simulator:
    """A local stand-in for Binance's futures account APIs; see the package docstring.

    Every constructor setting is also an attribute, read live on each request.
    """

    def __init__(
        self,
        accounts: Iterable[SimAccount] = (),
        *,
        host: str = LOOPBACK,
        port: int = 0,
        clock_skew_ms: int = 0,
        latency_s: float = 0.0,  # before every signed request is validated
        weight_limit: int = 2400,  # fapi
        dapi_weight_limit: int = 2400,
        papi_weight_limit: int = 6000,
        api_weight_limit: int = 6000,
        sapi_weight_limit: int = 12000,  # per endpoint
        v2_balance_weight: int = 5,
        weights: dict[str, int] | None = None,  # path -> weight, overrides ROUTES
        max_recv_window_ms: int | None = 60000,
        ban_after_429s: int = 3,
        send_retry_after: bool = True,  # fapi/dapi/papi/api; /sapi always sends it (documented)
        market: SimMarket | None = None,  # live marks (see market): REST, market streams, liquidations
    ) -> None:
        self.host, self.port = host, port
        self.clock_skew_ms = clock_skew_ms
        self.latency_s = latency_s
        self.weight_limit = weight_limit
        self.dapi_weight_limit = dapi_weight_limit
        self.papi_weight_limit = papi_weight_limit
        self.api_weight_limit = api_weight_limit
        self.sapi_weight_limit = sapi_weight_limit
        self.v2_balance_weight = v2_balance_weight
        self.weights = dict(weights or {})
        self.max_recv_window_ms = max_recv_window_ms
        self.ban_after_429s = ban_after_429s
        self.send_retry_after = send_retry_after
        self._book = AccountBook(accounts)
        self._limiter = RateLimiter()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self.listen_keys = ListenKeyBook()
        self._streams = StreamServer(self.listen_keys, host)
        # Demo accounts (drift=True) with an open stream get MARGIN_CALL when a position's mark
        # comes this close to its liquidation price, and riskLevelChange when a PM status changes.
        self.margin_call_distance = 0.05
        self._risk_seen: dict[tuple[str, str, str], bool | str] = {}
        self._risk_thread: threading.Thread | None = None
        # Live risk: with a market, marks walk every second (market.step), the market streams carry
        # them, REST answers follow them, and an account past its liquidation price is liquidated.
        self.market = market
        self._static_market = SimMarket()  # brackets and contract sizes without a live market
        self._market_streams = MarketStreamServer(host)
        self.auto_liquidate = True
        # Demo: a liquidated position comes back this many seconds later, at the mark of the moment,
        # with the wallet it had before (None: gone for good, as on Binance).
        self.reopen_after_s: float | None = None
        self._reopen: list[tuple[float, str, bool, list[SimPosition], list[dict[str, Any]]]] = []
        self._order_ids = 700000000
        self.liquidations = 0  # positions liquidated since start (tests, the demo)
        self._market_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> str:
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            self._stopping.clear()
            server = _HTTPServer((self.host, self.port), self)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name="binance-simulator", daemon=True)
            thread.start()
            host, port = server.socket.getsockname()[:2]
            self._server, self._thread = server, thread
            self._base_url = f"http://{host}:{port}"
            self._streams.start()
            if self.market is not None:
                self._market_streams.start()
            self._risk_thread = threading.Thread(target=self._risk_loop, name="simulator-risk", daemon=True)
            self._risk_thread.start()
            return self._base_url

    def stop(self) -> None:
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency
        self._streams.stop()
        self._market_streams.stop()
        server.shutdown()
        server.server_close()
        server.abort_connections()
        if thread is not None:
            thread.join(timeout=1.0)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    @property
    def stream_url(self) -> str:
        """The WebSocket base of the user data streams: USD-M {url}/private, COIN-M {url}, PM {url}/pm."""
        if not self._streams.url:
            raise RuntimeError("simulator not started")
        return self._streams.url

    @property
    def market_stream_url(self) -> str:
        """USD-M market streams' base (Binance's `wss://fstream.binance.com/market`); needs a market."""
        if not self._market_streams.url:
            raise RuntimeError("simulator not started with a market")
        return self._market_streams.url + "/market"

    @property
    def coinm_market_stream_url(self) -> str:
        """COIN-M market streams' base (Binance's `wss://dstream.binance.com`); needs a market."""
        if not self._market_streams.url:
            raise RuntimeError("simulator not started with a market")
        return self._market_streams.url

    def market_subscriptions(self, market: str | None = None) -> list[str]:
        """Streams subscribed on the open market-stream connections (usdm, coinm, or both)."""
        return self._market_streams.subscriptions(market)

    def market_connections(self, market: str | None = None) -> int:
        return self._market_streams.open_connections(market)

    def drop_market_streams(self) -> None:
        self._market_streams.drop()

    def tick(self) -> None:
        """One second of the market: marks move, the streams carry them, crossed accounts are liquidated."""
        if self.market is None:
            return
        with self._market_lock:
            marks = self.market.step()
            self._market_streams.publish(marks, self.server_time_ms())
            if self.auto_liquidate:
                self.check_liquidations()
            self._reopen_due()

    def _reopen_due(self) -> None:
        now = time.monotonic()
        due = [entry for entry in self._reopen if entry[0] <= now]
        self._reopen = [entry for entry in self._reopen if entry[0] > now]
        for _, api_key, coin, positions, rows in due:
            stored = self._book.get(api_key)
            if stored is None or self.market is None:
                continue
            back = [replace(p, entry_price=format(self.market.mark(p.symbol) or a.dec(p.entry_price), "f"),
                            mark_price=None) for p in positions]
            if coin:
                self.update_account(api_key, coinm_positions=stored.coinm_positions + back, coinm_balances=rows)
            else:
                self.update_account(api_key, positions=stored.positions + back, balances=rows)

    def publish_marks(self) -> None:
        """Send the current marks on the market streams now (after set_mark, without a step)."""
        if self.market is not None:
            self._market_streams.publish(self.market.current(), self.server_time_ms())

    def _live(self, account: SimAccount) -> SimAccount:
        """The account as REST answers it now: drifting (demo) and at the market's marks."""
        now = self.server_time_ms()
        account = drift_account(account, now) if account.drift else account
        return live_account(self.market, account) if self.market is not None else account

    def check_liquidations(self) -> None:
        """Liquidate every position past its liquidation price, as Binance's engine would.

        For each: ORDER_TRADE_UPDATE NEW and FILLED (client order id autoclose-…, type LIQUIDATION)
        on the account's user data stream, then the position closed and its loss taken from the
        wallet (an ACCOUNT_UPDATE, as update_account pushes).
        """
        if self.market is None:
            return
        for stored in self._book.all():
            live = self._live(stored)
            for market, coin in (("usdm", False), ("coinm", True)):
                gone, after = liquidated(stored, live, coin)
                if not gone:
                    continue
                now = self.server_time_ms()
                for position in gone:
                    self.liquidations += 1
                    self._order_ids += 1
                    for status in ("NEW", "FILLED"):
                        self.push_event(stored.api_key, market, order_trade_update(position, self._order_ids, status,
                                                                                   now))
                if self.reopen_after_s is not None:
                    keys = {(p.symbol, p.side) for p in gone}
                    kept = [p for p in (stored.coinm_positions if coin else stored.positions)
                            if (p.symbol, p.side) in keys]
                    rows = list((stored.coinm_balances if coin else stored.balances) or [])
                    self._reopen.append((time.monotonic() + self.reopen_after_s, stored.api_key, coin, kept, rows))
                changes = ({"coinm_positions": after.coinm_positions, "coinm_balances": after.coinm_balances}
                           if coin else {"positions": after.positions, "balances": after.balances})
                self.update_account(stored.api_key, **changes)
                stored = self._book.get(stored.api_key) or stored
                live = self._live(stored)

    def auto_deleverage(self, api_key: str, market: str, symbol: str, side: str = "BOTH") -> None:
        """Close a position by ADL: ORDER_TRADE_UPDATE NEW and FILLED with client order id adl_autoclose,
        at the position's mark price, then the position gone (its PnL realized into the wallet)."""
        stored = self._book.get(api_key)
        if stored is None:
            raise KeyError(api_key)
        coin = market == "coinm"
        live = self._live(stored)
        position = next(p for p in (live.coinm_positions if coin else live.positions)
                        if p.symbol == symbol and p.side == side)
        now = self.server_time_ms()
        self._order_ids += 1
        at_mark = replace(position, liquidation_price=position.mark_price or position.entry_price)
        for status in ("NEW", "FILLED"):
            self.push_event(api_key, market, order_trade_update(at_mark, self._order_ids, status, now,
                                                                client_order_id="adl_autoclose"))
        kept = [p for p in (stored.coinm_positions if coin else stored.positions)
                if (p.symbol, p.side) != (symbol, side)]
        self.update_account(api_key, **({"coinm_positions": kept} if coin else {"positions": kept}))

    # ---- user data streams ---------------------------------------------------------------------
    def push_event(self, api_key: str, market: str, event: dict[str, Any] | str | bytes) -> None:
        """Send an event (or, for hostile tests, raw text or bytes) on the account's streams of a market."""
        self._streams.push(api_key, MARKET_FAMILIES[market], event)

    def expire_listen_key(self, api_key: str, market: str) -> None:
        """End the account's listenKey as Binance does: listenKeyExpired on its streams, then -1125."""
        self._streams.expire(api_key, MARKET_FAMILIES[market])

    def drop_streams(self, api_key: str | None = None) -> None:
        """Cut stream connections (all, or one account's) without a close frame."""
        self._streams.drop(api_key)

    def open_streams(self, api_key: str | None = None, market: str | None = None) -> int:
        """Open stream connections carrying a listenKey of the account (of any account)."""
        return self._streams.open_streams(api_key, MARKET_FAMILIES[market] if market else None)

    def stream_subscriptions(self, api_key: str | None = None, market: str | None = None) -> int:
        """listenKeys subscribed over all open connections (shared connections carry several)."""
        return self._streams.subscriptions(api_key, MARKET_FAMILIES[market] if market else None)

    def refuse_subscribes(self, count: int) -> None:
        """Answer the next `count` SUBSCRIBEs with an error, as Binance does for a key it does not know."""
        self._streams.refuse_subscribes = count

    def stream_requests(self) -> int:
        """SUBSCRIBE / UNSUBSCRIBE messages received on the open stream connections."""
        return self._streams.requests_received()

    @property
    def stream_connections(self) -> int:
        """WebSocket handshakes accepted since start."""
        return self._streams.connections

    def _listen_key(self, req: Request) -> Reply:
        family = LISTEN_KEY_FAMILIES[req.path]
        if not req.api_key:
            return Reply.error(401, -2014, "API-key format invalid.")
        if self._book.credentials(req.api_key) is None:
            return Reply.error(401, -2015, MSG_REJECTED_KEY)
        if req.method == "POST":
            return Reply.json(200, {"listenKey": self.listen_keys.post(req.api_key, family)})
        if req.method == "PUT":
            key = self.listen_keys.put(req.api_key, family)
            return (Reply.json(200, {"listenKey": key}) if key is not None
                    else Reply.error(400, -1125, MSG_KEY_GONE))
        if req.method == "DELETE":
            self.listen_keys.delete(req.api_key, family)
            return Reply.json(200, {})
        return Reply.error(405, -1099, MSG_METHOD_NOT_ALLOWED, [("Allow", "POST, PUT, DELETE")])

    def _risk_loop(self) -> None:
        while not self._stopping.wait(RISK_TICK_S):
            try:
                self.tick()
                self.check_risk()
            except Exception:  # noqa: BLE001 - never let the demo's ticker die
                pass

    def check_risk(self) -> None:
        """Push MARGIN_CALL / riskLevelChange for demo accounts that crossed their margin-call level."""
        now = self.server_time_ms()
        for account in self._book.all():
            if not account.drift or not self._streams.open_streams(account.api_key):
                continue
            acct = self._live(account)
            for market, positions in (("usdm", acct.positions), ("coinm", acct.coinm_positions)):
                for p in positions:
                    mark, liq = a.dec(p.mark_price), a.dec(p.liquidation_price)
                    if not mark or not liq:
                        continue
                    near = abs(mark - liq) / mark < Decimal(str(self.margin_call_distance))
                    key = (account.api_key, market, f"{p.symbol}/{p.side}")
                    if near and not self._risk_seen.get(key):
                        values, _ = a._position(p, market == "coinm")
                        cross = (acct.balances or [{}])[0].get("crossWalletBalance", "0")
                        self.push_event(account.api_key, market, margin_call(p, values, str(cross), now))
                    self._risk_seen[key] = near
            status = a.pm_account(acct, {})
            key = (account.api_key, "pm", "status")
            if key in self._risk_seen and self._risk_seen[key] != status["accountStatus"]:
                self.push_event(account.api_key, "pm", risk_level_change(status, now))
            self._risk_seen[key] = status["accountStatus"]

    # ---- state (safe while serving) ------------------------------------------------------------
    def add_account(self, account: SimAccount) -> None:
        """Add an account, or replace the one with the same api_key."""
        self._book.add(account)

    def update_account(self, api_key: str, /, **changes: Any) -> None:
        """Change SimAccount fields, e.g. update_account(key, positions=[...], pm=SimPortfolio(...)).

        Changed USD-M and COIN-M balances and positions are pushed as ACCOUNT_UPDATE on the
        account's open streams, as Binance pushes them.
        """
        before = self._book.get(api_key)
        self._book.update(api_key, lambda acct: replace(acct, **changes))
        after = self._book.get(api_key)
        if before is None or after is None:
            return
        now = self.server_time_ms()
        for market in ("usdm", "coinm"):
            event = account_update(before, after, market == "coinm", now)
            if event is not None:
                self.push_event(api_key, market, event)

    def stored_account(self, api_key: str) -> SimAccount | None:
        """The account as stored (before drift and the market's marks), e.g. after a liquidation."""
        return self._book.get(api_key)

    def set_balances(self, api_key: str, rows: list[dict[str, Any]]) -> None:
        self.update_account(api_key, balances=rows)

    def add_sub_account(self, master_key: str, sub: SimSubAccount) -> None:
        """Add a sub-account to a master key, or replace the one with the same email."""
        self._book.update(master_key, lambda acct: replace(
            acct, sub_accounts=[s for s in acct.sub_accounts if s.email != sub.email] + [sub]))

    def remove_sub_account(self, master_key: str, email: str) -> None:
        self._book.update(master_key, lambda acct: replace(
            acct, sub_accounts=[s for s in acct.sub_accounts if s.email != email]))

    def reset_rate_limits(self) -> None:
        self._limiter.reset()

    def server_time_ms(self) -> int:
        """The simulator's clock (local time + skew), as /fapi/v1/time would report it."""
        return int(time.time() * 1000) + int(self.clock_skew_ms)

    def weight(self, path: str) -> int:
        if path in self.weights:
            return int(self.weights[path])
        if path == "/fapi/v2/balance":
            return int(self.v2_balance_weight)
        if path in MARKET_ROUTES:
            return MARKET_ROUTES[path][0]
        return ROUTES[path][0] if path in ROUTES else PUBLIC_ROUTES.get(path, 1)

    def weight_limit_for(self, family: str) -> int:
        return int(self.weight_limit if family == "fapi" else getattr(self, f"{family}_weight_limit"))

    def used_weight(self, family: str = "fapi", ip: str = LOOPBACK, path: str | None = None) -> int:
        """This minute's weight of one bucket (for /sapi, one endpoint: give its `path`)."""
        return self._limiter.used_weight(self._bucket(family, ip, path or ""), self.server_time_ms())

    # ---- hooks ---------------------------------------------------------------------------------
    def intercept(self, stage: str, request: Request) -> Intercept:
        """Stages "received", "request" and "signed" (see the module docstring); override to inject."""
        return None

    def on_connection(self) -> None:
        """Called for every accepted TCP connection."""

    def pause(self, seconds: float) -> bool:
        """Sleep unless the simulator stops meanwhile; False means "stopping, give up"."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    # ---- pipeline ------------------------------------------------------------------------------
    @staticmethod
    def _bucket(family: str, ip: str, path: str) -> tuple[str, ...]:
        return (ip, family, path) if family == "sapi" else (ip, family)

    def handle(self, req: Request) -> Reply:
        deformers: list[Callable[[Reply], Reply]] = []
        reply = self._hook("received", req, deformers)
        if reply is not None:
            return reply
        family = family_of(req.path)
        now = self.server_time_ms()
        admission = self._limiter.admit(self._bucket(family, req.client_ip, req.path), self.weight(req.path), now,
                                        limit=self.weight_limit_for(family), ban_after_429s=int(self.ban_after_429s))
        if admission.status == 200:
            reply = self._serve(req, deformers)
        else:
            spot = family in ("api", "sapi")
            retry = ([("Retry-After", str(admission.retry_after_s))]
                     if self.send_retry_after or family == "sapi" else [])
            reply = (Reply.error(418, -1003, banned_msg(admission.banned_until_ms, spot), retry)
                     if admission.status == 418 else
                     Reply.error(429, -1003, too_many_requests_msg(self.weight_limit_for(family), spot), retry))
        if not reply.reset and not reply.raw:
            reply.headers.append((SAPI_WEIGHT_HEADER if family == "sapi" else WEIGHT_HEADER,
                                  str(admission.used_weight)))
        return reply

    def _hook(self, stage: str, req: Request, deformers: list[Callable[[Reply], Reply]]) -> Reply | None:
        result = self.intercept(stage, req)
        if callable(result):
            deformers.append(result)
            return None
        return result

    def _serve(self, req: Request, deformers: list[Callable[[Reply], Reply]]) -> Reply:
        early = self._hook("request", req, deformers)
        if early is not None:
            return early
        if req.path in LISTEN_KEY_FAMILIES:
            return self._listen_key(req)
        if req.method != "GET":
            return Reply.error(405, -1099, MSG_METHOD_NOT_ALLOWED, [("Allow", "GET")])
        market = self.market or self._static_market
        if req.path in PUBLIC_ROUTES:
            reply = Reply.json(200, exchange_info(market, self.server_time_ms()))
            for deform in deformers:
                reply = deform(reply)
            return reply
        if req.path in MARKET_ROUTES:
            build: Builder | None = partial(MARKET_ROUTES[req.path][1], market)
        elif req.path in ROUTES:
            build = ROUTES[req.path][1]
        else:
            return Reply.error(404, -1099, MSG_NOT_FOUND)
        if build is None:
            obj: Any = {"serverTime": self.server_time_ms()} if req.path.endswith("/time") else {}
        else:
            if not self.pause(float(self.latency_s)):
                return Reply.abort()
            try:
                params = authenticate(req.query, req.api_key, self._book.credentials, self.server_time_ms(),
                                      self.max_recv_window_ms)
                early = self._hook("signed", req, deformers)
                if early is not None:
                    return early
                account = self._book.get(req.api_key or "")
                if account is None:  # removed since validation
                    raise ApiError(401, -2015, MSG_REJECTED_KEY)
                obj = build(self._live(account), params)
            except ApiError as err:
                return err.reply()
        reply = Reply.json(200, obj)
        for deform in deformers:
            reply = deform(reply)
        return reply
