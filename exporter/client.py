"""The HTTP side of one account: sign, send, classify the answer.

Every outcome is either a `BalanceSnapshot` or a `ScrapeError` carrying one
of a small fixed set of reasons; the collector turns those into `up` and the
error counter. Messages here never contain keys, signatures or URLs, because
they end up in logs.

Transport: one urllib3 connection pool per account (keep-alive: one TCP/TLS
connection reused across scrapes). We started on `requests.Session`, which
sits on the same pools; profiling 300 accounts showed its per-call layers
(cookie jars, hooks, environment merging, redirect checks) costing about as
much CPU as everything else in a scrape together, so the exporter talks to
urllib3 directly. Proxies from the environment and the system CA store still
apply.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as TransportTimeout

from exporter import __version__
from exporter.config import AccountConfig
from exporter.hosts import HostState
from exporter.parsing import BadResponse, BalanceSnapshot, parse_balances, parse_error
from exporter.signing import signed_query

log = logging.getLogger("exporter.client")

REASONS = (
    "timeout",
    "connection",
    "rate_limited",
    "ip_banned",
    "auth",
    "signature",
    "timestamp",
    "http_error",
    "bad_response",
)
AUTH_CODES = {-2014, -2015, -1002, -2008}
RETRY_STATUSES = {500, 502, 503, 504, 408}
USER_AGENT = f"binance-futures-exporter/{__version__}"
TIME_RESYNC_S = 300.0
MIN_ATTEMPT_S = 0.05  # don't start a request with less time than this left
RETRY_PAUSE_S = 0.2


@dataclass
class ScrapeError(Exception):
    reason: str
    detail: str
    status: int | None = None
    code: int | None = None

    def __str__(self) -> str:
        parts = [self.reason]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        parts.append(self.detail)
        return " ".join(parts)


class Http(Protocol):
    """What we use of urllib3's HTTPConnectionPool / ProxyManager."""

    def urlopen(self, method: str, url: str, **kw: object) -> urllib3.BaseHTTPResponse: ...


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


def make_http(base_url: str, pool_size: int = 2) -> Http:
    """A keep-alive connection pool for one account, through a proxy if the environment sets one.

    Proxy settings (HTTPS_PROXY, NO_PROXY, ...) are read once, here.
    """
    parts = urlsplit(base_url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    headers = {"User-Agent": USER_AGENT}
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, num_pools=1, maxsize=pool_size, headers=headers)
    return urllib3.connection_from_url(base_url, maxsize=pool_size, block=False, headers=headers)


