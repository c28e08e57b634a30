"""No answer can take the exporter down: each hostile answer stays with its account, bounded in time and memory."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import zlib
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from conftest import OFFICIAL_ROW, parse_metrics, value, wait_until, write_config
from hostile_server import HostileServer, balance_script, response, server_time, trickle
from stack_helpers import require_tool

GOOD = json.dumps([OFFICIAL_ROW]).encode()
MB = 1024 * 1024



def test_a_connection_with_bytes_past_its_answer_carries_no_other_accounts_request(make_harness, monkeypatch) -> None:
    from exporter.modes import ModeReader
    monkeypatch.setattr(ModeReader, "refresh", lambda self, c, d, snap: snap)

    """Accounts share their host's keep-alive pool (issue 18): an answer followed by bytes nobody
    asked for (here a whole second answer) poisons its connection, which must then be closed, not
    handed to the next account, whose request would read those bytes as its own answer."""
    smuggled = json.dumps([dict(OFFICIAL_ROW, balance="666.00000000")]).encode()
    balance_requests = itertools.count()

    def script(path: str):
        if not path.startswith("/fapi/v3/balance"):
            return None
        if next(balance_requests) == 0:
            return [(response(200, GOOD), 0.0), (response(200, smuggled), 0.05)]
        return good()

    with HostileServer(script) as srv:
        accounts = [{"alias": alias, "api_key": "k", "api_secret": "s", "base_url": srv.base_url}
                    for alias in ("first", "second")]
        # One connection in the pool: without the check, "second" would be sent on "first"'s.
        h = make_harness({"max_concurrency": 1, "defaults": {"timeout_seconds": 3}, "accounts": accounts})
        m = h.scrape("/probe?target=first")
        assert value(m, "binance_futures_balance", alias="first", asset="USDT") == 122607.35137903
        # The clock's answer, first's with its unasked tail, then first's mode read (accountConfig),
        # which went out on that connection before the tail arrived and read it as its own answer:
        # the connection now holds the mode read's real answer, which nobody asked for.
        wait_until(lambda: srv.answered >= 2)
        connections = srv.connections
        m = h.scrape("/probe?target=second")
        assert value(m, "binance_futures_up", alias="second") == 1.0
        assert value(m, "binance_futures_balance", alias="second", asset="USDT") == 122607.35137903
        assert srv.connections == connections + 1, "the poisoned connection was reused"
        m = h.scrape("/probe?target=first")  # a clean connection is kept alive and reused
        assert value(m, "binance_futures_up", alias="first") == 1.0
        assert srv.connections == connections + 1


