"""Load and validate the YAML config before anything runs.

Every problem becomes one `ConfigError` line naming the file, the account and
the key, so a user fixing a config never reads a traceback, and no message
ever contains a secret's value: user text is quoted only through the
`exporter.secrets` quoting helpers, which show it only when it cannot be one.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload
from urllib.parse import SplitResult, urlsplit

import yaml

from exporter.configkeys import Declared, Key, Rule, checked, key, keys, names
from exporter.files import (
    CONFIG_FILE_MAX,
    PRIVATE_KEY_MAX,
    SECRET_FILE_MAX,
    describe_yaml_error,
    parse_yaml,
    read_regular_file,
)
from exporter.secrets import Secret, hidden, looks_like_a_name, quote_name, quote_path, quote_value
from exporter.signing import HmacSigner, KeyPairSigner, Signer, load_private_key

DEFAULT_BASE_URL = "https://fapi.binance.com"
DEFAULT_COINM_BASE_URL = "https://dapi.binance.com"
DEFAULT_PM_BASE_URL = "https://papi.binance.com"
DEFAULT_SAPI_BASE_URL = "https://api.binance.com"
# User data streams (issue 16). USD-M user data moved to the /private host on 2026-04-23 and is
# opened as {base}/ws?listenKey=...&events=...; COIN-M and Portfolio Margin keep /ws/<listenKey>.
DEFAULT_STREAM_BASE_URL = "wss://fstream.binance.com/private"
DEFAULT_COINM_STREAM_BASE_URL = "wss://dstream.binance.com"
DEFAULT_PM_STREAM_BASE_URL = "wss://fstream.binance.com/pm"
STREAM_URL_KEYS = ("stream_base_url", "coinm_stream_base_url", "pm_stream_base_url")
# Public market streams (issue 24: mark prices for live risk). USD-M market data moved to the /market
# route on 2026-04-23; COIN-M is unchanged. No key, no listenKey: nothing secret travels on them.
DEFAULT_MARKET_STREAM_BASE_URL = "wss://fstream.binance.com/market"
DEFAULT_COINM_MARKET_STREAM_BASE_URL = "wss://dstream.binance.com"
API_VERSIONS = ("v3", "v2")
ENDPOINTS = ("balance", "account")
MARKETS = ("usdm", "coinm", "pm")
SUB_ACCOUNT_MARKETS = ("usdm", "coinm")
MAX_RECV_WINDOW_MS = 60000
# A refresh younger than this share of the scrape interval serves the next scrape:
# an HA pair (or /metrics and /probe) then costs the weight of one scraper.
REFRESH_SHARE = 0.8

# Binance: at most 1024 streams per connection, and 10 incoming messages per second per connection
# (SUBSCRIBE included). 200 keys keep a shared connection's events well inside what one socket
# reads, and a reconnect's REST refreshes (one per key) inside one host's weight budget.
MAX_KEYS_PER_CONNECTION = 200
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
ASSET_RE = re.compile(r"^[A-Za-z0-9]{1,20}$")
# `$$`, `${NAME}`, or a `${` that is neither (unclosed, or not a name): refused, never used literally.
ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$\{)")


class ConfigError(Exception):
    """A config problem, phrased as one line a user can act on."""


class _Ctx:
    """Where we are in the file, so every message can name file, account and key."""

    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where

    def error(self, key: str | None, what: str) -> ConfigError:
        parts = [self.source]
        if self.where:
            parts.append(self.where)
        if key:
            parts.append(key)
        return ConfigError(": ".join(parts) + ": " + what)


def unknown_key(key: object, allowed: tuple[str, ...]) -> str:
    """'unknown key ...' with a did-you-mean hint; the key itself is quoted only if it reads like a name.

    A key close to a known one is a typo and safe to quote; anything else
    might be a secret pasted in the wrong place.
    """
    hint = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) and len(key) <= 64 else []
    shown = repr(key) if hint and isinstance(key, str) and looks_like_a_name(key, 40) else quote_name(key)
    return f"unknown key {shown}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def _check_keys(ctx: _Ctx, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for name in data:
        if not isinstance(name, str) or name not in allowed:
            raise ctx.error(None, unknown_key(name, allowed))


def _uses_env(value: str) -> bool:
    """Whether ${VAR} expansion changes `value`: then the result may hold anything, so never quote it."""
    return any(m.group(1) is not None for m in ENV_RE.finditer(value))


def _expand_env(ctx: _Ctx, key: str, value: str, environ: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            raise ctx.error(key, "has a '${' that is not closed by '}' around a variable name "
                            "(letters, digits, _); write $$ for a literal $")
        name = match.group(1)
        if name is None:
            return "$"
        if name not in environ:
            shown = name if looks_like_a_name(name, 48) else hidden(name)
            raise ctx.error(key, f"environment variable {shown} is not set")
        return environ[name]

    return ENV_RE.sub(repl, value)


def _string(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str]) -> str:
    if not isinstance(value, str):
        raise ctx.error(key, f"must be a string, got {_type_name(value)}")
    return _expand_env(ctx, key, value, environ)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", type(None): "nothing",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _number(
    ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], *,
    minimum: float, maximum: float, integer: bool = False, exclusive_min: bool = False,
) -> float:
    # A value that came through ${VAR} is never quoted back: a numeric-looking
    # secret would show in "got 123456". Literal values are the user's own
    # typing, quoted when short and plain.
    from_env = isinstance(value, str) and _uses_env(value)
    if isinstance(value, str):
        raw = _expand_env(ctx, key, value, environ).strip()
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            got = "the value from the environment (not shown)" if from_env else quote_value(raw)
            raise ctx.error(key, f"must be {'a whole number' if integer else 'a number'}, got {got}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(key, f"must be a number, got {_type_name(value)}")
    # A long number is not quoted either: it may be a numeric secret typed in.
    got = "" if from_env or len(repr(value)) > 12 else f", got {value:g}"
    if integer and not float(value).is_integer():
        raise ctx.error(key, f"must be a whole number{got}")
    if not math.isfinite(value):
        raise ctx.error(key, "must be a finite number")
    too_low = value <= minimum if exclusive_min else value < minimum
    if too_low or value > maximum:
        low = f"greater than {minimum:g}" if exclusive_min else f"at least {minimum:g}"
        raise ctx.error(key, f"must be {low} and at most {maximum:g}{got}")
    return int(value) if integer else float(value)


def _base_url(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> str:
    # The URL is never quoted back: it may carry user:password@, or be a
    # secret pasted into the wrong key. The netloc becomes the `host` label.
    parts = _url(ctx, key, value, environ, ("http", "https"), f"an http(s) URL like {DEFAULT_BASE_URL}",
                 "; Binance authenticates with api_key and the request signature")
    if parts.path not in ("", "/"):
        raise ctx.error(key, "must be scheme and host only (no path, query or fragment)")
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        warnings.append(
            f"{ctx.source}: {ctx.where}: {key}: plain http sends the API key unencrypted; use https"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _stream_url(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> str:
    """A WebSocket base: ws(s)://host[:port][/path], never credentials, a query or a fragment.

    Like the REST bases it is never quoted back; plain ws:// is accepted (tests on loopback)
    with the same warning as http:// elsewhere (the listenKey in the URL is a credential).
    """
    parts = _url(ctx, key, value, environ, ("ws", "wss"), f"a WebSocket URL like {DEFAULT_STREAM_BASE_URL}")
    if parts.scheme == "ws" and not _is_loopback(parts.hostname or ""):
        warnings.append(f"{ctx.source}: {ctx.where}: {key}: plain ws:// sends the listenKey unencrypted; use wss")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _market_stream_url(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> str:
    """A public market-stream base: ws(s)://host[:port][/path]; ws:// is accepted (tests on loopback)
    without a warning, since nothing secret travels on it; credentials are refused all the same."""
    parts = _url(ctx, key, value, environ, ("ws", "wss"), f"a WebSocket URL like {DEFAULT_MARKET_STREAM_BASE_URL}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _url(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], schemes: tuple[str, ...], like: str,
         why_no_credentials: str = "") -> SplitResult:
    """A base URL of one of `schemes`: no credentials, query or fragment, a valid port.

    The URL is never quoted back: it may carry user:password@, or be a secret
    pasted into the wrong key. The netloc becomes the `host` label.
    """
    parts = urlsplit(_string(ctx, key, value, environ).strip())
    if "@" in parts.netloc:
        raise ctx.error(key, "must not contain credentials (user:password@host)" + why_no_credentials)
    if parts.scheme not in schemes or not parts.hostname:
        raise ctx.error(key, f"must be {like}")
    if parts.query or parts.fragment:
        raise ctx.error(key, "must be scheme and host only (no path, query or fragment)" if "http" in schemes
                        else "must be scheme, host and path only (no query or fragment)")
    try:
        _ = parts.port  # the property raises ValueError for a bad port
    except ValueError:
        raise ctx.error(key, "has an invalid port") from None
    return parts


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _thresholds(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.error(key, f"must be a mapping of asset to amount like {{USDT: 1000}}, got {_type_name(value)}")
    out: dict[str, float] = {}
    for asset, amount in value.items():
        if not isinstance(asset, str) or not ASSET_RE.fullmatch(asset):
            raise ctx.error(key, f"asset names must be letters and digits like USDT, got {quote_name(asset)}")
        out[asset] = _number(ctx, f"{key}.{asset}", amount, environ, minimum=0, maximum=1e18)
    return out


@overload
def _read_secret_file(ctx: _Ctx, key: str, path_value: Any, environ: Mapping[str, str],
                      warnings: list[str], *, binary: Literal[False] = False) -> str: ...
@overload
def _read_secret_file(ctx: _Ctx, key: str, path_value: Any, environ: Mapping[str, str],
                      warnings: list[str], *, binary: Literal[True]) -> bytes: ...
def _read_secret_file(ctx: _Ctx, key: str, path_value: Any, environ: Mapping[str, str],
                      warnings: list[str], *, binary: bool = False) -> str | bytes:
    path = _string(ctx, key, path_value, environ)
    if not path.strip():
        raise ctx.error(key, "is empty")
    # A path from ${VAR} is named by what was written and its variables, never shown (issue 23).
    variables = tuple(m.group(1) for m in ENV_RE.finditer(path_value) if m.group(1) is not None)
    shown = quote_path(path, path_value, variables)
    limit, what = (PRIVATE_KEY_MAX, "private key file") if binary else (SECRET_FILE_MAX, "secret file")
    try:
        data = read_regular_file(path, limit, what, kernel_files=False)
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ctx.error(key, f"cannot read {shown}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{ctx.source}: {ctx.where}: {key}: {shown} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    if binary:
        return data
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ctx.error(key, f"{shown} is not UTF-8 text") from None


def _one_of(ctx: _Ctx, raw: Mapping[str, Any], inline: str, from_file: str, environ: Mapping[str, str],
            warnings: list[str], required: bool) -> tuple[str, str] | None:
    """The value of `inline` or the content of `from_file`, with the key it came from."""
    if inline in raw and from_file in raw:
        raise ctx.error(inline, f"set either {inline} or {from_file}, not both")
    if inline in raw:
        value = _string(ctx, inline, raw[inline], environ)
        key = inline
    elif from_file in raw:
        value = str(_read_secret_file(ctx, from_file, raw[from_file], environ, warnings))
        key = from_file
    elif required:
        raise ctx.error(inline, f"is required (or {from_file})")
    else:
        return None
    if not value:
        raise ctx.error(key, "is empty")
    return value, key


BOM = "\ufeff"


def _never_signs(value: str) -> str | None:
    """Why Binance could never accept this key or HMAC secret as sent, or None.

    Binance issues keys and secrets as letters and digits (its docs fix no
    alphabet, and its connectors check none, so neither do we). A byte order mark
    (a Windows editor's), a blank around the value or a control or non-ASCII
    character is a copy-and-paste accident: taken as it is, every request
    fails with `signature` (or `auth`) at run time, so it is refused here.
    Blanks inside are left alone: they are not an accident's usual shape.
    """
    if value.startswith(BOM):
        return "starts with a UTF-8 byte order mark (save the file without one)"
    if value != value.strip():
        return "has leading or trailing blanks (check for a stray space, tab or newline)"
    if any(ch < " " or ch == "\x7f" for ch in value):
        return "contains control characters"
    if not value.isascii():
        return "contains non-ASCII characters (check for a pasted quote or dash)"
    return None


def _signable(ctx: _Ctx, key: str, value: str) -> None:
    problem = _never_signs(value)
    if problem is not None:
        subject = "the file's content" if key.endswith("_file") else "the value"
        raise ctx.error(key, f"{subject} {problem}; it can never sign a request")


def _credentials(ctx: _Ctx, raw: Mapping[str, Any], environ: Mapping[str, str],
                 warnings: list[str]) -> tuple[Secret, Signer]:
    found = _one_of(ctx, raw, "api_key", "api_key_file", environ, warnings, required=True)
    assert found is not None
    api_key, key = found
    if api_key.startswith(BOM):
        _signable(ctx, key, api_key)
    if any(ch.isspace() or not ch.isprintable() or ord(ch) > 126 for ch in api_key):
        # Sent as the X-MBX-APIKEY header: no blank anywhere, printable ASCII only.
        raise ctx.error(key, "contains whitespace or non-ASCII characters (check for a stray newline or quote)")
    has_secret = "api_secret" in raw or "api_secret_file" in raw
    has_key_file = "private_key_file" in raw
    if has_secret and has_key_file:
        raise ctx.error("private_key_file", "set either api_secret(_file) or private_key_file, not both")
    if not has_secret and not has_key_file:
        raise ctx.error("api_secret", "is required (or api_secret_file, or private_key_file for Ed25519/RSA keys)")
    if has_secret:
        for extra in ("private_key_passphrase", "private_key_passphrase_file"):
            if extra in raw:
                raise ctx.error(extra, "only applies with private_key_file")
        found = _one_of(ctx, raw, "api_secret", "api_secret_file", environ, warnings, required=True)
        assert found is not None
        secret, key = found
        _signable(ctx, key, secret)
        return Secret(api_key), HmacSigner(Secret(secret))
    pem = _read_secret_file(ctx, "private_key_file", raw["private_key_file"], environ, warnings, binary=True)
    found = _one_of(ctx, raw, "private_key_passphrase", "private_key_passphrase_file", environ,
                    warnings, required=False)
    passphrase = found[0] if found is not None else None
    try:
        signer: KeyPairSigner = load_private_key(
            pem, passphrase.encode("utf-8") if passphrase is not None else None
        )
    except ValueError as exc:
        raise ctx.error("private_key_file", str(exc)) from None
    return Secret(api_key), signer


# --- the rules a key's value is checked by (configkeys.Rule: the check and how the reference says it) ---


def _shown(bound: float) -> str:
    """A bound as the reference writes it: 60000, 0.5, 1e15."""
    return str(int(bound)) if bound < 1e7 and float(bound).is_integer() else f"{bound:g}".replace("e+", "e")


def number(minimum: float, maximum: float, *, integer: bool = False, exclusive_min: bool = False) -> Rule:
    """A number within bounds; a string is read as one after ${VAR} expansion."""
    def parse(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> float:
        return _number(ctx, key, value, environ, minimum=minimum, maximum=maximum, integer=integer,
                       exclusive_min=exclusive_min)
    low, high = _shown(minimum), _shown(maximum)
    bounds = f"more than {low}, at most {high}" if exclusive_min else f"{low} to {high}"
    return Rule(parse, f"{'whole number' if integer else 'number'}, {bounds}")


def _boolean(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(key, f"must be true or false, got {_type_name(value)}")
    return value


def choices(allowed: tuple[str, ...], *, allow_empty: bool = False) -> Rule:
    """A list of distinct values out of `allowed`."""
    def parse(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ctx.error(key, f"must be a list of {', '.join(allowed)}, got {_type_name(value)}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ctx.error(key, f"must only hold {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise ctx.error(key, "lists a market twice")
        if not value and not allow_empty:
            raise ctx.error(key, "must not be empty")
        return tuple(value)
    listed = ", ".join(f"`{v}`" for v in allowed)
    return Rule(parse, f"list of {listed}" + (" (may be empty)" if allow_empty else ""))


def _api_version(ctx: _Ctx, key: str, version: Any, environ: Mapping[str, str], warnings: list[str]) -> str:
    if not isinstance(version, str):
        raise ctx.error(key, f"must be v3 or v2, got {_type_name(version)}")
    expanded = _expand_env(ctx, key, version, environ).strip()
    if expanded not in API_VERSIONS:
        got = "the value from the environment (not shown)" if _uses_env(version) else quote_value(expanded)
        raise ctx.error(key, f"must be v3 or v2, got {got}")
    return expanded


def _endpoint(ctx: _Ctx, key: str, endpoint: Any, environ: Mapping[str, str], warnings: list[str]) -> str:
    if endpoint not in ENDPOINTS:
        raise ctx.error(key, f"must be balance or account, got {_type_name(endpoint)}"
                        if not isinstance(endpoint, str) else "must be balance or account")
    return str(endpoint)


def _globs(ctx: _Ctx, key: str, value: Any, environ: Mapping[str, str], warnings: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ctx.error(key, "must be a non-empty list of email patterns like '*@example.com'")
    return tuple(value)


def _aliases(ctx: _Ctx, key: str, aliases: Any, environ: Mapping[str, str], warnings: list[str]) -> dict[str, str]:
    if not isinstance(aliases, dict):
        raise ctx.error(key, f"must be a mapping of email to alias, got {_type_name(aliases)}")
    for email, alias in aliases.items():
        if not isinstance(email, str) or "@" not in email:
            raise ctx.error(key, "keys must be sub-account emails")
        if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
            got = quote_value(alias) if isinstance(alias, str) else _type_name(alias)
            raise ctx.error(key, "aliases must be 1-64 characters of letters, digits and _ . : @ -, "
                            f"got {got} for {quote_value(email)}")
    if len(set(aliases.values())) != len(aliases):
        raise ctx.error(key, "gives two sub-accounts the same alias")
    return dict(aliases)


BOOLEAN = Rule(_boolean, "`true` or `false`")
BASE_URL = Rule(_base_url, "`https://` URL, scheme and host only")
STREAM_URL = Rule(_stream_url, "`wss://` (or `ws://`) URL, a path allowed, no credentials, query or fragment")
MARKET_STREAM_URL = Rule(_market_stream_url, "`wss://` or `ws://` URL, a path allowed, no credentials, query or "
                         "fragment")
THRESHOLDS = Rule(_thresholds, "`{ASSET: amount}`")
API_VERSION = Rule(_api_version, "`v3` or `v2`")
ENDPOINT = Rule(_endpoint, "`balance` or `account`")
GLOBS = Rule(_globs, "non-empty list of email globs")
ALIASES = Rule(_aliases, "`{email: alias}`")
RATIO = number(0, 1, exclusive_min=True)
WEIGHT_LIMIT = number(1, 1_000_000, integer=True)


# --- the config: each key declared once, on the field it fills (see configkeys) ---


@dataclass(frozen=True)
class SubAccounts:
    """`sub_accounts:` of a master account: which sub-accounts to discover and how to name them."""

    include: tuple[str, ...] = key(("*",), GLOBS, "Sub-accounts to export, by email (case-insensitive globs).")
    exclude: tuple[str, ...] = key((), GLOBS, "Sub-accounts to leave out, by email.")
    aliases: Mapping[str, str] = key(rule=ALIASES, factory=dict, default_doc="the email",
                                     help="Aliases for sub-accounts, by email.")
    markets: tuple[str, ...] = key(("usdm",), choices(SUB_ACCOUNT_MARKETS),
                                   "Markets of each sub-account (futuresType 1 and 2).")
    discovery_interval_seconds: float = key(600.0, number(1, 86400),
                                            "How often the master's sub-accounts are listed again.")


_ONE_SIGNER = "one of `api_secret`, `api_secret_file`, `private_key_file`"


@dataclass(frozen=True)
class AccountConfig:
    alias: str = field(metadata=keys(Key(None, "Unique name. Becomes the `alias` label and the `/probe` target. "
                                              "Letters, digits, `_ . : @ -`, at most 64 characters.")))
    api_key: Secret = field(repr=False, metadata=keys(
        Key(None, "The API key. A read-only key is all the exporter needs.", "api_key",
            default_doc="required (or `api_key_file`)"),
        Key(None, "A file holding the API key.", "api_key_file", default_doc="required (or `api_key`)")))
    signer: Signer = field(repr=False, metadata=keys(
        Key(None, "The HMAC secret.", "api_secret", default_doc=_ONE_SIGNER),
        Key(None, "A file holding the HMAC secret.", "api_secret_file", default_doc=_ONE_SIGNER),
        Key(None, "PEM private key (Ed25519 or RSA, PKCS#8 or PKCS#1) for Binance's self-generated keys.",
            "private_key_file", default_doc=_ONE_SIGNER),
        Key(None, "Passphrase, if the PEM is encrypted.", "private_key_passphrase", default_doc="none"),
        Key(None, "A file holding the passphrase.", "private_key_passphrase_file", default_doc="none")))
    base_url: str = key(DEFAULT_BASE_URL, BASE_URL, shared=True, help=(
        "USDⓈ-M host. The testnet is `https://demo-fapi.binance.com`."))
    api_version: str = key("v3", API_VERSION, shared=True, help=(
        "USDⓈ-M: `v3` calls `/fapi/v3/…`; `v2` calls `/fapi/v2/…` (deprecated by Binance, counted at its "
        "announced weight of 10; see [the v2 weight](#the-weight-of-v2))."))
    recv_window_ms: int = key(5000, number(1, MAX_RECV_WINDOW_MS, integer=True), shared=True, help=(
        "How long a signed request stays valid."))
    timeout_seconds: float = key(5.0, number(0, 300, exclusive_min=True), shared=True, help=(
        "Total time for one request, whatever the server does; also capped by Prometheus' scrape timeout."))
    cache_seconds: float | None = key(None, number(0, 3600), shared=True,  # None: from scrape_interval_seconds
                                      default_doc="0.8 × `scrape_interval_seconds`", help=(
        "Data this young serves a scrape without a new request."))
    max_data_age_seconds: float = key(300.0, number(1, 86400), shared=True, help=(
        "While an account waits for budget or a back-off, its last values are exported this long; older, "
        "it shows `up 0` and no values."))
    min_available_balance: Mapping[str, float] = key(rule=THRESHOLDS, factory=dict, shared=True, merge=True, help=(
        "Low-balance thresholds, exported as `binance_futures_min_available_balance`. An account's map is "
        "merged per asset with the defaults' map."))
    # USD value of a Multi-Assets mode account's pool (USD-M): the account-level low-balance threshold.
    min_account_available_balance: float | None = key(None, number(0, 1e15), shared=True, help=(
        "USDⓈ-M accounts in Multi-Assets mode: low-balance threshold for the whole margin pool's available "
        "balance, in USD, exported as `binance_futures_min_account_available_balance`. Without it, such an "
        "account's USD stablecoin threshold of `min_available_balance` (USDT, USDC, FDUSD, BUSD; the highest) "
        "is read as USD. See [Margin modes](../docs/metrics.md#margin-modes-and-what-each-ratio-means)."))
    markets: tuple[str, ...] = key(("usdm",), choices(MARKETS, allow_empty=True), shared=True, help=(
        "Each market is its own fetch, with its own `up`, errors and host budget. `[]` only with "
        "`sub_accounts`."))
    endpoint: str = key("balance", ENDPOINT, shared=True, help=(
        "The account endpoint adds margins and account totals at the same weight (see "
        "[Account kinds](#account-kinds-markets-and-sub-accounts))."))
    positions: bool = key(False, BOOLEAN, shared=True, help=(
        "Also read positions at each refresh: `positionRisk` (USD-M, COIN-M), Portfolio Margin's UM and CM "
        "`positionRisk`, and for a master's sub-accounts `/sapi/v2/sub-account/futures/positionRisk`."))
    coinm_base_url: str = key(DEFAULT_COINM_BASE_URL, BASE_URL, "COIN-M host.", shared=True)
    pm_base_url: str = key(DEFAULT_PM_BASE_URL, BASE_URL, "Portfolio Margin host.", shared=True)
    sapi_base_url: str = key(DEFAULT_SAPI_BASE_URL, BASE_URL, "Host of the sub-account endpoints.", shared=True)
    user_stream: bool = key(False, BOOLEAN, shared=True, help=(
        "Keep the account's user data streams open (one per market): margin calls and balance changes within "
        "a second, at no request weight (see [User data streams]"
        "(../docs/operations.md#user-data-streams-margin-calls-within-a-second)). `--demo` turns it on. Sub-accounts "
        "found through a master key cannot stream."))
    stream_base_url: str = key(DEFAULT_STREAM_BASE_URL, STREAM_URL, "USDⓈ-M user data WebSocket base.",
                               shared=True)
    coinm_stream_base_url: str = key(DEFAULT_COINM_STREAM_BASE_URL, STREAM_URL,
                                     "COIN-M user data WebSocket base.", shared=True)
    pm_stream_base_url: str = key(DEFAULT_PM_STREAM_BASE_URL, STREAM_URL,
                                  "Portfolio Margin user data WebSocket base.", shared=True)
    live_risk: bool = key(True, BOOLEAN, shared=True, help=(
        "Recompute the position and margin figures at every mark price from Binance's public market streams "
        "(no request weight). Applies only where positions are read (`positions: true`)."))
    max_margin_ratio: float | None = key(None, RATIO, shared=True, help=(
        "Alert threshold for Binance's margin ratio (maintenance margin ÷ margin balance of the cross pool, "
        "and of each isolated position; Binance liquidates at 1), exported as "
        "`binance_futures_max_margin_ratio`."))
    min_liquidation_distance: float | None = key(None, RATIO, shared=True, help=(
        "Alert when a position's mark price is closer to its liquidation price than this fraction of the mark "
        "price, exported as `binance_futures_min_liquidation_distance`."))
    # Binance liquidates a Portfolio Margin account below uniMMR 1.05 and sends margin-call
    # reminders from 1.5 down (its PM Pro table): alert while there is still room to act.
    min_uni_mmr: float | None = key(1.5, number(0, 1000, exclusive_min=True), shared=True, help=(
        "Portfolio Margin: alert when uniMMR falls below this, exported as `binance_futures_min_uni_mmr`."))
    sub_accounts: SubAccounts | None = key(None, help=(
        "Discover this master account's sub-accounts through its key (see "
        "[Sub-accounts](#sub-accounts-from-a-master-key) and the `sub_accounts` keys below)."))
    host_label: str = ""  # not a config key: lets --demo keep one `host` across restarts

    def stream_url_for(self, market: str) -> str:
        """The WebSocket base of a market's user data stream."""
        return {"usdm": self.stream_base_url, "coinm": self.coinm_stream_base_url,
                "pm": self.pm_stream_base_url}[market]

    @property
    def live_risk_on(self) -> bool:
        """live_risk applies wherever positions are read (positions: true), and nowhere else."""
        return self.live_risk and self.positions

    def base_url_for(self, market: str) -> str:
        """The API host of a market ("sapi" for the sub-account endpoints)."""
        return {"usdm": self.base_url, "coinm": self.coinm_base_url, "pm": self.pm_base_url,
                "sapi": self.sapi_base_url}[market]


@dataclass(frozen=True)
class Config:
    source: str
    accounts: tuple[AccountConfig, ...] = field(metadata=keys(
        Key(None, "Keys every account inherits unless it sets its own (the `defaults/account` keys).",
            "defaults", default_doc="none"),
        Key(None, "The accounts: a non-empty list of mappings of the `account` and `defaults/account` keys.",
            "accounts")))
    max_concurrency: int = key(512, number(1, 1024, integer=True), help=(
        "How many fetches run at once (one thread each, started as needed): a whole round of up to 512 "
        "accounts or sub-accounts takes one round trip. It also caps each Binance host's keep-alive pool, "
        "shared by all accounts on it: the open files the exporter needs (raised at start up to the hard "
        "limit) follow from it, not from the number of accounts past it. See [docs/performance.md]"
        "(performance.md)."))
    weight_limit: int = key(2400, WEIGHT_LIMIT, "Binance's request weight per minute per IP on the USDⓈ-M host.")
    coinm_weight_limit: int = key(2400, WEIGHT_LIMIT, "The same for the COIN-M host.")
    pm_weight_limit: int = key(6000, WEIGHT_LIMIT, "The same for the Portfolio Margin host.")
    sapi_weight_limit: int = key(12000, WEIGHT_LIMIT, "The same for the `/sapi` host.")
    scrape_interval_seconds: float = key(15.0, number(1, 86400), help=(
        "Your Prometheus scrape interval: sets the default `cache_seconds` and the freshness the start-up "
        "message reports."))
    weight_budget_share: float = key(0.5, RATIO, help=(
        "The exporter sends at most this share of a host's limit per rolling minute: the rest is your bots'."))
    # Binance allows 300 WebSocket connection attempts per 5 minutes and IP; the exporter
    # keeps to half of that by default (like weight_budget_share), its users' bots need the rest.
    stream_connections_per_5m: int = key(150, number(1, 300, integer=True), help=(
        "User data stream connection attempts per rolling 5 minutes, for the whole exporter (Binance allows "
        "300 per IP)."))
    # USD-M listenKeys one private WebSocket connection carries (Binance's "stream mode", several
    # listenKeys per connection). 1: one connection per account, the form every official connector
    # uses. Opt-in: Binance documents the form by example only (see docs/configuration.md).
    stream_keys_per_connection: int = key(1, number(1, MAX_KEYS_PER_CONNECTION, integer=True), help=(
        "USDⓈ-M listenKeys one private connection carries. `1`: one connection per account, as before. More: "
        "accounts share connections (Binance's \"stream mode\", see [Sharing connections]"
        "(#sharing-connections)), so 300 accounts need 3 connection attempts at `100` instead of 300. Opt-in. "
        "COIN-M and Portfolio Margin always use one connection per account."))
    skip_zero_balances: bool = key(True, BOOLEAN, help=(
        "Drop assets whose amounts are all zero. Assets with a threshold are always kept."))
    market_stream_base_url: str = key(DEFAULT_MARKET_STREAM_BASE_URL, MARKET_STREAM_URL, help=(
        "USDⓈ-M public market-stream WebSocket base (mark prices for `live_risk`)."))
    coinm_market_stream_base_url: str = key(DEFAULT_COINM_MARKET_STREAM_BASE_URL, MARKET_STREAM_URL, help=(
        "COIN-M public market-stream WebSocket base (mark prices for `live_risk`)."))
    warnings: tuple[str, ...] = ()

    def weight_limit_for(self, kind: str) -> int:
        """Binance's request-weight limit per minute and IP on a kind of host."""
        return {"usdm": self.weight_limit, "coinm": self.coinm_weight_limit, "pm": self.pm_weight_limit,
                "sapi": self.sapi_weight_limit}[kind]

    def refresh_after(self, account: AccountConfig) -> float:
        """How old an account's data may be before a scrape asks for a new fetch."""
        if account.cache_seconds is not None:
            return account.cache_seconds
        return REFRESH_SHARE * self.scrape_interval_seconds


# The reference's sections: (class, where its keys go, where its shared keys go).
SECTIONS = ((AccountConfig, "account", "defaults/account"), (Config, "top", "top"),
            (SubAccounts, "sub_accounts", "sub_accounts"))
TOP_KEYS = names(Config)
ACCOUNT_KEYS = names(AccountConfig)
SHARED_KEYS = names(AccountConfig, shared=True)
SUB_ACCOUNT_KEYS = names(SubAccounts)


def _read(ctx: _Ctx, raw: Mapping[str, Any], declared: tuple[Declared, ...], environ: Mapping[str, str],
          warnings: list[str]) -> dict[str, Any]:
    """The checked values of the declared keys `raw` sets, checked in declaration order."""
    return {d.name: d.key.rule.parse(ctx, d.name, raw[d.name], environ, warnings)
            for d in declared if d.key.rule is not None and d.name in raw}


def _sub_accounts(ctx: _Ctx, value: Any, environ: Mapping[str, str], warnings: list[str]) -> SubAccounts:
    if value is None:
        return SubAccounts()
    if not isinstance(value, dict):
        raise ctx.error("sub_accounts", f"must be a mapping ({', '.join(SUB_ACCOUNT_KEYS)}), got {_type_name(value)}")
    sub = _Ctx(ctx.source, f"{ctx.where}: sub_accounts")
    _check_keys(sub, value, SUB_ACCOUNT_KEYS)
    return SubAccounts(**_read(sub, value, checked(SubAccounts), environ, warnings))


def parse_config(data: Any, source: str = "config.yaml",
                 environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document; `source` names it in errors."""
    env = os.environ if environ is None else environ
    top = _Ctx(source, "")
    if data is None:
        raise top.error(None, "the file is empty; it needs an 'accounts' list")
    if not isinstance(data, dict):
        raise top.error(None, f"the top level must be a mapping with an 'accounts' list, got {_type_name(data)}")
    _check_keys(top, data, TOP_KEYS)
    warnings: list[str] = []

    defaults_raw = data.get("defaults") or {}
    dctx = _Ctx(source, "defaults")
    if not isinstance(defaults_raw, dict):
        raise dctx.error(None, f"must be a mapping, got {_type_name(defaults_raw)}")
    _check_keys(dctx, defaults_raw, SHARED_KEYS)
    defaults = _read(dctx, defaults_raw, checked(AccountConfig, shared=True), env, warnings)

    accounts_raw = data.get("accounts")
    if not isinstance(accounts_raw, list) or not accounts_raw:
        raise top.error("accounts", "must be a non-empty list of accounts")
    accounts: list[AccountConfig] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(accounts_raw):
        alias_hint = raw.get("alias") if isinstance(raw, dict) else None
        valid_hint = isinstance(alias_hint, str) and ALIAS_RE.fullmatch(alias_hint)
        label = f"accounts[{index}]" + (f" (alias {alias_hint!r})" if valid_hint else "")
        ctx = _Ctx(source, label)
        if not isinstance(raw, dict):
            raise ctx.error(None, f"must be a mapping, got {_type_name(raw)}")
        _check_keys(ctx, raw, ACCOUNT_KEYS)
        alias = raw.get("alias")
        if alias is None:
            raise ctx.error("alias", "is required")
        if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
            got = quote_name(alias) if isinstance(alias, str) else _type_name(alias)
            raise ctx.error("alias", "must be 1-64 characters of letters, digits and _ . : @ - "
                            f"(it becomes a label and a /probe target), got {got}")
        if alias in seen:
            raise ctx.error("alias", f"duplicate alias {alias!r} (also accounts[{seen[alias]}])")
        seen[alias] = index
        api_key, signer = _credentials(ctx, raw, env, warnings)
        settings = {**defaults, **_read(ctx, raw, checked(AccountConfig), env, warnings)}
        for d in checked(AccountConfig):
            if d.key.merge and d.name in raw and d.name in defaults:
                # Per-entry merge: an account adding BNB keeps the default USDT threshold.
                settings[d.name] = {**defaults[d.name], **settings[d.name]}
        if "sub_accounts" in raw:
            settings["sub_accounts"] = _sub_accounts(ctx, raw["sub_accounts"], env, warnings)
        elif not settings.get("markets", ("usdm",)):
            raise ctx.error("markets", "must not be empty (an empty list only makes sense with sub_accounts)")
        if settings.get("user_stream") and "sub_accounts" in settings:
            warnings.append(f"{source}: {label}: user_stream: only this account's own markets stream; "
                            "sub-accounts found through a master key cannot (a listenKey needs the "
                            "sub-account's own API key): they are polled only")
        accounts.append(AccountConfig(alias=alias, api_key=api_key, signer=signer, **settings))

    globals_ = _read(top, data, checked(Config), env, warnings)
    return Config(source=source, accounts=tuple(accounts), warnings=tuple(warnings), **globals_)


def parse_config_text(text: str, source: str = "config.yaml",
                      environ: Mapping[str, str] | None = None) -> Config:
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {describe_yaml_error(exc)}") from None
    return parse_config(data, source, environ)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the config file at `path`."""
    source = str(path)
    try:
        raw = read_regular_file(path, CONFIG_FILE_MAX, "config file")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{source}: cannot read config file: {reason}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: is not UTF-8 text") from None
    return parse_config_text(text, source, environ)
