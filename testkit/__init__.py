"""Test and benchmark tools that are not shipped (pyproject packages only exporter and exporter.simulator).

`Simulator` here is the shipped simulator plus fault injection and request
counters; `python -m testkit` runs it standalone.
"""

from exporter.simulator import SimAccount, SimFutures, SimPortfolio, SimPosition, SimSubAccount, format_decimal

from .accounts import account_key, account_secret, generate_accounts
from .faults import FAULT_KINDS, Fault
from .simulator import Simulator

__all__ = ["FAULT_KINDS", "Fault", "SimAccount", "SimFutures", "SimPortfolio", "SimPosition", "SimSubAccount",
           "Simulator", "account_key", "account_secret", "format_decimal", "generate_accounts"]
