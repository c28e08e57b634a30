"""Reload without restart: SIGHUP and POST /-/reload re-read --config.file and --web.config.file.

The engine's reconciliation is checked in process (which objects survive), the rest with the CLI as a
process against the simulator: accounts added and removed, an unchanged account's state kept (no new
fetch, same last_success), a broken config or web config changing nothing, a rotated TLS certificate
seen by new connections, reloads one at a time, and no threads or connections left behind.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import (
    ACCOUNTS,
    ALL_SECRETS,
    assert_no_secrets,
    config_dict,
    parse_metrics,
    value,
    wait_until,
    write_config,
)
from exporter.config import parse_config
from exporter.engine import Engine, Reconciled
from exporter.reload import Reloader
from exporter.simulator import SimAccount, SimFutures, SimSubAccount, balance_row
from exporter.webconfig import BasicAuth, WebConfig, carry_over
from testkit import Simulator

RELOAD_OK = "binance_futures_exporter_config_last_reload_successful"
RELOAD_AT = "binance_futures_exporter_config_last_reload_success_timestamp_seconds"


def engine_for(data: dict) -> Engine:
    return Engine(parse_config(data, "test.yaml", {}))


# ---------------------------------------------------------------------------------- in process

def test_apply_keeps_unchanged_accounts_and_their_host(sim: Simulator) -> None:
    engine = engine_for(config_dict(sim.base_url, ACCOUNTS[:2], cache_seconds=300))
    try:
        engine.start()
        first = engine.scrape(engine.aliases(), 5.0)
        assert all(v.up for v in first.targets)
        alpha = engine.states[("alpha", "usdm")]
        host = alpha.target.host
        clock_offset = host.clock.offset_ms
        used = host.governor.used_last_minute()
        assert used > 0
        host.backoff.note(429, "1", None, time.monotonic())  # a pause in progress must survive too
        assert host.backoff.remaining()[0] > 0

        data = config_dict(sim.base_url, [ACCOUNTS[0], ACCOUNTS[2]], cache_seconds=300)
        data["weight_limit"] = 1200
        data["max_concurrency"] = 8
        pool = engine.pool
        done = engine.apply(parse_config(data, "test.yaml", {}))

        assert done == Reconciled(added=("charlie",), removed=("bravo",), changed=(), kept=("alpha",))
        assert engine.states[("alpha", "usdm")] is alpha  # its data, errors and admission time
        assert ("bravo", "usdm") not in engine.states
        assert engine.aliases() == ["alpha", "charlie"]
        assert engine.states[("charlie", "usdm")].target.host is host  # same URL: the same host
        assert host.governor.used_last_minute() == used  # the weight already sent still counts
        assert host.governor.cap == 600.0  # the new limit x share
        assert host.backoff.remaining()[0] > 0 and host.clock.offset_ms == clock_offset
        assert [p.round_weight for p in engine.budget_plans()] == [10]  # two accounts at weight 5
        assert engine.pool is not pool and engine.pool._max_workers == 8 and pool._shutdown
        transport = alpha.target.client.transport  # the host's pool follows: 8 connections, not the old 512
        assert transport.pool_size == 8 and transport._http.pool.maxsize == 8  # type: ignore[union-attr]
        host.backoff.until = 0.0
        assert [v.up for v in engine.scrape(engine.aliases(), 5.0).targets] == [True, True]
    finally:
        engine.close()


def test_a_host_dropped_and_brought_back_keeps_its_weight_and_pause(sim: Simulator) -> None:
    """Two reloads a few seconds apart (an account commented out, then back): Binance still counts
    the host's last minute and its ban, so the host must come back with both."""
    coinm = config_dict(sim.base_url, ACCOUNTS[:2], coinm_base_url=sim.base_url)
    coinm["accounts"][1]["markets"] = ["coinm"]
    engine = engine_for(coinm)
    try:
        engine.scrape(engine.aliases(), 5.0)
        host = engine.states[("bravo", "coinm")].target.host
        used = host.governor.used_last_minute()
        host.backoff.note(418, "120", None, time.monotonic())
        without = config_dict(sim.base_url, ACCOUNTS[:1], coinm_base_url=sim.base_url)
        engine.apply(parse_config(without, "test.yaml", {}))
        assert (sim.base_url, "coinm") not in engine.hosts
        engine.apply(parse_config(coinm, "test.yaml", {}))
        back = engine.states[("bravo", "coinm")].target.host
        assert back is host and back.governor.used_last_minute() == used > 0
        assert back.backoff.remaining()[0] > 100  # the ban goes on: no request until it ends
        assert [v.up for v in engine.scrape(["bravo"], 2.0).targets] == [False]
    finally:
        engine.close()