def _get(http: Http, base_url: str, target: str, timeout: float,
         headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
    """GET `target` (path and query): origin-form to a pool, absolute URL through a proxy."""
    url = base_url + target if isinstance(http, urllib3.PoolManager) else target
    return http.urlopen("GET", url, headers=headers, timeout=urllib3.Timeout(connect=timeout, read=timeout),
                        retries=False, redirect=False, preload_content=True)


def sync_clock(host: HostState, http: Http, timeout: float) -> bool:
    """Measure Binance's clock against ours via /fapi/v1/time (weight 1).

    The offset is taken at the midpoint of the round trip, so a slow network
    doesn't bias it. Returns False (and keeps the old offset) on any failure.
    """
    if timeout <= MIN_ATTEMPT_S:
        return False
    with host.sync_lock:
        start = host.wall()
        try:
            resp = _get(http, host.base_url, "/fapi/v1/time", timeout)
        except (HTTPError, OSError) as exc:
            log.warning("clock sync failed host=%s error=%s", host.host, _transport_detail(exc))
            return False
        end = host.wall()
        host.note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
        if resp.status in (418, 429):
            code, msg = parse_error(resp.data)
            host.note_limited(resp.status, resp.headers.get("Retry-After"), msg)
            return False
        try:
            server_ms = resp.json()["serverTime"]
            if isinstance(server_ms, bool) or not isinstance(server_ms, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("clock sync failed host=%s status=%s error=unexpected answer", host.host, resp.status)
            return False
        offset = server_ms - int((start + end) / 2 * 1000)
        host.note_offset(offset)
        log.debug("clock synced host=%s offset_ms=%d", host.host, offset)
        return True


class AccountClient:
    """Fetches one account's balances; owns that account's connection pool."""

    def __init__(self, account: AccountConfig, host: HostState,
                 monotonic=time.monotonic, sleep=time.sleep) -> None:
        self.account = account
        self.host = host
        self.http = make_http(account.base_url)
        self._monotonic = monotonic
        self._sleep = sleep

    def close(self) -> None:
        if isinstance(self.http, urllib3.PoolManager):
            self.http.clear()
        elif isinstance(self.http, urllib3.HTTPConnectionPool):
            self.http.close()

    def _remaining(self, deadline: float) -> float:
        return deadline - self._monotonic()

    def _ensure_clock(self, deadline: float) -> None:
        age = self.host.sync_age()
        if age is not None and age < TIME_RESYNC_S:
            return
        if age is not None and self.host.sync_lock.locked():
            return  # someone else is refreshing; the old offset is still good
        remaining = min(self._remaining(deadline), self.account.timeout_seconds) / 2
        if age is None and self.host.sync_lock.locked():
            # First sync in progress elsewhere: wait for it instead of signing blind.
            if self.host.sync_lock.acquire(timeout=max(0.0, remaining)):
                self.host.sync_lock.release()
            if self.host.sync_age() is not None:
                return
        sync_clock(self.host, self.http, remaining)

    def fetch(self, deadline: float) -> BalanceSnapshot:
        """One balance read, within `deadline` (a monotonic time). Raises ScrapeError."""
        remaining, reason = self.host.current_backoff()
        if remaining > 0:
            raise ScrapeError(reason, f"backing off host {self.host.host} for {remaining:.0f}s more")
        self._ensure_clock(deadline)
        retried_clock = False
        retried_transient = False
        while True:
            try:
                return self._attempt(deadline)
            except _Retry as retry:
                error = retry.error
                if retry.kind == "clock" and not retried_clock:
                    retried_clock = True
                    if sync_clock(self.host, self.http, min(self._remaining(deadline), 2.0) / 2):
                        continue
                elif retry.kind == "transient" and not retried_transient:
                    retried_transient = True
                    if self._remaining(deadline) > RETRY_PAUSE_S + 0.5:
                        self._sleep(RETRY_PAUSE_S)
                        continue
                raise error from None

    def _attempt(self, deadline: float) -> BalanceSnapshot:
        timeout = min(self.account.timeout_seconds, self._remaining(deadline))
        if timeout <= MIN_ATTEMPT_S:
            raise ScrapeError("timeout", "no time left before the scrape deadline")
        params = [("recvWindow", str(self.account.recv_window_ms)),
                  ("timestamp", str(self.host.now_ms()))]
        target = f"{self.account.balance_path}?{signed_query(params, self.account.signer)}"
        headers = {"X-MBX-APIKEY": self.account.api_key.reveal()}
        try:
            resp = _get(self.http, self.account.base_url, target, timeout, headers)
        except NewConnectionError as exc:  # a subclass of the timeout error in urllib3 2: test it first
            raise _Retry("transient", ScrapeError("connection", _transport_detail(exc))) from None
        except TransportTimeout as exc:
            raise ScrapeError("timeout", f"no answer within {timeout:.2f}s ({type(exc).__name__})") from None
        except (HTTPError, OSError) as exc:
            raise _Retry("transient", ScrapeError("connection", _transport_detail(exc))) from None
        return self._handle(resp)

    def _handle(self, resp: urllib3.BaseHTTPResponse) -> BalanceSnapshot:
        self.host.note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
        status = resp.status
        if status == 200:
            try:
                snapshot = parse_balances(resp.data)
            except BadResponse as exc:
                raise ScrapeError("bad_response", str(exc), status=status) from None
            self.host.note_success()
            return snapshot
        code, msg = parse_error(resp.data)
        detail = msg or _describe_body(resp)
        if status in (418, 429):
            wait = self.host.note_limited(status, resp.headers.get("Retry-After"), msg)
            reason = "ip_banned" if status == 418 else "rate_limited"
            raise ScrapeError(reason, f"{detail} (pausing host {self.host.host} for {wait:.0f}s)",
                              status=status, code=code)
        if code == -1021:
            raise _Retry("clock", ScrapeError("timestamp", detail, status=status, code=code))
        if code == -1022:
            raise ScrapeError("signature", detail, status=status, code=code)
        if code in AUTH_CODES or status == 401:
            raise ScrapeError("auth", detail, status=status, code=code)
        if code == -1003:
            wait = self.host.note_limited(429, resp.headers.get("Retry-After"), msg)
            raise ScrapeError("rate_limited", f"{detail} (pausing {wait:.0f}s)", status=status, code=code)
        error = ScrapeError("http_error", detail, status=status, code=code)
        if status in RETRY_STATUSES:
            raise _Retry("transient", error)
        raise error


def _describe_body(resp: urllib3.BaseHTTPResponse) -> str:
    ctype = resp.headers.get("Content-Type", "unknown").split(";")[0].strip()
    return f"HTTP {resp.status} with a non-JSON {ctype} body of {len(resp.data)} bytes"


class _Retry(Exception):
    """Internal: an answer that may be worth exactly one more try."""

    def __init__(self, kind: str, error: ScrapeError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error
