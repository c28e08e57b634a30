"""Never the cause of a 429: the budget, the IP's total, pauses once, stale-but-available data."""

from __future__ import annotations

import time
import urllib.request

import pytest

from conftest import ACCOUNTS, OFFICIAL_ROW, config_dict, value, wait_until
from exporter import governor
from testkit import Fault, SimAccount, Simulator


def host_of(sim: Simulator) -> str:
    return sim.base_url.split("//")[1]


def many_accounts(n: int) -> tuple[list[SimAccount], list[dict]]:
    sims = [SimAccount(f"key-{i:03d}", f"secret-{i:03d}", balances=[dict(OFFICIAL_ROW)]) for i in range(n)]
    accounts = [{"alias": f"acc{i:03d}", "api_key": f"key-{i:03d}", "api_secret": f"secret-{i:03d}"}
                for i in range(n)]
    return sims, accounts


def test_the_ips_total_counts_the_bots_too(make_harness) -> None:
    """Other clients on the IP used most of the minute: the exporter sends nothing more this minute."""
    sim = Simulator([SimAccount(a.key, a.secret, balances=[dict(OFFICIAL_ROW)]) for a in ACCOUNTS],
                    weight_limit=100)
    sim.start()
    try:
        data = config_dict(sim.base_url)
        data["weight_limit"] = 100  # our cap: 50; the IP's: 100, stop at 90
        h = make_harness(data)
        # Put the simulator's clock at the start of a minute, so the bots' weight and ours share one window.
        sim.clock_skew_ms = 1000 - sim.server_time_ms() % 60000
        for _ in range(85):  # "the trading bots": 85 weight of pings from the same IP
            urllib.request.urlopen(f"{sim.base_url}/fapi/v1/ping", timeout=5).read()
        m = h.scrape()  # the clock request reports 86 used: one more balance (5) would pass 90
        assert sim.stats()["requests_by_path"].get("/fapi/v3/balance", 0) == 0
        assert all(value(m, "binance_futures_up", alias=a.alias) == 0.0 for a in ACCOUNTS)
        assert value(m, "binance_futures_used_weight", host=host_of(sim), interval="1m") == 86
        assert value(m, "binance_futures_rate_limited_responses_total", host=host_of(sim), status="429") == 0
        assert value(m, "binance_futures_fetches_deferred_total", host=host_of(sim)) == 3
        assert all(value(m, "binance_futures_scrape_errors_total", alias=a.alias, reason=r) == 0
                   for a in ACCOUNTS for r in ("rate_limited", "timeout", "connection"))
    finally:
        sim.stop()


def test_parallel_429s_pause_the_host_once(make_harness) -> None:
    """30 requests in flight all meet a 429 without Retry-After: one 60 s pause, not 30 escalations."""
    sims, accounts = many_accounts(30)
    sim = Simulator(sims, send_retry_after=False, latency_s=0.3)  # all 30 in flight before any answer
    sim.start()
    try:
        for account in sims:
            sim.set_fault(account.api_key, Fault("rate_limit_429", retry_after_s=None, times=1))
        h = make_harness({"defaults": {"base_url": sim.base_url, "cache_seconds": 0}, "accounts": accounts})
        m = h.scrape()
        host = host_of(sim)
        assert value(m, "binance_futures_rate_limited_responses_total", host=host, status="429") == 30
        assert 55 <= value(m, "binance_futures_backoff_seconds", host=host) <= 60
        assert all(value(m, "binance_futures_scrape_errors_total", alias=a["alias"], reason="rate_limited") == 1
                   for a in accounts)
        sent = sim.stats()["requests"]
        for _ in range(3):
            m = h.scrape()
        assert sim.stats()["requests"] == sent
        assert 50 <= value(m, "binance_futures_backoff_seconds", host=host) <= 60, "a repeat must not escalate"
        assert all(value(m, "binance_futures_scrape_errors_total", alias=a["alias"], reason="rate_limited") == 1
                   for a in accounts), "accounts that sent nothing count no error"
        assert value(m, "binance_futures_fetches_deferred_total", host=host) == 90
    finally:
        sim.stop()


def test_paused_account_keeps_its_values_until_max_data_age(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url, max_data_age_seconds=1.5)
    h = make_harness(data)
    m = h.scrape()
    fetched = value(m, "binance_futures_last_success_timestamp_seconds", alias="alpha")
    assert value(m, "binance_futures_up", alias="alpha") == 1.0 and abs(fetched - time.time()) < 2
    sim.set_fault(ACCOUNTS[1].key, Fault("rate_limit_429", retry_after_s=30, times=1))
    m = h.scrape()  # bravo's request meets the 429; alpha's and charlie's went out with it
    assert value(m, "binance_futures_up", alias="bravo") == 1.0  # like its neighbours (issue 18)
    m = h.scrape()  # paused: alpha is deferred, but has young values
    assert value(m, "binance_futures_up", alias="alpha") == 1.0
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") == 122607.35137903
    m = wait_until(lambda: (lambda s: s if value(s, "binance_futures_up", alias="alpha") == 0.0 else None)(h.scrape()),
                   timeout=5, interval=0.2)
    assert value(m, "binance_futures_balance", alias="alpha", asset="USDT") is None  # too old: not exported
    assert value(m, "binance_futures_last_success_timestamp_seconds", alias="alpha") < time.time() - 1.5
    assert value(m, "binance_futures_scrape_errors_total", alias="alpha", reason="rate_limited") == 0


