"""The Binance side of one account on one host: sign, send within budget, classify the answer.

Every outcome is a `Snapshot` or a `ScrapeError` carrying one of a small fixed
set of reasons; the engine turns those into `up` and the error counter.
Messages here never contain keys, signatures or URLs, because they end up in
logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from exporter.endpoints import CONTRACT_SIZES_CALL, HOST_KINDS, LEVERAGE_BRACKET_CALLS, TIME_WEIGHT, Call
from exporter.governor import Admission
from exporter.hosts import Host, parse_weight
from exporter.parsing import BadResponse, Brackets, Snapshot, load_json, parse_error, printable
from exporter.secrets import Secret
from exporter.signing import Signer, signed_query
from exporter.transport import Response, Transport, TransportError

AUTH_CODES = {-2014, -2015, -1002, -2008}
RETRY_STATUSES = {500, 502, 503, 504, 408}
RETRY_PAUSE_S = 0.2
MAX_SERVER_MS = 2**48  # a sane millisecond timestamp (year 10889)


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


class Skipped(Exception):
    """A call of an admitted refresh was not sent (its host paused meanwhile): not an error."""


class _Retry(Exception):
    """Internal: an answer that may be worth exactly one more try."""

    def __init__(self, kind: str, error: ScrapeError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error


def _describe_body(resp: Response) -> str:
    ctype = printable(resp.headers.get("Content-Type", "unknown").split(";")[0].strip(), 40)
    return f"HTTP {resp.status} with a non-JSON {ctype} body of {len(resp.body)} bytes"


def _from_transport(exc: TransportError) -> ScrapeError:
    return ScrapeError(exc.kind, exc.detail)


class HostClock:
    """Measures one host's clock through its unsigned time endpoint (weight 1, from the budget)."""

    def __init__(self, host: Host, transport: Transport) -> None:
        self.host = host
        self.transport = transport
        path = HOST_KINDS[host.kind].time_path
        if path is None:  # Targets gives such a host the USD-M host's clock instead
            raise ValueError(f"{host.kind} has no time endpoint")
        self.path = path

    def server_time(self, deadline: float) -> int | None:
        if self.host.backoff.remaining()[0] > 0 or not self.host.governor.try_acquire(TIME_WEIGHT, pace=False):
            return None
        sent_at = time.monotonic()
        try:
            resp = self.transport.get(self.path, None, deadline)
        except TransportError:
            return None
        note_answer(self.host, resp, sent_at)
        if resp.status != 200:
            return None
        try:
            data = load_json(resp.body)
        except BadResponse:
            return None
        server_ms = data.get("serverTime") if isinstance(data, dict) else None
        if isinstance(server_ms, bool) or not isinstance(server_ms, int) or not 0 < server_ms < MAX_SERVER_MS:
            return None
        return server_ms

    def ensure(self, deadline: float) -> None:
        self.host.clock.ensure(self.server_time, deadline)

    def resync(self, deadline: float) -> bool:
        return self.host.clock.sync(self.server_time, deadline)


def note_answer(host: Host, resp: Response, sent_at: float) -> float:
    """What every answer tells about the host: used weight, and a pause if it is a 429/418."""
    used = parse_weight(resp.headers.get(HOST_KINDS[host.kind].weight_header))
    if used is not None:
        host.governor.note_reported(used, sent_at)
    if resp.status in (418, 429):
        host.count_limited(resp.status)
        _, msg = parse_error(resp.body)
        return host.backoff.note(resp.status, resp.headers.get("Retry-After"), msg, sent_at)
    return 0.0


