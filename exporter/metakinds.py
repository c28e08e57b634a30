"""The metadata kinds the exporter reads (metadata.py): add a kind here and it is scheduled and planned."""

from __future__ import annotations

from exporter.liverisk import BRACKETS, CONTRACT_SIZES
from exporter.metadata import MetadataKind
from exporter.modes import MODES

KINDS: tuple[MetadataKind, ...] = (MODES, BRACKETS, CONTRACT_SIZES)