def test_an_ha_pair_costs_the_weight_of_one(sim: Simulator, make_harness) -> None:
    data = config_dict(sim.base_url)
    del data["defaults"]["cache_seconds"]
    data["scrape_interval_seconds"] = 2  # refresh after 1.6 s
    h = make_harness(data)
    for _ in range(3):
        h.scrape()  # scraper A
        h.scrape()  # scraper B, moments later
        time.sleep(0.1)
    assert sim.stats()["requests_by_path"]["/fapi/v3/balance"] == 3  # 3 accounts, one refresh each
    time.sleep(1.7)
    m = h.scrape()
    assert sim.stats()["requests_by_path"]["/fapi/v3/balance"] == 6
    assert all(value(m, "binance_futures_up", alias=a.alias) == 1 for a in ACCOUNTS)


def test_over_budget_refreshes_go_oldest_first(sim: Simulator, make_harness,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 s 'minute' with room for one refresh at a time: accounts take turns, none starves."""
    monkeypatch.setattr(governor, "WINDOW_S", 1.0)
    monkeypatch.setattr(governor, "WINDOW_SLACK_S", 0.02)  # scaled down with the window
    data = config_dict(sim.base_url)
    data["weight_budget_share"] = 0.0025  # cap 6 per 1 s: the clock (1), then one balance (5) at a time
    h = make_harness(data)
    order: list[str] = []
    seen = {a.key: 0 for a in ACCOUNTS}
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and len(order) < 6:
        m = h.scrape()
        counts = sim.stats()["requests_by_key"]
        for acc in ACCOUNTS:
            if counts.get(acc.key, 0) > seen[acc.key]:
                order.append(acc.alias)
                seen[acc.key] = counts[acc.key]
        time.sleep(0.1)
    assert len(order) >= 5, order
    assert order[:3] == ["alpha", "bravo", "charlie"] and order[3:5] == ["alpha", "bravo"], order
    assert value(m, "binance_futures_fetches_deferred_total", host=host_of(sim)) > 0
    assert all(value(m, "binance_futures_up", alias=a.alias) == 1 for a in ACCOUNTS)


def test_the_account_that_drew_the_429_is_treated_like_its_neighbours(make_harness) -> None:
    """Issue 18: after a 429 without Retry-After, the account whose request drew it keeps its last
    values and `up 1` until max_data_age_seconds, like every other account of the paused host,
    and its error is counted once."""
    sims = [SimAccount(a.key, a.secret, balances=[dict(OFFICIAL_ROW, asset=f"A{i}")]) for i, a in enumerate(ACCOUNTS)]
    sim = Simulator(sims, send_retry_after=False)
    sim.start()
    try:
        h = make_harness(config_dict(sim.base_url, max_data_age_seconds=2))
        first = h.scrape()
        sim.set_fault(ACCOUNTS[1].key, Fault("rate_limit_429", retry_after_s=None, times=1))
        for scrape in range(3):  # the one meeting the 429, then two during the 60 s pause
            m = h.scrape()
            assert 50 <= value(m, "binance_futures_backoff_seconds", host=host_of(sim)) <= 60
            for i, acc in enumerate(ACCOUNTS):
                assert value(m, "binance_futures_up", alias=acc.alias) == 1.0, (scrape, acc.alias)
                assert value(m, "binance_futures_balance", alias=acc.alias, asset=f"A{i}") == 122607.35137903
                assert value(m, "binance_futures_scrape_errors_total", alias=acc.alias,
                             reason="rate_limited") == (1.0 if acc.alias == "bravo" else 0.0)
        # bravo's values are those of the first scrape: its 429 did not count as a fetch
        stamp = "binance_futures_last_success_timestamp_seconds"
        assert value(m, stamp, alias="bravo") == value(first, stamp, alias="bravo")
        assert value(m, "binance_futures_rate_limited_responses_total", host=host_of(sim), status="429") == 1
        # Past max_data_age_seconds every account of the paused host goes dark alike, the victim included.
        m = wait_until(lambda: (lambda s: s if all(value(s, "binance_futures_up", alias=a.alias) == 0.0
                                                   for a in ACCOUNTS) else None)(h.scrape()),
                       timeout=6, interval=0.2)
        assert value(m, "binance_futures_balance", alias="bravo", asset="A1") is None
        assert value(m, "binance_futures_scrape_errors_total", alias="bravo", reason="rate_limited") == 1.0
    finally:
        sim.stop()
