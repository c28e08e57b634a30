"""Benchmarks for the exporter: scrape latency/CPU/memory (`benchmarks.scrape`) and a fault soak (`benchmarks.soak`).

Both drive the exporter as a real process (so its CPU, RSS, threads and file
descriptors can be read from its pid) against the local Binance simulator,
which runs in a third process (`benchmarks.simserver`) so its own CPU does not
mix with the driver's or the exporter's. Only 127.0.0.1 is ever contacted.
"""
