"""Metadata: per-account values that change rarely (margin modes; brackets next), read on their own schedule.

Data (balance, account, positions) is what a scrape asks for; metadata
describes it and changes a few times a year. It is read by the host's
dispatcher (scheduler.py) after the data of every account on the host, in
the weight the data leaves over, and counted in the budget plan. A kind is
declared once (`MetadataKind`) and listed in `KINDS` (metakinds.py): the
engine then makes one `MetaJob` per target the kind applies to, the plan
counts it, and the renderer sees its latest value merged into the target's
snapshot by the kind's `apply`.

A failed read never fails the account: the value already known stays; a
read the budget or a back-off refused is simply tried again soon.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exporter.endpoints import Call
from exporter.hosts import Host
from exporter.parsing import Snapshot
from exporter.targets import TargetKey

if TYPE_CHECKING:
    from exporter.client import Client
    from exporter.targets import Target


@dataclass(frozen=True)
class MetadataKind:
    """One kind of metadata: which targets have it, which call reads it, how it shows."""

    name: str  # the plan's and the log's name for it, e.g. "modes"
    call: Callable[[Target], Call]  # the request (its weight is the budget's)
    applies: Callable[[Target], bool]
    apply: Callable[[Snapshot, Any], Snapshot]  # the target's snapshot with the latest value added
    interval_s: float  # read again after this long
    retry_s: float = 60.0  # after a failed read
    value: Callable[[Any], Any] = lambda answer: answer  # what to keep of the call's parsed answer
    public: bool = False  # an unsigned public endpoint (COIN-M exchangeInfo): sent without key or signature

    def weight(self, target: Target) -> int:
        return self.call(target).weight


@dataclass(eq=False)
class MetaJob:
    """One kind of metadata of one target: its latest value and when to read it again."""

    kind: MetadataKind
    key: TargetKey
    host: Host
    client: Client
    call: Call
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    value: Any = None
    due_at: float = float("inf")  # monotonic; due only once its target's first data fetch succeeded
    read_once: bool = False
    alive: bool = True  # false once its target is gone
    inflight: Future[None] | None = None  # a read running now: a scrape of its target waits for it

    @property
    def weight(self) -> int:
        return self.call.weight

    def data_arrived(self, now: float) -> bool:
        """The target's data is in: a never-read job is due now (in leftover weight). True if it became due."""
        with self.lock:
            if not self.read_once and self.due_at == float("inf"):
                self.due_at = now
                return True
            return False

    def begin(self, now: float) -> None:
        """A read was admitted: not due again until it ends (or, if it never reports, a retry later)."""
        with self.lock:
            self.due_at = now + self.kind.retry_s

    def is_due(self, now: float) -> bool:
        with self.lock:
            return self.due_at <= now

    def expire(self, now: float) -> None:
        """The value changed (e.g. ACCOUNT_CONFIG_UPDATE on the user data stream): read it soon."""
        with self.lock:
            self.due_at = min(self.due_at, now)

    def done(self, now: float, value: Any | None, failed: bool) -> None:
        """A read ended: keep what it gave; the next one after the interval (spread, the first
        time, over the second half of it, so reads made together after a start do not stay together)."""
        with self.lock:
            if value is not None:
                self.value = value
            if failed:
                self.due_at = now + self.kind.retry_s
            elif not self.read_once:
                spread = (zlib.crc32(repr(self.key).encode()) % 1000) / 1000.0
                self.due_at = now + self.kind.interval_s * (0.5 + 0.5 * spread)
            else:
                self.due_at = now + self.kind.interval_s
            if not failed:
                self.read_once = True

    def retry_soon(self, now: float) -> None:
        """Not sent (budget, back-off): again shortly."""
        with self.lock:
            self.due_at = now + 1.0
