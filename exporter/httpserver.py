"""The HTTP/1.1 server under the WSGI app: bounded in connections, threads, time and memory.

Why not socketserver's ThreadingMixIn + wsgiref (what we had first): it gives
every accepted connection a thread that blocks in readline() for as long as
the client likes. 2,000 idle sockets cost 2,000 threads (84 MB) and were never
closed; bytes without a newline (a TLS ClientHello on the plain port) were
never answered; the listen backlog was 5. waitress bounds connections and
threads but has no TLS; cheroot runs the TLS handshake on its accept thread
(cheroot#748). So this is stdlib selectors and ssl, with h11 (no I/O of its
own) parsing each request head and framing each response per RFC 9112.

How a connection flows:

1. One thread (the poller) owns the listening socket and every connection that
   is *waiting*: for its TLS handshake, for the bytes of a request head, idle
   between keep-alive requests, or being written to. They are non-blocking
   sockets in a selector, so waiting costs an fd and a few hundred bytes, never
   a thread. The TLS handshake runs here too, non-blocking, so it cannot stall
   accept(); at most MAX_HANDSHAKES run at once (OpenSSL holds ~60 KB for
   one that stalled after its ClientHello), past that the oldest is closed.
2. Each state has a deadline (HANDSHAKE_TIMEOUT, HEADER_TIMEOUT from accept or
   from a keep-alive request's first byte, IDLE_TIMEOUT between requests).
   A slow sender (slowloris) is cut when its deadline passes, with a 408 if it
   had sent part of a request. Bytes that cannot start an HTTP request (a TLS
   ClientHello on the plain port) get a 400 and a close at once.
3. A complete request head (at most MAX_HEADER_BYTES) goes to h11. Framing
   that a proxy in front could read differently (repeated or conflicting
   Content-Length, whitespace before a colon, Transfer-Encoding with
   Content-Length, a missing Host) is answered 400 and closed, so no bytes are
   ever taken for a second request that a proxy did not see. Empty lines
   before a request are ignored (RFC 9112 2.2). The request goes to a bounded
   pool of MAX_WORKERS threads; /-/healthy and /-/ready (PRIORITY_PATHS) go
   to a pool of their own, so they answer whatever the other requests do;
   /-/reload (RELOAD_PATHS) to another, so reloads waiting their turn never
   hold a thread a scrape needs.
4. The worker runs the WSGI app and hands the response bytes back to the
   poller, which writes them as the client reads. A slow reader therefore
   holds no thread, only a reference to its body (concurrent scrapes share
   one body, see web.py). The write must finish within WRITE_TIMEOUT, must
   not stall longer than WRITE_STALL_TIMEOUT, and must keep MIN_SEND_RATE;
   the bodies waiting for slow readers together stay under
   MAX_BUFFERED_BYTES (past it, the writes that have progressed least
   recently are cut). Large bodies get memory mappings of their own, and
   after a burst the poller hands freed heap back to the OS (glibc keeps it
   otherwise).
5. At most MAX_CONNECTIONS are open (also capped below RLIMIT_NOFILE). Past
   that, the connection that has waited longest in the poller is closed to
   make room, so a fresh scrape always gets in; if all are busy with
   requests, accepting pauses and new ones wait in the BACKLOG.

Requests are GET/HEAD-sized: the body of a request is never read (the app
has no use for one), so a request that announces a body gets its response and
a close instead of keep-alive. HEAD responses carry the app's headers and no
body, whatever the app returns. A connection closed after a response is
shut down for writing and drained briefly (LINGER_TIMEOUT) before the close,
so the client reads its answer instead of a reset.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import email.utils
import errno
import io
import logging
import queue
import re
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import h11

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("exporter.http")

# WSGI (PEP 3333), as this server calls an app and as exporter.web writes one.
Environ = dict[str, Any]
StartResponse = Callable[..., object]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# A connect burst of this many is queued by the kernel instead of dropped
# (the kernel caps it at net.core.somaxconn, 4096 on current Linux).
BACKLOG = 1024
# Open client connections. Idle ones cost no thread, only an fd and ~1 KB, so
# this can be generous; it bounds memory under a connection flood (at worst
# every one holds a partial head: 4096 x MAX_HEADER_BYTES = 64 MB).
MAX_CONNECTIONS = 4096
# TLS handshakes in progress. One that stalled after its ClientHello holds
# OpenSSL's handshake state and buffers; a flood of them took 240 MB.
MAX_HANDSHAKES = 256
# Threads running requests. A scrape thread mostly waits on Binance (or its
# deadline); more than this many concurrent scrapes wait their turn, in order.
MAX_WORKERS = 64
# Threads for PRIORITY_PATHS only: cheap answers that must not queue behind scrapes.
PRIORITY_WORKERS = 2
PRIORITY_PATHS = ("/-/healthy", "/-/ready")
# Threads for RELOAD_PATHS only: a storm of POST /-/reload (coalesced by exporter.reload) waits
# in these, never in the pool that scrapes use (issue 23).
RELOAD_WORKERS = 64
RELOAD_PATHS = ("/-/reload",)
RELOAD_PATHS_B = frozenset(p.encode() for p in RELOAD_PATHS)
# From accept (plain) or from the first byte of a keep-alive request until the
# head is complete. Prometheus sends its request at once; 10 s is for slow links.
HEADER_TIMEOUT = 10.0
# From accept until the TLS handshake is done (mTLS included).
HANDSHAKE_TIMEOUT = 10.0
# A keep-alive connection with no request in flight. Above Prometheus' default
# 1 m scrape interval (like nginx's 75 s), so the scrape connection is reused.
IDLE_TIMEOUT = 75.0
# A whole response, from the first byte written to the last.
WRITE_TIMEOUT = 30.0
# A response none of whose bytes the client took for this long is cut.
WRITE_STALL_TIMEOUT = 5.0
# After WRITE_STALL_TIMEOUT, a response must have gone at this average rate at least
# (a 3 MB /metrics at this rate takes 12 s; Prometheus reads it in milliseconds).
MIN_SEND_RATE = 256 * 1024
# Response bytes waiting in the poller for every client together (bodies shared
# by several clients count once).
MAX_BUFFERED_BYTES = 64 << 20
# Request line + headers. Prometheus sends < 1 KB; bearer tokens fit easily.
MAX_HEADER_BYTES = 16384
# After the last response of a connection: how long its unread input is drained.
LINGER_TIMEOUT = 2.0
# File descriptors kept free for everything that is not an HTTP client (logs,
# urllib3 pools to Binance, cert files) when the connection cap meets RLIMIT_NOFILE.
FD_RESERVE = 256

_ACCEPT_BATCH = 64
_RECV_CHUNK = 8192
_TLS_RECORD = 16384  # one TLS record per SSL_write: a retry after WANT_WRITE passes the same bytes
# At most this much per connection per turn of the poller: the kernel takes megabytes at once
# from a client that does not read (loopback send buffers grow to 4 MB), and 70 of those in a
# row kept the poller (and /-/healthy) waiting; in slices, connections take turns.
_WRITE_SLICE = 256 * 1024
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and drops unsent data
_DRAIN_MAX = 1 << 20  # bytes a lingering close reads and discards at most
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:", re.IGNORECASE)
# RFC 9110 token characters: how any request line starts.
_REQUEST_START = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                           b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Heap handed back to the OS after this much response data or this many closed connections.
_TRIM_AFTER_BYTES = 32 << 20
_TRIM_AFTER_CLOSES = 256
_TRIM_EVERY = 2.0

_HANDSHAKE, _HEAD, _IDLE, _LINGER, _BUSY, _WRITE = "handshake", "head", "idle", "linger", "busy", "write"


@dataclass(frozen=True)
class Limits:
    """All bounds of one server; tests pass small ones, production uses the constants."""

    backlog: int = BACKLOG
    max_connections: int = MAX_CONNECTIONS
    max_handshakes: int = MAX_HANDSHAKES
    max_workers: int = MAX_WORKERS
    priority_workers: int = PRIORITY_WORKERS
    reload_workers: int = RELOAD_WORKERS
    header_timeout: float = HEADER_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    write_stall_timeout: float = WRITE_STALL_TIMEOUT
    min_send_rate: float = MIN_SEND_RATE
    max_buffered_bytes: int = MAX_BUFFERED_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    linger_timeout: float = LINGER_TIMEOUT


class _Conn:
    """One client connection; owned by the poller while waiting or writing, by one worker while busy."""

    __slots__ = ("sock", "addr", "tls", "buf", "http", "request", "close_after", "state", "since", "deadline",
                 "events", "out", "sent", "write_start", "progress", "drained")

    def __init__(self, sock: socket.socket, addr: object, tls: bool, max_head: int) -> None:
        self.sock = sock
        self.addr = addr
        self.tls = tls
        self.buf = bytearray()
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head + 64)
        self.request: h11.Request | None = None
        self.close_after = False  # the request announced a body, or the server is stopping
        self.state = _BUSY
        self.since = 0.0
        self.deadline = 0.0
        self.events = 0
        self.out: deque[memoryview] = deque()
        self.sent = 0
        self.write_start = 0.0
        self.progress = 0.0
        self.drained = 0


def _reply(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_NOT_HTTP = _reply("400 Bad Request", "this port speaks plain HTTP: use http://, not https://\n")
_BAD_FRAMING = _reply("400 Bad Request", "malformed request head or ambiguous framing (RFC 9112)\n")
_TIMEOUT = _reply("408 Request Timeout", "request head not received in time\n")
_TOO_BIG = _reply("431 Request Header Fields Too Large", "request head too large\n")
_NOT_IMPLEMENTED = _reply("501 Not Implemented", "transfer coding not supported\n")
_BAD_VERSION = _reply("505 HTTP Version Not Supported", "HTTP/1.0 and HTTP/1.1 only\n")


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# Allocations from this size up get pages of their own, given back to the OS when freed.
MMAP_THRESHOLD = 256 * 1024


def _glibc_heap() -> tuple[Callable[[], None], Callable[[], None]]:
    """(trim, tune): glibc's malloc_trim(0) and a fixed mmap threshold. Elsewhere (musl, macOS): no-ops.

    glibc raises its mmap threshold each time a large block is freed, up to
    32 MB: after the first few, 3 MB bodies came from the arenas of the worker
    threads, and a freed arena top is kept, so RSS stayed near its peak after
    slow readers were gone (+45 MB for 40 of them; malloc_trim cannot return
    an arena's top). A fixed threshold (mallopt) keeps every body in its own
    mapping. What stays in the heaps (OpenSSL's state of a handshake flood,
    Python's objects) is given back by malloc_trim.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return (lambda: None), (lambda: None)
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_mmap_threshold = -3
    return (lambda: trim(0)), (lambda: mallopt(m_mmap_threshold, MMAP_THRESHOLD))


trim_heap, tune_heap = _glibc_heap()


def _part(view: memoryview) -> bytes:
    """The response part a view of conn.out was cut from (every one is a view of bytes)."""
    return cast(bytes, view.obj)


def _send(http: h11.Connection, event: h11.Event) -> list[bytes]:
    """h11's bytes for `event`; h11 answers None only for ConnectionClosed, which is never sent here."""
    return http.send_with_data_passthrough(event) or []


class _Buffered:
    """The response bytes the poller holds for clients, each distinct object counted once."""

    def __init__(self) -> None:
        self._refs: dict[int, list[Any]] = {}  # id(obj) -> [obj, references]
        self.total = 0

    def add(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            entry = self._refs.get(id(part))
            if entry is None:
                self._refs[id(part)] = [part, 1]
                self.total += len(part)
            else:
                entry[1] += 1

    def remove(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            entry = self._refs.get(id(part))
            if entry is not None and entry[0] is part:
                entry[1] -= 1
                if not entry[1]:
                    del self._refs[id(part)]
                    self.total -= len(part)


class _Workers:
    """`limit` daemon threads taking requests from one queue.

    Not ThreadPoolExecutor: its threads are joined at interpreter exit, so a
    scrape in flight would delay SIGTERM; the old server's threads were daemons too.
    """

    def __init__(self, limit: int, run: Callable[[_Conn], None], name: str) -> None:
        self._limit = max(1, limit)
        self._run = run
        self._name = name
        self._queue: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self.started = 0

    def start(self) -> None:
        """Start every thread now. Started on demand, they were started by the poller, and
        Thread.start() waits for the new thread to get the GIL: with a scrape rendering, 64
        starts stalled the poller (accept, /-/healthy) for over a second."""
        while self.started < self._limit:
            self.started += 1
            threading.Thread(target=self._loop, name=f"{self._name}-{self.started}", daemon=True).start()

    def submit(self, conn: _Conn) -> None:
        self._queue.put(conn)

    def _loop(self) -> None:
        while (conn := self._queue.get()) is not None:
            try:
                self._run(conn)
            except Exception:  # a worker must survive any request
                log.exception("http worker error")

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


def wsgi_environ(base: Environ, request: h11.Request, addr: object, tls: bool) -> Environ:
    """The WSGI environ of one request, as wsgiref builds it (minus os.environ: ours holds API secrets)."""
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    env = dict(base)
    env.update({
        "REQUEST_METHOD": request.method.decode("ascii"), "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": addr[0] if isinstance(addr, tuple) else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if tls else "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    })
    if tls:
        env["HTTPS"] = "on"
    for name, value in request.headers:
        key = name.decode("ascii").upper().replace("-", "_")
        if "_" in name.decode("ascii"):
            continue  # X_Scrape_Timeout would pass for X-Scrape-Timeout; wsgiref drops these too
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            env[key] = text
            continue
        key = "HTTP_" + key
        env[key] = f"{env[key]},{text}" if key in env else text
    return env


def run_app(app: WsgiApp, env: Environ) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Call a WSGI app; (status, headers, body chunks). Bodies here are small lists of bytes."""
    response: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable[[bytes], None]:
        if response and not exc_info:
            raise AssertionError("start_response called twice")
        response[:] = [status, list(headers)]
        return chunks.append

    chunks: list[bytes] = []
    result = app(env, start_response)
    try:
        chunks.extend(bytes(c) if not isinstance(c, bytes) else c for c in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not response:
        raise AssertionError("the app did not call start_response")
    return response[0], response[1], chunks


class HTTPServer:
    """A listening socket, its poller thread and its worker pools (see the module docstring)."""

    def __init__(self, app: WsgiApp, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                 limits: Limits = Limits(), priority_paths: tuple[str, ...] = PRIORITY_PATHS) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.limits = limits
        self.priority_paths = frozenset(p.encode() for p in priority_paths)
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
        self._returned: deque[tuple[_Conn, list[bytes]]] = deque()
        self._waiting: dict[str, OrderedDict[_Conn, None]] = {
            s: OrderedDict() for s in (_HANDSHAKE, _HEAD, _IDLE, _LINGER)}
        self._writing: dict[_Conn, None] = {}
        self._buffered = _Buffered()
        self._busy = 0
        self._listening = False
        self._fd_pause_until = 0.0
        self._since_trim_bytes = 0
        self._since_trim_closes = 0
        self._last_trim = 0.0
        self._trim_due = False
        self._workers = _Workers(limits.max_workers, self._serve_one, "http-worker")
        self._priority = _Workers(limits.priority_workers, self._serve_one, "http-priority")
        self._reloads = _Workers(limits.reload_workers, self._serve_one, "http-reload")
        self._thread = threading.Thread(target=self._poll_loop, name="http", daemon=True)

    # --- what callers and tests see ---

    @property
    def open_connections(self) -> int:
        return sum(len(d) for d in self._waiting.values()) + len(self._writing) + self._busy

    @property
    def worker_threads(self) -> int:
        return self._workers.started + self._priority.started + self._reloads.started

    @property
    def buffered_bytes(self) -> int:
        """Response bytes the poller holds for clients that have not read them yet."""
        return self._buffered.total

    def get_app(self) -> WsgiApp:
        return self.app

    def set_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None:
        """A reloaded web config's TLS (a rotated certificate): connections accepted from now on
        use it; open ones keep the one they were accepted with."""
        self.ssl_context = ssl_context

    def start(self) -> None:
        self._workers.start()
        self._priority.start()
        self._reloads.start()
        self._thread.start()

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
        stop_by = None
        try:
            while True:
                if self.stopping:
                    stop_by = stop_by or time.monotonic() + 4.0
                    for state in (_HANDSHAKE, _HEAD, _IDLE):
                        for conn in list(self._waiting[state]):
                            self._drop(conn)
                    if not (self._busy or self._writing) or time.monotonic() > stop_by:
                        break
                try:
                    self._poll_once()
                except Exception:  # the poller must not die
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
        if self._writing:
            timeout = min(timeout, 0.25)
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
            elif key.data.events:  # not dropped earlier in this batch
                self._advance(key.data)
        self._take_returned()
        now = time.monotonic()
        self._expire(now)
        self._maybe_trim(now)

    def _update_listening(self, now: float) -> None:
        if self._fd_pause_until and now >= self._fd_pause_until:
            self._fd_pause_until = 0.0
        room = self.open_connections < self.max_connections or self._evictable()
        want = room and not self._fd_pause_until and not self.stopping
        if want != self._listening:
            if want:
                self._selector.register(self.socket, selectors.EVENT_READ, None)
            else:
                self._selector.unregister(self.socket)
            self._listening = want

    def _evictable(self) -> bool:
        return any(self._waiting.values())

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self.open_connections >= self.max_connections and not self._evictable():
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
            conn = _Conn(sock, addr, ssl_context is not None, self.limits.max_header_bytes)
            if conn.tls:
                handshakes = self._waiting[_HANDSHAKE]
                if len(handshakes) >= self.limits.max_handshakes:
                    self._drop(next(iter(handshakes)), why="too many TLS handshakes")
                self._park(conn, _HANDSHAKE, self.limits.handshake_timeout)
            else:
                self._park(conn, _HEAD, self.limits.header_timeout)
            self._advance(conn)

    def _park(self, conn: _Conn, state: str, timeout: float) -> None:
        """Put a connection in a waiting state with a fresh deadline. Within one state
        every wait has the same length, so each OrderedDict is in deadline order."""
        self._unpark(conn)
        now = time.monotonic()
        conn.state, conn.since, conn.deadline = state, now, now + timeout
        self._waiting[state][conn] = None

    def _unpark(self, conn: _Conn) -> None:
        if conn.state in self._waiting:
            del self._waiting[conn.state][conn]
        elif conn.state == _WRITE:
            del self._writing[conn]
            self._buffered.remove(_part(v) for v in conn.out)
            conn.out.clear()

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unregister(self, conn: _Conn) -> None:
        if conn.events:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0

    def _drop(self, conn: _Conn, reply: bytes = b"", why: str = "") -> None:
        """Close a connection the poller holds; with a reply, that is sent first and the close lingers."""
        if why:
            log.debug("http closing connection client=%s reason=%s", conn.addr, why)
        self._unpark(conn)
        self._unregister(conn)
        conn.state = _BUSY  # no longer waiting anywhere
        self._since_trim_closes += 1
        if reply and not self.stopping:
            try:
                conn.sock.send(reply)  # best effort, non-blocking: small enough for any socket buffer
            except OSError:
                pass
            return self._linger(conn)
        _close(conn.sock)

    def _linger(self, conn: _Conn) -> None:
        """Shut down our side, then read and discard what the client still sends for a moment: a close
        with unread input sends a reset, which can destroy the answer before the client reads it."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close(conn.sock)
            return
        conn.drained = 0
        self._park(conn, _LINGER, self.limits.linger_timeout)
        self._want(conn, selectors.EVENT_READ)

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
        limits = self.limits
        for conn in list(self._writing):
            elapsed = now - conn.write_start
            if now > conn.deadline:
                self._cut(conn, "write timeout")
            elif now - conn.progress > limits.write_stall_timeout:
                self._cut(conn, "write stalled")
            elif (elapsed > limits.write_stall_timeout
                  and conn.sent < limits.min_send_rate * (elapsed - limits.write_stall_timeout)):
                self._cut(conn, "write too slow")

    def _cut(self, conn: _Conn, why: str) -> None:
        """Abandon an answer: a reset, so the kernel drops what it still holds for that client
        too (a plain close would keep megabytes queued for as long as TCP keeps probing)."""
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        except OSError:
            pass
        self._drop(conn, why=why)

    def _maybe_trim(self, now: float) -> None:
        """After a burst, trim every _TRIM_EVERY until the memory it held is free (the last
        trim comes after the last answer is gone: that is when the heap has most to give back)."""
        if self._since_trim_bytes >= _TRIM_AFTER_BYTES or self._since_trim_closes >= _TRIM_AFTER_CLOSES:
            self._trim_due = True
            self._since_trim_bytes = self._since_trim_closes = 0
        if not self._trim_due or now - self._last_trim < _TRIM_EVERY:
            return
        self._last_trim = now
        self._trim_due = bool(self._buffered.total or self._busy or self._waiting[_HANDSHAKE])
        trim_heap()

    def _advance(self, conn: _Conn) -> None:
        """Make whatever progress the socket allows without blocking."""
        try:
            if conn.state == _WRITE:
                return self._write(conn)
            if conn.state == _LINGER:
                return self._drain(conn)
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
            if conn.buf.startswith((b"\r", b"\n")):
                # Empty lines before a request line are ignored (RFC 9112 2.2).
                del conn.buf[:len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))]
                scanned = 0
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
            if conn.state == _IDLE:
                self._park(conn, _HEAD, self.limits.header_timeout)  # a request began: its head has a deadline
            conn.buf += chunk
        self._want(conn, selectors.EVENT_READ)

    def _dispatch(self, conn: _Conn, end: int) -> None:
        """A whole head: let h11 parse it; refuse what a proxy could frame differently; hand it to a worker."""
        head = bytes(conn.buf[:end])
        del conn.buf[:end]  # whatever follows (a pipelined request) waits for its turn
        try:
            if len(_CONTENT_LENGTH.findall(head)) > 1:
                raise h11.RemoteProtocolError("repeated Content-Length", error_status_hint=400)
            conn.http.receive_data(head)
            request = conn.http.next_event()
            if not isinstance(request, h11.Request):
                raise h11.RemoteProtocolError("incomplete request head", error_status_hint=400)
            if request.http_version not in (b"1.0", b"1.1"):
                raise h11.RemoteProtocolError("HTTP version", error_status_hint=505)
            names = {name for name, _ in request.headers}
            if b"transfer-encoding" in names and b"content-length" in names:
                raise h11.RemoteProtocolError("Transfer-Encoding with Content-Length", error_status_hint=400)
            after = conn.http.next_event()
        except h11.RemoteProtocolError as exc:
            reply = {501: _NOT_IMPLEMENTED, 505: _BAD_VERSION, 431: _TOO_BIG}.get(exc.error_status_hint,
                                                                                   _BAD_FRAMING)
            return self._drop(conn, reply, f"bad request: {exc.error_status_hint}")
        conn.request = request
        # A body is never read: the connection closes after the answer, so no body byte is taken for a request.
        conn.close_after = not isinstance(after, h11.EndOfMessage) or self.stopping
        self._unpark(conn)
        self._unregister(conn)
        conn.state = _BUSY
        self._busy += 1
        path = request.target.partition(b"?")[0]
        (self._priority if path in self.priority_paths else self._reloads if path in RELOAD_PATHS_B
         else self._workers).submit(conn)

    def _take_returned(self) -> None:
        while self._returned:
            conn, parts = self._returned.popleft()
            self._busy -= 1
            if not parts:
                _close(conn.sock)  # the worker could not answer at all
                self._since_trim_closes += 1
                continue
            self._start_write(conn, parts)

    def _start_write(self, conn: _Conn, parts: list[bytes]) -> None:
        conn.out = deque(memoryview(p) for p in parts if len(p))
        self._buffered.add(_part(v) for v in conn.out)
        self._since_trim_bytes += sum(len(v) for v in conn.out)
        now = time.monotonic()
        conn.state, conn.sent, conn.write_start, conn.progress = _WRITE, 0, now, now
        conn.deadline = now + self.limits.write_timeout
        self._writing[conn] = None
        self._write(conn)
        if conn.state == _WRITE and self._buffered.total > self.limits.max_buffered_bytes:
            self._shed(conn)

    def _shed(self, keep: _Conn) -> None:
        """Over the cap on buffered response bytes: cut the writes that progressed least recently."""
        for conn in sorted(self._writing, key=lambda c: c.progress):
            if self._buffered.total <= self.limits.max_buffered_bytes:
                return
            if conn is not keep:
                self._cut(conn, "response buffer cap")

    def _write(self, conn: _Conn) -> None:
        """Send what the socket takes now; at the end, the next request or a (lingering) close."""
        out = conn.out
        budget = _WRITE_SLICE
        try:
            while out:
                if budget <= 0:
                    return self._want(conn, selectors.EVENT_WRITE)  # its next turn: select says writable
                view = out[0]
                chunk = view[:_TLS_RECORD] if conn.tls else view[:budget]
                try:
                    n = conn.sock.send(chunk)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    return self._want(conn, selectors.EVENT_WRITE)
                except ssl.SSLWantReadError:
                    return self._want(conn, selectors.EVENT_READ)
                if n:
                    conn.sent += n
                    budget -= n
                    conn.progress = time.monotonic()
                if n >= len(view):
                    out.popleft()
                    self._buffered.remove((_part(view),))
                else:
                    out[0] = view[n:]
        except OSError as exc:
            return self._drop(conn, why=f"write error {type(exc).__name__}")
        del self._writing[conn]
        conn.state = _BUSY
        http = conn.http
        if conn.close_after or self.stopping or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            self._unregister(conn)
            self._since_trim_closes += 1
            return self._linger(conn)
        http.start_next_cycle()
        if conn.buf:
            self._park(conn, _HEAD, self.limits.header_timeout)
        else:
            self._park(conn, _IDLE, self.limits.idle_timeout)
        self._read_head(conn)

    def _drain(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not data or conn.drained + len(data) > _DRAIN_MAX:
                return self._drop(conn)
            conn.drained += len(data)

    def _close_all(self) -> None:
        self._workers.stop()
        self._priority.stop()
        self._reloads.stop()
        for waiting in (*self._waiting.values(), self._writing):
            for conn in list(waiting):
                self._drop(conn)
        self._listening = False
        _close(self.socket)
        self._selector.close()
        _close(self._wake_r)
        _close(self._wake_w)

    # --- a worker thread ---

    def _serve_one(self, conn: _Conn) -> None:
        """Run the app for one request and frame its answer with h11; the poller writes it."""
        parts: list[bytes] = []
        try:
            parts = self._respond(conn)
        except Exception as exc:  # the client's problem or the app's; never the worker's
            log.error("http request error client=%s error=%s", conn.addr, type(exc).__name__,
                      exc_info=not isinstance(exc, OSError))
            try:
                parts = self._error_response(conn)
            except h11.LocalProtocolError:
                parts = []  # the response had begun: only a close tells the client it is cut
        self._returned.append((conn, parts))
        self._wake()

    def _respond(self, conn: _Conn) -> list[bytes]:
        request = conn.request
        assert request is not None
        env = wsgi_environ(self.base_environ, request, conn.addr, conn.tls)
        status, headers, chunks = run_app(self.app, env)
        code, _, reason = status.partition(" ")
        head_request = request.method == b"HEAD"
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(sum(len(c) for c in chunks))))
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        if conn.close_after:
            headers.append(("Connection", "close"))
        http = conn.http
        parts = _send(http, h11.Response(status_code=int(code), headers=headers, reason=reason.encode("latin-1")))
        if not head_request:
            for chunk in chunks:
                if chunk:
                    parts += _send(http, h11.Data(data=chunk))
        parts += _send(http, h11.EndOfMessage())
        return parts

    def _error_response(self, conn: _Conn) -> list[bytes]:
        conn.close_after = True
        body = b"internal error\n"
        http = conn.http
        parts = _send(http, h11.Response(status_code=500, reason=b"Internal Server Error", headers=[
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Connection", "close")]))
        if conn.request is not None and conn.request.method != b"HEAD":
            parts += _send(http, h11.Data(data=body))
        return parts + _send(http, h11.EndOfMessage())


def serve(app: WsgiApp, address: str, ssl_context: ssl.SSLContext | None = None,
          limits: Limits | None = None) -> HTTPServer:
    """Bind and start serving in a daemon thread; returns the server (for its port and shutdown)."""
    host, port = parse_listen_address(address)
    tune_heap()  # process-wide, once the exporter is about to serve (see _glibc_heap)
    server = HTTPServer(app, host, port, ssl_context, limits or Limits())
    server.start()
    return server
