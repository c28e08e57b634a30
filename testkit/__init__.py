"""Test and benchmark tools that don't ship in the wheel (temporary shim: re-exports the simulator)."""

from exporter.simulator import FAULT_KINDS, Fault, SimAccount, Simulator, account_key, account_secret, generate_accounts

__all__ = ["FAULT_KINDS", "Fault", "SimAccount", "Simulator", "account_key", "account_secret", "generate_accounts"]
