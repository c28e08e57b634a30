"""The poller: one thread that owns the listening socket and every connection not running a request
(see the package docstring for how a connection flows, state.py for its states)."""

from __future__ import annotations

import errno
import logging
import queue
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import h11

from exporter.httpserver.heap import Trimmer
from exporter.httpserver.limits import (
    ACCEPT_BATCH,
    DRAIN_MAX,
    FD_RESERVE,
    PRIORITY_PATHS,
    RECV_CHUNK,
    RELOAD_PATHS_B,
    TLS_RECORD,
    WRITE_SLICE,
    Limits,
)
from exporter.httpserver.state import BUSY, CLOSED, HANDSHAKE, HEAD, IDLE, LINGER, WAITING, WRITE, Conn, State
from exporter.httpserver.wsgi import WsgiApp, error_response, respond

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("exporter.http")

_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and drops unsent data
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:", re.IGNORECASE)
# RFC 9110 token characters: how any request line starts.
_REQUEST_START = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                           b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_DEFAULTS = Limits()


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


def _part(view: memoryview) -> bytes:
    """The response part a view of conn.out was cut from (every one is a view of bytes)."""
    return cast(bytes, view.obj)


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

    def __init__(self, limit: int, run: Callable[[Conn], None], name: str) -> None:
        self._limit = max(1, limit)
        self._run = run
        self._name = name
        self._queue: queue.SimpleQueue[Conn | None] = queue.SimpleQueue()
        self.started = 0

    def start(self) -> None:
        """Start every thread now. Started on demand, they were started by the poller, and
        Thread.start() waits for the new thread to get the GIL: with a scrape rendering, 64
        starts stalled the poller (accept, /-/healthy) for over a second."""
        while self.started < self._limit:
            self.started += 1
            threading.Thread(target=self._loop, name=f"{self._name}-{self.started}", daemon=True).start()

    def submit(self, conn: Conn) -> None:
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


