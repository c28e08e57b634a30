"""deploy/systemd: the unit passes `systemd-analyze verify`, is hardened, and its config reads the credentials.

`systemd-analyze verify` loads the unit as systemd would and checks that
ExecStart's program exists, so the test verifies a copy whose ExecStart
points at this checkout's `binance-futures-exporter` (the venv's script)
instead of /opt/binance-futures-exporter. systemd-analyze reports a bad
directive on stderr and still exits 0, so stderr must be empty as well.
`systemd-analyze security --offline=true` scores the hardening.

The shipped config.yaml is then loaded by the exporter (`--config.check`) with
$CREDENTIALS_DIRECTORY laid out as systemd lays it out: one file per
LoadCredential= name, mode 0400.

Needs systemd-analyze (Debian: systemd). Without it the tests skip, except
under CI=true: then they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stack_helpers import REPO, require_tool

UNIT = REPO / "deploy" / "systemd" / "binance-futures-exporter.service"
DEFAULTS = REPO / "deploy" / "systemd" / "binance-futures-exporter.default"
CONFIG = REPO / "deploy" / "systemd" / "config.yaml"
INSTALLED_BINARY = "/opt/binance-futures-exporter/bin/binance-futures-exporter"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 1.4 when written; "OK" is below 3.0


def directives(text: str) -> dict[str, list[str]]:
    """Directive -> its values in order (continuation lines joined), for the [Service] section and the rest."""
    out: dict[str, list[str]] = {}
    logical, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith(("#", ";", "["))):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    for line in logical:
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def exporter_binary() -> Path:
    path = Path(sys.executable).parent / "binance-futures-exporter"
    assert path.is_file(), f"{path} missing: install the package (make venv)"
    return path


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit (or `text`) with ExecStart pointing at this checkout's exporter, under the unit's own name."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert INSTALLED_BINARY in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace(INSTALLED_BINARY, str(exporter_binary())), encoding="utf-8")
    return path


def verify(unit: Path) -> subprocess.CompletedProcess:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    return subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


@pytest.mark.parametrize("change", [
    ("ProtectSystem=strict", "ProtectSystem=bogus"),          # a bad value: stderr, exit 0
    ("DynamicUser=yes", "DynamicUser=yes\nProtectSystm=yes"),  # an unknown directive: stderr, exit 0
    ("ExecReload=/bin/kill", "ExecReload=/nonexistent/kill"),  # a missing program: exit 1
])
def test_verify_catches_mistakes(tmp_path: Path, change: tuple[str, str]) -> None:
    """The check above is not vacuous: each of these mistakes fails it."""
    text = UNIT.read_text(encoding="utf-8")
    assert change[0] in text
    result = verify(local_copy(tmp_path, text.replace(change[0], change[1], 1)))
    assert result.returncode != 0 or result.stderr.strip()


def test_unit_is_hardened() -> None:
    d = directives(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in d.items()}
    assert one["DynamicUser"] == "yes"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert d["SystemCallFilter"][0] == "@system-service"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "MALLOC_ARENA_MAX=2" in one["Environment"].split()
    assert one["ExecStart"].split()[0] == INSTALLED_BINARY


def test_flags_come_from_etc_default_like_node_exporter() -> None:
    """Debian's node_exporter packaging: EnvironmentFile=/etc/default/<name> with ARGS, Documentation=."""
    d = directives(UNIT.read_text(encoding="utf-8"))
    assert d["EnvironmentFile"] == ["-/etc/default/binance-futures-exporter"]  # optional: "-"
    assert d["ExecStart"][-1].split()[-1] == "$ARGS"  # unbraced: split into words
    assert all(url.startswith(("https://", "man:", "file:")) for url in d["Documentation"][0].split())
    # The shipped defaults file: ARGS and nothing else (no key ever goes there), empty by default.
    assignments = [ln for ln in DEFAULTS.read_text(encoding="utf-8").splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
    assert assignments == ['ARGS=""']


def test_args_from_etc_default_reach_the_exporter(tmp_path: Path) -> None:
    """What systemd does with ExecStart's $ARGS: each word of ARGS one argument, the last flag winning."""
    args = "--log.format=json --web.listen-address=127.0.0.1:9999"
    words = [w.replace("$ARGS", args) for w in directives(UNIT.read_text(encoding="utf-8"))["ExecStart"][-1].split()]
    argv = " ".join(words).split()[1:]
    from exporter.cli import build_parser

    parsed = build_parser().parse_args(argv)
    assert (parsed.log_format, parsed.listen_address) == ("json", "127.0.0.1:9999")
    assert parsed.config_file == "/etc/binance-futures-exporter/config.yaml"


def test_documented_drop_in_needs_and_has_the_execstart_reset(tmp_path: Path) -> None:
    """The header's drop-in example (as in docs/deploy.md) verifies; without its `ExecStart=` line it does not."""
    text = UNIT.read_text(encoding="utf-8")
    block = re.search(r"^#   \[Service\]\n((?:#   .+\n)+)", text, re.M)
    assert block, "the drop-in example is gone from the unit's header"
    drop_in = "[Service]\n" + "".join(line[4:] + "\n" for line in block.group(1).splitlines())
    assert drop_in.splitlines()[1] == "ExecStart="
    assert drop_in in (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    # A drop-in is read after the unit: a [Service] section appended to it stands in for one here.
    ok = verify(local_copy(tmp_path, text + "\n" + drop_in))
    assert ok.returncode == 0 and not ok.stderr.strip(), ok.stderr
    without_reset = drop_in.replace("ExecStart=\n", "", 1)
    bad = verify(local_copy(tmp_path, text + "\n" + without_reset))
    assert bad.returncode != 0 or bad.stderr.strip(), "a second ExecStart= without the reset line was accepted"


def test_header_install_steps_work_in_order(tmp_path: Path) -> None:
    """The header's commands, run as written (paths moved under a scratch root; venv, pip and systemctl left out)."""
    lines = [ln[4:] for ln in UNIT.read_text(encoding="utf-8").splitlines() if ln.startswith("#   ")]
    steps = lines[:lines.index(next(ln for ln in lines if ln.startswith("systemctl daemon-reload"))) + 1]
    root = tmp_path / "root"
    for d in ("etc/default", "etc/systemd/system", "opt"):
        (root / d).mkdir(parents=True)
    script = []
    for step in steps:
        if step.startswith(("python3 -m venv", "/opt/binance-futures-exporter/bin/pip", "systemctl")):
            continue
        script.append(re.sub(r"(?<![\w.])/(etc|opt)/", f"{root}/\\1/", step))
    assert len(script) >= 7, script
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KEY": "k" * 64, "SECRET": "s" * 64})
    assert proc.returncode == 0, proc.stderr
    etc = root / "etc"
    assert (etc / "binance-futures-exporter" / "config.yaml").read_text() == CONFIG.read_text()
    creds = etc / "binance-futures-exporter" / "credentials"
    assert oct(creds.stat().st_mode & 0o777) == "0o700"
    for name, value in (("main-api-key", "k" * 64), ("main-api-secret", "s" * 64)):
        assert (creds / name).read_text() == value and oct((creds / name).stat().st_mode & 0o777) == "0o600"
    assert (etc / "default" / "binance-futures-exporter").read_text() == DEFAULTS.read_text()
    assert (etc / "systemd" / "system" / UNIT.name).read_text() == UNIT.read_text()


def test_security_exposure_is_low(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def credential_names() -> list[str]:
    return [value.split(":", 1)[0] for value in directives(UNIT.read_text(encoding="utf-8"))["LoadCredential"]]


def test_config_names_exactly_the_units_credentials() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    referenced = [value.removeprefix("${CREDENTIALS_DIRECTORY}/")
                  for account in config["accounts"] for key, value in account.items() if key.endswith("_file")]
    assert sorted(referenced) == sorted(credential_names())


def test_config_loads_secrets_from_credentials_directory(tmp_path: Path) -> None:
    """As the unit runs it: $CREDENTIALS_DIRECTORY holds one 0400 file per credential; no secret is echoed."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    secrets = {}
    for name in credential_names():
        secrets[name] = f"{name.replace('-', '')}{'x' * 40}"
        (creds / name).write_text(secrets[name] + "\n", encoding="utf-8")
        (creds / name).chmod(0o400)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    result = subprocess.run([str(exporter_binary()), f"--config.file={CONFIG}", "--config.check"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "OK, 1 account(s)" in result.stdout
    assert "accessible by group or others" not in result.stderr
    for secret in secrets.values():
        assert secret not in result.stdout + result.stderr

    # Without the directory (the unit's LoadCredential= missing): one error line naming the key.
    del env["CREDENTIALS_DIRECTORY"]
    result = subprocess.run([str(exporter_binary()), f"--config.file={CONFIG}", "--config.check"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "api_key_file: environment variable CREDENTIALS_DIRECTORY is not set" in result.stderr
