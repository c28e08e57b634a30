"""Keeping API keys and secrets out of text: a masked holder, and quoting that cannot leak.

Error messages have to say what was wrong, but what was wrong is sometimes a
secret in the wrong place: pasted as a key name, into a number field, into a
`*_file` path, or arriving through `${VAR}`. So a message quotes user text
only when it reads like a name (`'api_secrte'`, `'fast'`) and otherwise
says how long it was, which is enough to find it in the file.
"""

from __future__ import annotations

import re


class Secret:
    """Wraps a sensitive string; only `reveal()` gives it back.

    Every accidental path to text (repr, str, f-strings, logging `%s`, dataclass
    reprs of objects that hold one, pickling) shows a mask instead, so a config
    object can be printed or logged while debugging without leaking a key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")

    def __len__(self) -> int:
        return len(self._value)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NUMBERISH = re.compile(r"[+-]?[0-9][0-9 .,_:eE+-]*[A-Za-z]{0,3}")
_CASE_CHANGE = re.compile(r"[a-z][A-Z]")
MAX_NAME_CHARS = 32


def looks_like_a_name(text: str, max_chars: int = MAX_NAME_CHARS) -> bool:
    """True for text that reads like an identifier, not like a random key.

    Binance keys and secrets are 64 random letters and digits: too long, with
    many digits and case changes. A key name, asset or variable name is
    short, has few digits and at most a camelCase hump or two.
    """
    return (len(text) <= max_chars and _NAME.fullmatch(text) is not None
            and sum(ch.isdigit() for ch in text) <= 4 and len(_CASE_CHANGE.findall(text)) <= 2)


def hidden(text: str) -> str:
    """What a message says instead of text it will not quote."""
    return f"[{len(text)} characters, not shown]"


def quote_name(value: object, max_chars: int = MAX_NAME_CHARS, *, quotes: bool = True) -> str:
    """repr() of a key, asset or user name if it looks like one, else its length only.

    quotes=False gives the bare name, for a position like `basic_auth_users.alice`.
    """
    if isinstance(value, str):
        if not looks_like_a_name(value, max_chars):
            return hidden(value)
        return repr(value) if quotes else value
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
        return text if len(text) <= 12 else f"[a {len(text)}-digit number, not shown]"
    return f"[a {type(value).__name__}]"


def quote_value(text: str) -> str:
    """repr() of a short, plain value a user typed ('fast', '5s', '1,5'), else its length only."""
    if len(text) <= 16 and (looks_like_a_name(text, 16) or _NUMBERISH.fullmatch(text)):
        return repr(text)
    return hidden(text)


# Key material pasted or expanded into a *_file path (issue 23): a PEM armour line or a line
# break, or a run of base64 as long as a key (an Ed25519 PKCS#8 body is 64 characters, an HMAC
# secret 64 letters and digits) mixing upper case, lower case and digits as random text does.
_PEM_MARK = re.compile(r"-----|PRIVATE KEY|BEGIN [A-Z]|END [A-Z]")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")


def looks_like_key_material(text: str) -> bool:
    """True for text that may be a key rather than a file name: never quote it."""
    if _PEM_MARK.search(text) or not text.isprintable():
        return True
    return any(any(c.isdigit() for c in run) and any(c.isupper() for c in run) and any(c.islower() for c in run)
               for run in _BASE64_RUN.findall(text))


def quote_path(path: str, written: str | None = None, variables: tuple[str, ...] = ()) -> str:
    """A file path for a message: shown if it looks like a path or a short name, else only its length.

    Base62 keys and secrets have no / or . in them and are long, so such a
    "path" may be the secret itself, typed into a *_file key by mistake. A PEM
    key has `/` in it more often than not, so anything that looks like key
    material is not shown either. A path that came through `${VAR}` (`variables`,
    as `written` in the file) is never shown: `private_key_file: ${PEM}` with the
    key itself in PEM is a common mistake. It is named by what was written
    (`${PEM}`, `${CREDENTIALS_DIRECTORY}/api_secret`) and its variables.
    """
    if variables:
        names = ", ".join(f"${{{v}}}" if looks_like_a_name(v, 48) else hidden(v) for v in variables)
        shown = (written if written is not None and len(written) <= 200 and not looks_like_key_material(written)
                 and all(looks_like_a_name(v, 48) for v in variables) else None)
        return (f"{shown} (the path from {names} is not shown)" if shown is not None and shown != names
                else f"the path from {names} (not shown)")
    if "/" not in path and "." not in path and not looks_like_a_name(path):
        return hidden(path) + " (no / or . in it: is this the value rather than a file name?)"
    if looks_like_key_material(path):
        return hidden(path) + (" (this looks like key material, not a file name: "
                               "put the key in a file and name the file)")
    return path if len(path) <= 200 else path[:200] + "..."