class HTTPServer:
    """A listening socket, its poller thread and its worker pools (see the module docstring)."""

    def __init__(self, app: WsgiApp, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                 limits: Limits = _DEFAULTS, priority_paths: tuple[str, ...] = PRIORITY_PATHS) -> None:
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
        self._returned: deque[tuple[Conn, list[bytes]]] = deque()
        self._waiting: dict[State, OrderedDict[Conn, None]] = {s: OrderedDict() for s in WAITING}
        self._writing: dict[Conn, None] = {}
        self._buffered = _Buffered()
        self._busy = 0
        self._listening = False
        self._fd_pause_until = 0.0
        self._trimmer = Trimmer()
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
                    for state in (HANDSHAKE, HEAD, IDLE):
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
        self._trimmer.maybe_trim(now, bool(self._buffered.total or self._busy or self._waiting[HANDSHAKE]))

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
        for _ in range(ACCEPT_BATCH):
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
            conn = Conn(sock, addr, ssl_context is not None, self.limits.max_header_bytes)
            if conn.tls:
                handshakes = self._waiting[HANDSHAKE]
                if len(handshakes) >= self.limits.max_handshakes:
                    self._drop(next(iter(handshakes)), why="too many TLS handshakes")
                self._park(conn, HANDSHAKE, self.limits.handshake_timeout)
            else:
                self._park(conn, HEAD, self.limits.header_timeout)
            self._advance(conn)

    def _park(self, conn: Conn, state: State, timeout: float) -> None:
        """Put a connection in a waiting state with a fresh deadline. Within one state
        every wait has the same length, so each OrderedDict is in deadline order."""
        self._unpark(conn)
        conn.to(state)
        now = time.monotonic()
        conn.since, conn.deadline = now, now + timeout
        self._waiting[state][conn] = None

    def _unpark(self, conn: Conn) -> None:
        """Take a connection out of the poller's queues (its state stays until the caller moves it)."""
        if conn.state in self._waiting:
            self._waiting[conn.state].pop(conn, None)
        elif conn.state is WRITE and self._writing.pop(conn, 0) is None:
            self._buffered.remove(_part(v) for v in conn.out)
            conn.out.clear()

    def _close_conn(self, conn: Conn) -> None:
        conn.to(CLOSED)
        _close(conn.sock)

    def _want(self, conn: Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unregister(self, conn: Conn) -> None:
        if conn.events:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0

    def _drop(self, conn: Conn, reply: bytes = b"", why: str = "") -> None:
        """Close a connection the poller holds; with a reply, that is sent first and the close lingers."""
        if why:
            log.debug("http closing connection client=%s reason=%s", conn.addr, why)
        self._unpark(conn)
        self._unregister(conn)
        self._trimmer.since_closes += 1
        if reply and not self.stopping:
            try:
                conn.sock.send(reply)  # best effort, non-blocking: small enough for any socket buffer
            except OSError:
                pass
            return self._linger(conn)
        self._close_conn(conn)

    def _linger(self, conn: Conn) -> None:
        """Shut down our side, then read and discard what the client still sends for a moment: a close
        with unread input sends a reset, which can destroy the answer before the client reads it."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_conn(conn)
            return
        conn.drained = 0
        self._park(conn, LINGER, self.limits.linger_timeout)
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
                partial = state is HEAD and bool(conn.buf)
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

    def _cut(self, conn: Conn, why: str) -> None:
        """Abandon an answer: a reset, so the kernel drops what it still holds for that client
        too (a plain close would keep megabytes queued for as long as TCP keeps probing)."""
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        except OSError:
            pass
        self._drop(conn, why=why)

    def _advance(self, conn: Conn) -> None:
        """Make whatever progress the socket allows without blocking."""
        try:
            if conn.state is WRITE:
                return self._write(conn)
            if conn.state is LINGER:
                return self._drain(conn)
            if conn.state is HANDSHAKE:
                try:
                    conn.sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    return self._want(conn, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(conn, selectors.EVENT_WRITE)
                self._park(conn, HEAD, self.limits.header_timeout)
            self._read_head(conn)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._drop(conn, why=f"{conn.state} error {type(exc).__name__}")

    def _read_head(self, conn: Conn) -> None:
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
                chunk = conn.sock.recv(RECV_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                return self._want(conn, selectors.EVENT_WRITE)
            if not chunk:
                return self._drop(conn)  # the client closed
            if conn.state is IDLE:
                self._park(conn, HEAD, self.limits.header_timeout)  # a request began: its head has a deadline
            conn.buf += chunk
        self._want(conn, selectors.EVENT_READ)

    def _dispatch(self, conn: Conn, end: int) -> None:
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
        conn.to(BUSY)
        self._busy += 1
        path = request.target.partition(b"?")[0]
        (self._priority if path in self.priority_paths else self._reloads if path in RELOAD_PATHS_B
         else self._workers).submit(conn)

    def _take_returned(self) -> None:
        while self._returned:
            conn, parts = self._returned.popleft()
            self._busy -= 1
            if not parts:
                self._close_conn(conn)  # the worker could not answer at all
                self._trimmer.since_closes += 1
                continue
            self._start_write(conn, parts)

    def _start_write(self, conn: Conn, parts: list[bytes]) -> None:
        conn.out = deque(memoryview(p) for p in parts if len(p))
        self._buffered.add(_part(v) for v in conn.out)
        self._trimmer.since_bytes += sum(len(v) for v in conn.out)
        now = time.monotonic()
        conn.to(WRITE)
        conn.sent, conn.write_start, conn.progress = 0, now, now
        conn.deadline = now + self.limits.write_timeout
        self._writing[conn] = None
        self._write(conn)
        if conn.state is WRITE and self._buffered.total > self.limits.max_buffered_bytes:
            self._shed(conn)

    def _shed(self, keep: Conn) -> None:
        """Over the cap on buffered response bytes: cut the writes that progressed least recently."""
        for conn in sorted(self._writing, key=lambda c: c.progress):
            if self._buffered.total <= self.limits.max_buffered_bytes:
                return
            if conn is not keep:
                self._cut(conn, "response buffer cap")

    def _write(self, conn: Conn) -> None:
        """Send what the socket takes now; at the end, the next request or a (lingering) close."""
        out = conn.out
        budget = WRITE_SLICE
        try:
            while out:
                if budget <= 0:
                    return self._want(conn, selectors.EVENT_WRITE)  # its next turn: select says writable
                view = out[0]
                chunk = view[:TLS_RECORD] if conn.tls else view[:budget]
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
        del self._writing[conn]  # the answer is out: from here the connection is in WRITE but queued nowhere
        http = conn.http
        if conn.close_after or self.stopping or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            self._unregister(conn)
            self._trimmer.since_closes += 1
            return self._linger(conn)
        http.start_next_cycle()
        if conn.buf:
            self._park(conn, HEAD, self.limits.header_timeout)
        else:
            self._park(conn, IDLE, self.limits.idle_timeout)
        self._read_head(conn)

    def _drain(self, conn: Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not data or conn.drained + len(data) > DRAIN_MAX:
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

    def _serve_one(self, conn: Conn) -> None:
        """Run the app for one request and frame its answer with h11; the poller writes it."""
        parts: list[bytes] = []
        try:
            parts = respond(self.app, self.base_environ, conn)
        except Exception as exc:  # the client's problem or the app's; never the worker's
            log.error("http request error client=%s error=%s", conn.addr, type(exc).__name__,
                      exc_info=not isinstance(exc, OSError))
            try:
                parts = error_response(conn)
            except h11.LocalProtocolError:
                parts = []  # the response had begun: only a close tells the client it is cut
        self._returned.append((conn, parts))
        self._wake()
