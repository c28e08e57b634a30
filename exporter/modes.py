"""A USD-M account's modes (multi-assets, hedge): a metadata kind, read after the data, then every 15 minutes.

Binance changes them only on the user's request (position mode only with no
open positions or orders), so reading `/fapi/v1/accountConfig` (weight 5) at
every refresh would spend budget on an answer that almost never changes: at
15 minutes it costs 0.33 weight a minute per account. The host's dispatcher
reads it (metadata.py, scheduler.py) once every account's data is in, in the
weight the data leaves over, through the account's own client; a read the
budget or a back-off refuses is tried again soon.

A failed read never fails the account: the modes it already knows stay, and
without any, the rules treat the account as single-asset (every margin pool
watched), which can only over-warn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from exporter.endpoints import ACCOUNT_CONFIG_CALL, Call
from exporter.metadata import MetadataKind
from exporter.parsing import Snapshot, isolated_for_mode

if TYPE_CHECKING:
    from exporter.targets import Target

MODES_EVERY_S = 900.0
MODES_RETRY_S = 60.0  # after a failed read


def _applies(target: Target) -> bool:
    """USD-M accounts read with their own key: a master's key cannot read its sub-accounts' modes."""
    return target.market == "usdm" and target.master is None


def _call(target: Target) -> Call:
    return ACCOUNT_CONFIG_CALL


def _apply(snapshot: Snapshot, modes: Mapping[str, float]) -> Snapshot:
    """`snapshot` with the modes added (the refresh's own, e.g. v2's multiAssetsMargin, win)."""
    return isolated_for_mode(Snapshot(totals=dict(modes)).merge(snapshot)) if modes else snapshot


def _value(answer: Snapshot) -> Mapping[str, float]:
    return dict(answer.totals)


MODES = MetadataKind(name="modes", call=_call, applies=_applies, apply=_apply, interval_s=MODES_EVERY_S,
                     retry_s=MODES_RETRY_S, value=_value)
