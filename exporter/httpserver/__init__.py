"""The HTTP/1.1 server under the WSGI app: bounded in connections, threads, time and memory.

The package, one job per module:

- state.py: a connection's states (State) and every transition between them, in one table;
- poller.py: HTTPServer, the poller thread (accept, waiting, writing, deadlines, caps) and its worker pools;
- wsgi.py: the WSGI adapter (environ, calling the app, framing its answer with h11);
- heap.py: the glibc heap tuning (mmap threshold, malloc_trim after a burst);
- limits.py: every bound (Limits and its defaults).

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
5. At most max_connections are open (also capped below RLIMIT_NOFILE). Past
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

import ssl

from exporter.httpserver.heap import MMAP_THRESHOLD, trim_heap, tune_heap
from exporter.httpserver.limits import (
    BACKLOG,
    FD_RESERVE,
    HANDSHAKE_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    LINGER_TIMEOUT,
    MAX_BUFFERED_BYTES,
    MAX_CONNECTIONS,
    MAX_HANDSHAKES,
    MAX_HEADER_BYTES,
    MAX_WORKERS,
    MIN_SEND_RATE,
    PRIORITY_PATHS,
    PRIORITY_WORKERS,
    RELOAD_PATHS,
    RELOAD_WORKERS,
    WRITE_STALL_TIMEOUT,
    WRITE_TIMEOUT,
    Limits,
)
from exporter.httpserver.poller import HTTPServer, parse_listen_address
from exporter.httpserver.state import State
from exporter.httpserver.wsgi import Environ, StartResponse, WsgiApp, run_app, wsgi_environ

__all__ = [
    "BACKLOG", "FD_RESERVE", "HANDSHAKE_TIMEOUT", "HEADER_TIMEOUT", "IDLE_TIMEOUT", "LINGER_TIMEOUT",
    "MAX_BUFFERED_BYTES", "MAX_CONNECTIONS", "MAX_HANDSHAKES", "MAX_HEADER_BYTES", "MAX_WORKERS",
    "MIN_SEND_RATE", "MMAP_THRESHOLD", "PRIORITY_PATHS", "PRIORITY_WORKERS", "RELOAD_PATHS", "RELOAD_WORKERS",
    "WRITE_STALL_TIMEOUT",
    "WRITE_TIMEOUT", "Environ", "HTTPServer", "Limits", "StartResponse", "State", "WsgiApp",
    "parse_listen_address", "run_app", "serve", "trim_heap", "tune_heap", "wsgi_environ",
]


def serve(app: WsgiApp, address: str, ssl_context: ssl.SSLContext | None = None,
          limits: Limits | None = None) -> HTTPServer:
    """Bind and start serving in a daemon thread; returns the server (for its port and shutdown)."""
    host, port = parse_listen_address(address)
    tune_heap()  # process-wide, once the exporter is about to serve (see heap.py)
    server = HTTPServer(app, host, port, ssl_context, limits or Limits())
    server.start()
    return server
