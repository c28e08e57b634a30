"""Issue 23: hostile reloads and key material in *_file keys, against the CLI as a process.

No key material in the one error line (start, log, `POST /-/reload`'s 400); concurrent
reloads coalesced; a reload cannot switch TLS on or off; a reload re-plans the HTTP
front's connection cap.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests
from test_config import PEM_BODY, PEM_TEXT, assert_no_key_material

from conftest import ACCOUNTS, ALL_SECRETS, assert_no_secrets, config_dict, run_cli, write_config

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
