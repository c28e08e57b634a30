"""The HTTP/1.1 server under the WSGI app: bounded in connections, threads and time.

Why not socketserver's ThreadingMixIn + wsgiref (what we had): it gives every
accepted connection a thread that blocks in readline() for as long as the
client likes. 2,000 idle sockets cost 2,000 threads (84 MB) and were never
closed; bytes without a newline (a TLS ClientHello on the plain port, or its
first segment) were never answered; the listen backlog was socketserver's 5,
so 200 concurrent scrapes lost SYNs and waited out TCP's retransmission timer
(p99 21.8 s); and every response was HTTP/1.0 with a close. waitress bounds
connections and threads but has no TLS; cheroot runs the TLS handshake on its
accept thread (cheroot#748). So this is stdlib: selectors and ssl, with
http.server's request parsing and wsgiref's WSGI gateway reused as they are.

How a connection flows:

1. One thread (the poller) owns the listening socket and every connection that
   is *waiting*: for its TLS handshake, for the bytes of a request head, or
   idle between keep-alive requests. They are non-blocking sockets in a
   selector, so waiting costs an fd and a few hundred bytes, never a thread.
   The TLS handshake runs here too, non-blocking, so it cannot stall accept().
2. Each state has a deadline (HANDSHAKE_TIMEOUT, HEADER_TIMEOUT from accept or
   from a keep-alive request's first byte, IDLE_TIMEOUT between requests).
   A slow sender (slowloris) is cut when its deadline passes, with a 408 if it
   had sent part of a request. Bytes that cannot start an HTTP request (a TLS
   ClientHello on the plain port) get a 400 and a close at once.
3. Only a complete request head (at most MAX_HEADER_BYTES) is handed to a
   bounded pool of MAX_WORKERS threads. The worker runs the WSGI app, writes
   the response (WRITE_TIMEOUT for all of it, so a client that does not read
   holds a worker that long at most) and gives a keep-alive connection back
   to the poller.
4. At most MAX_CONNECTIONS are open (also capped below RLIMIT_NOFILE). Past
   that, the connection that has waited longest in the poller is closed to
   make room, so a fresh scrape always gets in; if all are busy with
   requests, accepting pauses and new ones wait in the BACKLOG.

Requests are GET/HEAD-sized: the body of a request is never read (the app
has no use for one), so a request that announces a body gets its response and
a close instead of keep-alive. HEAD responses carry the app's headers and no
body, whatever the app returns.
"""

from __future__ import annotations

import errno
import io
import logging
import queue
import re
import selectors
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("exporter.http")

# A connect burst of this many is queued by the kernel instead of dropped
# (the kernel caps it at net.core.somaxconn, 4096 on current Linux).
BACKLOG = 1024
# Open client connections. Idle ones cost no thread, only an fd and ~1 KB, so
# this can be generous; it bounds memory under a connection flood (at worst
# every one holds a partial head: 4096 x MAX_HEADER_BYTES = 64 MB).
MAX_CONNECTIONS = 4096
# Threads running requests. A scrape thread mostly waits on Binance (or its
# deadline); more than this many concurrent scrapes wait their turn, in order.
MAX_WORKERS = 64
# From accept (plain) or from the first byte of a keep-alive request until the
# head is complete. Prometheus sends its request at once; 10 s is for slow links.
HEADER_TIMEOUT = 10.0
# From accept until the TLS handshake is done (mTLS included).
HANDSHAKE_TIMEOUT = 10.0
# A keep-alive connection with no request in flight. Above Prometheus' default
# 1 m scrape interval (like nginx's 75 s), so the scrape connection is reused.
IDLE_TIMEOUT = 75.0
# Per response write (total, not per send()): a client that does not read its
# response frees the worker after this.
WRITE_TIMEOUT = 30.0
# Request line + headers. Prometheus sends < 1 KB; bearer tokens fit easily.
MAX_HEADER_BYTES = 16384
# File descriptors kept free for everything that is not an HTTP client (logs,
# urllib3 pools to Binance, cert files) when the connection cap meets RLIMIT_NOFILE.
FD_RESERVE = 256

