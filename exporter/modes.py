"""A USD-M account's modes (multi-assets, hedge): read at start, then every 15 minutes.

Binance changes them only on the user's request (position mode only with no
open positions or orders), so reading `/fapi/v1/accountConfig` (weight 5) at
every refresh would spend budget on an answer that almost never changes: at
15 minutes it costs 0.33 weight a minute per account. The read rides on a
successful refresh, through the account's own client, and its weight is taken
from the host's budget like any other call (`Client.call`); when the budget
or a back-off says no, it is simply tried at the next refresh.

A failed read never fails the account: the modes it already knows stay, and
without any, the rules treat the account as single-asset (every margin pool
watched), which can only over-warn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.client import Client, ScrapeError, Skipped
from exporter.endpoints import ACCOUNT_CONFIG_CALL
from exporter.logs import fields
from exporter.parsing import Snapshot, isolated_for_mode
from exporter.transport import detach

log = logging.getLogger("exporter.modes")

MODES_EVERY_S = 900.0
MODES_RETRY_S = 60.0  # after a failed read


@dataclass
class ModeReader:
    """The latest modes of one account, and when to read them again."""

    alias: str
    every_s: float = MODES_EVERY_S
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    values: Mapping[str, float] = field(default_factory=dict)
    next_at: float = float("-inf")  # monotonic

    def expire(self) -> None:
        """The modes changed (ACCOUNT_CONFIG_UPDATE on the user data stream): read them at the next refresh."""
        with self.lock:
            self.next_at = float("-inf")

    def refresh(self, client: Client, deadline: float, snapshot: Snapshot) -> Snapshot:
        """`snapshot` with the modes added (the refresh's own, e.g. v2's multiAssetsMargin, win)."""
        now = time.monotonic()
        with self.lock:
            due = now >= self.next_at
            if due:
                self.next_at = now + MODES_RETRY_S  # one reader at a time; pushed on after success
        if due:
            self._read(client, deadline, now)
        with self.lock:
            values = dict(self.values)
        return isolated_for_mode(Snapshot(totals=values).merge(snapshot)) if values else snapshot

    def _read(self, client: Client, deadline: float, now: float) -> None:
        try:
            modes = client.call(ACCOUNT_CONFIG_CALL, deadline)
        except Skipped:  # no budget or a back-off: try at the next refresh
            with self.lock:
                self.next_at = now
            return
        except ScrapeError as exc:
            log.warning("reading the account's modes failed; keeping what is known", extra=fields(
                alias=self.alias, reason=exc.reason, status=exc.status, code=exc.code, error=exc.detail))
            detach(exc)
            return
        with self.lock:
            self.values = dict(modes.totals)
            self.next_at = now + self.every_s
