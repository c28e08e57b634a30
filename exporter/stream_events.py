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

# The label values of binance_futures_stream_events_total{event}: a fixed set.
EVENTS = ("ACCOUNT_UPDATE", "MARGIN_CALL", "ACCOUNT_CONFIG_UPDATE", "riskLevelChange", "listenKeyExpired",
          "other", "invalid")
MARGIN_CALL_EVENTS = frozenset({"MARGIN_CALL", "riskLevelChange"})
MAX_EVENT_MS = 2**53
MAX_ROWS = 10_000
# ACCOUNT_CONFIG_UPDATE's effect (issue 13/15 modes): the latest value per account is kept under
# these names and overrides a snapshot total of the same name only where one exists, so the
# modes follow as soon as the REST side exports them.
MODE_METRICS = ("multi_assets_mode", "hedge_mode")


@dataclass(frozen=True)
class Event:
    """One validated event; `kind` is one of EVENTS (never "invalid")."""

    kind: str
    time_ms: int  # E
    assets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # ACCOUNT_UPDATE: asset -> values
    positions: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)
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
    return Event("ACCOUNT_UPDATE", time_ms, assets=assets, positions=positions)


def _risk_level_change(data: Mapping[str, Any], time_ms: int) -> Event:
    totals: dict[str, float] = {}
    _put(totals, data, "u", "pm_uni_mmr", "riskLevelChange")
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


_K = TypeVar("_K")
_V = TypeVar("_V")


def _forget_until(table: dict[_K, tuple[float, _V]], when: float) -> None:
    """Drop the entries applied at or before `when`."""
    for key in [k for k, (at, _) in table.items() if at <= when]:
        del table[key]


@dataclass(frozen=True)
class StreamView:
    """What the renderer reads about one account's stream in one scrape."""

    up: bool
    events: tuple[tuple[str, int], ...]
    reconnects: int
    margin_calls: int
    last_event: float | None  # wall clock of the latest event applied