def test_apply_replaces_a_changed_account_and_drops_an_unused_host(sim: Simulator) -> None:
    data = config_dict(sim.base_url, ACCOUNTS[:2])
    data["accounts"][1]["markets"] = ["usdm", "coinm"]
    data["defaults"]["coinm_base_url"] = sim.base_url
    engine = engine_for(data)
    try:
        engine.scrape(engine.aliases(), 5.0)
        bravo = engine.states[("bravo", "usdm")]
        transport = engine.states[("bravo", "coinm")].target.client.transport
        assert (sim.base_url, "coinm") in engine.hosts

        changed = config_dict(sim.base_url, ACCOUNTS[:2], coinm_base_url=sim.base_url)
        changed["accounts"][1]["timeout_seconds"] = 2  # an effective setting: a new bravo, without coinm
        done = engine.apply(parse_config(changed, "test.yaml", {}))

        assert done.changed == ("bravo",) and done.kept == ("alpha",)
        assert engine.states[("bravo", "usdm")] is not bravo
        assert engine.states[("bravo", "usdm")].target.account.timeout_seconds == 2
        assert ("bravo", "coinm") not in engine.states
        assert (sim.base_url, "coinm") not in engine.hosts
        # Connections are pooled per base URL (shared with alpha's USD-M host here) and outlive hosts.
        assert transport is engine.states[("alpha", "usdm")].target.client.transport
        assert [v.up for v in engine.scrape(engine.aliases(), 5.0).targets] == [True, True]
        # Its secret is the same, its settings are not: equality is by effective settings, never shown.
        assert_no_secrets(repr(done))
    finally:
        engine.close()


def test_apply_relabels_hosts_that_come_to_share_a_url(sim: Simulator) -> None:
    netloc = sim.base_url.split("//")[1]
    coin_only = config_dict(sim.base_url, ACCOUNTS[:1], coinm_base_url=sim.base_url, markets=["coinm"])
    engine = engine_for(coin_only)
    try:
        coinm = engine.hosts[(sim.base_url, "coinm")]
        assert coinm.label == netloc  # the only kind on that URL
        both = config_dict(sim.base_url, ACCOUNTS[:2], coinm_base_url=sim.base_url, markets=["coinm"])
        both["accounts"][1]["markets"] = ["usdm"]
        engine.apply(parse_config(both, "test.yaml", {}))
        assert engine.hosts[(sim.base_url, "coinm")] is coinm
        assert {h.label for h in engine.hosts.values()} == {netloc, f"{netloc}/coinm"}  # never one label twice
        assert engine.hosts[(sim.base_url, "usdm")].label == netloc
    finally:
        engine.close()


KEY_M, SECRET_M = "key-master-" + "m" * 20, "secret-master-" + "8" * 40


@pytest.fixture
def master_sim() -> Simulator:
    subs = [SimSubAccount(f"bot-{i}@x.test", SimFutures([balance_row("USDT", f"{100 + i}")])) for i in range(3)]
    simulator = Simulator([SimAccount(KEY_M, SECRET_M, account_alias="Mm01", sub_accounts=subs),
                           SimAccount(ACCOUNTS[0].key, ACCOUNTS[0].secret, account_alias="SgsR")])
    simulator.start()
    yield simulator
    simulator.stop()


def master_config(sim: Simulator, with_master: bool = True, *, interval: float = 600) -> dict:
    data = config_dict(sim.base_url, ACCOUNTS[:1], sapi_base_url=sim.base_url)
    if with_master:
        data["accounts"].append({"alias": "desk", "api_key": KEY_M, "api_secret": SECRET_M, "markets": [],
                                 "sub_accounts": {"discovery_interval_seconds": interval}})
    return data


