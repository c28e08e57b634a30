"""Rate-limit and ban safety, clock sync, key pairs: the behaviours that keep an IP unbanned."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from conftest import ACCOUNTS, OFFICIAL_ROW, config_dict, rows_b, value, wait_until, write_config
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.hosts import Backoff
from testkit import Fault, SimAccount, Simulator


def host_of(sim: Simulator) -> str:
    return sim.base_url.split("//")[1]


def test_429_pauses_every_account_on_that_host_only(make_harness) -> None:
    limited = Simulator([SimAccount(ACCOUNTS[0].key, ACCOUNTS[0].secret, balances=[dict(OFFICIAL_ROW)]),
                         SimAccount(ACCOUNTS[1].key, ACCOUNTS[1].secret, balances=rows_b())])
    other = Simulator([SimAccount(ACCOUNTS[2].key, ACCOUNTS[2].secret, balances=rows_b())])
    limited.start()
    other.start()
    try:
        data = config_dict(limited.base_url)
        data["accounts"][2]["base_url"] = other.base_url
        h = make_harness(data)
        h.scrape()
        limited.set_fault(ACCOUNTS[0].key, Fault("rate_limit_429", retry_after_s=30, times=1))
        m = h.scrape()
        # alpha drew the 429: like its neighbours, it keeps its last values through the pause.
        assert value(m, "binance_futures_up", alias="alpha") == 1.0
        assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
        assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="rate_limited") == 1.0
        assert value(m, "binance_futures_rate_limited_responses_total", host=host_of(limited), status="429") == 1.0
        assert 28 <= value(m, "binance_futures_backoff_seconds", host=host_of(limited)) <= 30
        assert value(m, "binance_futures_backoff_seconds", host=host_of(other)) == 0
        sent = limited.stats()["requests"]
        for _ in range(3):
            m = h.scrape()
        assert limited.stats()["requests"] == sent, "no request may reach a host during its back-off"
        # bravo was not refreshed, but still has its last values: not an error, still up.
        assert value(m, "binance_futures_up", alias="bravo") == 1.0
        assert value(m, "binance_futures_balance", alias="bravo", asset="BNB") == 3.14159265
        assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="rate_limited") == 0.0
        assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="rate_limited") == 1.0
        assert value(m, "binance_futures_fetches_deferred_total", host=host_of(limited)) >= 6
        assert value(m, "binance_futures_up", alias="charlie") == 1.0
        assert value(m, "binance_futures_balance", alias="charlie", asset="USDT") == 1000.12345678
    finally:
        limited.stop()
        other.stop()


def test_418_ban_then_recovery_after_retry_after(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url))
    sim.set_fault(ACCOUNTS[1].key, Fault("ban_418", retry_after_s=1, times=1))
    m = h.scrape()
    assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="ip_banned") == 1.0
    assert value(m, "binance_futures_rate_limited_responses_total", host=host_of(sim), status="418") == 1.0
    assert value(m, "binance_futures_backoff_seconds", host=host_of(sim)) > 0
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_up", alias="bravo") == 1.0 else None)(h.scrape()),
                   timeout=5, interval=0.2)
    assert value(m, "binance_futures_backoff_seconds", host=host_of(sim)) == 0
    assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="ip_banned") == 1.0


def test_budget_matching_the_ip_limit_never_provokes_a_429(make_harness) -> None:
    """The simulator allows 12 weight a minute; told so, the exporter spends at most half and defers the rest."""
    sim = Simulator([SimAccount(a.key, a.secret, balances=[dict(OFFICIAL_ROW)]) for a in ACCOUNTS], weight_limit=12)
    sim.start()
    try:
        data = config_dict(sim.base_url)
        data["weight_limit"] = 12  # cap 6: the clock (1) and one balance (5)
        h = make_harness(data)
        for _ in range(4):
            m = h.scrape()
        assert sim.stats()["requests_by_path"] == {"/fapi/v1/time": 1, "/fapi/v3/balance": 1}
        assert [value(m, "binance_futures_up", alias=a.alias) for a in ACCOUNTS] == [1.0, 0.0, 0.0]
        for acc in ACCOUNTS:  # deferred fetches are not errors
            assert all(value(m, "binance_futures_scrape_errors_total", alias=acc.alias, reason=r) == 0
                       for r in ("rate_limited", "ip_banned", "timeout"))
        host = host_of(sim)
        assert value(m, "binance_futures_rate_limited_responses_total", host=host, status="429") == 0
        assert value(m, "binance_futures_exporter_used_weight", host=host) == 6
        assert value(m, "binance_futures_weight_budget", host=host) == 6
        assert value(m, "binance_futures_fetches_deferred_total", host=host) >= 8
    finally:
        sim.stop()


def test_real_weight_limit_429_from_the_simulator(make_harness) -> None:
    """The limit is lower than configured (bots on the IP): one real 429, then silence."""
    sim = Simulator([SimAccount(a.key, a.secret, balances=[dict(OFFICIAL_ROW)]) for a in ACCOUNTS], weight_limit=12)
    sim.start()
    try:
        h = make_harness(config_dict(sim.base_url))
        m = h.scrape()  # time (1) + 3 x 5 (+ a modes read, 5) > 12: some request gets a real 429
        # Which one depends on the order: an account's balance (its rate_limited error) or a modes read (no
        # error: the account's data came through); either way the host counts it and pauses.
        assert value(m, "binance_futures_rate_limited_responses_total", host=host_of(sim), status="429") >= 1
        backoff = value(m, "binance_futures_backoff_seconds", host=host_of(sim))
        assert 0 < backoff <= 60
        sent = sim.stats()["requests"]
        h.scrape()
        h.scrape()
        assert sim.stats()["requests"] == sent  # we never provoke the 418 escalation
    finally:
        sim.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_pauses_once_per_event_and_escalates_only_on_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    backoff = Backoff()
    monkeypatch.setattr(backoff, "monotonic", clock)
    sent = clock.now - 0.1
    assert backoff.note(429, None, None, sent) == 60
    for _ in range(29):  # the other 29 requests of that burst: the same event
        assert backoff.note(429, None, None, sent) == 60
    clock.now += 61
    assert backoff.note(429, None, None, clock.now) == 120  # a repeat after the pause, no success between
    clock.now += 121
    backoff.note_success()
    assert backoff.note(429, None, None, clock.now) == 60
    clock.now += 61
    backoff.note_success()
    assert backoff.note(418, None, None, clock.now) == 120
    clock.now += 121
    assert backoff.note(418, None, None, clock.now) == 240
    assert backoff.remaining() == (240, "ip_banned")
    assert backoff.note(429, "7", None, clock.now) == 240  # never shortens a running ban
    clock.now += 1000
    until = f"IP banned until {int((backoff.wall() + 300) * 1000)}."
    assert backoff.note(418, None, until, clock.now) == pytest.approx(300, abs=1)


def test_in_flight_418_during_a_429_pause_takes_binances_end_but_does_not_escalate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    backoff = Backoff()
    monkeypatch.setattr(backoff, "monotonic", clock)
    sent = clock.now - 0.1
    backoff.note(429, None, None, sent)
    assert backoff.note(418, "600", None, sent) == 600
    assert backoff.remaining() == (600, "ip_banned")
    assert backoff.penalties == 1


@pytest.mark.parametrize("retry_after", ["4" * 400, "-5", "abc", "1e9", "0", str(10 * 24 * 3600), " 30 s"])
def test_absurd_retry_after_falls_back_to_the_default(retry_after: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backoff = Backoff()
    monkeypatch.setattr(backoff, "monotonic", FakeClock())
    assert backoff.note(429, retry_after, None, 0.0) == 60


@pytest.mark.parametrize("skew_ms", [-3000, 10000])
def test_first_scrape_succeeds_with_a_skewed_server_clock(skew_ms: int, make_harness) -> None:
    sim = Simulator([SimAccount(ACCOUNTS[0].key, ACCOUNTS[0].secret, balances=[dict(OFFICIAL_ROW)])],
                    clock_skew_ms=skew_ms)
    sim.start()
    try:
        h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
        m = h.scrape()
        assert value(m, "binance_futures_up", alias="alpha") == 1.0
        assert value(m, "binance_futures_time_offset_seconds", host=host_of(sim)) == pytest.approx(skew_ms / 1000, abs=0.3)
    finally:
        sim.stop()


def test_clock_jump_mid_run_resyncs_on_1021_and_retries(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    assert value(h.scrape(), "binance_futures_up", alias="alpha") == 1.0
    sim.clock_skew_ms = 20000  # server clock jumps 20 s ahead: our cached offset is now wrong
    m = h.scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 1.0
    assert value(m, "binance_futures_time_offset_seconds", host=host_of(sim)) == pytest.approx(20, abs=0.3)
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="timestamp") == 0.0


def test_persistent_1021_is_reported_as_timestamp(sim: Simulator, make_harness) -> None:
    sim.set_fault(ACCOUNTS[0].key, Fault("timestamp_1021"))
    m = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1])).scrape()
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="timestamp") == 1.0


def test_budget_plan_says_what_freshness_the_config_gets() -> None:
    accounts = [{"alias": f"a{i}", "api_key": "k", "api_secret": "s"} for i in range(300)]
    engine = Engine(parse_config({"accounts": accounts, "scrape_interval_seconds": 15}, "c.yaml", {}))
    try:
        (plan,) = engine.budget_plans()
    finally:
        engine.close()
    assert plan.host == "fapi.binance.com" and plan.accounts == 300 and plan.round_weight == 1500
    # 1500 weight every 15 s, plus each account's modes (weight 5) every 900 s: 6000 + 100 a minute.
    assert plan.demand_per_minute == 6100 and plan.budget_per_minute == 1200 and not plan.fits
    assert [(p.kind, p.weight, p.interval_s, p.count) for p in plan.periodic] == [("modes", 5, 900.0, 300)]
    # 1500 weight at what the modes leave of 1200 per 61 s (the cap's 1 s of slack): 1200/61 - 100/60 a second
    assert round(plan.refresh_every_s, 2) == 83.31
    small = Engine(parse_config({"accounts": accounts[:10]}, "c.yaml", {}))
    try:
        assert small.budget_plans()[0].fits and small.budget_plans()[0].refresh_every_s == 15
    finally:
        small.close()


def test_budget_plan_is_logged_at_start(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    data = config_dict(sim.base_url)
    data["scrape_interval_seconds"] = 1
    data["weight_limit"] = 100
    exp = run_exporter(f"--config.file={write_config(tmp_path / 'c.yaml', data)}")
    exp.stop()
    line = next(line for line in exp.logs().splitlines() if "weight budget" in line)
    assert "level=warn" in line and "each account is refreshed about every refresh_every_s seconds" in line
    assert "demand_per_minute=901 budget_per_minute=50 refresh_every_s=18.7" in line  # modes: 3 x 5 / 15 min


def _pem(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_ed25519_and_rsa_accounts_scrape(tmp_path: Path, make_harness) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = ed25519.Ed25519PrivateKey.generate()
    sim = Simulator([SimAccount("ed-key", public_key_pem=_public(ed), balances=[dict(OFFICIAL_ROW)]),
                     SimAccount("rsa-key", public_key_pem=_public(rs), balances=rows_b()),
                     SimAccount("wrong-key", public_key_pem=_public(ed), balances=rows_b())])
    sim.start()
    try:
        files = {}
        for name, key, pw in (("ed", ed, None), ("rsa", rs, b"pass-phrase"), ("wrong", wrong, None)):
            path = tmp_path / f"{name}.pem"
            path.write_bytes(_pem(key, pw))
            path.chmod(0o600)
            files[name] = str(path)
        data = {"defaults": {"base_url": sim.base_url}, "accounts": [
            {"alias": "ed", "api_key": "ed-key", "private_key_file": files["ed"]},
            {"alias": "rsa", "api_key": "rsa-key", "private_key_file": files["rsa"], "private_key_passphrase": "pass-phrase"},
            {"alias": "wrong", "api_key": "wrong-key", "private_key_file": files["wrong"]},
        ]}
        m = make_harness(data).scrape()
        assert value(m, "binance_futures_balance", alias="ed", asset="USDT") == 122607.35137903
        assert value(m, "binance_futures_balance", alias="rsa", asset="BNB") == 3.14159265
        assert value(m, "binance_futures_scrape_errors_total", alias="wrong", reason="signature") == 1.0
    finally:
        sim.stop()


def test_no_secret_anywhere_in_a_full_faulty_run(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    """Every fault the simulator can play, at debug log level: scan all output for every key and secret."""
    from conftest import ALL_SECRETS, assert_no_secrets
    from testkit import FAULT_KINDS

    data = config_dict(sim.base_url, timeout_seconds=1)
    data["accounts"][2]["api_secret"] = "wrong-" + ACCOUNTS[2].secret  # a signature failure too
    exp = run_exporter(f"--config.file={write_config(tmp_path / 'c.yaml', data)}", "--log.level=debug")
    bodies = []
    for kind in FAULT_KINDS:
        sim.reset_rate_limits()
        fault = Fault(kind, times=1, latency_s=1.5, retry_after_s=1) if kind == "latency" else Fault(kind, times=1, retry_after_s=1)
        sim.set_fault(ACCOUNTS[1].key, fault)
        for path in ("/metrics", "/probe?target=bravo", "/"):
            resp = exp.get(path)
            assert resp.status_code == 200
            bodies.append(resp.text)
        if kind in ("rate_limit_429", "ban_418"):  # let the 1 s back-off run out
            wait_until(lambda: value(exp.metrics(), "binance_futures_up", alias="bravo") == 1.0, timeout=5,
                       interval=0.2)
    assert exp.stop() == 0
    output = exp.logs() + "".join(bodies)
    assert "Traceback" not in output
    assert_no_secrets(output, ALL_SECRETS + ["wrong-" + ACCOUNTS[2].secret])
    assert "scrape failed alias=bravo" in output.replace('msg="scrape failed" ', "scrape failed ")


def test_offset_and_signed_timestamp_under_a_frozen_clock(make_harness) -> None:
    """freezegun freezes our clock and the in-process simulator's alike, so the offset is exact."""
    from freezegun import freeze_time

    sim = Simulator([SimAccount(ACCOUNTS[0].key, ACCOUNTS[0].secret, balances=[dict(OFFICIAL_ROW)])],
                    clock_skew_ms=-3000)
    sim.start()
    try:
        with freeze_time("2026-03-01T12:00:00Z"):
            h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
            m = h.scrape()
            clock = h.engine.hosts[(sim.base_url, "usdm")].clock
            assert clock.offset_ms == -3000
            assert clock.now_ms() == 1772366400000 - 3000
        assert value(m, "binance_futures_time_offset_seconds", host=host_of(sim)) == -3.0
        # The fetch ran on pool threads, which freezegun leaves on the real monotonic clock; the
        # account's data age is only meaningful on one clock, so `up` is read after the freeze.
        assert value(h.scrape(), "binance_futures_up", alias="alpha") == 1.0
    finally:
        sim.stop()


