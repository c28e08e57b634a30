"""A client connection's states and every transition between them, in one table (h11's _state.py is the model).

    NEW ──► HANDSHAKE ──► HEAD ──► BUSY ──► WRITE ──► HEAD | IDLE   (keep-alive: the next request)
     └───────────────────┘  ▲               │
                  IDLE ─────┘               └──► LINGER ──► CLOSED   (the last answer; drained, then closed)

Waiting states (HANDSHAKE, HEAD, IDLE, LINGER) are parked in the poller with a deadline and cost no
thread; BUSY is a worker's (the app runs); WRITE is the poller's again (the answer goes out as the
client reads). From any state but NEW and BUSY a connection may be closed (timeout, eviction,
error); from HEAD it may instead get a short error answer and linger. The poller moves a connection
only through `Conn.to`, which refuses a move this table does not list.
"""

from __future__ import annotations

import socket
from collections import deque
from enum import Enum

import h11


class State(str, Enum):
    """Named, and still equal (and hashing equal) to its plain text: logs and tests read "handshake"."""

    NEW = "new"              # accepted, not yet placed
    HANDSHAKE = "handshake"  # TLS handshake in progress
    HEAD = "head"            # reading a request head (its deadline runs)
    IDLE = "idle"            # keep-alive, no request begun
    BUSY = "busy"            # a worker runs the app for its request
    WRITE = "write"          # the poller writes the answer
    LINGER = "linger"        # our side shut down; the client's last bytes are drained
    CLOSED = "closed"        # the socket is closed

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


NEW, HANDSHAKE, HEAD, IDLE = State.NEW, State.HANDSHAKE, State.HEAD, State.IDLE
BUSY, WRITE, LINGER, CLOSED = State.BUSY, State.WRITE, State.LINGER, State.CLOSED

# Each state's deadline-ordered queue in the poller, in the order they expire and are evicted.
WAITING = (HANDSHAKE, HEAD, IDLE, LINGER)

TRANSITIONS: dict[State, frozenset[State]] = {
    NEW: frozenset({HANDSHAKE, HEAD}),                # accepted on the TLS port, or the plain one
    HANDSHAKE: frozenset({HEAD, CLOSED}),             # handshake done; timeout, error, evicted, handshake cap
    HEAD: frozenset({BUSY, LINGER, CLOSED}),          # head complete; 400/408/431/505 then linger; closed
    IDLE: frozenset({HEAD, CLOSED}),                  # a request's first byte; timeout, evicted, client closed
    BUSY: frozenset({WRITE, CLOSED}),                 # the answer is ready; the worker could not answer at all
    WRITE: frozenset({HEAD, IDLE, LINGER, CLOSED}),   # keep-alive (a pipelined head waits, or none); the
                                                      # last answer; cut (timeout, stall, too slow, buffer cap)
    LINGER: frozenset({CLOSED}),                      # drained, client closed, timeout, evicted
    CLOSED: frozenset(),
}


class TransitionError(RuntimeError):
    """A move the table does not list: a bug in the poller, never the client's doing."""


class Conn:
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
        self.state = NEW
        self.since = 0.0
        self.deadline = 0.0
        self.events = 0
        self.out: deque[memoryview] = deque()
        self.sent = 0
        self.write_start = 0.0
        self.progress = 0.0
        self.drained = 0

    def to(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise TransitionError(f"http connection cannot go from {self.state} to {state}")
        self.state = state
