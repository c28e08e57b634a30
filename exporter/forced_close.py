"""Forced closes on `ORDER_TRADE_UPDATE`: which order events are liquidations or auto-deleveraging.

A busy bot account sends thousands of ordinary order events a minute on its
user data stream, and a forced close is a handful a year; so the message text
is first checked for the markers every forced close carries (`may_be_forced_close`,
one substring search, no JSON), and only the few that pass are parsed and
classified (`classify`). The markers are Binance's (shared/binance-api.md §13.4):

* client order id `autoclose-…`: a liquidation order; `adl_autoclose`: an ADL
  order; `settlement_autoclose-…`: a settlement at delisting or delivery (not
  a forced close of the user's risk: ignored);
* order type `LIQUIDATION`, execution type `CALCULATED` (liquidation
  execution): a liquidation, also without the client order id.

One order gets several updates (NEW, PARTIALLY_FILLED, FILLED): `OnceSet`
remembers the orders already counted, per account, in bounded memory.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("liquidation", "adl")
# Every forced close carries one of these; anything else in them is a false positive that
# classify() then drops. "autoclose" covers autoclose-, adl_autoclose and settlement_autoclose-.
# Three plain substring searches (CPython's fast search) cost a tenth of one regex alternation.
_MARKERS = ("autoclose", "LIQUIDATION", "CALCULATED")
_MARKERS_BYTES = tuple(marker.encode() for marker in _MARKERS)
SYMBOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
MAX_ORDER_ID = 2**63
ONCE_CAPACITY = 1024  # per account: far more forced-close orders than any account has in flight


@dataclass(frozen=True, slots=True)
class ForcedClose:
    kind: str  # "liquidation" or "adl"
    symbol: str
    order_id: int


def may_be_forced_close(message: str | bytes) -> bool:
    """False for nearly every order event, without parsing it: only these may be forced closes."""
    if isinstance(message, str):
        return _MARKERS[0] in message or _MARKERS[1] in message or _MARKERS[2] in message
    return _MARKERS_BYTES[0] in message or _MARKERS_BYTES[1] in message or _MARKERS_BYTES[2] in message


def classify(event: Mapping[str, Any]) -> ForcedClose | None:
    """The forced close an `ORDER_TRADE_UPDATE` event (already parsed JSON) reports, or None.

    None for every ordinary order, a settlement, and anything malformed (a bad event
    is never a reason to count a liquidation, nor to fail).
    """
    if event.get("e") != "ORDER_TRADE_UPDATE":
        return None
    order = event.get("o")
    if not isinstance(order, dict):
        return None
    client_id = order.get("c")
    client_id = client_id if isinstance(client_id, str) else ""
    if client_id.startswith("settlement_autoclose"):
        return None
    if client_id.startswith("adl_autoclose"):
        kind = "adl"
    elif client_id.startswith("autoclose-") or order.get("o") == "LIQUIDATION" or order.get("x") == "CALCULATED":
        kind = "liquidation"
    else:
        return None
    symbol, order_id = order.get("s"), order.get("i")
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        return None
    if isinstance(order_id, bool) or not isinstance(order_id, int) or not 0 <= order_id < MAX_ORDER_ID:
        return None
    return ForcedClose(kind, symbol, order_id)


class OnceSet:
    """Forced-close orders already counted (by symbol and order id), the oldest forgotten past `capacity`.

    `first(close)` is True exactly once per order while it is remembered; an order's updates
    come within seconds of each other, so forgetting one 1,024 forced closes later costs nothing.
    """

    def __init__(self, capacity: int = ONCE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, close: ForcedClose) -> bool:
        key = (close.symbol, close.order_id)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._seen)


def new_forced_close(message: str | bytes, once: OnceSet) -> ForcedClose | None:
    """The whole path for one raw user-data-stream message: the forced close it reports for the first
    time, or None (an ordinary event, a repeat update of a counted order, a settlement, anything
    malformed). The combined-stream envelope `{"stream": …, "data": {…}}` is unwrapped."""
    if not may_be_forced_close(message):
        return None
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(data, dict) and "e" not in data and isinstance(data.get("data"), dict):
        data = data["data"]
    close = classify(data) if isinstance(data, dict) else None
    return close if close is not None and once.first(close) else None