def test_proxy_environment_is_read_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    from exporter.transport import Transport

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    via_proxy = Transport("https://fapi.binance.com")._http
    assert isinstance(via_proxy, urllib3.ProxyManager)
    assert via_proxy.proxy is not None and via_proxy.proxy.host == "proxy.internal"
    direct = Transport("http://127.0.0.1:8080")._http
    assert isinstance(direct, urllib3.HTTPConnectionPool)


def test_requests_go_through_an_http_proxy_from_the_environment(sim: Simulator, make_harness,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward proxy on loopback sees the balance requests; values arrive intact."""
    import http.server
    import threading
    import urllib.request

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            seen.append(self.path.split("?")[0])
            upstream = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            req = urllib.request.Request(self.path, headers={k: v for k, v in self.headers.items()
                                                             if k.lower() not in ("host", "proxy-connection")})
            try:
                with upstream.open(req, timeout=5) as resp:
                    status, headers, body = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as err:
                status, headers, body = err.code, err.headers, err.read()
            self.send_response(status)
            for key in ("Content-Type", "X-MBX-USED-WEIGHT-1M"):
                if headers.get(key):
                    self.send_header(key, headers[key])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        # The exporter reaches the simulator as "localhost" (proxied); the test's own
        # scrapes go to 127.0.0.1 (bypassed).
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.delenv("no_proxy", raising=False)
        via_name = sim.base_url.replace("127.0.0.1", "localhost")
        m = make_harness(config_dict(via_name, accounts=ACCOUNTS[:1])).scrape()
        assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
        assert "/fapi/v3/balance" in [p.replace(via_name, "") for p in seen]
    finally:
        proxy.shutdown()
        proxy.server_close()
