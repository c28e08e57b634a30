"""What a request must get past before it is answered: the weight budget of its API family, then auth.

Messages are Binance's verbatim (its "occured" typo included), so clients are
exercised against the real strings.

Signed requests are checked in one fixed order (Binance does not document
its own; the spec's §8.3 suggests this one), so tests can rely on which error
wins when several things are wrong:

1. ``X-MBX-APIKEY`` present and well-formed           → 401 -2014
2. key known                                          → 401 -2015
   (duplicate query parameters                         → 400 -1101)
3. ``timestamp`` an integer; ``recvWindow`` valid      → 400 -1102 / -1130
4. timing rule of §3.3                                → 400 -1021 (two messages)
5. ``signature`` present and the last parameter        → 400 -1102
6. signature over the query up to ``&signature=``,    → 400 -1022
   percent-encoded as Binance requires since 2026-01-15
   (a query sent with a raw ``@`` fails: see ``encoded_payload``)

Weight is counted per client IP in fixed 1-minute windows of server time,
one counter per API family (and, on /sapi, per endpoint): 429 past the limit,
and a 418 ban, escalating from 2 minutes, for a client that keeps going.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

MSG_BAD_KEY_FORMAT = "API-key format invalid."
MSG_REJECTED_KEY = "Invalid API-key, IP, or permissions for action."
MSG_TS_OUTSIDE = "Timestamp for this request is outside of the recvWindow."
MSG_TS_AHEAD = "Timestamp for this request was 1000ms ahead of the server's time."
MSG_BAD_SIGNATURE = "Signature for this request is not valid."
MSG_DUPLICATE_PARAM = "Duplicate values for a parameter detected."
MSG_NOT_FOUND = "Not found, unauthenticated, or unauthorized."
MSG_METHOD_NOT_ALLOWED = "Method not allowed."

DEFAULT_RECV_WINDOW_MS = 5000
WINDOW_MS = 60_000
FIRST_BAN_S = 120
MAX_BAN_S = 3 * 24 * 3600
_INT_RE = re.compile(r"\d{1,19}")
_SIG_MARK = "&signature="


def mandatory_param_msg(name: str) -> str:
    return f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


def invalid_param_msg(name: str) -> str:
    return f"Data sent for parameter '{name}' is not valid."


def too_many_requests_msg(limit: int, spot: bool = False) -> str:
    """fapi/dapi/papi wording, or (spot=True) the one live /api and /sapi answers carry."""
    if spot:
        return (f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
                "Please use the websocket for live updates to avoid polling the API.")
    return (f"Too many requests; current limit is {limit} requests per minute. "
            "Please use the websocket for live updates to avoid polling the API.")


def banned_msg(until_ms: int, spot: bool = False) -> str:
    much = "Way too much request weight used" if spot else "Way too many requests"
    return f"{much}; IP banned until {until_ms}. Please use the websocket for live updates to avoid bans."


def dumps(obj: Any) -> bytes:
    """Compact JSON, like Binance's own bodies (no spaces after separators)."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@dataclass
class Reply:
    """What to send back, decoupled from http.server.

    `reset=True`: send nothing, abort the TCP connection. `raw=True`: send
    exactly `status`, `headers` and `body` (Content-Length added if missing),
    without the usual Content-Type, weight header, Server and Date.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    reset: bool = False
    raw: bool = False

    @classmethod
    def json(cls, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls(status, dumps(obj), headers=list(headers or []))

    @classmethod
    def error(cls, status: int, code: int, msg: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls.json(status, {"code": code, "msg": msg}, headers)

    @classmethod
    def abort(cls) -> Reply:
        return cls(0, reset=True)


class ApiError(Exception):
    """Raised deep in validation or a payload builder; becomes one error reply."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg = status, code, msg

    def reply(self) -> Reply:
        return Reply.error(self.status, self.code, self.msg)


# ---- auth --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """How one account's signatures are checked; built once so requests don't re-parse PEM."""

    kind: str  # "hmac" | "ed25519" | "rsa"
    secret: bytes = field(default=b"", repr=False)
    public_key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | None = None

    @classmethod
    def create(cls, api_secret: str | None, public_key_pem: bytes | None) -> Credentials:
        if (api_secret is None) == (public_key_pem is None):
            raise ValueError("an account needs exactly one of api_secret or public_key_pem")
        if api_secret is not None:
            return cls("hmac", secret=api_secret.encode("utf-8"))
        key = serialization.load_pem_public_key(public_key_pem)  # type: ignore[arg-type]
        if isinstance(key, (ed25519.Ed25519PublicKey, rsa.RSAPublicKey)):
            return cls("ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "rsa", public_key=key)
        raise ValueError(f"unsupported public key type {type(key).__name__}; use Ed25519 or RSA")

    def verify(self, payload: bytes, raw_signature: str) -> bool:
        """Check a signature exactly as it appeared in the URL (still percent-encoded)."""
        provided = unquote(raw_signature)
        if self.kind == "hmac":
            expected = hmac.new(self.secret, payload, hashlib.sha256).hexdigest()
            # Binance: "The signature is not case sensitive."
            return hmac.compare_digest(expected.encode("ascii"), provided.lower().encode("utf-8", "replace"))
        try:
            signature = base64.b64decode(provided.encode("ascii"), validate=True)
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, payload)
            elif isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except (UnicodeEncodeError, binascii.Error, ValueError, InvalidSignature):
            return False
        return True


