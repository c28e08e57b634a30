"""Simulated accounts and their balance rows, safe to change while the server runs."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .auth import Credentials
from .drift import drift_rows
from .schema import example_row


@dataclass
class SimAccount:
    api_key: str
    api_secret: str | None = None
    public_key_pem: bytes | None = None
    account_alias: str = "SgsR"
    balances: list[dict] | None = None
    drift: bool = False


@dataclass
class _Entry:
    account: SimAccount
    credentials: Credentials
    rows: list[dict[str, Any]] = field(default_factory=list)


def _normalise_rows(rows: Iterable[dict[str, Any]], alias: str) -> list[dict[str, Any]]:
    """Copy rows (callers may keep mutating theirs) and fill a missing accountAlias.

    Rows that carry their own accountAlias are served verbatim, so tests can
    inject inconsistent data on purpose.
    """
    out = []
    for row in rows:
        row = copy.deepcopy(dict(row))
        if "accountAlias" not in row:
            row = {"accountAlias": alias, **row}
        out.append(row)
    return out


class AccountBook:
    def __init__(self, accounts: Iterable[SimAccount] = ()) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        for account in accounts:
            self.add(account)

    def add(self, account: SimAccount) -> None:
        """Register (or replace) an account; bad key material fails here, not per request."""
        credentials = Credentials.create(account.api_secret, account.public_key_pem)
        rows = account.balances if account.balances is not None else [example_row(account.account_alias)]
        entry = _Entry(copy.deepcopy(account), credentials, _normalise_rows(rows, account.account_alias))
        with self._lock:
            self._entries[account.api_key] = entry

    def set_balances(self, api_key: str, rows: list[dict]) -> None:
        with self._lock:
            entry = self._entries.get(api_key)
            if entry is None:
                raise KeyError(f"unknown api_key {api_key!r}")
            entry.rows = _normalise_rows(rows, entry.account.account_alias)

    def credentials(self, api_key: str) -> Credentials | None:
        with self._lock:
            entry = self._entries.get(api_key)
            return None if entry is None else entry.credentials

    def rows(self, api_key: str, server_ms: int) -> list[dict[str, Any]]:
        """The balance payload as of `server_ms` (drift is computed from server time)."""
        with self._lock:
            entry = self._entries[api_key]
            rows = copy.deepcopy(entry.rows)
            drift = entry.account.drift
        return drift_rows(rows, api_key, server_ms) if drift else rows

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)
