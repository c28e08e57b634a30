"""Config keys, declared once: on the dataclass field each one fills.

A field of `Config`, `AccountConfig` or `SubAccounts` that a config key sets carries a `Key` in
its metadata: the `Rule` that checks the value (its type and bounds, which the one-line error
messages state) and the key's help. Everything else is read from those declarations: the keys
allowed in each section, the checks `config.parse_config` runs (in field order), and the key
reference in docs/configuration.md (`make docs`). Adding a key is adding one field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from functools import cache
from typing import Any

METADATA = "config_key"

# (where in the file, key, raw value, environ, warnings) -> the checked value, or a ConfigError.
# `where` is config._Ctx: it names file, section and key in every message.
Parse = Callable[[Any, str, Any, Mapping[str, str], list[str]], Any]


@dataclass(frozen=True)
class Rule:
    """How one key's value is checked, and how the reference describes a valid one."""

    parse: Parse
    doc: str


@dataclass(frozen=True)
class Key:
    """What a config key is, besides the field it fills."""

    rule: Rule | None  # None: its section's own code reads it (alias, credentials, sub_accounts, accounts)
    help: str
    name: str = ""  # "": the field's name
    shared: bool = False  # also allowed under `defaults:` (account keys)
    default_doc: str = ""  # the default as the reference words it; "": the field's default
    merge: bool = False  # a mapping merged per entry with the one under `defaults:`


def key(default: Any = MISSING, rule: Rule | None = None, help: str = "", *,  # noqa: A002 (the key's help)
        factory: Callable[[], Any] | None = None, shared: bool = False, default_doc: str = "",
        merge: bool = False) -> Any:
    """A dataclass field that one config key of the field's name sets."""
    metadata = {METADATA: (Key(rule, help, "", shared, default_doc, merge),)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def keys(*declared: Key) -> dict[str, tuple[Key, ...]]:
    """Field metadata for a field that keys of other names feed (`api_key` and `api_key_file` -> api_key)."""
    return {METADATA: declared}


@dataclass(frozen=True)
class Declared:
    """One key as its class declares it: the key, and the field it fills."""

    key: Key
    field: dataclasses.Field[Any]

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def default(self) -> Any:
        """The field's default value, MISSING for a required one."""
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return self.field.default


@cache
def declared(cls: type) -> tuple[Declared, ...]:
    """Every key a config dataclass declares, in field order (the order the checks run in)."""
    out = []
    for f in dataclasses.fields(cls):
        for k in f.metadata.get(METADATA, ()):
            out.append(Declared(dataclasses.replace(k, name=k.name or f.name), f))
    return tuple(out)


def names(cls: type, *, shared: bool | None = None) -> tuple[str, ...]:
    """The key names of a class (only the shared ones, or only the others, if asked)."""
    return tuple(d.name for d in declared(cls) if shared is None or d.key.shared == shared)


def checked(cls: type, *, shared: bool | None = None) -> tuple[Declared, ...]:
    """The keys whose values a Rule checks, in the order they are checked."""
    return tuple(d for d in declared(cls) if d.key.rule is not None and (shared is None or d.key.shared == shared))


def default_text(d: Declared) -> str:
    """A key's default as the reference shows it."""
    if d.key.default_doc:
        return d.key.default_doc
    value = d.default
    if value is MISSING:
        return "required"
    if value is None or (isinstance(value, Mapping) and not value):
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{value:g}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def reference(sections: tuple[tuple[type, str, str], ...]) -> str:
    """The key reference: a Markdown table of every key of `sections` ((class, where, where if shared))."""
    lines = ["| key | where | default | value | meaning |", "|---|---|---|---|---|"]
    for cls, where, where_shared in sections:
        for d in declared(cls):
            doc = d.key.rule.doc if d.key.rule is not None else ""
            place = where_shared if d.key.shared else where
            lines.append(f"| `{d.name}` | {place} | {default_text(d)} | {doc} | {d.key.help} |")
    return "\n".join(lines) + "\n"
