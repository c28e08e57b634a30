"""Live risk wired to the engine: mark prices in, each account's figures recomputed at scrape time.

The public market streams (streams/market.py) hand every mark price to `LiveRiskBook.mark`,
which only stores it (a dict assignment on the stream loop: 50 symbols a second cost nothing).
The work happens lazily, when a scrape or probe renders an account: its latest coherent state
(the REST snapshot with the user-stream overlay, engine.view) is recomputed by `risk.LiveRisk`
at the freshest marks. Measured against recomputing at every mark (benchmarks/liverisk.py):
a scrape every 15 s costs one recomputation per account instead of fifteen per symbol, and
/metrics is as fresh as the marks either way.

A mark is used only when it is trustworthy and newer than the REST read under it:

* its market's stream is up and the mark arrived at most MARK_FRESH_S ago (a stream that is
  down is never extrapolated: the account then shows what REST and events last said);
* it arrived after that REST read started: a read that started later already answered at a
  newer mark, and replaces the recomputed state (as it did before live risk).

Brackets are per account (Binance adjusts them per user) and COIN-M contract sizes come from the
public exchangeInfo: both are metadata kinds (`BRACKETS`, `CONTRACT_SIZES`, listed in metakinds.py),
read by the host's dispatcher once the account's data is in, in the weight the data leaves over and
counted in the budget plan (metadata.py, scheduler.py), then hourly (daily for contract sizes).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exporter.endpoints import CONTRACT_SIZES_CALL, LEVERAGE_BRACKET_CALLS
from exporter.metadata import MetadataKind
from exporter.parsing import Bracket, Snapshot
from exporter.risk import LiveRisk, live_symbols

if TYPE_CHECKING:
    from exporter.targets import Target

log = logging.getLogger("exporter.liverisk")

MARK_FRESH_S = 3.0  # Binance sends each mark every second: two missed updates and it is stale
BRACKETS_EVERY_S = 3600.0
BRACKETS_MIN_GAP_S = 60.0  # ACCOUNT_CONFIG_UPDATE brings the read forward, at most once a minute
SIZES_EVERY_S = 86400.0
RETRY_S = 60.0
LIVE_MARKETS = ("usdm", "coinm")  # the markets with a public mark-price stream
# Every account's brackets of every symbol (about 550 on USD-M, ten brackets each) would cost hundreds
# of MB at 300 accounts; nearly all accounts share Binance's tables, so each distinct table is kept once.
MAX_TABLES = 100_000
_tables: dict[tuple[Bracket, ...], tuple[Bracket, ...]] = {}
_tables_lock = threading.Lock()


def shared_tables(brackets: Mapping[str, Sequence[Bracket]]) -> dict[str, tuple[Bracket, ...]]:
    """The same brackets, each distinct table one object process-wide (bounded: past MAX_TABLES, a new set)."""
    out = {}
    with _tables_lock:
        if len(_tables) > MAX_TABLES:
            _tables.clear()
        for symbol, table in brackets.items():
            key = tuple(table)
            out[sys.intern(symbol)] = _tables.setdefault(key, key)
    return out


def symbol_market(market: str, symbol: str) -> str:
    """The market whose stream carries a symbol's mark (Portfolio Margin holds both kinds)."""
    if market != "pm":
        return market
    return "coinm" if "USD_" in symbol else "usdm"  # BTCUSD_PERP, BTCUSD_250627; never BTCUSDT_250627


def _live_target(target: Target) -> bool:
    """Accounts whose risk is recomputed: own key (a sub-account's brackets need its key), USD-M or COIN-M."""
    return target.account.live_risk_on and target.master is None and target.market in LIVE_MARKETS


def _unchanged(snapshot: Snapshot, value: Any) -> Snapshot:
    return snapshot  # brackets and contract sizes are not figures: the engine hands them to LiveRisk


BRACKETS = MetadataKind(
    name="brackets", call=lambda target: LEVERAGE_BRACKET_CALLS[target.market], applies=_live_target,
    apply=_unchanged, interval_s=BRACKETS_EVERY_S, retry_s=RETRY_S, value=shared_tables)
"""An account's brackets (Binance adjusts them per user, `notionalCoef`): read once its data is in, then
hourly and soon after an ACCOUNT_CONFIG_UPDATE, in the weight the data leaves over (metadata.py)."""

CONTRACT_SIZES = MetadataKind(
    name="contract_sizes", call=lambda target: CONTRACT_SIZES_CALL,
    applies=lambda target: _live_target(target) and target.market == "coinm", apply=_unchanged,
    interval_s=SIZES_EVERY_S, retry_s=RETRY_S, public=True)
"""COIN-M contract sizes (public exchangeInfo, weight 1, unsigned), read like the brackets, then daily."""


@dataclass
class _Cached:
    base: Snapshot  # the coherent state it was built from (kept alive: compared by identity)
    risk: LiveRisk


Watch = Callable[[str, Iterable[str]], None]


