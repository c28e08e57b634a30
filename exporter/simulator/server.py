"""HTTP transport and the public `Simulator` facade.

Real HTTP on loopback (not a mocked session) so the exporter's connection
pooling, timeouts and keep-alive are exercised exactly as in production.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .errors import Reply
from .faults import Fault, FaultBook
from .pipeline import WEIGHT_HEADER, Pipeline, Request
from .ratelimit import RateLimiter
from .state import AccountBook, SimAccount
from .stats import Stats

IDLE_TIMEOUT_S = 60
MAX_DRAINED_BODY = 1 << 20
WRITE_BUFFER = 64 * 1024
POLL_INTERVAL_S = 0.05
LOOPBACK = "127.0.0.1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "binance-futures-simulator"
    # Idle keep-alive connections are dropped after this long, like a real front end.
    timeout = IDLE_TIMEOUT_S
    # Headers and body leave in one segment (flushed by http.server after each
    # request); split writes would hit Nagle + delayed ACK and add ~40 ms per call.
    wbufsize = WRITE_BUFFER
    disable_nagle_algorithm = True
    server: _HTTPServer

    _weight_sent = False

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silenced: per-request logging would drown test and benchmark output."""

    # Every response carries the weight header, even http.server's own error pages.
    def send_response(self, code: int, message: str | None = None) -> None:
        self._weight_sent = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == WEIGHT_HEADER.lower():
            self._weight_sent = True
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        if not self._weight_sent:
            self.send_header(WEIGHT_HEADER, str(self.server.current_weight(self.client_address[0])))
        super().end_headers()

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _drain_body(self) -> None:
        """Consume any request body so the next request on this connection parses cleanly."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            return
        length = self.headers.get("Content-Length")
        if not length:
            return
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            return
        if 0 < size <= MAX_DRAINED_BODY:
            self.rfile.read(size)
        elif size != 0:
            self.close_connection = True

    def _dispatch(self) -> None:
        self._drain_body()
        path, _, query = self.path.partition("?")
        request = Request(
            method=self.command,
            path=path,
            query=query,
            api_key=self.headers.get("X-MBX-APIKEY"),
            client_ip=self.client_address[0],
        )
        reply = self.server.pipeline.handle(request)
        if reply.reset:
            self._abort()
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _abort(self) -> None:
        """Drop the connection with a TCP RST and no answer (SO_LINGER 0, then close)."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # rfile/wfile hold references on the socket: the fd (and the RST) really goes
        # when the last one closes, i.e. at the latest in finish(). Nothing is buffered
        # in wfile for this request, so no answer bytes can leak out first.
        self.rfile.close()
        sock.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Don't track handler threads: stop() must not wait for slow or idle connections.
    block_on_close = False
    # Benchmarks open hundreds of connections at once; a backlog of 5 would drop SYNs.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], pipeline: Pipeline, limiter: RateLimiter, stats: Stats
    ) -> None:
        self.pipeline = pipeline
        self._limiter = limiter
        self._stats = stats
        self._open_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it, it can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def current_weight(self, ip: str) -> int:
        return self._limiter.used_weight(ip, self.pipeline.server_ms())

    def process_request(self, request: Any, client_address: Any) -> None:
        self._stats.connection()
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-answer (timeouts, stop()) are normal here, not bugs.
        if isinstance(sys.exc_info()[1], OSError):
            return
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
    """A local stand-in for Binance USDⓈ-M's balance API; see the package docstring."""

    def __init__(
        self,
        accounts: Iterable[SimAccount] = (),
        *,
        host: str = LOOPBACK,
        port: int = 0,
        clock_skew_ms: int = 0,
        latency_s: float = 0.0,
        weight_limit: int = 2400,
        v2_balance_weight: int = 5,
        max_recv_window_ms: int | None = 60000,
        ban_after_429s: int = 3,
        send_retry_after: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.clock_skew_ms = clock_skew_ms
        self.latency_s = latency_s
        self.weight_limit = weight_limit
        self.v2_balance_weight = v2_balance_weight
        self.max_recv_window_ms = max_recv_window_ms
        self.ban_after_429s = ban_after_429s
        self.send_retry_after = send_retry_after
        self._accounts = AccountBook(accounts)
        self._faults = FaultBook()
        self._limiter = RateLimiter()
        self._stats = Stats()
        self._stopping = threading.Event()
        self._pipeline = Pipeline(self, self._accounts, self._faults, self._limiter, self._stats, self._stopping)
        self._lifecycle = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            self._stopping.clear()
            self._stats = Stats()
            self._pipeline = Pipeline(
                self, self._accounts, self._faults, self._limiter, self._stats, self._stopping
            )
            server = _HTTPServer((self.host, self.port), self._pipeline, self._limiter, self._stats)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL_S},
                name="binance-simulator",
                daemon=True,
            )
            thread.start()
            host, port = server.server_address[:2]
            self._server, self._thread = server, thread
            self._base_url = f"http://{host}:{port}"
            return self._base_url

    def stop(self) -> None:
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency
        server.shutdown()
        server.server_close()
        server.abort_connections()
        if thread is not None:
            thread.join(timeout=1.0)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    # -- state -----------------------------------------------------------------------------
    def add_account(self, account: SimAccount) -> None:
        self._accounts.add(account)

    def set_balances(self, api_key: str, rows: list[dict]) -> None:
        self._accounts.set_balances(api_key, rows)

    def set_fault(self, api_key: str, fault: Fault | None) -> None:
        self._faults.set(api_key, fault)

    def set_global_fault(self, fault: Fault | None) -> None:
        self._faults.set(FaultBook.GLOBAL, fault)

    def reset_rate_limits(self) -> None:
        self._limiter.reset()

    def server_time_ms(self) -> int:
        """The simulator's clock (local time + skew), as /fapi/v1/time would report it."""
        return self._pipeline.server_ms()

    def stats(self) -> dict:
        snapshot: dict[str, Any] = self._stats.snapshot()
        snapshot["used_weight"] = self._limiter.used_weight(LOOPBACK, self._pipeline.server_ms())
        return snapshot