def test_apply_keeps_a_masters_discovery_and_removes_its_sub_accounts_with_it(master_sim: Simulator) -> None:
    engine = engine_for(master_config(master_sim))
    try:
        started = engine.start()
        wait_until(lambda: all(f.done() for f in started) and engine._exported_subs("desk") == 3)
        discovery = engine.discoveries["desk"]
        sub_state = engine.states[("bot-1@x.test", "usdm")]
        done = engine.apply(parse_config({**master_config(master_sim), "scrape_interval_seconds": 30},
                                         "test.yaml", {}))
        assert done.kept == ("alpha", "desk")
        assert engine.discoveries["desk"] is discovery  # discovery goes on, on its own schedule
        assert engine.states[("bot-1@x.test", "usdm")] is sub_state
        assert engine.aliases() == ["alpha", "desk", "bot-0@x.test", "bot-1@x.test", "bot-2@x.test"]

        done = engine.apply(parse_config(master_config(master_sim, with_master=False), "test.yaml", {}))
        assert done.removed == ("desk",)
        assert engine.aliases() == ["alpha"] and "desk" not in engine.discoveries
        result = engine.scrape(["alpha"], 5.0)
        assert [v.target.alias for v in result.targets] == ["alpha"]
        assert (master_sim.base_url, "sapi") not in engine.hosts
    finally:
        engine.close()


def test_reloads_run_one_at_a_time(sim: Simulator, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    engine = Engine(parse_config(config_dict(sim.base_url, ACCOUNTS[:1]), str(cfg), {}))
    reloader = Reloader(engine, WebConfig(), str(cfg), None)
    running, overlaps, calls = [0], [0], [0]
    apply = engine.apply

    def slow_apply(config):  # widen the window in which a second reload could overlap
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        time.sleep(0.05)
        calls[0] += 1
        running[0] -= 1
        return apply(config)

    engine.apply = slow_apply  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=reloader.reload, args=("test",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        # Never two at once. Issue 23: four at once coalesce, and a run whose files read as
        # before the last successful one skips applying, so the file (unchanged) is applied once.
        assert calls[0] == 1 and overlaps[0] == 1
        assert reloader.status.successful
    finally:
        engine.close()


# ---------------------------------------------------------------------------------- the CLI

def reload_metrics(exp) -> tuple[float | None, float | None]:
    m = exp.metrics()
    return value(m, RELOAD_OK), value(m, RELOAD_AT)


def sighup_and_wait(exp, ok: float) -> dict:
    """SIGHUP, then poll until the reload metric says the outcome (`ok`) with a newer attempt logged."""
    before = exp.logs().count("config reload")
    exp.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: exp.logs().count("config reload") > before, timeout=15)
    m = exp.metrics()
    assert value(m, RELOAD_OK) == ok, exp.logs()[-3000:]
    return m


def test_sighup_adds_and_removes_accounts_and_keeps_unchanged_state(sim: Simulator, tmp_path: Path,
                                                                   run_exporter) -> None:
    # cache_seconds 300: a kept account is not fetched again after a reload; a restart or a new
    # target would fetch it.
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:2], cache_seconds=300))
    exp = run_exporter(f"--config.file={cfg}")
    m = exp.metrics()
    assert value(m, "binance_futures_up", alias="alpha") == 1 and value(m, "binance_futures_up", alias="bravo") == 1
    assert value(m, RELOAD_OK) == 1
    started_at = value(m, RELOAD_AT)
    assert started_at is not None and abs(started_at - time.time()) < 60
    alpha_success = value(m, "binance_futures_last_success_timestamp_seconds", alias="alpha")
    alpha_requests = sim.stats()["requests_by_key"][ACCOUNTS[0].key]

    write_config(cfg, config_dict(sim.base_url, [ACCOUNTS[0], ACCOUNTS[2]], cache_seconds=300))
    m = sighup_and_wait(exp, 1)
    assert value(m, RELOAD_AT) > started_at
    assert value(m, "binance_futures_up", alias="charlie") == 1  # added, fetched
    assert not any(dict(labels).get("alias") == "bravo" for _, labels in m)  # removed: every series
    assert value(m, "binance_futures_up", alias="alpha") == 1
    assert value(m, "binance_futures_last_success_timestamp_seconds", alias="alpha") == alpha_success
    assert sim.stats()["requests_by_key"][ACCOUNTS[0].key] == alpha_requests  # not fetched again
    logs = exp.logs()
    assert re.search(r'msg="config reloaded" cause=SIGHUP file=\S+ accounts=2 added=charlie removed=bravo '
                     r'changed="?"? unchanged=1', logs), logs[-2000:]
    assert logs.count("weight budget: every account refreshed each scrape") == 2  # at start, after the reload
    assert_no_secrets(logs, ALL_SECRETS)


