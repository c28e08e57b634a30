"""Sub-accounts found through a master account's key: listing them, which to keep, and applying the list.

The list has no total: pages of 200 are read until a short one. Kept
sub-accounts match an `include` glob and no `exclude` glob (case-insensitive);
their alias is the configured one or the email. `run` lists them in a fetch
thread and `apply` turns the list into targets through `Members`, the
engine's side (which targets exist), so a list's result is swapped in at once.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from exporter.client import Client, ScrapeError, Skipped
from exporter.config import AccountConfig, SubAccounts
from exporter.endpoints import SUB_ACCOUNT_MAX_PAGES, SUB_ACCOUNT_PAGE_SIZE, sub_account_list_call
from exporter.hosts import Host
from exporter.labelvalues import SCRAPE_ERROR_REASONS
from exporter.logs import fields
from exporter.targets import Target, TargetKey, Topology
from exporter.transport import detach

log = logging.getLogger("exporter.engine")  # the discovery lines keep the logger they always had

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
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCRAPE_ERROR_REASONS, 0))
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


class Members(Protocol):
    """What applying a list needs from the engine."""

    def discovery_current(self, discovery: Discovery) -> bool: ...

    def taken_aliases(self, master: str) -> set[str]:
        """Aliases in use by anything but this master's sub-accounts."""

    def swap_subs(self, discovery: Discovery, wanted: dict[TargetKey, Target],
                  aliases: list[str]) -> list[str] | None:
        """Make the master's sub-account targets these, at once; the previous aliases, or None
        if the discovery is no longer current (its master was removed or changed)."""

    def replan(self, log_hosts: list[Host]) -> None:
        """Plan the budgets again; log the plan of `log_hosts`."""


def start(discovery: Discovery, submit: Callable[[Callable[[], None]], Future[None]],
          members: Members) -> Future[None] | None:
    """Run a discovery in the background unless one is running."""
    with discovery.lock:
        if discovery.running:
            return None
        discovery.running = True
        discovery.ran_at = time.monotonic()
    try:
        return submit(lambda: run(discovery, members))
    except RuntimeError:  # shut down (or replaced by a reload): again at the next scrape
        with discovery.lock:
            discovery.running, discovery.ran_at = False, None
        return None


def run(discovery: Discovery, members: Members) -> None:
    """List the master's sub-accounts, then add and remove their targets to match."""
    master = discovery.master
    try:
        emails = list_emails(discovery.client, time.monotonic() + DISCOVERY_TIMEOUT_S)
    except Skipped:
        log.info("sub-account discovery deferred (budget or back-off)", extra=fields(master=master.alias))
        with discovery.lock:
            discovery.running, discovery.ran_at = False, None  # again at the next scrape
        return
    except Exception as exc:  # a ScrapeError, or a bug: never let it out of the thread
        error = (ScrapeError(exc.reason, exc.detail, exc.status, exc.code) if isinstance(exc, ScrapeError)
                 else ScrapeError("bad_response", f"internal error: {type(exc).__name__}"))
        if not isinstance(exc, ScrapeError):
            log.error("unexpected error in sub-account discovery", exc_info=True,
                      extra=fields(master=master.alias))
        detach(exc)
        with discovery.lock:
            discovery.errors[error.reason] += 1
            discovery.running = False
        log.warning("sub-account discovery failed", extra=fields(
            master=master.alias, reason=error.reason, status=error.status, code=error.code, error=error.detail))
        return
    try:
        apply(discovery, emails, members)
    except Exception:  # a bug: log it, keep the targets as they were, try again next interval
        log.error("unexpected error applying sub-account discovery", exc_info=True,
                  extra=fields(master=master.alias))
    finally:
        with discovery.lock:
            discovery.running = False


def apply(discovery: Discovery, emails: list[str], members: Members) -> None:
    """Turn a list of emails into the master's sub-account targets."""
    master = discovery.master
    assert master.sub_accounts is not None
    if not members.discovery_current(discovery):
        return
    taken = members.taken_aliases(master.alias)
    wanted: dict[TargetKey, Target] = {}
    aliases: list[str] = []
    now = time.monotonic()
    for email, alias in select(master.sub_accounts, emails):
        if alias in taken or alias in aliases:
            log.warning("sub-account skipped: its alias is taken", extra=fields(master=master.alias, alias=alias))
            continue
        aliases.append(alias)
        for market in master.sub_accounts.markets:
            if not discovery.skip(email, market, now):
                wanted[(alias, market)] = Topology.sub_account_target(master, alias, email, market,
                                                                      discovery.host, discovery.client)
    previous = members.swap_subs(discovery, wanted, aliases)
    if previous is None:
        return
    with discovery.lock:
        discovery.listed = True
    changed = set(aliases) != set(previous)
    log.info("sub-accounts discovered", extra=fields(master=master.alias, found=len(aliases),
                                                    listed=len(emails)))
    members.replan([discovery.host] if changed else [])
