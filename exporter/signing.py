"""Request signing for Binance SIGNED endpoints: HMAC-SHA256, Ed25519 and RSA keys.

Binance verifies the signature against the query string exactly as sent, so
the string we sign and the string we put on the wire are built once, here,
and never re-encoded by the HTTP library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import quote

from exporter.secrets import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


class Signer(Protocol):
    """What the HTTP client needs from a key: a name for logs and a signature."""

    kind: str

    def sign(self, payload: str) -> str:
        """Return the value to append as `&signature=`, already URL-safe."""
        ...


def hmac_sha256_hex(secret: str, payload: str) -> str:
    """The documented HMAC signature: lowercase hex of HMAC-SHA256(secret, payload)."""
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()


class HmacSigner:
    """Signs with an API secret (the common Binance key type)."""

    kind = "hmac"

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    def sign(self, payload: str) -> str:
        return hmac_sha256_hex(self._secret.reveal(), payload)

    def __repr__(self) -> str:
        return "HmacSigner(secret=********)"

    # Equal signers make equal AccountConfigs: how a config reload tells an unchanged account.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, HmacSigner) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)


class KeyPairSigner:
    """Signs with an Ed25519 or RSA private key (Binance "self-generated" keys).

    The signature is base64 and then percent-encoded, because base64 may
    contain `+`, `/` and `=`, which would otherwise change meaning in a URL.
    """

    def __init__(self, key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self._key = key
        self.kind = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"

    def sign(self, payload: str) -> str:
        data = payload.encode("ascii")
        # `kind` is the isinstance test of __init__ (cryptography is imported only when a key is used).
        if self.kind == "ed25519":
            raw = cast("ed25519.Ed25519PrivateKey", self._key).sign(data)
        else:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            raw = cast("rsa.RSAPrivateKey", self._key).sign(data, padding.PKCS1v15(), hashes.SHA256())
        return quote(base64.b64encode(raw).decode("ascii"), safe="")

    def __repr__(self) -> str:
        return f"KeyPairSigner(kind={self.kind!r}, key=********)"

    def _identity(self) -> bytes:
        """The key's public half: equal for the same private key, whatever file or passphrase it came from."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPairSigner) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


def load_private_key(pem: bytes, passphrase: bytes | None) -> KeyPairSigner:
    """Parse a PEM private key; errors are plain messages that never quote the key."""
    # Imported here: cryptography adds ~7 MB RSS, and HMAC-only configs never need it.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:  # password given for an unencrypted key, or missing for an encrypted one
        raise ValueError(
            "the key is encrypted but no passphrase was given"
            if passphrase is None
            else "a passphrase was given but the key is not encrypted"
        ) from None
    except ValueError:
        raise ValueError(
            "not a readable PEM private key (wrong passphrase, or not PKCS#8/PKCS#1 PEM)"
        ) from None
    except Exception:  # noqa: BLE001 - cryptography raises UnsupportedAlgorithm and friends
        raise ValueError("unsupported private key type") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(
            f"unsupported key type {type(key).__name__}: Binance accepts Ed25519 or RSA"
        )
    return KeyPairSigner(key)


def build_query(params: list[tuple[str, str]]) -> str:
    """Encode parameters in the given order, percent-encoding every byte outside RFC 3986's unreserved set.

    Since 2026-01-15 Binance verifies signatures over the percent-encoded payload and
    answers -1022 otherwise (its change-log notice of 2025-12-26); its SDK's encoder sends
    `@` as `%40`. So `@` (a sub-account's email) is encoded like any other reserved byte,
    and the string signed is the string sent, with nothing left for urllib3 to re-encode.
    """
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params)


def signed_query(params: list[tuple[str, str]], signer: Signer) -> str:
    """The full query string with `signature` last, as Binance requires."""
    query = build_query(params)
    return f"{query}&signature={signer.sign(query)}"