class LiveRiskBook:
    """Latest marks per (market, symbol), which symbols each account holds, and the recomputation."""

    def __init__(self, watch: Watch, markets_up: Callable[[], Mapping[str, bool]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`watch(market, symbols)`: follow exactly these symbols' marks; `markets_up()`: market -> stream up."""
        self._watch = watch
        self._markets_up = markets_up
        self._clock = clock
        self._marks: dict[tuple[str, str], tuple[Decimal, float]] = {}  # -> (mark, monotonic arrival)
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}  # target key -> (market, symbol)
        self._watched: dict[str, frozenset[str]] = {}
        self._cache: dict[tuple[str, str], _Cached] = {}

    # ---- the market streams' side --------------------------------------------------------------
    def mark(self, market: str, symbol: str, price: Decimal, time_ms: int) -> None:
        """The market stream's sink (on the stream loop): store, nothing else."""
        self._marks[(market, symbol)] = (price, self._clock())

    def markets(self) -> list[tuple[str, bool]]:
        """(market, stream up) of every market whose marks some account needs now."""
        with self._lock:
            wanted = [m for m in LIVE_MARKETS if self._watched.get(m)]
        up = self._markets_up()
        return [(m, bool(up.get(m))) for m in wanted]

    # ---- which symbols -------------------------------------------------------------------------
    def hold(self, key: tuple[str, str], market: str, snapshot: Snapshot | None) -> None:
        """The account's latest coherent state: follow the marks of the symbols it holds (None: none)."""
        held = frozenset() if snapshot is None else frozenset(
            (symbol_market(market, s), s) for s in live_symbols(snapshot))
        with self._lock:
            if self._held.get(key, frozenset()) == held:
                return
            if held:
                self._held[key] = held
            else:
                self._held.pop(key, None)
                self._cache.pop(key, None)
            # Told under the lock: two accounts' changes at once must not reach the stream in reverse.
            for name, symbols in self._rewatch():
                self._watch(name, symbols)

    def _rewatch(self) -> list[tuple[str, frozenset[str]]]:
        """(market, symbols) whose wanted set changed (call locked); marks of dropped symbols go."""
        union: dict[str, set[str]] = {m: set() for m in LIVE_MARKETS}
        for held in self._held.values():
            for name, symbol in held:
                union[name].add(symbol)
        changed = []
        for name, symbols in union.items():
            frozen = frozenset(symbols)
            if frozen != self._watched.get(name, frozenset()):
                self._watched[name] = frozen
                changed.append((name, frozen))
                # list(): one atomic copy (the stream loop may add a mark meanwhile)
                for stale in [k for k in list(self._marks) if k[0] == name and k[1] not in frozen]:
                    self._marks.pop(stale, None)
        return changed

    # ---- the recomputation -----------------------------------------------------------------------
    def marks_for(self, market: str, snapshot: Snapshot, rest_started: float,
                  sizes: Mapping[str, Decimal]) -> dict[str, Decimal]:
        """The fresh marks live risk would recompute `snapshot` at (empty: nothing to recompute)."""
        symbols = live_symbols(snapshot)
        if not symbols:
            return {}
        marks = self.fresh_marks(market, symbols, rest_started)
        if market == "pm":  # a CM position is told from a UM one by its contract size: none, not recomputed
            marks = {s: m for s, m in marks.items() if symbol_market(market, s) == "usdm" or s in sizes}
        return marks

    def fresh_marks(self, market: str, symbols: Iterable[str], rest_started: float) -> dict[str, Decimal]:
        """The marks of `symbols` that are trustworthy now and newer than the REST read under them."""
        up = self._markets_up()
        now = self._clock()
        out: dict[str, Decimal] = {}
        for symbol in symbols:
            name = symbol_market(market, symbol)
            entry = self._marks.get((name, symbol))
            if entry is None or not up.get(name):
                continue
            price, at = entry
            if at >= rest_started and now - at <= MARK_FRESH_S:
                out[symbol] = price
        return out

    def at(self, key: tuple[str, str], market: str, snapshot: Snapshot, marks: Mapping[str, Decimal],
           brackets: Mapping[str, Sequence[Bracket]], sizes: Mapping[str, Decimal]) -> Snapshot:
        """The account's coherent state recomputed at `marks` (from marks_for; itself when there are none)."""
        if not marks:
            return snapshot
        cached = self._cache.get(key)
        if cached is None or cached.base is not snapshot or cached.risk.brackets is not brackets \
                or cached.risk.sizes is not sizes:
            cached = _Cached(snapshot, LiveRisk(snapshot, market, brackets, sizes))
            with self._lock:
                if key in self._held:  # a target that left meanwhile is not cached again
                    self._cache[key] = cached
        return cached.risk.at(marks)

    def forget(self, key: tuple[str, str]) -> None:
        """A target left (reload, removal): its symbols are no longer followed for it."""
        self.hold(key, "usdm", None)
