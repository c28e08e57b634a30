"""Issue 23: hostile reloads and key material in *_file keys, against the CLI as a process.

No key material in the one error line (start, log, `POST /-/reload`'s 400); concurrent
reloads coalesced; a reload cannot switch TLS on or off; a reload re-plans the HTTP
front's connection cap.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from test_config import PEM_BODY, PEM_TEXT, assert_no_key_material
from test_reload import self_signed, served_certificate

from conftest import (
    ACCOUNTS,
    ALL_SECRETS,
    ExporterProcess,
    assert_no_secrets,
    config_dict,
    free_port,
    run_cli,
    wait_until,
    write_config,
)
from exporter.config import parse_config
from exporter.engine import Engine
from exporter.httpserver import FD_RESERVE, RELOAD_WORKERS, serve
from exporter.reload import Reloader
from exporter.web import make_app
from exporter.webconfig import WebConfig

PRLIMIT = shutil.which("prlimit")

WRITTEN = [("${PEM}", {"PEM": PEM_TEXT}), ("/x/${SECRET}", {"SECRET": PEM_BODY}), (PEM_TEXT, {}), (PEM_BODY, {})]


def with_key_file(data: dict, written: str) -> dict:
    first = data["accounts"][0]
    data["accounts"][0] = {"alias": first["alias"], "api_key": first["api_key"], "private_key_file": written}
    return data


def test_no_key_material_at_start_in_the_log_or_in_the_reload_answer(sim, tmp_path: Path, run_exporter) -> None:
    env = {name: value for _, extra in WRITTEN for name, value in extra.items()}
    for written, _ in WRITTEN:  # at start: the one line on stderr, exit 2
        cfg = write_config(tmp_path / "bad.yaml", with_key_file(config_dict(sim.base_url, ACCOUNTS[:1]), written))
        proc = run_cli(f"--config.file={cfg}", "--config.check", env={**os.environ, **env})
        assert proc.returncode != 0 and "private_key_file: cannot read" in proc.stderr, proc.stderr
        assert_no_key_material(proc.stdout + proc.stderr)

    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    exp = run_exporter(f"--config.file={cfg}", "--web.enable-lifecycle", env=env)
    for written, _ in WRITTEN:
        write_config(cfg, with_key_file(config_dict(sim.base_url, ACCOUNTS[:1]), written))
        resp = requests.post(exp.url + "/-/reload", timeout=20)
        assert resp.status_code == 400 and "private_key_file: cannot read" in resp.text, resp.text
        assert_no_key_material(resp.text)
    logs = exp.logs()
    assert logs.count("config reload failed") == len(WRITTEN)
    assert_no_key_material(logs)
    assert_no_secrets(logs, ALL_SECRETS)


# ---- a reload cannot switch TLS on or off -----------------------------------------------------------
def test_a_reload_cannot_switch_tls_off_or_on(sim, tmp_path: Path, run_exporter) -> None:
    cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
    for path, data in zip((tmp_path / "server.crt", tmp_path / "server.key"), self_signed("only"), strict=True):
        path.write_bytes(data)
    tls = {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}
    users = {"basic_auth_users": {"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}}
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({**tls, **users}))
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}", "--web.enable-lifecycle",
                       scheme="https")
    web.write_text(yaml.safe_dump(users))  # TLS dropped: the same port would serve passwords in clear
    resp = requests.post(exp.url + "/-/reload", verify=False, auth=("prom", "pw"), timeout=10)
    line = (f"{web}: tls_server_config: is gone, and a reload cannot switch TLS off; the last good web config "
            "keeps running (restart the exporter to change it)")
    assert (resp.status_code, resp.text) == (400, line + "\n")
    assert served_certificate(exp.port) == "only"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{exp.port}/metrics", auth=("prom", "pw"), timeout=5)
    failed = [ln for ln in exp.logs().splitlines() if "config reload failed" in ln]
    assert len(failed) == 1 and "cannot switch TLS off" in failed[0]
    got = requests.get(exp.url + "/metrics", verify=False, auth=("prom", "pw"), timeout=10)
    assert got.status_code == 200 and "binance_futures_exporter_config_last_reload_successful 0.0" in got.text

    plain_web = tmp_path / "plain.yml"
    plain_web.write_text("{}\n")
    plain = run_exporter(f"--config.file={cfg}", f"--web.config.file={plain_web}", "--web.enable-lifecycle")
    plain_web.write_text(yaml.safe_dump(tls))
    resp = requests.post(plain.url + "/-/reload", timeout=10)
    assert resp.status_code == 400 and "is new, and a reload cannot switch TLS on" in resp.text
    assert plain.get("/-/healthy").status_code == 200  # still plain HTTP


# ---- a reload re-plans the HTTP front's connection cap -------------------------------------------------
def streaming_accounts(count: int) -> list[dict]:
    """Accounts with a user data stream on a closed port: each holds a stream socket in the plan."""
    return [{"alias": f"s{i}", "api_key": f"k{i}", "api_secret": f"s{i}", "base_url": "http://127.0.0.1:9",
             "user_stream": True, "stream_base_url": "ws://127.0.0.1:9/private"} for i in range(count)]


def planned_front(log: str) -> list[int]:
    return [int(m) for m in re.findall(r'msg="?open files"? .*?http_connections=(\d+)', log)]


@pytest.mark.skipif(PRLIMIT is None or not sys.platform.startswith("linux"), reason="needs prlimit on Linux")
def test_a_reload_re_plans_the_connection_cap_with_the_open_files_plan(sim, tmp_path: Path) -> None:
    hard = 2048
    start = config_dict(sim.base_url, ACCOUNTS[:1])
    cfg = write_config(tmp_path / "config.yaml", start)
    exp = ExporterProcess([f"--config.file={cfg}", "--web.enable-lifecycle"], free_port(), tmp_path / "exp.log")
    exp.cmd = [PRLIMIT, f"--nofile={hard}:{hard}", *exp.cmd]
    try:
        exp.start()
        before = planned_front(exp.logs())
        upstream = Engine(parse_config(start, str(cfg), {}))
        try:
            assert before == [hard - FD_RESERVE - upstream.upstream_sockets()]
        finally:
            upstream.close()

        grown = {**start, "accounts": [*start["accounts"], *streaming_accounts(300)]}
        write_config(cfg, grown)
        assert requests.post(exp.url + "/-/reload", timeout=30).status_code == 200
        engine = Engine(parse_config(grown, str(cfg), {}))  # what a start with this config plans
        try:
            expected = hard - FD_RESERVE - engine.upstream_sockets()
        finally:
            engine.close()
        assert expected < before[0] - 300
        assert planned_front(exp.logs()) == [*before, expected], exp.logs()[-2000:]

        write_config(cfg, start)  # and back: the cap grows again
        assert requests.post(exp.url + "/-/reload", timeout=30).status_code == 200
        after = planned_front(exp.logs())
        assert len(after) == 3 and after[2] > expected + 200  # (a dropped host's pool is kept a while)
        assert exp.get("/-/healthy").status_code == 200
    finally:
        exp.stop()


# ---- concurrent reloads coalesce, and scrapes never wait behind them -----------------------------------
class HeldReloads:
    """A Reloader on one account whose Engine.apply waits for `release`: a reload that runs long."""

    def __init__(self, sim, tmp_path: Path) -> None:
        self.cfg = write_config(tmp_path / "config.yaml", config_dict(sim.base_url, ACCOUNTS[:1]))
        self.engine = Engine(parse_config(config_dict(sim.base_url, ACCOUNTS[:1]), str(self.cfg), {}))
        self.reloader = Reloader(self.engine, WebConfig(), str(self.cfg), None)
        self.entered, self.release, self.runs = threading.Event(), threading.Event(), []
        apply = self.engine.apply

        def held_apply(config):
            self.runs.append(len(config.accounts))
            self.entered.set()
            assert self.release.wait(30)
            return apply(config)

        self.engine.apply = held_apply  # type: ignore[method-assign]


def test_reloads_asked_for_while_one_runs_merge_into_one_run_and_share_its_answer(sim, tmp_path: Path) -> None:
    held = HeldReloads(sim, tmp_path)
    cfg, engine, reloader, entered, release, runs = (held.cfg, held.engine, held.reloader, held.entered,
                                                     held.release, held.runs)
    answers: dict[int, str | None] = {}
    try:
        first = threading.Thread(target=lambda: answers.__setitem__(-1, reloader.reload("first")))
        first.start()
        assert entered.wait(10)
        bad = config_dict(sim.base_url, ACCOUNTS[:2])
        bad["accounts"][1]["timeout_seconds"] = "fast"
        write_config(cfg, bad)  # what the waiting requests' run will read
        waiting = [threading.Thread(target=lambda i=i: answers.__setitem__(i, reloader.reload("http")))
                   for i in range(20)]
        for t in waiting:
            t.start()
        wait_until(lambda: reloader._queued is not None and reloader._queued.joined == 20, timeout=10)
        release.set()
        for t in [first, *waiting]:
            t.join(20)
        assert runs == [1]  # the second run failed its check before applying anything
        assert answers[-1] is None
        line = f"{cfg}: accounts[1] (alias 'bravo'): timeout_seconds: must be a number, got 'fast'"
        assert [answers[i] for i in range(20)] == [line] * 20  # one run, one answer for all of them
        assert not reloader.status.successful
    finally:
        engine.close()


def test_scrapes_never_wait_behind_reloads(sim, tmp_path: Path) -> None:
    """100 POST /-/reload held inside a reload (more than the 64 request threads): /metrics still answers."""
    held = HeldReloads(sim, tmp_path)
    engine, reloader, release, runs = held.engine, held.reloader, held.release, held.runs
    server = serve(make_app(engine, reload=lambda: reloader.reload("http")), "127.0.0.1:0")
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with ThreadPoolExecutor(100) as pool:
            posts = [pool.submit(requests.post, url + "/-/reload", timeout=60) for _ in range(100)]
            wait_until(lambda: len(runs) == 1, timeout=10)
            for _ in range(3):  # while every reload request waits
                resp = requests.get(url + "/metrics", timeout=10)
                assert resp.status_code == 200 and "binance_futures_up" in resp.text
            assert not any(p.done() for p in posts)
            # The reload threads' requests (all but the one running) wait on one queued run.
            wait_until(lambda: reloader._queued is not None and reloader._queued.joined == RELOAD_WORKERS - 1,
                       timeout=10)
            release.set()
            assert [p.result().status_code for p in posts] == [200] * 100
        assert runs == [1]  # the runs after the first found every file as before: nothing to apply
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        engine.close()


def test_the_same_text_is_parsed_once_and_handed_out_as_a_copy() -> None:
    """A reload storm re-reads the same file: parsing (90 % of a reload) is done once per text."""
    from exporter import files

    text = "accounts:\n  - {alias: a, markets: [usdm]}\n"
    calls = []
    parse = files._parse_yaml
    files._parse_yaml = lambda t: calls.append(t) or parse(t)  # type: ignore[assignment]
    try:
        first = files.parse_yaml(text)
        first["accounts"][0]["markets"].append("coinm")  # what a caller does with its copy stays with it
        second = files.parse_yaml(text)
        assert second == {"accounts": [{"alias": "a", "markets": ["usdm"]}]}
        assert files.parse_yaml(text + "# changed\n") == second
        assert len(calls) == 2  # the first text once, the changed one once
    finally:
        files._parse_yaml = parse  # type: ignore[assignment]


def test_a_reload_whose_files_read_as_before_skips_the_work_and_a_rotated_secret_does_not(
        sim, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(ACCOUNTS[0].secret)
    secret.chmod(0o600)
    data = {"defaults": {"base_url": sim.base_url}, "accounts": [
        {"alias": "alpha", "api_key": ACCOUNTS[0].key, "api_secret_file": str(secret)}]}
    cfg = write_config(tmp_path / "config.yaml", data)
    engine = Engine(parse_config(data, str(cfg), {}))
    reloader = Reloader(engine, WebConfig(), str(cfg), None)
    applied = []
    apply = engine.apply
    engine.apply = lambda config: applied.append(config) or apply(config)  # type: ignore[method-assign]
    try:
        assert reloader.reload("a") is None and len(applied) == 1  # the first reload: files unknown yet
        assert reloader.reload("b") is None and len(applied) == 1  # every file as before: skipped
        secret.write_text(ACCOUNTS[1].secret)  # rotated: same config file, another secret
        assert reloader.reload("c") is None and len(applied) == 2
        assert engine.apply is not apply and applied[1].accounts[0].signer != applied[0].accounts[0].signer
        secret.unlink()  # gone: a full run, which fails, and the next run is a full one again
        assert "api_secret_file: cannot read" in (reloader.reload("d") or "")
        secret.write_text(ACCOUNTS[1].secret)
        assert reloader.reload("e") is None and len(applied) == 3
    finally:
        engine.close()
