"""Demo drift: balances that move slowly and smoothly, so dashboards look alive.

Values are a pure function of (base row, account, server time), computed at
request time: no background thread, and tests can move time by changing the
simulator's clock skew instead of sleeping.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

from .schema import DECIMAL_FIELDS, format_decimal

PERIOD_S = 600.0
AMPLITUDE = 0.03
# Unrealised PnL swings through zero so clients see negative values too.
UNPNL_AMPLITUDE = 1.5
HARMONIC_SHARE = 0.1


def _phase(api_key: str, index: int, asset: str) -> float:
    """Stable per-row phase, so rows and accounts do not move in lockstep."""
    digest = zlib.crc32(f"{api_key}\0{index}\0{asset}".encode("utf-8"))
    return digest / 2**32 * 2 * math.pi


def _factor(amplitude: float, theta: float, phase: float) -> float:
    return 1.0 + amplitude * math.sin(theta) + HARMONIC_SHARE * amplitude * math.sin(2 * theta + phase)


def _parse(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def drift_rows(rows: list[dict[str, Any]], api_key: str, server_ms: int) -> list[dict[str, Any]]:
    """Return new rows with drifted decimals; fields that are zero or unparsable stay as given."""
    theta_base = 2 * math.pi * (server_ms / 1000.0) / PERIOD_S
    out: list[dict[str, Any]] = []
    for index, base_row in enumerate(rows):
        row = dict(base_row)
        phase = _phase(api_key, index, str(row.get("asset", "")))
        theta = theta_base + phase
        values: dict[str, float] = {}
        for name in DECIMAL_FIELDS:
            base = _parse(row.get(name))
            if base is None or base == 0.0:
                continue
            amplitude = UNPNL_AMPLITUDE if name == "crossUnPnl" else AMPLITUDE
            values[name] = base * _factor(amplitude, theta, phase)
        # Keep Binance's invariants: maxWithdraw <= available <= crossWallet.
        cross = values.get("crossWalletBalance", _parse(row.get("crossWalletBalance")))
        if "availableBalance" in values and cross is not None:
            values["availableBalance"] = min(values["availableBalance"], cross)
        available = values.get("availableBalance", _parse(row.get("availableBalance")))
        if "maxWithdrawAmount" in values and available is not None:
            values["maxWithdrawAmount"] = min(values["maxWithdrawAmount"], available)
        for name, value in values.items():
            row[name] = format_decimal(value)
        row["updateTime"] = server_ms
        out.append(row)
    return out