def test_post_reload_needs_the_lifecycle_flag(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    plain = run_exporter(f"--config.file={cfg}")
    resp = requests.post(plain.url + "/-/reload", timeout=10)
    assert (resp.status_code, resp.text) == (403, "Lifecycle API is not enabled.\n")  # as Prometheus
    assert requests.get(plain.url + "/-/reload", timeout=10).status_code == 405

    exp = run_exporter(f"--config.file={cfg}", "--web.enable-lifecycle")
    assert requests.get(exp.url + "/-/reload", timeout=10).status_code == 405
    write_config(cfg, config_dict(sim.base_url, ACCOUNTS[:2]))
    resp = requests.post(exp.url + "/-/reload", timeout=10)
    assert resp.status_code == 200, resp.text
    assert value(exp.metrics(), "binance_futures_up", alias="bravo") == 1
    assert requests.put(exp.url + "/-/reload", timeout=10).status_code == 200

    data = config_dict(sim.base_url, ACCOUNTS[:2])
    data["accounts"][1]["timeout_seconds"] = "fast"
    write_config(cfg, data)
    resp = requests.post(exp.url + "/-/reload", timeout=10)
    line = f"{cfg}: accounts[1] (alias 'bravo'): timeout_seconds: must be a number, got 'fast'"
    assert (resp.status_code, resp.text) == (400, line + "\n")
    m = exp.metrics()
    assert value(m, RELOAD_OK) == 0
    assert value(m, "binance_futures_up", alias="bravo") == 1  # the last good config runs on
    failed = [ln for ln in exp.logs().splitlines() if "config reload failed" in ln]
    assert len(failed) == 1 and line in failed[0].replace('\\"', '"'), failed

    data["accounts"][1]["timeout_seconds"] = ACCOUNTS[1].secret  # a secret pasted into the wrong key
    write_config(cfg, data)
    resp = requests.post(exp.url + "/-/reload", timeout=10)
    assert resp.status_code == 400 and "not shown" in resp.text
    assert_no_secrets(resp.text + exp.logs(), ALL_SECRETS)


def test_broken_files_change_nothing_and_a_fix_recovers(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:2]))
    web = tmp_path / "web.yml"
    web.write_text("{}\n")
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}")
    assert value(exp.metrics(), RELOAD_OK) == 1

    cfg.write_text("accounts: [\n")  # malformed YAML, and one account fewer than before
    m = sighup_and_wait(exp, 0)
    assert value(m, "binance_futures_up", alias="bravo") == 1
    good_at = value(m, RELOAD_AT)
    errors = [ln for ln in exp.logs().splitlines() if "config reload failed" in ln]
    assert len(errors) == 1 and f"error=\"{cfg}: " in errors[0], errors

    write_config(cfg, config_dict(sim.base_url, ACCOUNTS[:1]))  # the config is fine now, the web config not
    web.write_text("tls_server_config: {cert_file: missing.crt, key_file: missing.key}\n")
    m = sighup_and_wait(exp, 0)
    assert value(m, "binance_futures_up", alias="bravo") == 1  # both files or neither
    assert value(m, RELOAD_AT) == good_at
    assert "tls_server_config.cert_file: cannot read missing.crt" in exp.logs()
    assert exp.get("/metrics").url.startswith("http://")  # still plain HTTP

    web.write_text("{}\n")
    m = sighup_and_wait(exp, 1)
    assert value(m, "binance_futures_up", alias="bravo") is None and value(m, RELOAD_AT) > good_at
    assert "Traceback" not in exp.logs()


def test_basic_auth_users_and_headers_change_on_reload(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    hashed = {user: bcrypt.hashpw(user.encode() + b"-pw", bcrypt.gensalt(4)).decode() for user in ("old", "new")}
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"old": hashed["old"]}}))
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}")
    old, new = ("old", "old-pw"), ("new", "new-pw")
    assert exp.get("/metrics", auth=old).status_code == 200
    assert exp.get("/metrics", auth=new).status_code == 401

    web.write_text(yaml.safe_dump({"basic_auth_users": {"new": hashed["new"]},
                                   "http_server_config": {"headers": {"X-Frame-Options": "deny"}}}))
    exp.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: exp.get("/metrics", auth=new).status_code == 200)
    assert exp.get("/metrics", auth=old).status_code == 401
    assert exp.get("/-/healthy").headers["X-Frame-Options"] == "deny"
    assert value(parse_metrics(exp.get("/metrics", auth=new).text), RELOAD_OK) == 1


