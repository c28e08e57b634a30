"""The shipped simulator plus what only tests and benchmarks need: fault injection, request counters and log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from exporter.simulator import Reply, Request
from exporter.simulator import Simulator as CoreSimulator
from exporter.simulator.server import Intercept, family_of

from .faults import PAYLOAD_KINDS, Fault, FaultBook, deform, fault_reply

REQUEST_LOG_MAX = 1_000_000  # ~200 MB at worst; a 3-minute benchmark logs a few thousand


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the simulator saw it: what the benchmarks check the weight budget against."""

    at: float  # time.time() on arrival, when its weight is charged (before any latency)
    path: str
    api_key: str | None  # the X-MBX-APIKEY header as sent (not validated)
    email: str | None  # sub-account requests: the sub-account named in the query
    status: int  # 0: the connection was reset without an answer
    weight: int


class RequestLog:
    """Every request with its arrival time and answer, in order; bounded, counts what it dropped."""

    def __init__(self, limit: int = REQUEST_LOG_MAX) -> None:
        self._lock = threading.Lock()
        self._entries: list[LoggedRequest] = []
        self._limit = limit
        self.dropped = 0

    def add(self, entry: LoggedRequest) -> None:
        with self._lock:
            if len(self._entries) < self._limit:
                self._entries.append(entry)
            else:
                self.dropped += 1

    def since(self, index: int) -> list[LoggedRequest]:
        with self._lock:
            return self._entries[index:]


class Stats:
    """Request counters, so tests and benchmarks can see what actually hit the wire."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections = self.requests = 0
        self._by_path: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()

    def connection(self) -> None:
        with self._lock:
            self.connections += 1

    def request(self, path: str, api_key: str | None) -> None:
        with self._lock:
            self.requests += 1
            self._by_path[path] += 1
            if api_key is not None:
                self._by_key[api_key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"connections": self.connections, "requests": self.requests,
                    "requests_by_path": dict(self._by_path), "requests_by_key": dict(self._by_key)}


class Simulator(CoreSimulator):
    """exporter.simulator.Simulator with `set_fault`, `set_global_fault` and `stats()`.

    A global fault applies to every admitted request before routing; an
    account's fault to that account's signed requests that passed validation.
    Either may be limited to one path with `Fault(path=...)`.
    `request_log=True` records every request with its arrival time and answer
    (`request_log.since(i)`), so a benchmark can check the weight an exporter
    sent per rolling minute and how often each account was fetched.
    """

    def __init__(self, *args: Any, request_log: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults = FaultBook()
        self._stats = Stats()
        self.request_log: RequestLog | None = RequestLog() if request_log else None

    def start(self) -> str:
        self._stats = Stats()  # counts start with each run
        return super().start()

    def set_fault(self, api_key: str, fault: Fault | None) -> None:
        """An account's fault; `api_key` may also be a sub-account's email (its master's signed requests
        that name it, e.g. /sapi/v2/sub-account/futures/account?email=...)."""
        self._faults.set(api_key, fault)

    def set_global_fault(self, fault: Fault | None) -> None:
        self._faults.set(FaultBook.GLOBAL, fault)

    def stats(self) -> dict[str, Any]:
        """requests, connections, requests_by_path, requests_by_key; used_weight: fapi, this minute."""
        return {**self._stats.snapshot(), "used_weight": self.used_weight("fapi")}

    def on_connection(self) -> None:
        self._stats.connection()

    def handle(self, req: Request) -> Reply:
        """The core pipeline, plus one `request_log` entry per request when the log is on."""
        if self.request_log is None:
            return super().handle(req)
        arrived = time.time()
        reply = super().handle(req)
        email = parse_qs(req.query).get("email", [None])[0] if req.path.startswith("/sapi/") else None
        self.request_log.add(LoggedRequest(arrived, req.path, req.api_key, email,
                                           0 if reply.reset else reply.status, self.weight(req.path)))
        return reply

    def intercept(self, stage: str, request: Request) -> Intercept:
        if stage == "received":
            self._stats.request(request.path, request.api_key)
            return None
        if stage == "request":
            fault = self._faults.take(FaultBook.GLOBAL, request.path)
        else:
            email = parse_qs(request.query).get("email", [None])[0]
            fault = (email and self._faults.take(email, request.path)) or self._faults.take(request.api_key,
                                                                                          request.path)
        if fault is None:
            return None
        if fault.kind == "latency":
            return None if self.pause(fault.latency_s) else Reply.abort()
        if fault.kind in PAYLOAD_KINDS:
            return partial(deform, fault.kind)
        family = family_of(request.path)
        return fault_reply(fault, weight_limit=self.weight_limit_for(family), spot=family in ("api", "sapi"),
                           now_ms=self.server_time_ms())
