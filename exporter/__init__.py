"""Prometheus exporter for Binance USD-M Futures account balances."""

__version__ = "0.1.0"
