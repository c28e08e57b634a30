"""Every bound of the HTTP front, each value written once.

A bound that a test or a caller may change is a field of `Limits` (its default is the production
value); the module constant of the same name in capitals is that default, for the modules that
plan around it (fdlimit.py) without building a server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """All bounds of one server; tests pass small ones, production uses the defaults."""

    # A connect burst of this many is queued by the kernel instead of dropped
    # (the kernel caps it at net.core.somaxconn, 4096 on current Linux).
    backlog: int = 1024
    # Open client connections. Idle ones cost no thread, only an fd and ~1 KB, so
    # this can be generous; it bounds memory under a connection flood (at worst
    # every one holds a partial head: 4096 x max_header_bytes = 64 MB).
    max_connections: int = 4096
    # TLS handshakes in progress. One that stalled after its ClientHello holds
    # OpenSSL's handshake state and buffers; a flood of them took 240 MB.
    max_handshakes: int = 256
    # Threads running requests. A scrape thread mostly waits on Binance (or its
    # deadline); more than this many concurrent scrapes wait their turn, in order.
    max_workers: int = 64
    # Threads for PRIORITY_PATHS only: cheap answers that must not queue behind scrapes.
    priority_workers: int = 2
    # Threads for RELOAD_PATHS only: a storm of POST /-/reload (coalesced by exporter.reload) waits
    # in these, never in the pool that scrapes use (issue 23).
    reload_workers: int = 64
    # From accept (plain) or from the first byte of a keep-alive request until the
    # head is complete. Prometheus sends its request at once; 10 s is for slow links.
    header_timeout: float = 10.0
    # From accept until the TLS handshake is done (mTLS included).
    handshake_timeout: float = 10.0
    # A keep-alive connection with no request in flight. Above Prometheus' default
    # 1 m scrape interval (like nginx's 75 s), so the scrape connection is reused.
    idle_timeout: float = 75.0
    # A whole response, from the first byte written to the last.
    write_timeout: float = 30.0
    # A response none of whose bytes the client took for this long is cut.
    write_stall_timeout: float = 5.0
    # After write_stall_timeout, a response must have gone at this average rate at least
    # (a 3 MB /metrics at this rate takes 12 s; Prometheus reads it in milliseconds).
    min_send_rate: float = 256 * 1024
    # Response bytes waiting in the poller for every client together (bodies shared
    # by several clients count once).
    max_buffered_bytes: int = 64 << 20
    # Request line + headers. Prometheus sends < 1 KB; bearer tokens fit easily.
    max_header_bytes: int = 16384
    # After the last response of a connection: how long its unread input is drained.
    linger_timeout: float = 2.0


BACKLOG = Limits.backlog
MAX_CONNECTIONS = Limits.max_connections
MAX_HANDSHAKES = Limits.max_handshakes
MAX_WORKERS = Limits.max_workers
PRIORITY_WORKERS = Limits.priority_workers
RELOAD_WORKERS = Limits.reload_workers
HEADER_TIMEOUT = Limits.header_timeout
HANDSHAKE_TIMEOUT = Limits.handshake_timeout
IDLE_TIMEOUT = Limits.idle_timeout
WRITE_TIMEOUT = Limits.write_timeout
WRITE_STALL_TIMEOUT = Limits.write_stall_timeout
MIN_SEND_RATE = Limits.min_send_rate
MAX_BUFFERED_BYTES = Limits.max_buffered_bytes
MAX_HEADER_BYTES = Limits.max_header_bytes
LINGER_TIMEOUT = Limits.linger_timeout

PRIORITY_PATHS = ("/-/healthy", "/-/ready")
RELOAD_PATHS = ("/-/reload",)
RELOAD_PATHS_B = frozenset(p.encode() for p in RELOAD_PATHS)
# File descriptors kept free for everything that is not an HTTP client (logs,
# urllib3 pools to Binance, cert files) when the connection cap meets RLIMIT_NOFILE.
FD_RESERVE = 256

# Not tunable: how the poller slices its work.
ACCEPT_BATCH = 64
RECV_CHUNK = 8192
TLS_RECORD = 16384  # one TLS record per SSL_write: a retry after WANT_WRITE passes the same bytes
# At most this much per connection per turn of the poller: the kernel takes megabytes at once
# from a client that does not read (loopback send buffers grow to 4 MB), and 70 of those in a
# row kept the poller (and /-/healthy) waiting; in slices, connections take turns.
WRITE_SLICE = 256 * 1024
DRAIN_MAX = 1 << 20  # bytes a lingering close reads and discards at most
