"""Signed-request validation, in one fixed, documented order.

Binance does not document the order in which it checks a signed request, so
the simulator picks the order from the spec (§8.3) and sticks to it; tests and
client code can then rely on which error wins when several things are wrong:

1. ``X-MBX-APIKEY`` present and well-formed           → 401 -2014
2. key known                                          → 401 -2015
   (duplicate query parameters                         → 400 -1101)
3. ``timestamp`` an integer; ``recvWindow`` valid      → 400 -1102 / -1130
4. timing rule of §3.3                                → 400 -1021 (two messages)
5. ``signature`` present and the last parameter        → 400 -1102
6. signature over the raw query up to ``&signature=``  → 400 -1022
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from .errors import (
    MSG_BAD_KEY_FORMAT,
    MSG_BAD_SIGNATURE,
    MSG_DUPLICATE_PARAM,
    MSG_REJECTED_KEY,
    MSG_TS_AHEAD,
    MSG_TS_OUTSIDE,
    ApiError,
    invalid_param_msg,
    mandatory_param_msg,
)

DEFAULT_RECV_WINDOW_MS = 5000
_INT_RE = re.compile(r"\d{1,19}")
_SIG_MARK = "&signature="


@dataclass(frozen=True)
class Credentials:
    """How one account's signatures are checked; built once so requests don't re-parse PEM."""

    kind: str  # "hmac" | "ed25519" | "rsa"
    secret: bytes = b""
    public_key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | None = None

    @classmethod
    def create(cls, api_secret: str | None, public_key_pem: bytes | None) -> Credentials:
        if (api_secret is None) == (public_key_pem is None):
            raise ValueError("an account needs exactly one of api_secret or public_key_pem")
        if api_secret is not None:
            return cls("hmac", secret=api_secret.encode("utf-8"))
        key = serialization.load_pem_public_key(public_key_pem)  # type: ignore[arg-type]
        if isinstance(key, ed25519.Ed25519PublicKey):
            return cls("ed25519", public_key=key)
        if isinstance(key, rsa.RSAPublicKey):
            return cls("rsa", public_key=key)
        raise ValueError(f"unsupported public key type {type(key).__name__}; use Ed25519 or RSA")

    def verify(self, payload: bytes, raw_signature: str) -> bool:
        """Check a signature exactly as it appeared in the URL (still percent-encoded)."""
        provided = unquote(raw_signature)
        if self.kind == "hmac":
            expected = hmac.new(self.secret, payload, hashlib.sha256).hexdigest()
            # Binance: "The signature is not case sensitive."
            return hmac.compare_digest(
                expected.encode("ascii"), provided.lower().encode("utf-8", "replace")
            )
        try:
            signature = base64.b64decode(provided.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return False
        try:
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, payload)
            elif isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except InvalidSignature:
            return False
        return True


def _well_formed_key(key: str) -> bool:
    return bool(key) and all(33 <= ord(ch) <= 126 for ch in key)


def authenticate(
    query: str,
    api_key: str | None,
    lookup: Callable[[str], Credentials | None],
    server_ms: int,
    max_recv_window_ms: int | None,
) -> str:
    """Return the authenticated API key, or raise ApiError for the first failed check.

    `query` is the raw query string as received (latin-1 decoded request line),
    because Binance signs the exact bytes sent, not a re-encoded form.
    """
    if api_key is None or not _well_formed_key(api_key):
        raise ApiError(401, -2014, MSG_BAD_KEY_FORMAT)
    creds = lookup(api_key)
    if creds is None:
        raise ApiError(401, -2015, MSG_REJECTED_KEY)

    pairs = parse_qsl(query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        raise ApiError(400, -1101, MSG_DUPLICATE_PARAM)
    params = dict(pairs)

    timestamp_raw = params.get("timestamp", "")
    if not _INT_RE.fullmatch(timestamp_raw):
        raise ApiError(400, -1102, mandatory_param_msg("timestamp"))
    timestamp = int(timestamp_raw)
    recv_window = DEFAULT_RECV_WINDOW_MS
    if "recvWindow" in params:
        raw = params["recvWindow"]
        if not _INT_RE.fullmatch(raw) or int(raw) <= 0:
            raise ApiError(400, -1130, invalid_param_msg("recvWindow"))
        recv_window = int(raw)
        if max_recv_window_ms is not None and recv_window > max_recv_window_ms:
            raise ApiError(400, -1130, invalid_param_msg("recvWindow"))

    # §3.3, verbatim: timestamp < serverTime + 1000 && serverTime - timestamp <= recvWindow
    if not timestamp < server_ms + 1000:
        raise ApiError(400, -1021, MSG_TS_AHEAD)
    if server_ms - timestamp > recv_window:
        raise ApiError(400, -1021, MSG_TS_OUTSIDE)

    head, mark, raw_signature = query.rpartition(_SIG_MARK)
    if not mark or not raw_signature or "&" in raw_signature:
        raise ApiError(400, -1102, mandatory_param_msg("signature"))

    if not creds.verify(head.encode("latin-1"), raw_signature):
        raise ApiError(400, -1022, MSG_BAD_SIGNATURE)
    return api_key