def encoded_payload(head: str) -> str:
    """The string Binance verifies a signature over: every parameter percent-encoded.

    Since 2026-01-15 (notice of 2025-12-26) Binance percent-encodes the payload before
    it checks the signature, so a client that signed a raw byte outside RFC 3986's
    unreserved set (`@` in a sub-account's email, as the old connector sent it) gets -1022.
    """
    parts = []
    for pair in head.split("&"):
        name, eq, value = pair.partition("=")
        parts.append(quote(unquote(name, "latin-1"), safe="", encoding="latin-1") + eq
                     + quote(unquote(value, "latin-1"), safe="", encoding="latin-1"))
    return "&".join(parts)


def authenticate(query: str, api_key: str | None, lookup: Callable[[str], Credentials | None],
                 server_ms: int, max_recv_window_ms: int | None) -> dict[str, str]:
    """The request's parameters once every check passed; ApiError for the first that fails.

    `query` is the raw query string as received (latin-1 decoded request line),
    because Binance signs the exact bytes sent, not a re-encoded form.
    """
    if api_key is None or not api_key or not all(33 <= ord(ch) <= 126 for ch in api_key):
        raise ApiError(401, -2014, MSG_BAD_KEY_FORMAT)
    creds = lookup(api_key)
    if creds is None:
        raise ApiError(401, -2015, MSG_REJECTED_KEY)

    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        raise ApiError(400, -1101, MSG_DUPLICATE_PARAM)

    timestamp_raw = params.get("timestamp", "")
    if not _INT_RE.fullmatch(timestamp_raw):
        raise ApiError(400, -1102, mandatory_param_msg("timestamp"))
    timestamp = int(timestamp_raw)
    recv_window = DEFAULT_RECV_WINDOW_MS
    if "recvWindow" in params:
        raw = params["recvWindow"]
        if not _INT_RE.fullmatch(raw) or int(raw) <= 0 or (
                max_recv_window_ms is not None and int(raw) > max_recv_window_ms):
            raise ApiError(400, -1130, invalid_param_msg("recvWindow"))
        recv_window = int(raw)

    # §3.3, verbatim: timestamp < serverTime + 1000 && serverTime - timestamp <= recvWindow
    if not timestamp < server_ms + 1000:
        raise ApiError(400, -1021, MSG_TS_AHEAD)
    if server_ms - timestamp > recv_window:
        raise ApiError(400, -1021, MSG_TS_OUTSIDE)

    head, mark, raw_signature = query.rpartition(_SIG_MARK)
    if not mark or not raw_signature or "&" in raw_signature:
        raise ApiError(400, -1102, mandatory_param_msg("signature"))
    if not creds.verify(encoded_payload(head).encode("latin-1"), raw_signature):
        raise ApiError(400, -1022, MSG_BAD_SIGNATURE)
    return params


# ---- weight ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    """Outcome of charging one request; `status` is 200, 429 or 418."""

    status: int
    used_weight: int
    retry_after_s: int = 0
    banned_until_ms: int = 0


@dataclass
class _Bucket:
    window: int = -1
    used: int = 0
    seen_429: bool = False
    after_429: int = 0
    banned_until_ms: int = 0
    bans: int = 0


def _ceil_s(ms: int) -> int:
    return max(1, -(-ms // 1000))


class RateLimiter:
    """Weight per bucket (client IP + API family [+ /sapi endpoint]) with 429 → 418 escalation.

    Requests refused with 429 still add their weight; requests refused during
    a ban do not. Banned requests are refused before they cost anything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, ...], _Bucket] = {}

    def admit(self, bucket: tuple[str, ...], weight: int, now_ms: int, *, limit: int,
              ban_after_429s: int) -> Admission:
        with self._lock:
            st = self._buckets.setdefault(bucket, _Bucket())
            if st.window != now_ms // WINDOW_MS:
                st.window, st.used, st.seen_429, st.after_429 = now_ms // WINDOW_MS, 0, False, 0
            if st.banned_until_ms > now_ms:
                return Admission(418, st.used, _ceil_s(st.banned_until_ms - now_ms), st.banned_until_ms)
            st.used += weight
            if st.used <= limit:
                return Admission(200, st.used)
            if st.seen_429:
                st.after_429 += 1
                if st.after_429 > ban_after_429s:
                    ban_s = min(FIRST_BAN_S * 2**st.bans, MAX_BAN_S)
                    st.bans += 1
                    st.banned_until_ms = now_ms + ban_s * 1000
                    return Admission(418, st.used, ban_s, st.banned_until_ms)
            st.seen_429 = True
            return Admission(429, st.used, _ceil_s((st.window + 1) * WINDOW_MS - now_ms))

    def used_weight(self, bucket: tuple[str, ...], now_ms: int) -> int:
        with self._lock:
            st = self._buckets.get(bucket)
            return st.used if st is not None and st.window == now_ms // WINDOW_MS else 0

    def reset(self) -> None:
        """Forget all windows, bans and ban history (repeat-offender escalation starts over)."""
        with self._lock:
            self._buckets.clear()
