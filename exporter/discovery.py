"""Sub-accounts found through a master account's key: listing them, and which to keep.

The list has no total: pages of 200 are read until a short one. Kept
sub-accounts match an `include` glob and no `exclude` glob (case-insensitive);
their alias is the configured one or the email.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field

from exporter.client import REASONS, Client
from exporter.config import AccountConfig, SubAccounts
from exporter.endpoints import SUB_ACCOUNT_MAX_PAGES, SUB_ACCOUNT_PAGE_SIZE, sub_account_list_call
from exporter.hosts import Host

DISCOVERY_TIMEOUT_S = 30.0
# A sub-account without a futures account of a type stays out for this long before it
# is asked again: not on every discovery, which would make its series come and go.
RECHECK_WITHOUT_FUTURES_S = 3600.0


@dataclass
class Discovery:
    """A master account whose key finds its sub-accounts (the `sub_accounts:` of its config)."""

    master: AccountConfig
    host: Host
    client: Client
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    running: bool = False
    ran_at: float | None = None  # monotonic start of the latest run
    listed: bool = False  # a run has succeeded
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    without_futures: dict[tuple[str, str], float] = field(default_factory=dict)  # (email, market): monotonic

    def note_without_futures(self, email: str, market: str, now: float) -> None:
        with self.lock:
            self.without_futures[(email, market)] = now

    def skip(self, email: str, market: str, now: float) -> bool:
        """Known to have no futures account of this market, and asked recently."""
        with self.lock:
            seen = self.without_futures.get((email, market))
            return seen is not None and now - seen < RECHECK_WITHOUT_FUTURES_S

    def due(self, now: float) -> bool:
        interval = self.master.sub_accounts.discovery_interval_seconds if self.master.sub_accounts else 0
        return not self.running and (self.ran_at is None or now - self.ran_at >= interval)


@dataclass(frozen=True)
class DiscoveryView:
    master: str
    found: int | None
    errors: tuple[tuple[str, int], ...]


def list_emails(client: Client, deadline: float) -> list[str]:
    """Every sub-account email of the master, page by page. Raises what Client.call raises."""
    emails: list[str] = []
    for page in range(1, SUB_ACCOUNT_MAX_PAGES + 1):
        entries = client.call(sub_account_list_call(page), deadline)
        emails.extend(e.email for e in entries)
        if len(entries) < SUB_ACCOUNT_PAGE_SIZE:
            break
    return emails


def select(rules: SubAccounts, emails: list[str]) -> list[tuple[str, str]]:
    """(email, alias) of the sub-accounts to export, sorted by email."""
    def matches(email: str, globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(email.lower(), g.lower()) for g in globs)

    kept = sorted({e for e in emails if matches(e, rules.include) and not matches(e, rules.exclude)})
    return [(email, rules.aliases.get(email, email)) for email in kept]


def view(discovery: Discovery, exported: int) -> DiscoveryView:
    """`exported`: how many of its sub-accounts have at least one target now."""
    with discovery.lock:
        return DiscoveryView(discovery.master.alias, exported if discovery.listed else None,
                             tuple(discovery.errors.items()))
