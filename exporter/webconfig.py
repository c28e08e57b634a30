"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS and basic auth.

Same keys as the Go exporters (`tls_server_config`, `basic_auth_users` with
bcrypt hashes), so a team can reuse the file they already deploy for
node_exporter.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version")


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
        # A fixed hash to spend the same time on unknown users as on known ones.
        self._dummy = bcrypt.hashpw(b"unused", bcrypt.gensalt(rounds=4))

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

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self._users)!r})"


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    client_auth: str = "NoClientCert"
    extra: dict[str, Any] = field(default_factory=dict)


def _err(source: str, key: str, what: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {what}")


def _resolve(base: Path, value: Any, source: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _err(source, key, "must be a file path")
    path = Path(value)
    if not path.is_absolute():
        path = base / path  # relative to the web config file, as exporter-toolkit does
    if not path.is_file():
        raise _err(source, key, f"cannot read {path}")
    return str(path)


def load_web_config(path: str) -> WebConfig:
    source = path
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read web config file: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: YAML syntax error{where}: {getattr(exc, 'problem', '') or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping")
    for key in data:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            raise ConfigError(f"{source}: unknown key {key!r}")
    base = Path(path).resolve().parent
    web = WebConfig()
    tls = data.get("tls_server_config")
    if tls:
        if not isinstance(tls, dict):
            raise _err(source, "tls_server_config", "must be a mapping")
        for key in tls:
            if key not in TLS_KEYS:
                raise _err(source, f"tls_server_config.{key}", "unknown or unsupported key")
        if "cert_file" not in tls or "key_file" not in tls:
            raise _err(source, "tls_server_config", "needs both cert_file and key_file")
        cert = _resolve(base, tls["cert_file"], source, "tls_server_config.cert_file")
        key_file = _resolve(base, tls["key_file"], source, "tls_server_config.key_file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for opt, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
            if opt in tls:
                if tls[opt] not in TLS_VERSIONS:
                    raise _err(source, f"tls_server_config.{opt}", f"must be one of {', '.join(TLS_VERSIONS)}")
                setattr(ctx, attr, TLS_VERSIONS[tls[opt]])
        try:
            ctx.load_cert_chain(cert, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise _err(source, "tls_server_config", f"cannot load certificate/key: {type(exc).__name__}") from None
        client_ca = tls.get("client_ca_file")
        auth_type = tls.get("client_auth_type", "RequireAndVerifyClientCert" if client_ca else "NoClientCert")
        if auth_type not in CLIENT_AUTH_TYPES:
            raise _err(source, "tls_server_config.client_auth_type", f"must be one of {', '.join(CLIENT_AUTH_TYPES)}")
        if client_ca:
            try:
                ctx.load_verify_locations(_resolve(base, client_ca, source, "tls_server_config.client_ca_file"))
            except ssl.SSLError:
                raise _err(source, "tls_server_config.client_ca_file", "not a PEM CA certificate") from None
        elif auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
            raise _err(source, "tls_server_config.client_ca_file", f"is required with client_auth_type {auth_type}")
        ctx.verify_mode = CLIENT_AUTH_TYPES[auth_type]
        web.ssl_context = ctx
        web.client_auth = auth_type
    users = data.get("basic_auth_users")
    if users:
        if not isinstance(users, dict):
            raise _err(source, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
        parsed: dict[str, bytes] = {}
        for user, hashed in users.items():
            if not isinstance(user, str) or not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise _err(source, f"basic_auth_users.{user}", "must be a bcrypt hash ($2a$/$2b$/$2y$...)")
            parsed[user] = hashed.encode()
        web.auth = BasicAuth(parsed)
    return web