def test_an_unchanged_user_list_keeps_its_verified_credentials() -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    before = WebConfig(auth=BasicAuth({"prom": hashed.encode()}))
    assert carry_over(before, WebConfig(auth=BasicAuth({"prom": hashed.encode()}))).auth is before.auth
    other = BasicAuth({"prom": bcrypt.hashpw(b"pw2", bcrypt.gensalt(4))})
    assert carry_over(before, WebConfig(auth=other)).auth is other
    assert carry_over(before, WebConfig()).auth is None


def self_signed(cn: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def served_certificate(port: int) -> str:
    """The CN of the certificate a new TLS connection to the exporter gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_a_rotated_tls_certificate_is_served_after_reload(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    for path, data in zip((crt, key), self_signed("first"), strict=True):
        path.write_bytes(data)
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}))
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}", "--web.enable-lifecycle",
                       scheme="https")
    assert served_certificate(exp.port) == "first"
    kept = requests.Session()  # a keep-alive connection opened before the rotation
    assert kept.get(exp.url + "/-/healthy", verify=False, timeout=5).status_code == 200

    for path, data in zip((crt, key), self_signed("second"), strict=True):  # cert-manager rewrites both
        path.write_bytes(data)
    assert served_certificate(exp.port) == "first"  # nothing changes until a reload
    resp = requests.post(exp.url + "/-/reload", verify=False, timeout=10)
    assert resp.status_code == 200, resp.text
    assert served_certificate(exp.port) == "second"
    assert kept.get(exp.url + "/-/healthy", verify=False, timeout=5).status_code == 200

    key.write_bytes(b"not a key\n")  # half-written rotation: refused, the second certificate stays
    resp = requests.post(exp.url + "/-/reload", verify=False, timeout=10)
    assert resp.status_code == 400 and "tls_server_config" in resp.text
    assert served_certificate(exp.port) == "second"
    kept.close()


def host_label(sim: Simulator, kind: str) -> str:
    """The `host` label of one kind of host on the simulator's URL (it serves several: "<netloc>/<kind>")."""
    return sim.base_url.split("//")[1] + f"/{kind}"


def process_counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_reloads_in_a_row_leak_no_threads_or_connections(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    small = config_dict(sim.base_url, ACCOUNTS[:1], coinm_base_url=sim.base_url)
    # Two accounts more, one of them also on a COIN-M host whose budget (1 a minute after the clock's
    # request) makes its refreshes queue: the host's dispatcher thread must end when the host goes.
    large = {**config_dict(sim.base_url, ACCOUNTS, coinm_base_url=sim.base_url), "coinm_weight_limit": 4}
    large["accounts"][2]["markets"] = ["usdm", "coinm"]
    cfg = write_config(tmp_path / "config.yaml", small)
    exp = run_exporter(f"--config.file={cfg}", "--web.enable-lifecycle")
    counts = []
    for round_ in range(10):
        for data, accounts in ((large, 3), (small, 1)):
            write_config(cfg, data)
            if round_ % 2:
                assert requests.post(exp.url + "/-/reload", timeout=10).status_code == 200
            else:
                sighup_and_wait(exp, 1)
            for _ in range(2):
                m = exp.metrics()
            assert sum(1 for (name, labels), v in m.items() if name == "binance_futures_up" and v == 1
                       and ("market", "usdm") in labels) == accounts
            if accounts == 3:
                assert value(m, "binance_futures_fetches_deferred_total", host=host_label(sim, "coinm")) >= 1
        counts.append(process_counts(exp.proc.pid))
    # The fetch pool may still grow by a thread when two fetches meet (ThreadPoolExecutor starts one
    # when none is idle at that moment); a leak grows by one thread (the COIN-M host's dispatcher) or
    # two connections (bravo's and charlie's pools) every round: 8 of them over the last 8 rounds.
    threads, fds = [c[0] for c in counts], [c[1] for c in counts]
    assert threads[-1] - threads[1] <= 2 and fds[-1] - fds[1] <= 2, counts
    # Two SIGHUPs at once (the kernel may merge them into one): reloaded, still serving.
    before = exp.logs().count('msg="config reloaded"')
    exp.proc.send_signal(signal.SIGHUP)
    exp.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: exp.logs().count('msg="config reloaded"') >= before + 1, timeout=15)
    assert exp.metrics() and exp.proc.poll() is None