_ACCEPT_BATCH = 64
_RECV_CHUNK = 8192
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# RFC 9110 token characters: how any request line starts (plus stray CR/LF).
_REQUEST_START = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                           b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n")

_HANDSHAKE, _HEAD, _IDLE, _BUSY = "handshake", "head", "idle", "busy"


@dataclass(frozen=True)
class Limits:
    """All bounds of one server; tests pass small ones, production uses the constants."""

    backlog: int = BACKLOG
    max_connections: int = MAX_CONNECTIONS
    max_workers: int = MAX_WORKERS
    header_timeout: float = HEADER_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES


class _Conn:
    """One client connection; owned by the poller while waiting, by one worker while busy."""

    __slots__ = ("sock", "addr", "tls", "buf", "head", "state", "since", "deadline", "events")

    def __init__(self, sock: socket.socket, addr: object, tls: bool) -> None:
        self.sock = sock
        self.addr = addr
        self.tls = tls
        self.buf = bytearray()
        self.head = b""
        self.state = _BUSY
        self.since = 0.0
        self.deadline = 0.0
        self.events = 0


def _reply(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_NOT_HTTP = _reply("400 Bad Request", "this port speaks plain HTTP: use http://, not https://\n")
_TIMEOUT = _reply("408 Request Timeout", "request head not received in time\n")
_TOO_BIG = _reply("431 Request Header Fields Too Large", "request head too large\n")


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _Writer:
    """wfile that sends on flush(): status line, headers and body leave together,
    so a keep-alive response never waits on Nagle + delayed ACK.

    The send loop is ours because SSLSocket.sendall applies the timeout to each
    16 KB record, so a client reading a byte now and then could hold a worker
    for as long as it liked; here `timeout` bounds the whole write.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        if not self._parts:
            return
        data = memoryview(b"".join(self._parts))
        self._parts.clear()
        deadline = time.monotonic() + self._timeout
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("response not read by the client in time")
            self._sock.settimeout(remaining)
            data = data[self._sock.send(data):]


class _Gateway(ServerHandler):
    """wsgiref's WSGI gateway, speaking HTTP/1.1 and reporting whether the
    response was complete enough (Content-Length honoured) to keep the connection."""

    http_version = "1.1"
    # wsgiref copies os.environ into every request's environ; ours holds API
    # secrets (${VAR} in the config), and the app has no use for them.
    os_environ: dict = {}

    def __init__(self, *args: object, head: bool, close: bool, **kw: object) -> None:
        super().__init__(*args, **kw)
        self._head_request = head
        self._close_after = close
        self._in_body = False
        self.complete = False

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        if self._close_after:
            self.headers["Connection"] = "close"

    def send_headers(self) -> None:
        super().send_headers()
        self._in_body = True

    def _write(self, data: bytes) -> None:
        if self._in_body and self._head_request:
            return  # HEAD: headers only, whatever the app returned
        super()._write(data)

    def close(self) -> None:
        if self.status and self.headers_sent:
            length = self.headers.get("Content-Length", "")
            self.complete = (length.isdigit() and (self._head_request or int(length) == self.bytes_sent)
                             and self.headers.get("Connection", "").lower() != "close")
        super().close()

    def log_exception(self, exc_info: tuple) -> None:
        level = logging.DEBUG if issubclass(exc_info[0], OSError) else logging.ERROR
        log.log(level, "request failed client=%s", self.environ.get("REMOTE_ADDR") if self.environ else None,
                exc_info=exc_info)


class _RequestHandler(WSGIRequestHandler):
    """One request whose head the poller has already read in full (`request` is the _Conn)."""

    protocol_version = "HTTP/1.1"
    keep_alive = False

    def setup(self) -> None:
        conn: _Conn = self.request
        self.connection = conn.sock
        self.rfile = io.BytesIO(conn.head)
        self.wfile = _Writer(conn.sock, self.server.limits.write_timeout)

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.parse_request():
            return  # parse_request answered (400/414/431/505) and set close_connection
        if self.request_version != "HTTP/1.1":
            self.close_connection = True  # keep-alive is an HTTP/1.1 thing here
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # the unread body would be taken for the next request
        if self.server.stopping:
            self.close_connection = True
        env = self.get_environ()
        if self.request.tls:
            env["HTTPS"] = "on"  # wsgi.url_scheme = https
        handler = _Gateway(self.rfile, self.wfile, sys.stderr, env, multithread=True,
                           head=self.command == "HEAD", close=self.close_connection)
        handler.request_handler = self
        handler.run(self.server.app)
        self.keep_alive = not self.close_connection and handler.complete

    def finish(self) -> None:
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s", format % args)


class _Workers:
    """At most `limit` daemon threads, started on demand and reused.

    Not ThreadPoolExecutor: its threads are joined at interpreter exit, so a
    scrape in flight would delay SIGTERM; the old server's threads were daemons too.
    """

    def __init__(self, limit: int, run: Callable[[_Conn], None]) -> None:
        self._limit = max(1, limit)
        self._run = run
        self._queue: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self.started = 0  # only the poller submits, so only it changes this

    def submit(self, conn: _Conn) -> None:
        self._queue.put(conn)
        if self._idle.acquire(blocking=False):
            return  # an idle worker will take it
        if self.started < self._limit:
            self.started += 1
            threading.Thread(target=self._loop, name=f"http-worker-{self.started}", daemon=True).start()

    def _loop(self) -> None:
        while (conn := self._queue.get()) is not None:
            try:
                self._run(conn)
            except Exception:  # noqa: BLE001 - a worker must survive any request
                log.exception("http worker error")
            self._idle.release()

    def stop(self) -> None:
        for _ in range(self.started):
            self._queue.put(None)


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:9894`, `0.0.0.0:9894`, `[::]:9894`, `localhost:9894` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--web.listen-address must look like ':9894' or '127.0.0.1:9894', got {value!r}")
    host = host.strip("[]")
    return host, int(port_text)


def _fd_soft_limit() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit(wanted: int = MAX_CONNECTIONS + FD_RESERVE) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one, as Go programs do at start.

    Many systems still default the soft limit to 1024, which would cap the
    connection bound far below MAX_CONNECTIONS; the hard limit is the admin's word.
    """
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


class HTTPServer:
    """A listening socket, its poller thread and its worker pool (see the module docstring)."""

    def __init__(self, app: Callable, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                 limits: Limits = Limits()) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.limits = limits
        fd_limit = _fd_soft_limit()
        # Past the fd limit accept() fails with EMFILE; stay below it instead.
        self.max_connections = (limits.max_connections if fd_limit is None
                                else max(16, min(limits.max_connections, fd_limit - FD_RESERVE)))
        bind_host = host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        # "::" keeps serving IPv4 too, as the socketserver-based server did.
        dualstack = family == socket.AF_INET6 and bind_host == "::" and socket.has_dualstack_ipv6()
        self.socket = socket.create_server((bind_host, port), family=family, backlog=limits.backlog,
                                           dualstack_ipv6=dualstack)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()[:2]
        self.server_port: int = self.server_address[1]
        # What wsgiref's WSGIServer puts in every environ (without its getfqdn() DNS lookup).
        self.server_name = bind_host if bind_host not in ("0.0.0.0", "::") else socket.gethostname()
        self.base_environ = {"SERVER_NAME": self.server_name, "GATEWAY_INTERFACE": "CGI/1.1",
                             "SERVER_PORT": str(self.server_port), "REMOTE_HOST": "",
                             "CONTENT_LENGTH": "", "SCRIPT_NAME": ""}
        self.stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: deque[tuple[_Conn, bool]] = deque()
        self._waiting: dict[str, OrderedDict[_Conn, None]] = {s: OrderedDict() for s in (_HANDSHAKE, _HEAD, _IDLE)}
        self._busy = 0
        self._listening = False
        self._fd_pause_until = 0.0
        self._workers = _Workers(limits.max_workers, self._serve_one)
        self._thread = threading.Thread(target=self._poll_loop, name="http", daemon=True)

    # --- what callers and tests see ---

    @property
    def open_connections(self) -> int:
        return sum(len(d) for d in self._waiting.values()) + self._busy

    @property
    def worker_threads(self) -> int:
        return self._workers.started

    def get_app(self) -> Callable:
        return self.app

    def start(self) -> None:
        self._thread.start()

    def set_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None:
        """A reloaded web config's TLS (a rotated certificate): connections accepted from now on
        use it; open ones keep the one they were accepted with."""
        self.ssl_context = ssl_context

    def shutdown(self) -> None:
        """Stop accepting and close idle connections; requests in flight finish, then close."""
        self.stopping = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def server_close(self) -> None:
        _close(self.socket)

    # --- the poller thread ---

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full: the poller is being woken anyway

    def _poll_loop(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self.stopping:
                try:
                    self._poll_once()
                except Exception:  # noqa: BLE001 - the poller must not die
                    log.exception("http poller error")
        finally:
            self._close_all()

    def _poll_once(self) -> None:
        now = time.monotonic()
        self._update_listening(now)
        timeout = 1.0
        for waiting in self._waiting.values():
            if waiting:
                timeout = min(timeout, next(iter(waiting)).deadline - now)
        if self._fd_pause_until:
            timeout = min(timeout, self._fd_pause_until - now)
        for key, _ in self._selector.select(max(0.0, timeout)):
            if key.fileobj is self.socket:
                self._accept()
            elif key.data is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
            else:
                self._advance(key.data)
        self._take_returned()
        self._expire(time.monotonic())

    def _update_listening(self, now: float) -> None:
        if self._fd_pause_until and now >= self._fd_pause_until:
            self._fd_pause_until = 0.0
        room = self.open_connections < self.max_connections or any(self._waiting.values())
        want = room and not self._fd_pause_until and not self.stopping
        if want != self._listening:
            if want:
                self._selector.register(self.socket, selectors.EVENT_READ, None)
            else:
                self._selector.unregister(self.socket)
            self._listening = want

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self.open_connections >= self.max_connections and not any(self._waiting.values()):
                return  # all busy with requests: the rest wait in the backlog (_update_listening pauses)
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict_one():
                        log.warning("http accept paused: %s", exc.strerror)
                        self._fd_pause_until = time.monotonic() + 0.1
                        return
                continue  # ECONNABORTED and friends: that client is gone
            ssl_context = self.ssl_context  # once: a reload may swap it meanwhile
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if ssl_context is not None:
                    sock = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                log.debug("http accept setup failed client=%s error=%s", addr, type(exc).__name__)
                _close(sock)
                continue
            if self.open_connections >= self.max_connections:
                self._evict_one()
            conn = _Conn(sock, addr, ssl_context is not None)
            if conn.tls:
                self._park(conn, _HANDSHAKE, self.limits.handshake_timeout)
            else:
                self._park(conn, _HEAD, self.limits.header_timeout)
            self._advance(conn)

    def _park(self, conn: _Conn, state: str, timeout: float) -> None:
        """Put a connection in a waiting state with a fresh deadline. Within one state
        every wait has the same length, so each OrderedDict is in deadline order."""
        if conn.state in self._waiting:
            del self._waiting[conn.state][conn]
        now = time.monotonic()
        conn.state, conn.since, conn.deadline = state, now, now + timeout
        self._waiting[state][conn] = None

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _drop(self, conn: _Conn, reply: bytes = b"", why: str = "") -> None:
        if why:
            log.debug("http closing connection client=%s reason=%s", conn.addr, why)
        if conn.state in self._waiting:
            del self._waiting[conn.state][conn]
        if conn.events:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        if reply:
            try:
                conn.sock.send(reply)  # best effort, non-blocking: small enough for any socket buffer
            except OSError:
                pass
        conn.state = _BUSY  # no longer waiting anywhere
        _close(conn.sock)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest, to make room for a new one."""
        oldest = None
        for waiting in self._waiting.values():
            if waiting:
                first = next(iter(waiting))
                if oldest is None or first.since < oldest.since:
                    oldest = first
        if oldest is None:
            return False
        self._drop(oldest, why="connection limit")
        return True

    def _expire(self, now: float) -> None:
        for state, waiting in self._waiting.items():
            while waiting:
                conn = next(iter(waiting))
                if conn.deadline > now:
                    break
                partial = state == _HEAD and bool(conn.buf)
                self._drop(conn, _TIMEOUT if partial else b"", f"{state} timeout")

    def _advance(self, conn: _Conn) -> None:
        """Make whatever progress the socket allows without blocking."""
        try:
            if conn.state == _HANDSHAKE:
                try:
                    conn.sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    return self._want(conn, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(conn, selectors.EVENT_WRITE)
                self._park(conn, _HEAD, self.limits.header_timeout)
            self._read_head(conn)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._drop(conn, why=f"{conn.state} error {type(exc).__name__}")

    def _read_head(self, conn: _Conn) -> None:
        limit = self.limits.max_header_bytes
        scanned = 0
        while True:
            match = _HEAD_END.search(conn.buf, max(0, scanned - 3))
            if match and match.end() <= limit:
                return self._dispatch(conn, match.end())
            if conn.buf and conn.buf[0] not in _REQUEST_START:
                return self._drop(conn, _NOT_HTTP, "not HTTP")
            if len(conn.buf) >= limit:
                return self._drop(conn, _TOO_BIG, "request head too large")
            scanned = len(conn.buf)
            try:
                chunk = conn.sock.recv(_RECV_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                return self._want(conn, selectors.EVENT_WRITE)
            if not chunk:
                return self._drop(conn)  # the client closed
            conn.buf += chunk
        if conn.buf and conn.state == _IDLE:
            self._park(conn, _HEAD, self.limits.header_timeout)  # a request began: its head has a deadline
        self._want(conn, selectors.EVENT_READ)

    def _dispatch(self, conn: _Conn, end: int) -> None:
        del self._waiting[conn.state][conn]
        conn.state = _BUSY
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0
        conn.head = bytes(conn.buf[:end])
        del conn.buf[:end]  # whatever follows (a pipelined request) waits for its turn
        self._busy += 1
        self._workers.submit(conn)

    def _take_returned(self) -> None:
        while self._returned:
            conn, keep = self._returned.popleft()
            self._busy -= 1
            if not keep:
                continue  # the worker closed it
            if self.stopping:
                _close(conn.sock)
                continue
            self._park(conn, _HEAD if conn.buf else _IDLE,
                       self.limits.header_timeout if conn.buf else self.limits.idle_timeout)
            self._advance(conn)

    def _close_all(self) -> None:
        self._workers.stop()
        for waiting in self._waiting.values():
            for conn in list(waiting):
                self._drop(conn)
        self._listening = False
        _close(self.socket)
        self._selector.close()
        _close(self._wake_r)
        _close(self._wake_w)

    # --- a worker thread ---

    def _serve_one(self, conn: _Conn) -> None:
        keep = False
        try:
            handler = _RequestHandler(conn, conn.addr, self)
            keep = handler.keep_alive and not self.stopping
            if keep:
                conn.sock.setblocking(False)
        except Exception as exc:  # noqa: BLE001 - the client's problem or the app's; never the worker's
            level = logging.DEBUG if isinstance(exc, OSError) else logging.ERROR
            log.log(level, "http request error client=%s error=%s", conn.addr, type(exc).__name__)
            keep = False
        if not keep:
            _close(conn.sock)
        self._returned.append((conn, keep))
        self._wake()


def serve(app: Callable, address: str, ssl_context: ssl.SSLContext | None = None,
          limits: Limits | None = None) -> HTTPServer:
    """Bind and start serving in a daemon thread; returns the server (for its port and shutdown)."""
    host, port = parse_listen_address(address)
    server = HTTPServer(app, host, port, ssl_context, limits or Limits())
    server.start()
    return server
