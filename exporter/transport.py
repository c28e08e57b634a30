"""HTTP to Binance: keep-alive pools whose requests end at a hard deadline, with capped bodies.

urllib3's timeouts are per socket operation: a server that trickles one byte
a second through headers or body never trips them, and keeps a fetch (and the
account it belongs to) blind for as long as it likes. So every request here
runs under a deadline enforced by `Watchdog`, one thread that shuts down the
socket of any request still running when its deadline passes. What is read
is capped (`MAX_BODY_BYTES`), and a compressed body we never asked for is only
inflated up to the same cap.

We started on `requests.Session`, which sits on the same pools; profiling
300 accounts showed its per-call layers costing about as much CPU as
everything else in a scrape together, so we talk to urllib3 directly. Proxies
from the environment and the system CA store still apply.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import EmptyPoolError, HTTPError

from exporter import __version__

USER_AGENT = f"binance-futures-exporter/{__version__}"
# Binance's answers are kilobytes: a balance row is ~250 bytes, a position ~600.
# 4 MiB holds ~16,000 asset rows or ~6,000 positions, far beyond any real
# account, while one hostile body can cost at most this much memory.
MAX_BODY_BYTES = 4 * 1024 * 1024
READ_CHUNK = 64 * 1024
MIN_ATTEMPT_S = 0.05  # don't start a request with less time than this left


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes


class TransportError(Exception):
    """The request got no usable HTTP answer. `kind`: timeout, connection or bad_response."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


