"""User data stream events: parse them like REST answers, apply them per account in `E` order.

A stream only adds to polling. REST snapshots stay the base of what /metrics
shows; an event overlays the figures it carries (changed wallet balances and
positions, Portfolio Margin uniMMR and status) on the latest snapshot until a
REST refresh that started after the event replaces them. After any gap in the
stream (a reconnect, a new listenKey) nothing is overlaid until a REST refresh
made after the gap has succeeded: events may have been missed meanwhile.

Everything here is validated as strictly as `parsing` validates answers: an
event with a field we cannot trust is `invalid`, counted and dropped, never
half-applied.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from typing import Any, TypeVar

from exporter.forced_close import ForcedClose, OnceSet
from exporter.labelvalues import STREAM_EVENT_KINDS
from exporter.parsing import (
    ASSET_RE,
    POSITION_SIDES,
    SYMBOL_RE,
    AssetRow,
    BadResponse,
    PositionRow,
    Snapshot,
    parse_decimal,
)
from exporter.schema import PM_ACCOUNT_STATUSES

MARGIN_CALL_EVENTS = frozenset({"MARGIN_CALL", "riskLevelChange"})
MAX_EVENT_MS = 2**53
MAX_ROWS = 10_000
# ACCOUNT_CONFIG_UPDATE's effect (issue 13/15 modes): the latest value per account is kept under
# these names and overrides a snapshot total of the same name only where one exists, so the
# modes follow as soon as the REST side exports them.
MODE_METRICS = ("multi_assets_mode", "hedge_mode")


@dataclass(frozen=True)
class Event:
    """One validated event; `kind` is one of STREAM_EVENT_KINDS (never "invalid")."""

    kind: str
    time_ms: int  # E
    assets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # ACCOUNT_UPDATE: asset -> values
    positions: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)
    margin_types: Mapping[tuple[str, str], str] = field(default_factory=dict)  # ACCOUNT_UPDATE: P[].mt
    totals: Mapping[str, float] = field(default_factory=dict)  # riskLevelChange: pm_uni_mmr
    status: str | None = None  # riskLevelChange: the Portfolio Margin status
    modes: Mapping[str, float] = field(default_factory=dict)  # ACCOUNT_CONFIG_UPDATE
    listen_key: str | None = None  # listenKeyExpired: the key it names, if any
    stream: str | None = None  # the combined-stream envelope's "stream" (a listenKey), if any


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{where} is not an object")
    return value


def _rows(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ROWS:
        raise BadResponse(f"{where} is not a list of at most {MAX_ROWS} rows")
    return value


def _event_time(value: Any) -> int:
    """E: integer milliseconds (Binance's listenKeyExpired example sends it as a string)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:  # not "١٢"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_EVENT_MS:
        raise BadResponse("E is not a millisecond timestamp")
    return value


def _label(value: Any, pattern: Any, where: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadResponse(f"{where} is not a plain name")
    return value


def _put(out: dict[str, float], raw: Mapping[str, Any], key: str, metric: str, where: str) -> None:
    if key in raw:
        out[metric] = parse_decimal(raw[key], f"{where}.{key}")


def _account_update(data: Mapping[str, Any], time_ms: int) -> Event:
    body = _object(data.get("a"), "a")
    assets: dict[str, dict[str, float]] = {}
    for index, raw in enumerate(_rows(body.get("B"), "a.B")):
        row = _object(raw, f"a.B[{index}]")
        asset = _label(row.get("a"), ASSET_RE, f"a.B[{index}].a")
        values: dict[str, float] = {}
        _put(values, row, "wb", "balance", asset)
        _put(values, row, "cw", "cross_wallet_balance", asset)
        assets[asset] = values
    positions: dict[tuple[str, str], dict[str, float]] = {}
    types: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(_rows(body.get("P"), "a.P")):
        row = _object(raw, f"a.P[{index}]")
        symbol = _label(row.get("s"), SYMBOL_RE, f"a.P[{index}].s")
        side = row.get("ps", "BOTH")
        if side not in POSITION_SIDES:
            raise BadResponse(f"a.P[{index}].ps is not BOTH, LONG or SHORT")
        values = {}
        _put(values, row, "pa", "position_amount", symbol)
        _put(values, row, "ep", "position_entry_price", symbol)
        _put(values, row, "bep", "position_break_even_price", symbol)
        _put(values, row, "up", "position_unrealized_pnl", symbol)
        _put(values, row, "iw", "position_isolated_wallet", symbol)
        positions[(symbol, side)] = values
        margin_type = row.get("mt")
        if margin_type is not None:
            if margin_type not in ("cross", "isolated"):
                raise BadResponse(f"a.P[{index}].mt is not cross or isolated")
            types[(symbol, side)] = margin_type
    return Event("ACCOUNT_UPDATE", time_ms, assets=assets, positions=positions, margin_types=types)


def _risk_level_change(data: Mapping[str, Any], time_ms: int) -> Event:
    totals: dict[str, float] = {}
    _put(totals, data, "u", "pm_uni_mmr", "riskLevelChange")
    # Equity, actual equity and maintenance margin: the figures uniMMR is computed from, shown with it.
    _put(totals, data, "eq", "pm_account_equity", "riskLevelChange")
    _put(totals, data, "ae", "pm_actual_equity", "riskLevelChange")
    _put(totals, data, "m", "pm_account_maint_margin", "riskLevelChange")
    status = data.get("s")
    if status is not None and not (isinstance(status, str) and status in PM_ACCOUNT_STATUSES):
        status = None  # Binance adds statuses without notice: the count and uniMMR still hold
    return Event("riskLevelChange", time_ms, totals=totals, status=status)


def _config_update(data: Mapping[str, Any], time_ms: int) -> Event:
    modes: dict[str, float] = {}
    ai = data.get("ai")
    if ai is not None:
        flag = _object(ai, "ai").get("j")
        if not isinstance(flag, bool):
            raise BadResponse("ai.j is not a boolean")
        modes["multi_assets_mode"] = 1.0 if flag else 0.0
    if data.get("ac") is not None:
        _object(data.get("ac"), "ac")  # leverage of one symbol: counted, nothing to show
    return Event("ACCOUNT_CONFIG_UPDATE", time_ms, modes=modes)


def split_envelope(text: str | bytes) -> tuple[str | None, Any]:
    """(the envelope's "stream", its "data") of one message; (None, the message) when unwrapped.

    A shared connection (several listenKeys, Binance's combined-stream form) wraps every
    event as {"stream": <listenKey>, "data": {...}}: the stream names whose event it is.
    A "stream" that is not a string comes back as "" (names no key). BadResponse for
    binary frames, invalid JSON and anything but a JSON object.
    """
    if not isinstance(text, str):
        raise BadResponse("binary frame")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadResponse(f"message is not valid JSON ({type(exc).__name__})") from None
    data = _object(data, "message")
    if "data" in data and "stream" in data:
        return (data["stream"] if isinstance(data["stream"], str) else ""), data["data"]
    return None, data


def parse_data(data: Any, stream: str | None = None) -> Event:
    """One event (an envelope's data, or an unwrapped message); BadResponse when it is not sane."""
    event = _parse(_object(data, "data" if stream is not None else "message"))
    return dataclasses_replace(event, stream=stream) if stream is not None else event


def parse_event(text: str | bytes) -> Event:
    """One message of a user data stream; BadResponse when it is not a sane event.

    The combined-stream envelope {"stream": ..., "data": {...}} is unwrapped.
    """
    stream, data = split_envelope(text)
    return parse_data(data, stream)


def _parse(data: Mapping[str, Any]) -> Event:
    kind = data.get("e")
    if not isinstance(kind, str):
        raise BadResponse("e is missing")
    time_ms = _event_time(data.get("E"))
    if kind == "ACCOUNT_UPDATE":
        return _account_update(data, time_ms)
    if kind == "MARGIN_CALL":
        if "cw" in data:
            parse_decimal(data["cw"], "MARGIN_CALL.cw")
        return Event("MARGIN_CALL", time_ms)
    if kind == "riskLevelChange":
        return _risk_level_change(data, time_ms)
    if kind == "ACCOUNT_CONFIG_UPDATE":
        return _config_update(data, time_ms)
    if kind == "listenKeyExpired":
        key = data.get("listenKey")
        return Event("listenKeyExpired", time_ms, listen_key=key if isinstance(key, str) else None)
    return Event("other", time_ms)


# ---- freshness: what each figure shown between REST reads is -------------------------------------
# An event carries some figures ("event"); others follow from them and are recomputed ("recomputed");
# the rest cannot be known from the event and are withheld (absent from /metrics) for an asset or
# position the event changed, until a REST read supplies them ("rest"). Declared once: the README's
# table is checked against it (tests/test_docs.py).
FRESHNESS: dict[str, str] = {
    "balance": "event", "cross_wallet_balance": "event",
    "cross_unrealized_pnl": "recomputed", "unrealized_pnl": "recomputed", "margin_balance": "recomputed",
    "maint_margin": "recomputed", "isolated_maint_margin": "recomputed",
    "position_amount": "event", "position_entry_price": "event", "position_break_even_price": "event",
    "position_unrealized_pnl": "event", "position_isolated_wallet": "event",
    "pm_uni_mmr": "event", "pm_account_equity": "event", "pm_actual_equity": "event",
    "pm_account_maint_margin": "event", "multi_assets_mode": "event",
}
# Recomputed only when it is exact: maint_margin and isolated_maint_margin are 0 once no position of
# the asset is left (otherwise they need the brackets and the mark: withheld); the account totals of
# a single-asset USD-M account are its USDT row's (they are USDT-only there).
SINGLE_ASSET_TOTALS = {
    "account_wallet_balance": "balance", "account_cross_wallet_balance": "cross_wallet_balance",
    "account_unrealized_pnl": "unrealized_pnl", "account_cross_unrealized_pnl": "cross_unrealized_pnl",
    "account_margin_balance": "margin_balance", "account_maint_margin": "maint_margin",
    "account_isolated_maint_margin": "isolated_maint_margin",
}
_POSITION_STATE = ("position_amount", "position_entry_price", "position_isolated_wallet")

# Hostile-server bounds (README: "User data streams"). An event time further than this from the
# local clock is invalid: Binance stamps events as it sends them, and a wrong clock beyond minutes
# is a fault of its own. Within the bound, a bad E still cannot block later events for long: every
# watermark is dropped at each reconnect and each new key.
EVENT_FUTURE_S = 300.0
EVENT_PAST_S = 3600.0
# Assets and positions an event may add that the latest REST read did not have, per account: past
# this the event is invalid (a real account adds a handful between two reads).
MAX_ADDED_ASSETS = 32
MAX_ADDED_POSITIONS = 256
SEEN_MARGIN_CALLS = 256  # distinct (event, E) remembered to count a repeated margin call once
# Symbols an account's forced-close counters may name (a label each): far more than any account holds;
# past it, a forced close of yet another symbol is counted `invalid` (a hostile stream cannot grow /metrics).
MAX_FORCED_SYMBOLS = 256


_K = TypeVar("_K")
_V = TypeVar("_V")


def _forget_until(table: dict[_K, tuple[float, int, _V]], when: float) -> None:
    """Drop the entries that arrived at or before `when` (a REST read that started then has them)."""
    for key in [k for k, (at, _, _) in table.items() if at <= when]:
        del table[key]


@dataclass(frozen=True)
class StreamView:
    """What the renderer reads about one account's stream in one scrape."""

    up: bool
    events: tuple[tuple[str, int], ...]
    reconnects: int
    margin_calls: int
    last_event: float | None  # wall clock of the latest event applied
    forced_closes: tuple[tuple[str, str, int], ...] = ()  # (symbol, kind, orders), in first-seen order


class StreamState:
    """One account's stream, written by the stream loop, read by scrapes (under one lock).

    Order is per event type: Binance orders events only within one type on a connection
    (margin calls come from its risk engine, balances from its account service). Each
    overlaid figure keeps the E it came with; an older event never overwrites a fresher
    value of the same asset, position or total, but is still counted.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = False
        self.connected_at: float | None = None  # monotonic start of the current gap-free run
        self.last_event_wall: float | None = None
        self.events = dict.fromkeys(STREAM_EVENT_KINDS, 0)
        self.reconnects = 0
        self.margin_calls = 0
        # Forced closes (ORDER_TRADE_UPDATE), counted once per order: kept across reconnects (a
        # counter), and so is the set of orders already counted (one order's updates may straddle one).
        self.forced: dict[tuple[str, str], int] = {}
        self.once = OnceSet()
        self._fresh()

    def _fresh(self) -> None:
        """Forget everything of the previous connection: its overlay and every event time."""
        # Overlaid figures, each as (monotonic arrival, E, values).
        self.assets: dict[str, tuple[float, int, Mapping[str, float]]] = {}
        self.positions: dict[tuple[str, str], tuple[float, int, Mapping[str, float]]] = {}
        self.margin_types: dict[tuple[str, str], str] = {}
        self.totals: dict[str, tuple[float, int, float]] = {}
        self.status: tuple[float, int, str] | None = None
        self.modes: dict[str, tuple[float, int, float]] = {}
        self.last_ms: dict[str, int] = {}  # per event type
        self.seen_ms: dict[object, int] = {}  # per asset / position: E of the latest value applied
        self.seen_calls: dict[tuple[str, int], None] = {}  # ordered: oldest first
        self.rest_started = float("-inf")  # monotonic start of the latest REST read that succeeded
        self.known_assets: frozenset[str] = frozenset()
        self.known_positions: frozenset[tuple[str, str]] = frozenset()

    def connected(self, now: float) -> None:
        with self.lock:
            self.up, self.connected_at = True, now
            self._fresh()

    def disconnected(self) -> None:
        with self.lock:
            self.up, self.connected_at = False, None
            self._fresh()

    def reconnected(self) -> None:
        with self.lock:
            self.reconnects += 1

    def count(self, kind: str) -> None:
        with self.lock:
            self.events[kind] += 1

    def forced_close(self, close: ForcedClose, wall: float) -> None:
        """An ORDER_TRADE_UPDATE of a forced close: counted once per order (later updates of it: nothing)."""
        with self.lock:
            key = (close.symbol, close.kind)
            symbols = {symbol for symbol, _ in self.forced}
            if close.symbol not in symbols and len(symbols) >= MAX_FORCED_SYMBOLS:
                self.events["invalid"] += 1
                return
            self.events["other"] += 1
            self.last_event_wall = wall
            if self.once.first(close):
                self.forced[key] = self.forced.get(key, 0) + 1

    def rest_read(self, started: float, snapshot: Snapshot) -> None:
        """A REST read that started at `started` succeeded: what the stream applied before is in it."""
        with self.lock:
            if started > self.rest_started:
                self.rest_started = started
                self.known_assets = frozenset(row.asset for row in snapshot.assets)
                self.known_positions = frozenset((p.symbol, p.side) for p in snapshot.positions)
                self._prune(started)

    def _prune(self, when: float) -> None:
        _forget_until(self.assets, when)
        _forget_until(self.positions, when)
        _forget_until(self.totals, when)
        _forget_until(self.modes, when)
        if self.status is not None and self.status[0] <= when:
            self.status = None

    def apply(self, event: Event, now: float, wall: float) -> bool:
        """Apply one event; True when it brought something new (a refresh is worth asking for).

        Counted by kind whatever happens; `invalid` instead when its time is off the local
        clock or it would add more assets or positions than the bound.
        """
        with self.lock:
            skew_s = event.time_ms / 1000.0 - wall
            if not -EVENT_PAST_S <= skew_s <= EVENT_FUTURE_S:
                self.events["invalid"] += 1
                return False
            self._prune(self.rest_started)
            if event.kind == "ACCOUNT_UPDATE" and not self._room(event):
                self.events["invalid"] += 1
                return False
            self.events[event.kind] += 1
            newer = event.time_ms >= self.last_ms.get(event.kind, 0)
            if newer:
                self.last_ms[event.kind] = event.time_ms
            self.last_event_wall = wall
            if event.kind in MARGIN_CALL_EVENTS:
                call = (event.kind, event.time_ms)
                if call in self.seen_calls:
                    return False  # the same margin call again: counted once
                self.seen_calls[call] = None
                if len(self.seen_calls) > SEEN_MARGIN_CALLS:
                    del self.seen_calls[next(iter(self.seen_calls))]
                self.margin_calls += 1
            applied = event.kind in MARGIN_CALL_EVENTS
            for asset, values in event.assets.items():
                if self._fresher(("asset", asset), event.time_ms):
                    self.assets[asset] = (now, event.time_ms, values)
                    applied = True
            for key, values in event.positions.items():
                if self._fresher(("position", key), event.time_ms):
                    self.positions[key] = (now, event.time_ms, values)
                    if key in event.margin_types:
                        self.margin_types[key] = event.margin_types[key]
                    applied = True
            if newer:
                for name, value in event.totals.items():
                    self.totals[name] = (now, event.time_ms, value)
                if event.status is not None:
                    self.status = (now, event.time_ms, event.status)
                for name, value in event.modes.items():
                    self.modes[name] = (now, event.time_ms, value)
                applied = applied or bool(event.totals or event.status or event.modes)
            return applied

    def _fresher(self, key: object, time_ms: int) -> bool:
        if time_ms < self.seen_ms.get(key, 0):
            return False
        self.seen_ms[key] = time_ms
        return True

    def _room(self, event: Event) -> bool:
        """Whether the assets and positions this event adds stay within the bound (call locked)."""
        assets = {a for a in self.assets if a not in self.known_assets}
        assets |= {a for a in event.assets if a not in self.known_assets}
        positions = {k for k in self.positions if k not in self.known_positions}
        positions |= {k for k in event.positions if k not in self.known_positions}
        return len(assets) <= MAX_ADDED_ASSETS and len(positions) <= MAX_ADDED_POSITIONS

    def view(self) -> StreamView:
        with self.lock:
            return StreamView(self.up, tuple(self.events.items()), self.reconnects, self.margin_calls,
                              self.last_event_wall, tuple((s, k, n) for (s, k), n in self.forced.items()))

    def overlay(self, snapshot: Snapshot, rest_started: float, positions: bool) -> Snapshot:
        """The snapshot as the stream has changed it since the REST fetch that started at `rest_started`."""
        with self.lock:
            if self.connected_at is None or rest_started < self.connected_at:
                return snapshot  # not trusted until REST has read past the gap
            # The REST answer already has what the stream applied before it started.
            assets = {k: v for k, (at, _, v) in self.assets.items() if at > rest_started}
            moved = {k: v for k, (at, _, v) in self.positions.items() if at > rest_started}
            types = {k: t for k, t in self.margin_types.items() if k in moved}
            totals = {k: v for k, (at, _, v) in self.totals.items() if at > rest_started}
            status = self.status[2] if self.status is not None and self.status[0] > rest_started else None
            modes = {k: v for k, (at, _, v) in self.modes.items() if at > rest_started}
        return apply_config_modes(apply_account_update(snapshot, assets, moved, totals, status, types,
                                                       positions_known=positions), modes)


def _margin_asset_of(pos: PositionRow, names: list[str]) -> str | None:
    if pos.margin_asset is not None:
        return pos.margin_asset
    pair = pos.symbol.split("_", 1)[0]
    return next((a for a in names if pair.endswith(a) and len(pair) > len(a)), None)


def _moved_position(pos: PositionRow | None, symbol: str, side: str, change: Mapping[str, float],
                    margin_type: str | None) -> PositionRow:
    """A position an event changed. Its amount, entry and isolated wallet unchanged: the REST figures of
    it still hold. Otherwise only what the event carries: a liquidation price, mark, notional or margin
    of the old position beside the new amount would describe neither."""
    if pos is not None and all(change.get(k, pos.values.get(k)) == pos.values.get(k) for k in _POSITION_STATE):
        return PositionRow(symbol, side, {**pos.values, **{k: v for k, v in change.items() if k in pos.values}},
                           margin_type or pos.margin_type, pos.margin_asset)
    values = {k: v for k, v in change.items()
              if k != "position_isolated_wallet" or (pos is not None and k in pos.values)}
    return PositionRow(symbol, side, values, margin_type or (pos.margin_type if pos else None),
                       pos.margin_asset if pos else None)


def apply_account_update(snapshot: Snapshot, assets: Mapping[str, Mapping[str, float]],
                         positions: Mapping[tuple[str, str], Mapping[str, float]],
                         totals: Mapping[str, float], status: str | None,
                         margin_types: Mapping[tuple[str, str], str] | None = None,
                         positions_known: bool = True) -> Snapshot:
    """ACCOUNT_UPDATE (and riskLevelChange) figures over a REST snapshot: the one place that maps them.

    The result is one state of the account (see FRESHNESS): changed assets get their wallet
    and cross wallet balance, changed positions their amount, entry and break-even price,
    unrealized PnL (and isolated wallet where the snapshot has that series); a position
    whose amount became 0 is closed. From those, each touched asset's unrealized PnL, cross
    unrealized PnL (the sum of `up` over its cross positions) and margin balance are
    recomputed, and its maintenance margin is 0 once no position of it is left; what cannot
    be recomputed is withheld until REST supplies it. `positions_known` False (an account
    read without positions): no position rows are shown, and what depends on the positions
    is withheld for the assets a position event touched (the snapshot cannot tell the rest).
    """
    if not (assets or positions or totals or status):
        return snapshot
    types = margin_types or {}
    held: list[PositionRow] = []
    for pos in snapshot.positions:
        change = positions.get((pos.symbol, pos.side))
        if change:
            if change.get("position_amount", 1.0) == 0.0:
                continue
            pos = _moved_position(pos, pos.symbol, pos.side, change, types.get((pos.symbol, pos.side)))
        held.append(pos)
    seen = {(pos.symbol, pos.side) for pos in snapshot.positions}
    held += [_moved_position(None, symbol, side, values, types.get((symbol, side)))
             for (symbol, side), values in positions.items()
             if (symbol, side) not in seen and values.get("position_amount", 0.0) != 0.0]
    names = sorted({row.asset for row in snapshot.assets} | set(assets), key=len, reverse=True)
    touched = set(assets)  # assets whose figures the event moved, directly or through a position
    for key in positions:
        old = next((p for p in snapshot.positions if (p.symbol, p.side) == key), None)
        asset = _margin_asset_of(old or PositionRow(key[0], key[1], {}), names)
        if asset is None:
            touched |= set(names)  # cannot tell whose: every asset's position figures are in doubt
        else:
            touched.add(asset)
    rows = []
    for row in snapshot.assets:
        change = assets.get(row.asset)
        values = {**row.values, **{k: v for k, v in (change or {}).items() if k in row.values}}
        if row.asset in touched:
            values = _recomputed(row.asset, values, held if positions_known else None, names, bool(positions))
        rows.append(AssetRow(row.asset, values, row.zero and not any((change or {}).values())))
    known = {row.asset for row in snapshot.assets}
    rows += [AssetRow(asset, _recomputed(asset, dict(values), held if positions_known else None, names,
                                         bool(positions)),
                      not any(values.values()))
             for asset, values in assets.items() if asset not in known and values]
    merged = {**snapshot.totals, **totals}
    if assets or positions:
        merged = _account_totals(merged, rows)
    return dataclasses_replace(snapshot, assets=tuple(rows),
                               positions=tuple(held) if positions_known else snapshot.positions, totals=merged,
                               status=status or snapshot.status)


def _recomputed(asset: str, values: dict[str, float], held: list[PositionRow] | None, names: list[str],
                positions_moved: bool) -> dict[str, float]:
    """An asset's figures after an event: recomputed where exact, withheld where not (`held` None:
    the account's positions are not known)."""
    out = {k: v for k, v in values.items() if FRESHNESS.get(k) == "event" or k not in _ASSET_DERIVED}
    mine = [p for p in held or () if _margin_asset_of(p, names) == asset]
    whose_known = held is not None and all(_margin_asset_of(p, names) is not None for p in held)
    pnl_known = whose_known and all("position_unrealized_pnl" in p.values for p in mine)
    if positions_moved:
        if pnl_known:  # only series the asset's row has (the endpoint's fields): none is invented
            if "unrealized_pnl" in values:
                out["unrealized_pnl"] = sum((p.values["position_unrealized_pnl"] for p in mine), 0.0)
            if "cross_unrealized_pnl" in values and all(p.margin_type is not None for p in mine):
                out["cross_unrealized_pnl"] = sum((p.values["position_unrealized_pnl"] for p in mine
                                                   if p.margin_type == "cross"), 0.0)
        if whose_known and not mine:
            for name in ("maint_margin", "isolated_maint_margin", "initial_margin", "position_initial_margin"):
                if name in values:
                    out[name] = 0.0
    else:  # the positions stand: what depends on them alone still holds
        for name in ("unrealized_pnl", "cross_unrealized_pnl", "maint_margin", "isolated_maint_margin",
                     "initial_margin", "position_initial_margin", "open_order_initial_margin"):
            if name in values:
                out[name] = values[name]
    if "margin_balance" in values and "balance" in out and "unrealized_pnl" in out:
        out["margin_balance"] = out["balance"] + out["unrealized_pnl"]
    return out


# Asset figures that follow from the wallet and the positions: never kept from before an event.
_ASSET_DERIVED = frozenset({
    "available_balance", "cross_unrealized_pnl", "max_withdraw_amount", "margin_balance", "maint_margin",
    "initial_margin", "position_initial_margin", "open_order_initial_margin", "unrealized_pnl",
    "isolated_maint_margin"})


def _account_totals(totals: dict[str, float], rows: list[AssetRow]) -> dict[str, float]:
    """Account totals after an event changed assets or positions: a single-asset USD-M account's are its
    USDT row's; every other account total that depends on them is withheld."""
    usdt = next((row.values for row in rows if row.asset == "USDT"), None)
    single = totals.get("multi_assets_mode") == 0.0 and usdt is not None
    out = {k: v for k, v in totals.items() if not k.startswith("account_")}
    if single and usdt is not None:
        for total, name in SINGLE_ASSET_TOTALS.items():
            if total in totals and name in usdt:
                out[total] = usdt[name]
    return out


def apply_config_modes(snapshot: Snapshot, modes: Mapping[str, float]) -> Snapshot:
    """ACCOUNT_CONFIG_UPDATE's hook: the latest modes replace the snapshot's totals of the same name.

    Only names the REST side already exports are touched (see MODE_METRICS), so this is
    a no-op until the account config's modes are part of the snapshot.
    """
    present = {name: value for name, value in modes.items() if name in snapshot.totals}
    if not present:
        return snapshot
    return dataclasses_replace(snapshot, totals={**snapshot.totals, **present})
