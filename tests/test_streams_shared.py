"""USD-M user data streams sharing private connections (`stream_keys_per_connection` > 1).

Real WebSocket on loopback against the simulator's stream mode
(`/private/stream?listenKey=..&events=..&listenKey=..`, SUBSCRIBE / UNSUBSCRIBE,
events in the `{"stream": <listenKey>, "data": ...}` envelope).
"""

from __future__ import annotations

import json
import logging

import pytest
import test_streams
from test_streams import FAST, A, B, Live, account, account_update, now_ms

from conftest import ACCOUNTS, ALL_SECRETS, OFFICIAL_ROW, value, wait_until
from exporter.config import ConfigError, parse_config
from exporter.streams import user as stream_mux
from exporter.streams.tuning import Tuning
from testkit import SimAccount, Simulator

live = test_streams.live  # the fixture: a simulator, an engine streaming its accounts, the HTTP front

C = ACCOUNTS[2]
SHARED = {"stream_keys_per_connection": 10}


def sim3() -> Simulator:
    return Simulator([SimAccount(api_key=acct.key, api_secret=acct.secret, balances=[dict(OFFICIAL_ROW)])
                      for acct in (A, B, C)])


def three(live, sim: Simulator, **top: object) -> Live:
    lv: Live = live(sim, [account(A), account(B), account(C)], top={**SHARED, **top})
    for acct in (A, B, C):
        lv.settled(acct.alias)
    return lv


def balance(lv: Live, alias: str) -> float | None:
    return value(lv.metrics(), "binance_futures_balance", alias=alias, asset="USDT")


def test_config_key_defaults_to_one_and_is_bounded() -> None:
    base = {"accounts": [{"alias": "a", "api_key": "k" * 16, "api_secret": "s" * 32}]}
    assert parse_config(base, "c.yaml", {}).stream_keys_per_connection == 1
    assert parse_config({**base, "stream_keys_per_connection": 50}, "c.yaml", {}).stream_keys_per_connection == 50
    for bad in (0, 201, "many", 2.5):
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "stream_keys_per_connection": bad}, "c.yaml", {})
        assert str(err.value).startswith("c.yaml: stream_keys_per_connection: ")


def test_accounts_share_one_connection_and_get_only_their_own_events(live) -> None:
    sim = sim3()
    lv = three(live, sim)
    assert sim.open_streams(market="usdm") == 1 and sim.stream_connections == 1
    assert sim.stream_subscriptions(market="usdm") == 3
    assert lv.engine.streams.connections() == 1
    sim.latency_s = 1.5  # the refresh each event asks for is slow: the event's figures show meanwhile
    sim.push_event(A.key, "usdm", account_update("111.5", "100"))
    sim.push_event(B.key, "usdm", account_update("222.5", "200"))
    wait_until(lambda: balance(lv, "alpha") == 111.5 and balance(lv, "bravo") == 222.5, timeout=1.0)
    assert balance(lv, "charlie") == 122607.35137903  # nothing for charlie
    assert lv.stream("alpha").events["ACCOUNT_UPDATE"] == 1 and lv.stream("bravo").events["ACCOUNT_UPDATE"] == 1
    assert lv.stream("charlie").events["ACCOUNT_UPDATE"] == 0
    sim.push_event(C.key, "usdm", {"e": "ORDER_TRADE_UPDATE", "E": now_ms()})  # not asked for: never sent
    sim.push_event(C.key, "usdm", {"e": "MARGIN_CALL", "E": now_ms(), "cw": "1", "p": []})
    wait_until(lambda: lv.stream("charlie").margin_calls == 1, timeout=2)
    assert lv.stream("charlie").events["other"] == 0 and lv.stream("alpha").margin_calls == 0
    assert all(lv.stream(a).events["invalid"] == 0 for a in ("alpha", "bravo", "charlie"))


def test_one_expired_key_renews_only_that_account_on_the_same_connection(live) -> None:
    sim = sim3()
    lv = three(live, sim)
    keys = set(lv.listen_keys())
    sim.expire_listen_key(A.key, "usdm")
    wait_until(lambda: lv.stream("alpha").reconnects == 1 and lv.stream("alpha").up, timeout=10)
    assert sim.stream_connections == 1 and sim.open_streams(market="usdm") == 1  # no new connection
    assert sim.stream_requests() >= 1  # the new key was SUBSCRIBEd
    assert len(set(lv.listen_keys()) - keys) == 1  # alpha's key only
    for other in ("bravo", "charlie"):
        assert lv.stream(other).reconnects == 0 and lv.stream(other).up
    assert lv.stream("alpha").events["listenKeyExpired"] == 1
    lv.settled("alpha")
    sim.latency_s = 1.5
    sim.push_event(A.key, "usdm", account_update("42", "42"))
    wait_until(lambda: balance(lv, "alpha") == 42.0, timeout=1.0)
    assert sim.listen_keys.deletes == 0