class StreamState:
    """One account's stream, written by the stream loop, read by scrapes (under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = False
        self.connected_at: float | None = None  # monotonic start of the current gap-free run
        self.last_event_ms = 0
        self.last_event_wall: float | None = None
        self.events = dict.fromkeys(EVENTS, 0)
        self.reconnects = 0
        self.margin_calls = 0
        # Overlaid figures, each with the monotonic time it arrived.
        self.assets: dict[str, tuple[float, Mapping[str, float]]] = {}
        self.positions: dict[tuple[str, str], tuple[float, Mapping[str, float]]] = {}
        self.totals: dict[str, tuple[float, float]] = {}
        self.status: tuple[float, str] | None = None
        self.modes: dict[str, tuple[float, float]] = {}

    def connected(self, now: float) -> None:
        with self.lock:
            self.up, self.connected_at = True, now
            self._forget()

    def disconnected(self) -> None:
        with self.lock:
            self.up, self.connected_at = False, None
            self._forget()

    def _forget(self) -> None:
        self.assets.clear()
        self.positions.clear()
        self.totals.clear()
        self.modes.clear()
        self.status = None

    def count(self, kind: str) -> None:
        with self.lock:
            self.events[kind] += 1

    def apply(self, event: Event, now: float, wall: float) -> bool:
        """Apply one event in E order; False if it is older than one already applied (ignored)."""
        with self.lock:
            self.events[event.kind] += 1
            if event.time_ms < self.last_event_ms:
                return False
            self.last_event_ms, self.last_event_wall = event.time_ms, wall
            if event.kind in MARGIN_CALL_EVENTS:
                self.margin_calls += 1
            for asset, values in event.assets.items():
                self.assets[asset] = (now, values)
            for key, values in event.positions.items():
                self.positions[key] = (now, values)
            for name, value in event.totals.items():
                self.totals[name] = (now, value)
            if event.status is not None:
                self.status = (now, event.status)
            for name, value in event.modes.items():
                self.modes[name] = (now, value)
            return True

    def view(self) -> StreamView:
        with self.lock:
            return StreamView(self.up, tuple(self.events.items()), self.reconnects, self.margin_calls,
                              self.last_event_wall)

    def overlay(self, snapshot: Snapshot, rest_started: float, positions: bool) -> Snapshot:
        """The snapshot as the stream has changed it since the REST fetch that started at `rest_started`."""
        with self.lock:
            if self.connected_at is None or rest_started < self.connected_at:
                return snapshot  # not trusted until REST has read past the gap
            # The REST answer already has what the stream applied before it started.
            _forget_until(self.assets, rest_started)
            _forget_until(self.positions, rest_started)
            _forget_until(self.totals, rest_started)
            _forget_until(self.modes, rest_started)
            if self.status is not None and self.status[0] <= rest_started:
                self.status = None
            assets = {k: v for k, (_, v) in self.assets.items()}
            moved = {k: v for k, (_, v) in self.positions.items()} if positions else {}
            totals = {k: v for k, (_, v) in self.totals.items()}
            status = self.status[1] if self.status is not None else None
            modes = {k: v for k, (_, v) in self.modes.items()}
        return apply_config_modes(apply_account_update(snapshot, assets, moved, totals, status), modes)


def apply_account_update(snapshot: Snapshot, assets: Mapping[str, Mapping[str, float]],
                         positions: Mapping[tuple[str, str], Mapping[str, float]],
                         totals: Mapping[str, float], status: str | None) -> Snapshot:
    """ACCOUNT_UPDATE (and riskLevelChange) figures over a REST snapshot: the one place that maps them.

    Changed assets get their wallet and cross wallet balance; changed positions their
    amount, entry and break-even price, unrealized PnL (and isolated wallet where the
    snapshot has that series); a position whose amount became 0 is closed. Assets and
    positions the snapshot does not know yet are added with what the event carries.
    """
    if not (assets or positions or totals or status):
        return snapshot
    rows = []
    for row in snapshot.assets:
        change = assets.get(row.asset)
        if change:
            values = {**row.values, **{k: v for k, v in change.items() if k in row.values}}
            row = AssetRow(row.asset, values, row.zero and not any(change.values()))
        rows.append(row)
    known = {row.asset for row in snapshot.assets}
    rows += [AssetRow(asset, dict(values), not any(values.values()))
             for asset, values in assets.items() if asset not in known and values]
    held = []
    for pos in snapshot.positions:
        change = positions.get((pos.symbol, pos.side))
        if change:
            if change.get("position_amount", 1.0) == 0.0:
                continue
            pos = PositionRow(pos.symbol, pos.side,
                              {**pos.values, **{k: v for k, v in change.items()
                                                if k in pos.values or k != "position_isolated_wallet"}})
        held.append(pos)
    seen = {(pos.symbol, pos.side) for pos in snapshot.positions}
    held += [PositionRow(symbol, side, {k: v for k, v in values.items() if k != "position_isolated_wallet"})
             for (symbol, side), values in positions.items()
             if (symbol, side) not in seen and values.get("position_amount", 0.0) != 0.0]
    return dataclasses_replace(snapshot, assets=tuple(rows), positions=tuple(held),
                               totals={**snapshot.totals, **totals} if totals else snapshot.totals,
                               status=status or snapshot.status)


def apply_config_modes(snapshot: Snapshot, modes: Mapping[str, float]) -> Snapshot:
    """ACCOUNT_CONFIG_UPDATE's hook: the latest modes replace the snapshot's totals of the same name.

    Only names the REST side already exports are touched (see MODE_METRICS), so this is
    a no-op until the account config's modes are part of the snapshot.
    """
    present = {name: value for name, value in modes.items() if name in snapshot.totals}
    if not present:
        return snapshot
    return dataclasses_replace(snapshot, totals={**snapshot.totals, **present})
