"""listenKeys: the REST side of a user data stream (POST to get one, PUT to keep it alive).

Binance keeps ONE active listenKey per account and market and hands the same
key to every client that asks (a POST returns the active key and extends it),
so the user's trading bots are very likely on the key the exporter uses. A
DELETE would silence their streams too: this module has no DELETE, by design,
not even at shutdown. Closing the WebSocket is all the exporter does.

Both calls send the API key header only (no signature), weigh 1, and are
charged to the host's weight governor like any other request; a host paused
by a 429/418 gets none.
"""

from __future__ import annotations

import re
import time

from exporter.client import note_answer
from exporter.hosts import Host
from exporter.parsing import BadResponse, load_json, parse_error
from exporter.secrets import Secret
from exporter.transport import Transport, TransportError

LISTEN_KEY_PATHS = {"usdm": "/fapi/v1/listenKey", "coinm": "/dapi/v1/listenKey", "pm": "/papi/v1/listenKey"}
LISTEN_KEY_WEIGHT = 1
KEY_GONE = -1125  # "This listenKey does not exist."
LISTEN_KEY_RE = re.compile(r"[A-Za-z0-9]{1,128}")


class ListenKeyError(Exception):
    """The call failed or was not sent; `gone` means Binance no longer knows the key (-1125).

    Messages name a reason, a status and a code only: never the key, never a URL.
    """

    def __init__(self, reason: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code

    @property
    def gone(self) -> bool:
        return self.code == KEY_GONE


class ListenKeys:
    """One account's listenKey calls in one market."""

    def __init__(self, host: Host, transport: Transport, api_key: Secret, market: str,
                 timeout_s: float = 5.0) -> None:
        self.host = host
        self.transport = transport
        self._api_key = api_key
        self.path = LISTEN_KEY_PATHS[market]
        self.timeout_s = timeout_s

    def create(self) -> Secret:
        """POST: the account's active listenKey (a new one if none is active)."""
        data = self._send("POST")
        key = data.get("listenKey") if isinstance(data, dict) else None
        if not isinstance(key, str) or not LISTEN_KEY_RE.fullmatch(key):
            raise ListenKeyError("bad_response")
        return Secret(key)

    def keepalive(self) -> None:
        """PUT: extend the active key by 60 minutes; ListenKeyError(gone) if it no longer exists."""
        self._send("PUT")

    def _send(self, method: str) -> object:
        if self.host.backoff.remaining()[0] > 0 or not self.host.governor.ip_room(LISTEN_KEY_WEIGHT) \
                or self.host.governor.try_acquire(LISTEN_KEY_WEIGHT, pace=False) is None:
            raise ListenKeyError("budget")
        sent_at = time.monotonic()
        try:
            resp = self.transport.request(method, self.path, {"X-MBX-APIKEY": self._api_key.reveal()},
                                          sent_at + self.timeout_s)
        except TransportError as exc:
            raise ListenKeyError(exc.kind) from None
        note_answer(self.host, resp, sent_at)
        if resp.status != 200:
            code, _ = parse_error(resp.body)
            raise ListenKeyError("http_error", resp.status, code)
        try:
            return load_json(resp.body)
        except BadResponse:
            raise ListenKeyError("bad_response", resp.status) from None