def test_a_refused_subscribe_renews_that_key_and_subscribes_again(live) -> None:
    sim = sim3()
    lv = three(live, sim)
    posts = sim.listen_keys.posts
    sim.refuse_subscribes(1)
    sim.expire_listen_key(B.key, "usdm")  # bravo's new key is SUBSCRIBEd: refused once, then accepted
    wait_until(lambda: lv.stream("bravo").reconnects == 1 and lv.stream("bravo").up, timeout=10)
    assert sim.listen_keys.posts >= posts + 2  # a new key after the refusal
    assert sim.stream_requests() >= 2 and sim.stream_connections == 1
    assert lv.stream("alpha").reconnects == 0 and lv.stream("charlie").reconnects == 0


def test_a_gone_key_on_keep_alive_renews_only_that_account(live) -> None:
    sim = sim3()
    lv: Live = live(sim, [account(A), account(B)], top=SHARED,
                    tuning=Tuning(**{**FAST.__dict__, "keepalive_s": 0.3}))
    lv.settled("alpha")
    lv.settled("bravo")
    sim.listen_keys.forget(B.key, "fapi")  # gone without an event: the next PUT gets -1125
    wait_until(lambda: lv.stream("bravo").reconnects == 1 and lv.stream("bravo").up, timeout=10)
    assert sim.stream_connections == 1 and lv.stream("alpha").reconnects == 0


def test_a_cut_connection_brings_every_account_back_with_a_refresh_each(live) -> None:
    sim = sim3()
    lv = three(live, sim)
    before = sim.stats()["requests_by_key"]
    sim.drop_streams()
    for acct in (A, B, C):
        wait_until(lambda a=acct: lv.stream(a.alias).reconnects == 1 and lv.stream(a.alias).up, timeout=10)
        lv.settled(acct.alias)  # a REST refresh made after the gap
    after = sim.stats()["requests_by_key"]
    assert all(after[acct.key] > before[acct.key] for acct in (A, B, C))
    assert sim.open_streams(market="usdm") == 1 and sim.stream_connections == 2
    sim.latency_s = 1.5
    sim.push_event(C.key, "usdm", account_update("7.25", "7"))
    wait_until(lambda: balance(lv, "charlie") == 7.25, timeout=1.0)


def test_a_refused_handshake_renews_the_keys_and_brings_everyone_back(live) -> None:
    sim = sim3()
    lv = three(live, sim)
    key_a = next(k for k, v in sim.listen_keys.by_value.items() if v.api_key == A.key)
    sim.listen_keys.forget(A.key, "fapi")  # gone without an event; the reconnect's URL names it: refused
    sim.drop_streams()
    wait_until(lambda: all(lv.stream(a).reconnects == 1 and lv.stream(a).up for a in ("alpha", "bravo", "charlie")),
               timeout=10)
    assert key_a not in lv.listen_keys() and sim.open_streams(market="usdm") == 1
    assert sim.listen_keys.deletes == 0


def test_reload_subscribes_and_unsubscribes_on_the_live_connection(live) -> None:
    sim = sim3()
    lv: Live = live(sim, [account(A)], top=SHARED)
    lv.settled("alpha")
    alpha = lv.stream("alpha")
    base, stream = sim.base_url, sim.stream_url

    def cfg(*accounts: dict) -> object:
        return parse_config({"defaults": {
            "base_url": base, "coinm_base_url": base, "pm_base_url": base, "timeout_seconds": 8, "cache_seconds": 5,
            "user_stream": True, "stream_base_url": stream + "/private", "coinm_stream_base_url": stream,
            "pm_stream_base_url": stream + "/pm"}, "accounts": list(accounts), **SHARED}, "test.yaml", {})

    lv.engine.apply(cfg(account(A), account(B)))
    lv.settled("bravo")
    assert sim.stream_connections == 1 and sim.stream_subscriptions(market="usdm") == 2
    assert lv.stream("alpha") is alpha and alpha.up and alpha.reconnects == 0
    sim.latency_s = 1.5
    sim.push_event(B.key, "usdm", account_update("31.5", "30"))
    wait_until(lambda: balance(lv, "bravo") == 31.5, timeout=1.0)
    sim.latency_s = 0

    lv.engine.apply(cfg(account(B)))
    wait_until(lambda: sim.stream_subscriptions(A.key, "usdm") == 0, timeout=5)  # UNSUBSCRIBEd
    assert sim.open_streams(B.key, "usdm") == 1 and sim.stream_connections == 1
    assert lv.stream("alpha") is None and lv.stream("bravo").up
    assert sim.listen_keys.deletes == 0
    assert value(lv.metrics(), "binance_futures_stream_up", alias="alpha") is None


