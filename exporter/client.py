"""The HTTP side of one account: sign, send, classify the answer.

Every outcome is either a `BalanceSnapshot` or a `ScrapeError` carrying one
of a small fixed set of reasons; the collector turns those into `up` and the
error counter. Messages here never contain keys, signatures or URLs, because
they end up in logs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import requests

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


def _transport_detail(exc: BaseException) -> str:
    """A description of a requests exception without the URL it would otherwise quote."""
    text = type(exc).__name__
    cause: BaseException | None = exc
    for _ in range(6):  # find the socket-level reason (e.g. ConnectionRefusedError)
        cause = cause.__cause__ or cause.__context__ if cause else None
        if cause is None:
            break
        if isinstance(cause, OSError) and not isinstance(cause, requests.RequestException) \
                and type(cause).__module__ == "builtins":
            return f"{text} ({type(cause).__name__})"
    return text


def make_session(base_url: str, pool_size: int = 2) -> requests.Session:
    """A keep-alive session: one TCP/TLS connection per account, reused across scrapes.

    Proxy settings (HTTPS_PROXY, NO_PROXY, ...) are read from the environment
    once here instead of on every request, which is what `trust_env` would do
    (it re-scans the environment and ~/.netrc per call: a measurable share of
    the CPU a scrape costs with hundreds of accounts).
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def sync_clock(host: HostState, session: requests.Session, timeout: float) -> bool:
    """Measure Binance's clock against ours via /fapi/v1/time (weight 1).

    The offset is taken at the midpoint of the round trip, so a slow network
    doesn't bias it. Returns False (and keeps the old offset) on any failure.
    """
    if timeout <= MIN_ATTEMPT_S:
        return False
    with host.sync_lock:
        start = host.wall()
        try:
            resp = session.get(f"{host.base_url}/fapi/v1/time", timeout=timeout)
        except requests.RequestException as exc:
            log.warning("clock sync failed host=%s error=%s", host.host, _transport_detail(exc))
            return False
        end = host.wall()
        host.note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
        if resp.status_code in (418, 429):
            code, msg = parse_error(resp.content)
            host.note_limited(resp.status_code, resp.headers.get("Retry-After"), msg)
            return False
        try:
            server_ms = resp.json()["serverTime"]
            if isinstance(server_ms, bool) or not isinstance(server_ms, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("clock sync failed host=%s status=%s error=unexpected answer", host.host, resp.status_code)
            return False
        offset = server_ms - int((start + end) / 2 * 1000)
        host.note_offset(offset)
        log.debug("clock synced host=%s offset_ms=%d", host.host, offset)
        return True


class AccountClient:
    """Fetches one account's balances; owns that account's `requests.Session`."""

    def __init__(self, account: AccountConfig, host: HostState,
                 monotonic=time.monotonic, sleep=time.sleep) -> None:
        self.account = account
        self.host = host
        self.session = make_session(account.base_url)
        self._monotonic = monotonic
        self._sleep = sleep
        self._url = f"{account.base_url}{account.balance_path}"
        self._lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

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
        sync_clock(self.host, self.session, remaining)

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
                    if sync_clock(self.host, self.session, min(self._remaining(deadline), 2.0) / 2):
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
        url = f"{self._url}?{signed_query(params, self.account.signer)}"
        headers = {"X-MBX-APIKEY": self.account.api_key.reveal()}
        try:
            resp = self.session.get(url, headers=headers, timeout=timeout)
        except requests.Timeout as exc:
            raise ScrapeError("timeout", f"no answer within {timeout:.2f}s ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise _Retry("transient", ScrapeError("connection", _transport_detail(exc))) from None
        return self._handle(resp)

    def _handle(self, resp: requests.Response) -> BalanceSnapshot:
        self.host.note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
        status = resp.status_code
        if status == 200:
            try:
                snapshot = parse_balances(resp.content)
            except BadResponse as exc:
                raise ScrapeError("bad_response", str(exc), status=status) from None
            self.host.note_success()
            return snapshot
        code, msg = parse_error(resp.content)
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


def _describe_body(resp: requests.Response) -> str:
    ctype = resp.headers.get("Content-Type", "unknown").split(";")[0].strip()
    return f"HTTP {resp.status_code} with a non-JSON {ctype} body of {len(resp.content)} bytes"


class _Retry(Exception):
    """Internal: an answer that may be worth exactly one more try."""

    def __init__(self, kind: str, error: ScrapeError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error
