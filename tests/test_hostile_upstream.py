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


def good() -> list[tuple[bytes, float]]:
    return [(response(200, GOOD, {"X-MBX-USED-WEIGHT-1M": "6"}), 0.0)]


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped (~1/1000 of the size), built in pieces so the test never holds them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MB)
    return b"".join([*(comp.compress(zeros) for _ in range(size // MB)), comp.flush()])


def endless_chunked() -> list[tuple[bytes, float]]:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (MB, b"[" * MB)
    return [(head, 0.0), *((chunk, 0.0) for _ in range(64))]


def big_body(size: int) -> list[tuple[bytes, float]]:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
    return [(head, 0.0), *((b" " * MB, 0.0) for _ in range(size // MB))]


BOMB = gzip_bomb(256 * MB)

# name -> (answer to the balance request, the account's expected error reason or None if it must stay up)
HOSTILE = {
    "surrogate_alias": (lambda: [(response(200, GOOD.replace(b'"SgsR"', b'"x\\ud800y"')), 0.0)], "bad_response"),
    "control_char_asset": (lambda: [(response(200, GOOD.replace(b'"USDT"', b'"US\\nDT"')), 0.0)], "bad_response"),
    "huge_weight_header": (lambda: [(response(200, GOOD, {"X-MBX-USED-WEIGHT-1M": "9" * 401}), 0.0)], None),
    "huge_retry_after": (lambda: [(response(429, b'{"code":-1003,"msg":"Too many requests"}',
                                            {"Retry-After": "7" * 400}), 0.0)], "rate_limited"),
    "deep_json_200": (lambda: [(response(200, b"[" * 100_000), 0.0)], "bad_response"),
    "deep_json_400": (lambda: [(response(400, b"[" * 100_000), 0.0)], "http_error"),
    "huge_numbers": (lambda: [(response(200, GOOD.replace(b'"23.72469206"', b"1e999")), 0.0)], "bad_response"),
    "long_integer": (lambda: [(response(200, GOOD.replace(b"1617939110373", b"9" * 5000)), 0.0)], "bad_response"),
    "html_200": (lambda: [(response(200, b"<html>maintenance</html>", content_type="text/html"), 0.0)],
                 "bad_response"),
    "body_50mb": (lambda: big_body(50 * MB), "bad_response"),
    "endless_chunked": (endless_chunked, "bad_response"),
    "gzip_bomb": (lambda: [(response(200, BOMB, {"Content-Encoding": "gzip"}), 0.0)], "bad_response"),
    "brotli_unasked": (lambda: [(response(200, GOOD, {"Content-Encoding": "br"}), 0.0)], "bad_response"),
    "trickle_body": (lambda: [(response(200, GOOD)[:-len(GOOD)], 0.0), *trickle(GOOD, 0.2)], "timeout"),
    "trickle_headers": (lambda: trickle(response(200, GOOD), 0.2), "timeout"),
    "no_answer": (lambda: [(b"", 30.0)], "timeout"),
    # Issue 18: the status line at once, the header lines past the deadline: EOF ends headers
    # in http.client, so a cut used to read as a complete 200 with an empty body (bad_response).
    "trickle_header_lines": (lambda: [(b"HTTP/1.1 200 OK\r\n", 0.0), *trickle(response(200, GOOD)[17:], 0.2)],
                             "timeout"),
    "duplicate_keys": (lambda: [(response(200, GOOD.replace(b'"asset": "USDT"', b'"asset": "USDT", "asset": "BTC"')),
                                 0.0)], "bad_response"),
}


def test_hostile_answers_stay_with_their_account_and_the_exposition_stays_valid(make_harness,
                                                                                   tmp_path: Path) -> None:
    with ExitStack() as stack:
        servers = {name: stack.enter_context(HostileServer(balance_script(answer)))
                   for name, (answer, _) in HOSTILE.items()}
        healthy = stack.enter_context(HostileServer(balance_script(good)))
        accounts = [{"alias": name.replace("_", "-"), "api_key": "k", "api_secret": "s", "base_url": srv.base_url}
                    for name, srv in servers.items()]
        accounts.append({"alias": "healthy", "api_key": "k", "api_secret": "s", "base_url": healthy.base_url})
        h = make_harness({"defaults": {"timeout_seconds": 2, "cache_seconds": 0}, "accounts": accounts})
        start = time.monotonic()
        resp = h.get(headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
        elapsed = time.monotonic() - start
        assert resp.status_code == 200 and elapsed < 3, f"{resp.status_code} after {elapsed:.2f}s"
        m = parse_metrics(resp.text)
        for name, (_, reason) in HOSTILE.items():
            alias = name.replace("_", "-")
            if reason is None:
                assert value(m, "binance_futures_up", alias=alias) == 1.0, name
                continue
            assert value(m, "binance_futures_up", alias=alias) == 0.0, name
            assert value(m, "binance_futures_scrape_errors_total", alias=alias, reason=reason) == 1.0, \
                (name, {k: v for k, v in m.items() if k[0].endswith("errors_total") and v and ("alias", alias) in k[1]})
        assert value(m, "binance_futures_balance", alias="healthy", asset="USDT") == 122607.35137903
        assert value(m, "binance_futures_backoff_seconds",
                     host=servers["huge_retry_after"].base_url.split("//")[1]) == pytest.approx(58, abs=2.5)
        exposition = tmp_path / "metrics.txt"
        exposition.write_text(resp.text)
        check = subprocess.run([require_tool("promtool"), "check", "metrics"], input=resp.text, text=True,
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "\\ud800" not in resp.text and "unexpected error" not in resp.text


def test_a_trickling_clock_does_not_hold_up_readiness_or_fetches(tmp_path: Path, run_exporter) -> None:
    def script(path: str):
        if path == "/fapi/v1/time":
            return trickle(server_time(), 1.0)
        return good()

    with HostileServer(script) as srv:
        cfg = write_config(tmp_path / "c.yaml", {"defaults": {"base_url": srv.base_url, "timeout_seconds": 5},
                                                 "accounts": [{"alias": "a", "api_key": "k", "api_secret": "s"}]})
        exp = run_exporter(f"--config.file={cfg}", wait=False)
        start = time.monotonic()
        wait_until(lambda: exp.get("/-/ready", timeout=2).status_code == 200, timeout=10, interval=0.1)
        assert time.monotonic() - start < 6  # the start-up measurement gives up after its 2 s deadline
        start = time.monotonic()
        m = exp.metrics()
        assert value(m, "binance_futures_up", alias="a") == 1.0  # signed with the offset we have (0)
        assert time.monotonic() - start < 1.5, "a fetch must not wait on the failing clock again"


def rss_after_scrapes(exp, scrapes: int) -> tuple[float, float]:
    proc = psutil.Process(exp.proc.pid)
    exp.get()
    base = proc.memory_info().rss / MB
    peak = base
    for _ in range(scrapes):
        exp.get()
        peak = max(peak, proc.memory_info().rss / MB)
    return base, peak


@pytest.mark.parametrize("name", ["body_50mb", "gzip_bomb", "endless_chunked"])
def test_memory_is_bounded_per_request(name: str, tmp_path: Path, run_exporter) -> None:
    answer, _ = HOSTILE[name]
    with HostileServer(balance_script(answer)) as srv:
        accounts = [{"alias": f"a{i}", "api_key": "k", "api_secret": "s"} for i in range(4)]
        cfg = write_config(tmp_path / "c.yaml", {"defaults": {"base_url": srv.base_url, "cache_seconds": 0,
                                                              "timeout_seconds": 5}, "accounts": accounts})
        exp = run_exporter(f"--config.file={cfg}")
        base, peak = rss_after_scrapes(exp, 5)
        print(f"{name}: RSS {base:.1f} MB after the first scrape, peak {peak:.1f} MB over 5 more (4 accounts)")
        assert peak - base < 40, f"RSS grew {peak - base:.1f} MB"
        assert "Traceback" not in exp.logs()


def test_sigterm_exits_promptly_with_scrapes_in_flight(tmp_path: Path, run_exporter) -> None:
    import threading

    with HostileServer(balance_script(lambda: trickle(response(200, GOOD), 0.5))) as srv:
        accounts = [{"alias": f"a{i}", "api_key": "k", "api_secret": "s"} for i in range(10)]
        cfg = write_config(tmp_path / "c.yaml", {"defaults": {"base_url": srv.base_url, "cache_seconds": 0,
                                                              "timeout_seconds": 60}, "accounts": accounts})
        exp = run_exporter(f"--config.file={cfg}")
        threads = [threading.Thread(target=lambda: _quiet_get(exp), daemon=True) for _ in range(50)]
        for t in threads:
            t.start()
        wait_until(lambda: len(srv.requests) >= 11, timeout=10)  # the clock + the 10 accounts' trickles
        start = time.monotonic()
        assert exp.stop() == 0
        elapsed = time.monotonic() - start
        print(f"exit after SIGTERM with 50 scrapes in flight against a trickling upstream: {elapsed:.2f}s")
        assert elapsed < 2.0


def _quiet_get(exp) -> None:
    try:
        exp.get(timeout=30)
    except Exception:  # noqa: BLE001 - cut by the shutdown, as intended
        pass


def test_a_deadline_that_passes_while_connecting_still_cuts_the_trickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain HTTP registers the connection before it has a socket: the deadline must find it after connect.

    A slow connect is what a loopback server cannot produce, so only that step is slowed here.
    """
    from exporter import transport

    original = transport._GuardedHTTPConnection._new_conn

    def slow_connect(self):  # type: ignore[no-untyped-def]
        time.sleep(0.6)
        return original(self)

    monkeypatch.setattr(transport._GuardedHTTPConnection, "_new_conn", slow_connect)
    body = b'[' + b' ' * 100 + b']'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    with HostileServer(balance_script(lambda: [(head, 0.0), *trickle(body, 0.1)])) as server:
        client = transport.Transport(server.base_url)
        started = time.monotonic()
        with pytest.raises(transport.TransportError) as caught:
            client.get("/fapi/v3/balance", None, started + 0.5)
        elapsed = time.monotonic() - started
        client.close()
    assert caught.value.kind == "timeout"
    assert elapsed < 2.0  # the trickle lasts 10 s; before the fix the request ran on until it ended


def test_a_connection_with_bytes_past_its_answer_carries_no_other_accounts_request(
        make_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accounts share their host's keep-alive pool (issue 18): an answer followed by bytes nobody
    asked for (here a whole second answer) poisons its connection, which must then be closed, not
    handed to the next account, whose request would read those bytes as its own answer.

    The account's mode read (accountConfig, a metadata kind) is switched off: it would follow the
    balance on the same connection before the tail arrives, read the tail as its answer, and leave its own
    answer racing the next account's request, which no client can tell apart (see Transport).
    """
    from exporter import engine
    monkeypatch.setattr(engine, "KINDS", ())  # no metadata kind: no mode read
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
        wait_until(lambda: srv.answered >= 2)  # the clock's answer, then first's with its unasked tail
        connections = srv.connections
        m = h.scrape("/probe?target=second")
        assert value(m, "binance_futures_up", alias="second") == 1.0
        assert value(m, "binance_futures_balance", alias="second", asset="USDT") == 122607.35137903
        assert srv.connections == connections + 1, "the poisoned connection was reused"
        m = h.scrape("/probe?target=first")  # a clean connection is kept alive and reused
        assert value(m, "binance_futures_up", alias="first") == 1.0
        assert srv.connections == connections + 1


def test_accounts_of_a_host_share_a_pool_of_max_concurrency_connections(make_harness) -> None:
    """Connections follow from max_concurrency, not from the number of accounts."""
    with HostileServer(balance_script(lambda: [(response(200, GOOD), 0.05)])) as srv:
        accounts = [{"alias": f"a{i}", "api_key": "k", "api_secret": "s"} for i in range(40)]
        h = make_harness({"max_concurrency": 4, "defaults": {"base_url": srv.base_url, "cache_seconds": 0,
                                                             "timeout_seconds": 5}, "accounts": accounts})
        for _ in range(3):
            m = h.scrape()
            assert all(value(m, "binance_futures_up", alias=f"a{i}") == 1.0 for i in range(40))
        assert h.engine.pools.connections() == 4
        assert srv.connections <= 4, srv.connections  # clock and 120 balance requests on at most 4