def test_hostile_envelopes_are_attributed_or_dropped(live, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sim = sim3()
    lv = three(live, sim)
    key_a = next(k for k, v in sim.listen_keys.by_value.items() if v.api_key == A.key)
    # A bad event naming alpha's key: alpha's alone, nobody's connection is cut.
    sim.push_event(A.key, "usdm", json.dumps({"stream": key_a, "data": account_update("NaN", "1")}))
    wait_until(lambda: lv.stream("alpha").events["invalid"] == 1, timeout=2)
    assert lv.stream("bravo").events["invalid"] == 0
    # An envelope naming a key that is not on the connection (another account's, anyone's): dropped,
    # counted on every account of that connection, no figure changes.
    sim.push_event(A.key, "usdm", json.dumps({"stream": "someone-else" * 4, "data": account_update("1", "1")}))
    wait_until(lambda: lv.stream("bravo").events["invalid"] == 1, timeout=2)
    assert balance(lv, "alpha") == 122607.35137903
    # An unwrapped event on a shared connection names nobody: dropped the same way.
    sim.push_event(A.key, "usdm", json.dumps(account_update("2", "2")))
    wait_until(lambda: lv.stream("charlie").events["invalid"] == 2, timeout=2)
    assert sim.stream_connections == 1 and all(lv.stream(a).reconnects == 0 for a in ("alpha", "bravo", "charlie"))
    # Garbage that is no JSON at all: the connection degrades and comes back, with everyone on it.
    sim.push_event(A.key, "usdm", "{not json")
    wait_until(lambda: all(lv.stream(a).reconnects == 1 and lv.stream(a).up for a in ("alpha", "bravo", "charlie")),
               timeout=10)
    text = caplog.text + repr(lv.engine.streams.streams)
    for secret in ALL_SECRETS + lv.listen_keys() + [key_a]:
        assert secret not in text


def test_keys_past_what_fits_in_the_url_are_subscribed_once_connected(live, monkeypatch) -> None:
    url, named = stream_mux.shared_url("wss://x/private", ["k" * 64] * 100, ("ACCOUNT_UPDATE", "MARGIN_CALL"))
    assert len(url) <= stream_mux.MAX_URL_CHARS and 20 < named < 100 and url.count("listenKey=") == named
    assert stream_mux.shared_url("ws://x", ["k" * 9000], ("A",))[1] == 1  # at least one key, however long
    monkeypatch.setattr(stream_mux, "MAX_URL_CHARS", 200)  # room for one key in the URL
    sim = sim3()
    lv = three(live, sim)
    assert sim.stream_connections == 1 and sim.stream_subscriptions(market="usdm") == 3
    assert sim.stream_requests() == 1  # one SUBSCRIBE message naming both keys (batched, issue 22)
    sim.latency_s = 1.5
    sim.push_event(C.key, "usdm", account_update("8.5", "8"))
    wait_until(lambda: balance(lv, "charlie") == 8.5, timeout=1.0)


def test_connections_fill_up_to_the_configured_number_of_keys(live) -> None:
    sim = sim3()
    lv: Live = live(sim, [account(A), account(B), account(C)], top={"stream_keys_per_connection": 2})
    for acct in (A, B, C):
        lv.settled(acct.alias)
    assert sim.open_streams(market="usdm") == 2 and lv.engine.streams.connections() == 2
    assert sim.stream_subscriptions(market="usdm") == 3


def test_coinm_and_pm_keep_one_connection_per_key(live) -> None:
    sim = Simulator([SimAccount(api_key=A.key, api_secret=A.secret), SimAccount(api_key=B.key, api_secret=B.secret)])
    lv: Live = live(sim, [account(A, markets=["coinm"]), account(B, markets=["coinm"])], top=SHARED)
    lv.settled("alpha", "coinm")
    lv.settled("bravo", "coinm")
    assert sim.open_streams(market="coinm") == 2 and sim.stream_requests() == 0
