"""The exporter signing real requests over real HTTP to the simulator, in-process.

Each test builds an engine and web app on a loopback port (conftest's `make_harness`) and scrapes it the
way Prometheus does, parsing /metrics with prometheus_client's parser.
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import ACCOUNTS, ALL_SECRETS, OFFICIAL_ROW, config_dict, parse_metrics, rows_b, value
from exporter.labelvalues import SCRAPE_ERROR_REASONS as REASONS
from testkit import Fault, SimAccount, Simulator


def test_exact_values_for_every_account(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url))
    m = h.scrape()
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
    assert value(m, "binance_futures_available_balance", alias="alpha", asset="USDT") == 23.72469206
    assert value(m, "binance_futures_cross_wallet_balance", alias="alpha", asset="USDT") == 23.72469206
    assert value(m, "binance_futures_cross_unrealized_pnl", alias="alpha", asset="USDT") == 0.0
    assert value(m, "binance_futures_max_withdraw_amount", alias="alpha", asset="USDT") == 23.72469206
    assert value(m, "binance_futures_margin_available", alias="alpha", asset="USDT") == 1.0
    assert value(m, "binance_futures_balance_update_timestamp_seconds", alias="alpha", asset="USDT") == 1617939110.373
    assert value(m, "binance_futures_account_info", alias="alpha", account_alias="SgsR") == 1.0
    assert value(m, "binance_futures_cross_unrealized_pnl", alias="bravo", asset="USDT") == -12.3456789
    assert value(m, "binance_futures_available_balance", alias="bravo", asset="BNB") == 2.71828182
    assert value(m, "binance_futures_margin_available", alias="bravo", asset="BNB") == 0.0
    assert value(m, "binance_futures_balance", alias="charlie", asset="USDC") == 122607.35137903
    # All-zero ETH row is skipped (documented), nothing else is.
    assert value(m, "binance_futures_balance", alias="bravo", asset="ETH") is None
    for acc in ACCOUNTS:
        assert value(m, "binance_futures_up", alias=acc.alias) == 1.0
        assert 0 < value(m, "binance_futures_request_duration_seconds", alias=acc.alias) < 3
        for reason in REASONS:
            assert value(m, "binance_futures_scrape_errors_total", alias=acc.alias, reason=reason) == 0.0
    assert value(m, "binance_futures_exporter_build_info", version=__import__("exporter").__version__,
                 revision="unknown") == 1.0
    host = sim.base_url.split("//")[1]
    assert value(m, "binance_futures_weight_limit", host=host, interval="1m") == 2400
    assert value(m, "binance_futures_used_weight", host=host, interval="1m") >= 15
    assert value(m, "binance_futures_backoff_seconds", host=host) == 0


def test_exact_decimal_text_in_exposition(sim: Simulator, make_harness) -> None:
    text = make_harness(config_dict(sim.base_url)).get().text
    assert 'binance_futures_balance{alias="alpha",asset="USDT",market="usdm"} 122607.35137903\n' in text
    assert 'binance_futures_cross_unrealized_pnl{alias="bravo",asset="USDT",market="usdm"} -12.3456789\n' in text


def test_wrong_secret_is_signature_error_and_others_stay_up(sim: Simulator, make_harness, caplog) -> None:
    data = config_dict(sim.base_url)
    data["accounts"][1]["api_secret"] = "wrong-secret-" + "9" * 30
    h = make_harness(data)
    caplog.set_level("INFO")
    m = h.scrape()
    assert value(m, "binance_futures_up", alias="bravo") == 0.0
    assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="signature") == 1.0
    assert value(m, "binance_futures_balance", alias="bravo", asset="USDT") is None  # no stale or partial series
    assert value(m, "binance_futures_up", alias="alpha") == 1.0
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
    assert value(m, "binance_futures_up", alias="charlie") == 1.0
    failures = [r.fields for r in caplog.records if r.getMessage() == "scrape failed"]
    assert len(failures) == 1
    assert failures[0]["alias"] == "bravo" and failures[0]["reason"] == "signature" and failures[0]["code"] == -1022
    assert "wrong-secret" not in caplog.text
    for secret in ALL_SECRETS:
        assert secret not in caplog.text


def test_unknown_key_is_auth(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url)
    data["accounts"][0]["api_key"] = "unknown-key"
    m = make_harness(data).scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 0.0
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="auth") == 1.0


def test_v2_endpoint_is_selectable(sim: Simulator, make_harness) -> None:
    m = make_harness(config_dict(sim.base_url, api_version="v2")).scrape()
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
    assert sim.stats()["requests_by_path"].get("/fapi/v2/balance") == 3
    assert "/fapi/v3/balance" not in sim.stats()["requests_by_path"]


FAULT_REASONS = [
    (Fault("http_500"), "http_error"),
    (Fault("http_503"), "http_error"),
    (Fault("http_408"), "http_error"),
    (Fault("html_403"), "http_error"),
    (Fault("truncated_json"), "bad_response"),
    (Fault("wrong_types"), "bad_response"),
    (Fault("missing_fields"), "bad_response"),
    (Fault("not_a_list"), "bad_response"),
    (Fault("reset"), "connection"),
    (Fault("auth_2015"), "auth"),
    (Fault("timestamp_1021"), "timestamp"),
    (Fault("latency", latency_s=2.0), "timeout"),
    (Fault("rate_limit_429", retry_after_s=30), "rate_limited"),
    (Fault("ban_418", retry_after_s=300), "ip_banned"),
]


@pytest.mark.parametrize("fault, reason", FAULT_REASONS, ids=[f.kind for f, _ in FAULT_REASONS])
def test_each_fault_stays_inside_its_account(fault: Fault, reason: str, make_harness) -> None:
    # Faulty account on its own simulator (a 429/418 pauses the whole host, by design),
    # healthy accounts on another.
    healthy = Simulator([SimAccount(ACCOUNTS[0].key, ACCOUNTS[0].secret, balances=[dict(OFFICIAL_ROW)]),
                         SimAccount(ACCOUNTS[2].key, ACCOUNTS[2].secret, balances=rows_b())])
    faulty = Simulator([SimAccount(ACCOUNTS[1].key, ACCOUNTS[1].secret, balances=rows_b())])
    healthy.start()
    faulty.start()
    try:
        faulty.set_fault(ACCOUNTS[1].key, fault)
        data = config_dict(healthy.base_url)
        data["accounts"][1]["base_url"] = faulty.base_url
        data["accounts"][1]["timeout_seconds"] = 1
        h = make_harness(data)
        m = h.scrape()
        assert value(m, "binance_futures_up", alias="bravo") == 0.0
        assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason=reason) == 1.0, \
            {k: v for k, v in m.items() if k[0] == "binance_futures_scrape_errors_total" and v}
        assert value(m, "binance_futures_balance", alias="bravo", asset="USDT") is None
        assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
        assert value(m, "binance_futures_balance", alias="charlie", asset="BNB") == 3.14159265
        assert value(m, "binance_futures_up", alias="alpha") == value(m, "binance_futures_up", alias="charlie") == 1.0
        assert h.get("/-/healthy").status_code == 200  # still alive
    finally:
        healthy.stop()
        faulty.stop()


def test_transient_503_is_retried_once_within_the_scrape(sim: Simulator, make_harness) -> None:
    sim.set_fault(ACCOUNTS[0].key, Fault("http_503", times=1))
    h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    m = h.scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 1.0
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="http_error") == 0.0
    assert sim.stats()["requests_by_path"]["/fapi/v3/balance"] == 2  # (+ the modes, read once: accountConfig)


def test_connection_reset_is_retried_once(sim: Simulator, make_harness) -> None:
    sim.set_fault(ACCOUNTS[0].key, Fault("reset", times=1))
    m = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1])).scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 1.0


def test_4xx_is_never_retried(sim: Simulator, make_harness) -> None:
    sim.set_fault(ACCOUNTS[0].key, Fault("auth_2015", times=1))
    m = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1])).scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 0.0
    assert sim.stats()["requests_by_key"][ACCOUNTS[0].key] == 1


def test_connection_refused(make_harness) -> None:
    from conftest import free_port

    m = make_harness(config_dict(f"http://127.0.0.1:{free_port()}", accounts=ACCOUNTS[:1])).scrape()
    assert value(m, "binance_futures_up", alias="alpha") == 0.0
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="connection") == 1.0


def test_accounts_are_fetched_in_parallel(sim: Simulator, make_harness) -> None:
    sim.latency_s = 1.0
    h = make_harness(config_dict(sim.base_url))
    h.scrape()  # warm up (clock sync, connections)
    start = time.monotonic()
    m = h.scrape()
    elapsed = time.monotonic() - start
    assert all(value(m, "binance_futures_up", alias=a.alias) == 1.0 for a in ACCOUNTS)
    # In parallel: about 1 s; one after another: 3 s. The middle leaves a loaded machine 1 s of slack.
    assert elapsed < 2.0, f"3 accounts at 1 s each took {elapsed:.2f}s: not parallel"


def test_keep_alive_one_connection_per_account(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url))
    for _ in range(5):
        h.scrape()
    # One keep-alive connection per account, reused across scrapes, plus the host's clock connection.
    assert sim.stats()["connections"] <= len(ACCOUNTS) + 1


def test_ha_concurrent_scrapes_share_one_fetch(sim: Simulator, make_harness) -> None:
    sim.latency_s = 0.5
    h = make_harness(config_dict(sim.base_url))
    h.scrape()
    before = dict(sim.stats()["requests_by_key"])
    results: list[dict] = []
    threads = [threading.Thread(target=lambda p=p: results.append(h.scrape(p)))
               for p in ("/metrics", "/metrics", "/probe?target=alpha", "/probe?target=bravo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    after = sim.stats()["requests_by_key"]
    assert len(results) == 4
    for acc in ACCOUNTS:
        assert after[acc.key] - before[acc.key] == 1, "concurrent scrapes must share one request per account"
    assert all(value(r, "binance_futures_up", alias="bravo") == 1.0 for r in results
               if value(r, "binance_futures_up", alias="alpha") is None)
    assert sum(value(r, "binance_futures_up", alias="alpha") == 1.0 for r in results) == 3


def test_cache_seconds_serves_young_results(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1], cache_seconds=60))
    h.scrape()
    h.scrape()
    h.scrape()
    paths = sim.stats()["requests_by_path"]
    assert paths["/fapi/v3/balance"] == 1 and paths["/fapi/v1/accountConfig"] == 1


def test_scrape_timeout_header_bounds_slow_accounts(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url, timeout_seconds=10)
    h = make_harness(data)
    h.scrape()
    sim.set_fault(ACCOUNTS[1].key, Fault("latency", latency_s=10))
    start = time.monotonic()
    m = h.scrape(headers={"X-Prometheus-Scrape-Timeout-Seconds": "4"})
    elapsed = time.monotonic() - start
    # The exporter answers 10 % (at most 0.5 s) before Prometheus' timeout: by 3.6 s here.
    assert 3.4 < elapsed < 4, f"scrape took {elapsed:.2f}s with a 4 s Prometheus timeout"
    assert value(m, "binance_futures_up", alias="bravo") == 0.0
    assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="timeout") == 1.0
    assert value(m, "binance_futures_up", alias="alpha") == 1.0


def test_probe_returns_only_the_target(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url))
    m = h.scrape("/probe?target=bravo")
    aliases = {dict(labels).get("alias") for (name, labels) in m if "alias" in dict(labels)}
    assert aliases == {"bravo"}
    assert value(m, "binance_futures_balance", alias="bravo", asset="BNB") == 3.14159265
    assert not any(name.startswith("process_") or name == "binance_futures_exporter_build_info" for name, _ in m)
    assert sim.stats()["requests_by_key"].get(ACCOUNTS[0].key) is None  # other accounts not fetched
    bad = h.get("/probe?target=nope")
    assert bad.status_code == 400 and "unknown target 'nope'" in bad.text
    assert h.get("/probe").status_code == 400


def test_landing_page_and_health(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url))
    page = h.get("/")
    assert page.status_code == 200 and 'href="/metrics"' in page.text
    for acc in ACCOUNTS:
        assert f'href="/probe?target={acc.alias}"' in page.text
    assert h.get("/-/healthy").text == "Healthy\n"
    assert h.get("/-/ready").status_code == 200
    assert h.get("/nope").status_code == 404


def test_gzip_and_format_negotiation(sim: Simulator, make_harness) -> None:
    h = make_harness(config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    resp = h.get(headers={"Accept-Encoding": "gzip"})
    assert resp.headers.get("Content-Encoding") == "gzip"
    assert value(parse_metrics(resp.text), "binance_futures_up", alias="alpha") == 1.0
    # What Prometheus sends: OpenMetrics preferred, text accepted -> the cheaper text format.
    prom = h.get(headers={"Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                                    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    assert prom.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    om = h.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    only_up = parse_metrics(h.get("/metrics?name[]=binance_futures_up").text)
    assert {name for name, _ in only_up} == {"binance_futures_up"}


def test_thresholds_are_exported_and_keep_zero_assets(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url, min_available_balance={"USDT": 1000, "ETH": 0.5})
    m = make_harness(data).scrape()
    assert value(m, "binance_futures_min_available_balance", alias="alpha", asset="USDT") == 1000.0
    # bravo's ETH row is all zeros but has a threshold: kept, so a drained asset still alerts.
    assert value(m, "binance_futures_available_balance", alias="bravo", asset="ETH") == 0.0
    assert value(m, "binance_futures_min_available_balance", alias="bravo", asset="ETH") == 0.5


def test_skip_zero_balances_false_keeps_every_asset(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url)
    data["skip_zero_balances"] = False
    m = make_harness(data).scrape()
    assert value(m, "binance_futures_balance", alias="bravo", asset="ETH") == 0.0
