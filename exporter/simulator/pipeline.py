"""What the simulator answers to one request, independent of the HTTP plumbing.

Order of processing (documented because it decides which answer wins):

1. count the request (stats);
2. charge its weight to the client IP (before any validation, like Binance):
   banned → 418, over the limit → 429;
3. global fault (every path, /time and /ping included);
4. method (non-GET → 405) and route (unknown path → 404);
5. signed balance endpoints only: global ``latency_s``, then validation
   (see ``auth``), then the account's fault (only requests that passed
   validation consume it), then the payload;
6. payload faults deform the 200 answer last.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import authenticate
from .errors import MSG_METHOD_NOT_ALLOWED, MSG_NOT_FOUND, ApiError, Reply, banned_msg, too_many_requests_msg
from .faults import PAYLOAD_KINDS, Fault, FaultBook, immediate_reply, render_payload
from .ratelimit import Admission, RateLimiter
from .state import AccountBook
from .stats import Stats

PING = "/fapi/v1/ping"
TIME = "/fapi/v1/time"
BALANCE_V2 = "/fapi/v2/balance"
BALANCE_V3 = "/fapi/v3/balance"
BALANCE_V3_WEIGHT = 5
DEFAULT_WEIGHT = 1
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


class Settings(Protocol):
    """The Simulator attributes read live on every request (tests change them at runtime)."""

    clock_skew_ms: int
    latency_s: float
    weight_limit: int
    v2_balance_weight: int
    max_recv_window_ms: int | None
    ban_after_429s: int
    send_retry_after: bool


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    api_key: str | None
    client_ip: str


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountBook,
        faults: FaultBook,
        limiter: RateLimiter,
        stats: Stats,
        stopping: threading.Event,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._faults = faults
        self._limiter = limiter
        self._stats = stats
        self._stopping = stopping

    def server_ms(self) -> int:
        return int(time.time() * 1000) + int(self._settings.clock_skew_ms)

    def weight(self, path: str) -> int:
        if path == BALANCE_V3:
            return BALANCE_V3_WEIGHT
        if path == BALANCE_V2:
            return int(self._settings.v2_balance_weight)
        return DEFAULT_WEIGHT

    def handle(self, req: Request) -> Reply:
        self._stats.request(req.path, req.api_key)
        admission = self._limiter.admit(
            req.client_ip,
            self.weight(req.path),
            self.server_ms(),
            limit=int(self._settings.weight_limit),
            ban_after_429s=int(self._settings.ban_after_429s),
        )
        reply = self._serve(req) if admission.allowed else self._refusal(admission)
        if not reply.reset:
            reply.headers.append((WEIGHT_HEADER, str(admission.used_weight)))
        return reply

    def _refusal(self, admission: Admission) -> Reply:
        retry = [("Retry-After", str(admission.retry_after_s))] if self._settings.send_retry_after else []
        if admission.status == 418:
            return Reply.error(418, -1003, banned_msg(admission.banned_until_ms), retry)
        return Reply.error(429, -1003, too_many_requests_msg(int(self._settings.weight_limit)), retry)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the simulator stops meanwhile; False means 'stopping, give up'."""
        if seconds <= 0:
            return True
        return not self._stopping.wait(seconds)

    def _apply(self, fault: Fault, payload_kinds: list[str]) -> Reply | None:
        if fault.kind == "latency":
            return None if self._pause(fault.latency_s) else Reply.abort()
        if fault.kind in PAYLOAD_KINDS:
            payload_kinds.append(fault.kind)
            return None
        return immediate_reply(fault, weight_limit=int(self._settings.weight_limit), now_ms=self.server_ms())

    def _serve(self, req: Request) -> Reply:
        payload_kinds: list[str] = []
        fault = self._faults.take(FaultBook.GLOBAL)
        if fault is not None:
            reply = self._apply(fault, payload_kinds)
            if reply is not None:
                return reply
        if req.method != "GET":
            return Reply.error(405, -1099, MSG_METHOD_NOT_ALLOWED, [("Allow", "GET")])
        obj: Any
        if req.path == PING:
            obj = {}
        elif req.path == TIME:
            obj = {"serverTime": self.server_ms()}
        elif req.path in (BALANCE_V2, BALANCE_V3):
            if not self._pause(float(self._settings.latency_s)):
                return Reply.abort()
            try:
                api_key = authenticate(
                    req.query,
                    req.api_key,
                    self._accounts.credentials,
                    self.server_ms(),
                    self._settings.max_recv_window_ms,
                )
            except ApiError as err:
                return err.reply()
            fault = self._faults.take(api_key)
            if fault is not None:
                reply = self._apply(fault, payload_kinds)
                if reply is not None:
                    return reply
            obj = self._accounts.rows(api_key, self.server_ms())
        else:
            return Reply.error(404, -1099, MSG_NOT_FOUND)
        return render_payload(obj, payload_kinds)