# ---- deadlines ---------------------------------------------------------------------------------
class _Guard:
    """One request's deadline; the connection it runs on registers itself here."""

    __slots__ = ("deadline", "conn", "fired", "done", "_lock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: HTTPConnection | None = None
        self.fired = False
        self.done = False
        self._lock = threading.Lock()

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self.conn = conn
            fired = self.fired
        if fired:
            _cut(conn)

    def fire(self) -> None:
        with self._lock:
            if self.done or self.fired:
                return
            self.fired = True
            conn = self.conn
        if conn is not None:
            _cut(conn)


def _cut(conn: HTTPConnection) -> None:
    """Wake whatever blocks on this connection's socket: its recv/send returns at once."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter would first
        # drop the TLS object another thread is reading through.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class Watchdog:
    """One daemon thread that cuts requests past their deadline (and all of them at shutdown)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, deadline: float) -> _Guard:
        guard = _Guard(deadline)
        with self._cond:
            if self._closed:
                guard.fired = True
                return guard
            heapq.heappush(self._heap, (deadline, next(self._seq), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is guard:
                self._cond.notify()
        return guard

    @staticmethod
    def disarm(guard: _Guard) -> None:
        with guard._lock:
            guard.done = True
            guard.conn = None

    def close(self) -> None:
        """Cut every running request: used at shutdown, so no thread waits on a slow upstream."""
        with self._cond:
            self._closed = True
            guards = [g for _, _, g in self._heap]
            self._heap.clear()
            self._cond.notify()
        for guard in guards:
            guard.fire()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, guard = heapq.heappop(self._heap)
                    if not guard.done:
                        guard.fire()
                timeout = (self._heap[0][0] - now) if self._heap else None
                self._cond.wait(timeout)


WATCHDOG = Watchdog()
_local = threading.local()


class _GuardedMixin:
    """Registers the connection with the calling thread's current guard on every use."""

    def connect(self) -> None:
        _attach(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]
        # Again now that there is a socket: a deadline that passed while connecting
        # found none to cut, and plain HTTP attaches before it connects.
        _attach(self)  # type: ignore[arg-type]

    def request(self, *args: object, **kwargs: object) -> None:
        _attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


def _attach(conn: HTTPConnection) -> None:
    guard: _Guard | None = getattr(_local, "guard", None)
    if guard is not None:
        guard.attach(conn)


class _GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


# ---- bodies ------------------------------------------------------------------------------------
def _inflate(raw: bytes, encoding: str) -> bytes:
    """Decode gzip/deflate up to MAX_BODY_BYTES: a 1 MB bomb must not become 1 GB."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise TransportError("bad_response", f"unsupported Content-Encoding {encoding[:20]!r}")
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error:
        out = None
    if out is None:
        raise TransportError("bad_response", f"corrupt {encoding} body")
    if len(out) > MAX_BODY_BYTES or decoder.unconsumed_tail:
        del out
        raise TransportError("bad_response", f"body inflates to more than {MAX_BODY_BYTES} bytes")
    return out


def _read_body(resp: urllib3.BaseHTTPResponse) -> bytes:
    length = resp.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
        raise TransportError("bad_response", f"body of {int(length)} bytes announced")  # not a byte is read
    body = bytearray()
    while True:
        chunk = resp.read(READ_CHUNK, decode_content=False)
        if not chunk:
            break
        if len(body) + len(chunk) > MAX_BODY_BYTES:
            del body, chunk  # not kept alive by the traceback's frame
            raise TransportError("bad_response", f"body larger than {MAX_BODY_BYTES} bytes")
        body += chunk
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    return bytes(body) if encoding in ("", "identity") else _inflate(bytes(body), encoding)


def detach(exc: BaseException | None) -> None:
    """Drop the tracebacks of an exception and everything it chains to.

    A traceback keeps every frame it passed through alive, with their locals:
    the answer's body, the connection, the exception itself (a reference cycle
    only the cyclic GC frees, which may run long after a 50 MB body arrived).
    Exceptions that are kept (an account's last error) or dropped here keep none.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _transport_detail(exc: BaseException) -> str:
    """A description of a transport error without the URL it would otherwise quote."""
    text = type(exc).__name__
    cause: BaseException | None = exc
    for _ in range(6):  # find the socket-level reason (e.g. ConnectionRefusedError)
        cause = (cause.__cause__ or cause.__context__) if cause else None
        if cause is None:
            break
        if isinstance(cause, OSError) and type(cause).__module__ == "builtins":
            return f"{text} ({type(cause).__name__})"
    for arg in getattr(exc, "args", ()):  # urllib3 puts the socket error in args
        if isinstance(arg, OSError) and type(arg).__module__ == "builtins":
            return f"{text} ({type(arg).__name__})"
    return text


def _classify(exc: BaseException, cut: bool, remaining: float) -> tuple[str, str]:
    if cut:
        return "timeout", f"no complete answer within {remaining:.2f}s"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection", _transport_detail(exc)
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout", f"no answer within {remaining:.2f}s ({type(exc).__name__})"
    return "connection", _transport_detail(exc)


# ---- the pool ----------------------------------------------------------------------------------
class Transport:
    """The keep-alive connection pool to one base URL, shared by every account and clock that uses it.

    One pool per host, not per account: the connections (and file descriptors)
    follow from `max_concurrency`, not from the number of accounts, and Binance
    sees a few connections from the IP instead of one per account. The pool
    blocks at `pool_size` (the fetch threads are as many, so no request waits
    for a connection in practice), and never holds more.

    Sharing a connection between accounts is safe because one never carries an
    answer's leftovers into another request: a connection whose request failed
    or was cut at its deadline is closed here, and one holding bytes past the
    answer it framed is closed by urllib3 when it is next taken from the pool
    (unread data counts as a dropped connection there). Bytes a server sends
    even later, once the next request is out, nothing can tell from its answer:
    that upstream answers every account of the host anyway.

    Proxy settings (HTTPS_PROXY, NO_PROXY, ...) are read once, here.
    """

    def __init__(self, base_url: str, pool_size: int = 2, watchdog: Watchdog = WATCHDOG) -> None:
        self.base_url = base_url
        self.pool_size = pool_size
        # Requests that may run on this pool at once (its clients' and clock's, see Pools.get):
        # a pool opens a connection only when none is idle, so it never holds more than this.
        self.demand = 0
        self._watchdog = watchdog
        self._http = self._pool(pool_size)

    def _pool(self, pool_size: int) -> urllib3.PoolManager | HTTPConnectionPool:
        parts = urlsplit(self.base_url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        headers = {"User-Agent": USER_AGENT}
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            manager = urllib3.ProxyManager(proxy, num_pools=1, maxsize=pool_size, block=True, headers=headers)
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
            return manager
        pool_cls = _HTTPSPool if parts.scheme == "https" else _HTTPPool
        return pool_cls(parts.hostname or "", parts.port, maxsize=pool_size, block=True, headers=headers)

    def resize(self, pool_size: int) -> None:
        """A reload changed `max_concurrency`: new requests use a pool of the new size. The old
        pool's idle connections close now; those in use close when their request ends (urllib3
        closes a connection handed back to a closed pool)."""
        if pool_size == self.pool_size:
            return
        old, self._http = self._http, self._pool(pool_size)
        self.pool_size = pool_size
        self._close(old)

    def close(self) -> None:
        self._close(self._http)

    @staticmethod
    def _close(http: urllib3.PoolManager | HTTPConnectionPool) -> None:
        if isinstance(http, urllib3.PoolManager):
            http.clear()
        else:
            http.close()

    def get(self, target: str, headers: Mapping[str, str] | None, deadline: float) -> Response:
        """GET `target` (path and query), all of it done by `deadline` (monotonic) or TransportError."""
        return self.request("GET", target, headers, deadline)

    def request(self, method: str, target: str, headers: Mapping[str, str] | None, deadline: float) -> Response:
        """`method` `target` with no body (the listenKey POST/PUT take their parameters in the query)."""
        remaining = deadline - time.monotonic()
        if remaining <= MIN_ATTEMPT_S:
            raise TransportError("timeout", "no time left before the deadline")
        url = self.base_url + target if isinstance(self._http, urllib3.PoolManager) else target
        guard = self._watchdog.arm(deadline)
        _local.guard = guard
        resp: urllib3.BaseHTTPResponse | None = None
        failure: tuple[str, str] | None = None
        try:
            resp = self._http.urlopen(
                method, url, headers=dict(headers or {}), retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
                pool_timeout=remaining,  # type: ignore[arg-type]  # urllib3 says int; it is a queue.get timeout
                preload_content=False, decode_content=False,
            )
            body = _read_body(resp)
        except TransportError as exc:
            failure = exc.kind, exc.detail
            detach(exc)
        except EmptyPoolError as exc:
            failure = "timeout", f"no free connection to the host within {remaining:.2f}s"
            detach(exc)
        except (HTTPError, OSError, ValueError) as exc:
            failure = _classify(exc, guard.fired, remaining)
            detach(exc)
        finally:
            _local.guard = None
            self._watchdog.disarm(guard)
        if failure is None and guard.fired:
            # Cut while the answer arrived: what was read may be short of it. Headers cut
            # off after the status line read as complete (EOF ends them), and so does a
            # body without a length: a 200 with half its headers is no answer.
            failure = "timeout", f"no complete answer within {remaining:.2f}s"
        if failure is not None:  # raised here, outside `except`: it chains to nothing
            self._discard(resp)
            raise TransportError(*failure)
        assert resp is not None
        resp.release_conn()
        return Response(resp.status, resp.headers, body)

    @staticmethod
    def _discard(resp: urllib3.BaseHTTPResponse | None) -> None:
        """Close a connection that may hold unread or cut data, and hand its slot back."""
        if resp is None:
            return
        conn = resp.connection
        if conn is not None:
            conn.close()
        resp.release_conn()


class Pools:
    """Every host's `Transport`, by base URL: built once, shared by all accounts, outliving config changes.

    Accounts come and go (sub-account discovery, a reload); a host's pool and
    its warm connections stay. What they may hold in connections, and so in
    file descriptors, is `connections()`: per host, the requests its users may
    run at once, at most the pool size (`max_concurrency`). Three accounts
    need four connections (the clock's is the fourth), 5,000 on one host 512.
    """

    def __init__(self, pool_size: int, watchdog: Watchdog = WATCHDOG) -> None:
        self.pool_size = pool_size
        self.watchdog = watchdog
        self._lock = threading.Lock()
        self._by_url: dict[str, Transport] = {}

    def get(self, base_url: str, concurrency: int = 1) -> Transport:
        """The host's pool, for a user that runs up to `concurrency` requests at once on it."""
        with self._lock:
            transport = self._by_url.get(base_url)
            if transport is None:
                transport = self._by_url[base_url] = Transport(base_url, self.pool_size, self.watchdog)
            transport.demand += concurrency
            return transport

    def resize(self, pool_size: int) -> None:
        """A reload changed `max_concurrency`: every host's pool follows."""
        with self._lock:
            self.pool_size = pool_size
            transports = list(self._by_url.values())
        for transport in transports:
            transport.resize(pool_size)

    def connections(self) -> int:
        """The most upstream connections these pools can hold open at once."""
        with self._lock:
            return sum(min(t.pool_size, t.demand) for t in self._by_url.values())

    def close(self) -> None:
        with self._lock:
            transports = list(self._by_url.values())
        for transport in transports:
            transport.close()