class Client:
    """One credential on one host: signed calls with one clock re-sync and one transient retry."""

    def __init__(self, host: Host, transport: Transport, clock: HostClock, api_key: Secret, signer: Signer,
                 recv_window_ms: int, sleep: Callable[[float], None] = time.sleep) -> None:
        self.host = host
        self.transport = transport
        self.clock = clock
        self._api_key = api_key
        self._signer = signer
        self._recv_window = str(recv_window_ms)
        self._sleep = sleep

    def fetch(self, calls: Sequence[Call], deadline: float, admission: Admission) -> Snapshot:
        """All calls of one refresh, whose weight the caller already took from the budget.

        Each call is checked again just before it is sent: a pause may have begun, or
        an answer (the clock's, another account's) may have reported the IP's total
        near the limit, since the refresh was admitted. Then it is not sent at all.
        """
        snapshot = Snapshot()
        for index, call in enumerate(calls):
            if index == 0:
                self.clock.ensure(deadline)
            if self.host.backoff.remaining()[0] > 0 or not self.host.governor.ip_room(call.weight):
                self.host.governor.refund(admission, sum(unsent.weight for unsent in calls[index:]))
                raise Skipped()
            snapshot = snapshot.merge(self._call(call, deadline))
        return snapshot

    def call_admitted(self, call: Call, deadline: float, admission: Admission) -> Any:
        """One call whose weight the caller already took (a metadata read): not sent, and
        refunded, if a pause began or the IP's total ran out since."""
        self.clock.ensure(deadline)
        if self.host.backoff.remaining()[0] > 0 or not self.host.governor.ip_room(call.weight):
            self.host.governor.refund(admission, call.weight)
            raise Skipped()
        return self._call(call, deadline)

    def call(self, call: Call, deadline: float) -> Any:
        """One call outside a refresh (sub-account discovery): its weight is taken here."""
        self.clock.ensure(deadline)
        if self.host.backoff.remaining()[0] > 0 or not self.host.governor.ip_room(call.weight) \
                or not self.host.governor.try_acquire(call.weight, pace=False):
            raise Skipped()
        return self._call(call, deadline)

    def _call(self, call: Call, deadline: float) -> Any:
        retried_clock = retried_transient = False
        while True:
            try:
                return self._attempt(call, deadline)
            except _Retry as retry:
                if retry.kind == "clock" and not retried_clock:
                    retried_clock = True
                    if self.clock.resync(deadline) and self.host.governor.try_acquire(call.weight, pace=False):
                        continue
                elif retry.kind == "transient" and not retried_transient:
                    retried_transient = True
                    if deadline - time.monotonic() > RETRY_PAUSE_S + 0.5 \
                            and self.host.backoff.remaining()[0] == 0 \
                            and self.host.governor.try_acquire(call.weight, pace=False):
                        self._sleep(RETRY_PAUSE_S)
                        continue
                raise retry.error from None

    def _attempt(self, call: Call, deadline: float) -> Any:
        params = [*call.params, ("recvWindow", self._recv_window), ("timestamp", str(self.host.clock.now_ms()))]
        target = f"{call.path}?{signed_query(params, self._signer)}"
        sent_at = time.monotonic()
        try:
            resp = self.transport.get(target, {"X-MBX-APIKEY": self._api_key.reveal()}, deadline)
        except TransportError as exc:
            error = _from_transport(exc)
            if exc.kind == "connection":
                raise _Retry("transient", error) from None
            raise error from None
        return self._handle(call, resp, sent_at)

    def _handle(self, call: Call, resp: Response, sent_at: float) -> Any:
        return handle_answer(self.host, call, resp, sent_at)


def handle_answer(host: Host, call: Call, resp: Response, sent_at: float) -> Any:
    """The parsed answer of a 200, else the ScrapeError (or _Retry) its status and code mean."""
    wait = note_answer(host, resp, sent_at)
    status = resp.status
    if status == 200:
        try:
            snapshot = call.parse(resp.body)
        except BadResponse as exc:
            raise ScrapeError("bad_response", str(exc), status=status) from None
        host.backoff.note_success()
        return snapshot
    code, msg = parse_error(resp.body)
    detail = msg or _describe_body(resp)
    if status in (418, 429):
        reason = "ip_banned" if status == 418 else "rate_limited"
        raise ScrapeError(reason, f"{detail} (host {host.label} paused for {wait:.0f}s)",
                          status=status, code=code)
    if code == -1021:
        raise _Retry("clock", ScrapeError("timestamp", detail, status=status, code=code))
    if code == -1022:
        raise ScrapeError("signature", detail, status=status, code=code)
    if code in AUTH_CODES or status == 401:
        raise ScrapeError("auth", detail, status=status, code=code)
    if code == -1003:  # a rate-limit answer with another status: pause as for a 429
        wait = host.backoff.note(429, resp.headers.get("Retry-After"), msg, sent_at)
        raise ScrapeError("rate_limited", f"{detail} (host {host.label} paused for {wait:.0f}s)",
                          status=status, code=code)
    error = ScrapeError("http_error", detail, status=status, code=code)
    if status in RETRY_STATUSES:
        raise _Retry("transient", error)
    raise error


def public_call(host: Host, transport: Transport, call: Call, deadline: float,
                admission: Admission | None = None) -> Any:
    """One unsigned public GET (`/dapi/v1/exchangeInfo`), its weight taken from the host's budget first
    (`admission`: the caller took it already, a metadata read; refunded if not sent).

    Skipped when the budget or a back-off says no; otherwise the parsed answer or a ScrapeError,
    as for a signed call (no retry: the caller reads again at its next turn).
    """
    if admission is not None:
        if host.backoff.remaining()[0] > 0 or not host.governor.ip_room(call.weight):
            host.governor.refund(admission, call.weight)
            raise Skipped()
    elif host.backoff.remaining()[0] > 0 or not host.governor.ip_room(call.weight) \
            or not host.governor.try_acquire(call.weight, pace=False):
        raise Skipped()
    query = "&".join(f"{name}={value}" for name, value in call.params)
    sent_at = time.monotonic()
    try:
        resp = transport.get(f"{call.path}?{query}" if query else call.path, None, deadline)
    except TransportError as exc:
        raise _from_transport(exc) from None
    try:
        return handle_answer(host, call, resp, sent_at)
    except _Retry as retry:
        raise retry.error from None


def fetch_brackets(client: Client, market: str, deadline: float) -> Brackets:
    """The account's brackets in `market` (usdm, coinm, pm): one signed call of weight 1 (COIN-M 2).

    Raises Skipped (no budget now: try later) or ScrapeError (reason as for a refresh).
    """
    brackets: Brackets = client.call(LEVERAGE_BRACKET_CALLS[market], deadline)
    return brackets


def fetch_contract_sizes(host: Host, transport: Transport, deadline: float) -> Mapping[str, Decimal]:
    """COIN-M contract sizes from the public exchangeInfo (weight 1), through the COIN-M host."""
    sizes: Mapping[str, Decimal] = public_call(host, transport, CONTRACT_SIZES_CALL, deadline)
    return sizes
