"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS, basic auth, response headers.

Same keys as the Go exporters (`tls_server_config`, `basic_auth_users` with
bcrypt hashes, `http_server_config.headers`), so a team can reuse the file
they already deploy for node_exporter. What we cannot honour (HTTP/2, TLS
options we do not implement) is refused with a message rather than ignored.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError, unknown_key
from exporter.files import (
    CERTIFICATE_MAX,
    PRIVATE_KEY_MAX,
    WEB_CONFIG_MAX,
    describe_yaml_error,
    parse_yaml,
    read_regular_file,
)
from exporter.secrets import quote_name, quote_path

TOP_KEYS = ("tls_server_config", "basic_auth_users", "http_server_config")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version")
HTTP_KEYS = ("http2", "headers")
# Python's ssl verifies every client certificate it asks for, against
# client_ca_file; Go's RequestClientCert and RequireAnyClientCert accept
# unverified ones. So every type but NoClientCert needs client_ca_file, and a
# presented certificate is always verified.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's list of headers a web config may add, with the allowed
# values where it has an enumeration (None: any value). Only security headers:
# nothing that changes how a response is framed or encoded.
EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
MAX_HEADER_VALUE_CHARS = 4096
BCRYPT_HASH_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes.

    bcrypt is deliberately slow (~50-300 ms), which would add that much to
    every scrape; like exporter-toolkit we remember credentials that already
    verified (as a SHA-256, never the password) so only the first costs that.
    """

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        # An unknown user is checked against a dummy hash of the highest cost
        # configured, so "no such user" takes as long as "wrong password" and
        # timing does not tell which user names exist. Any well-formed hash
        # costs the full work factor; this one matches no password.
        cost = max((int(h[4:6]) for h in users.values()), default=4)
        self._dummy = b"$2b$%02d$" % cost + b"." * 53

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        token = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        with self._lock:
            if token in self._verified:
                return True
        stored = self._users.get(user)
        ok = bcrypt.checkpw(password.encode(), stored if stored is not None else self._dummy)
        if ok and stored is not None:
            with self._lock:
                self._verified.add(token)
            return True
        return False

    def same_users(self, other: BasicAuth) -> bool:
        return self._users == other._users

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self._users)!r})"


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    # Extra response headers from http_server_config.headers, validated here;
    # the web layer adds them to every response.
    headers: tuple[tuple[str, str], ...] = ()


def carry_over(old: WebConfig, new: WebConfig) -> WebConfig:
    """A reloaded web config that keeps the old BasicAuth when the users and hashes are the same,
    so credentials already verified are not bcrypt-checked again after every reload."""
    if old.auth is not None and new.auth is not None and old.auth.same_users(new.auth):
        return WebConfig(new.ssl_context, old.auth, new.headers)
    return new


def _err(source: str, key: str, what: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {what}")


def _check_keys(source: str, where: str, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{source}: {where}: " if where else f"{source}: "
            raise ConfigError(prefix + unknown_key(key, allowed))


def _choice(source: str, key: str, value: Any, choices: dict[str, Any]) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise _err(source, key, f"must be one of {', '.join(choices)}")
    return choices[value]


def _file(base: Path, value: Any, source: str, key: str, limit: int, what: str) -> tuple[str, bytes]:
    """Resolve a path from the web config and read it with our checks (regular file, size cap)."""
    if not isinstance(value, str) or not value:
        raise _err(source, key, "must be a file path")
    path = Path(value)
    if not path.is_absolute():
        path = base / path  # relative to the web config file, as exporter-toolkit does
    try:
        return str(path), read_regular_file(path, limit, what)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        # Quote what the user wrote, not the joined path: `base/<secret>` would pass for a path.
        where = "" if Path(value).is_absolute() else f" (relative to {quote_path(str(base))})"
        raise _err(source, key, f"cannot read {quote_path(value)}{where}: {reason}") from None


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an
    # encrypted key, and start-up would wait there.
    raise _EncryptedKey


def _tls(source: str, base: Path, tls: Any) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise _err(source, "tls_server_config", "must be a mapping")
    for key in tls:
        if key not in TLS_KEYS:
            raise _err(source, "tls_server_config", unknown_key(key, TLS_KEYS) + " (or not supported here)")
    if "cert_file" not in tls or "key_file" not in tls:
        raise _err(source, "tls_server_config", "needs both cert_file and key_file")
    # Read first: a FIFO or device is refused before OpenSSL opens the path.
    cert, _ = _file(base, tls["cert_file"], source, "tls_server_config.cert_file", CERTIFICATE_MAX,
                    "certificate file")
    key_file, _ = _file(base, tls["key_file"], source, "tls_server_config.key_file", PRIVATE_KEY_MAX,
                        "private key file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for opt, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if opt in tls:
            setattr(ctx, attr, _choice(source, f"tls_server_config.{opt}", tls[opt], TLS_VERSIONS))
    try:
        ctx.load_cert_chain(cert, key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise _err(source, "tls_server_config.key_file", "the key is encrypted; give an unencrypted key "
                   "(the web config has no passphrase, as in exporter-toolkit)") from None
    except (ssl.SSLError, OSError) as exc:
        raise _err(source, "tls_server_config", f"cannot load certificate/key: {type(exc).__name__}") from None
    client_ca = tls.get("client_ca_file")
    auth_type = tls.get("client_auth_type", "RequireAndVerifyClientCert" if client_ca else "NoClientCert")
    verify_mode = _choice(source, "tls_server_config.client_auth_type", auth_type, CLIENT_AUTH_TYPES)
    if client_ca:
        _, pem = _file(base, client_ca, source, "tls_server_config.client_ca_file", CERTIFICATE_MAX,
                       "CA file")
        try:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        except (ssl.SSLError, ValueError):  # ValueError: empty, or not ASCII
            raise _err(source, "tls_server_config.client_ca_file", "not a PEM CA certificate") from None
    elif verify_mode != ssl.CERT_NONE:
        raise _err(source, "tls_server_config.client_ca_file",
                   f"is required with client_auth_type {auth_type} (client certificates are always verified)")
    ctx.verify_mode = verify_mode
    return ctx


def _users(source: str, users: Any) -> BasicAuth:
    if not isinstance(users, dict):
        raise _err(source, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
    parsed: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not isinstance(hashed, str) or not BCRYPT_HASH_RE.fullmatch(hashed):
            raise _err(source, f"basic_auth_users.{quote_name(user, quotes=False)}",
                       "must be a bcrypt hash ($2a$/$2b$/$2y$, cost 04-31, 60 characters)")
        parsed[user] = hashed.encode()
    return BasicAuth(parsed)


def _http(source: str, http: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(http, dict):
        raise _err(source, "http_server_config", "must be a mapping")
    _check_keys(source, "http_server_config", http, HTTP_KEYS)
    http2 = http.get("http2", False)
    if not isinstance(http2, bool):
        raise _err(source, "http_server_config.http2", "must be true or false")
    if http2:
        raise _err(source, "http_server_config.http2", "HTTP/2 is not supported: this exporter serves HTTP/1.1 "
                   "(Prometheus scrapes it fine); remove the key or set it to false")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise _err(source, "http_server_config.headers", "must be a mapping of header name to value")
    canonical = {name.lower(): name for name in EXTRA_HEADERS}
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        real = canonical.get(name.lower()) if isinstance(name, str) else None
        if real is None:
            raise _err(source, "http_server_config.headers", f"header {quote_name(name, 64)} cannot be set "
                       f"(allowed, as in exporter-toolkit: {', '.join(EXTRA_HEADERS)})")
        key = f"http_server_config.headers.{real}"
        if not isinstance(value, str) or not value.strip():
            raise _err(source, key, "must be a non-empty string")
        if len(value) > MAX_HEADER_VALUE_CHARS or not value.isprintable() or not value.isascii():
            raise _err(source, key, f"must be printable ASCII on one line, at most {MAX_HEADER_VALUE_CHARS} characters")
        allowed = EXTRA_HEADERS[real]
        if allowed is not None and value.lower() not in allowed:
            raise _err(source, key, f"must be one of {', '.join(allowed)}")
        out.append((real, value))
    return tuple(out)


def load_web_config(path: str) -> WebConfig:
    source = path
    try:
        text = read_regular_file(path, WEB_CONFIG_MAX, "web config file").decode("utf-8")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = getattr(exc, "strerror", None) or ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError)
                                                     else type(exc).__name__)
        raise ConfigError(f"{source}: cannot read web config file: {reason}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {describe_yaml_error(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping")
    _check_keys(source, "", data, TOP_KEYS)
    base = Path(path).resolve().parent
    web = WebConfig()
    if data.get("tls_server_config"):
        web.ssl_context = _tls(source, base, data["tls_server_config"])
    if data.get("basic_auth_users"):
        web.auth = _users(source, data["basic_auth_users"])
    if data.get("http_server_config") is not None:
        web.headers = _http(source, data["http_server_config"])
    return web
