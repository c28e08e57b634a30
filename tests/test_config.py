"""Config loading: good files load; each bad one gives one clear line and never a secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exporter.config import ConfigError, load_config, parse_config, parse_config_text

REPO = Path(__file__).resolve().parent.parent
KEY = "k" * 64
SECRET = "S3cr3t-" + "x" * 57
ENV = {"MAIN_KEY": KEY, "MAIN_SECRET": SECRET}


def account(**kw: object) -> dict:
    return {"alias": "main", "api_key": "${MAIN_KEY}", "api_secret": "${MAIN_SECRET}", **kw}


def load(data: object, env: dict | None = None):
    return parse_config(data, "cfg.yaml", ENV if env is None else env)


def error_of(data: object, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(data, env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cfg.yaml: ")
    assert KEY not in message and SECRET not in message
    return message


def test_example_config_is_valid(tmp_path: Path) -> None:
    env = {"BINANCE_MAIN_API_KEY": KEY, "BINANCE_MAIN_API_SECRET": SECRET}
    raw = yaml.safe_load((REPO / "config.example.yaml").read_text())
    key_file, secret_file = tmp_path / "k", tmp_path / "s"
    key_file.write_text(KEY + "\n")
    secret_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    secret_file.chmod(0o600)
    raw["accounts"][1]["api_key_file"] = str(key_file)
    raw["accounts"][1]["api_secret_file"] = str(secret_file)
    cfg = parse_config(raw, "config.example.yaml", env)
    assert [a.alias for a in cfg.accounts] == ["main", "hedge"]
    main, hedge = cfg.accounts
    assert main.min_available_balance == {"USDT": 1000.0, "BNB": 2.0}  # merged with defaults
    assert hedge.min_available_balance == {"USDT": 1000.0}
    assert hedge.api_key.reveal() == KEY and main.api_key.reveal() == KEY
    assert main.api_version == "v3" and main.recv_window_ms == 5000 and main.timeout_seconds == 5
    assert cfg.warnings == ()


def test_defaults_and_overrides() -> None:
    cfg = load({"defaults": {"base_url": "https://demo-fapi.binance.com/", "api_version": "v2", "timeout_seconds": 2},
                "accounts": [account(), account(alias="b", timeout_seconds="7.5", recv_window_ms=10000)]})
    a, b = cfg.accounts
    assert a.base_url == "https://demo-fapi.binance.com" and a.api_version == "v2"
    assert a.timeout_seconds == 2 and b.timeout_seconds == 7.5 and b.recv_window_ms == 10000
    assert a.base_url_for("coinm") == "https://dapi.binance.com"


def test_repr_and_str_never_show_secrets() -> None:
    cfg = load({"accounts": [account()]})
    for text in (repr(cfg), str(cfg), repr(cfg.accounts[0]), str(cfg.accounts[0]),
                 repr(cfg.accounts[0].api_key), f"{cfg.accounts[0].api_key}", repr(cfg.accounts[0].signer)):
        assert KEY not in text and SECRET not in text


def test_dollar_escape_and_partial_expansion() -> None:
    cfg = load({"accounts": [account(api_secret="pre-${MAIN_SECRET}-$$x")]})
    assert cfg.accounts[0].signer.sign("a=1")  # usable
    from exporter.signing import hmac_sha256_hex

    assert cfg.accounts[0].signer.sign("a=1") == hmac_sha256_hex(f"pre-{SECRET}-$x", "a=1")


@pytest.mark.parametrize("data, expected", [
    (None, "the file is empty"),
    ([1], "top level must be a mapping"),
    ({"acounts": []}, "unknown key 'acounts' (did you mean 'accounts'?)"),
    ({"accounts": []}, "accounts: must be a non-empty list"),
    ({"accounts": [account(alias=None)]}, "accounts[0]: alias: is required"),
    ({"accounts": [{"api_key": "x", "api_secret": "y"}]}, "accounts[0]: alias: is required"),
    ({"accounts": [account(alias="has space")]}, "alias: must be 1-64 characters"),
    ({"accounts": [account(), account()]}, "accounts[1] (alias 'main'): alias: duplicate alias 'main' (also accounts[0])"),
    ({"accounts": [account(api_secrte="x")]}, "accounts[0] (alias 'main'): unknown key 'api_secrte' (did you mean 'api_secret'?)"),
    ({"accounts": [account(api_key="${NOPE}")]}, "accounts[0] (alias 'main'): api_key: environment variable NOPE is not set"),
    ({"accounts": [{"alias": "main", "api_secret": "x"}]}, "api_key: is required (or api_key_file)"),
    ({"accounts": [{"alias": "main", "api_key": "x"}]}, "api_secret: is required"),
    ({"accounts": [account(api_key="")]}, "api_key: is empty"),
    ({"accounts": [account(api_key="abc def")]}, "api_key: contains whitespace"),
    ({"accounts": [account(api_key_file="/x")]}, "api_key: set either api_key or api_key_file, not both"),
    ({"accounts": [account(api_secret_file="/nonexistent/secret")]}, "set either api_secret or api_secret_file"),
    ({"accounts": [account(base_url="fapi.binance.com")]}, "base_url: must be an http(s) URL"),
    ({"accounts": [account(base_url="ftp://x")]}, "base_url: must be an http(s) URL"),
    ({"accounts": [account(base_url="https://x/fapi")]}, "base_url: must be scheme and host only"),
    ({"accounts": [account(base_url="https://x:99999")]}, "base_url: has an invalid port"),
    ({"accounts": [account(api_version="v1")]}, "api_version: must be v3 or v2, got 'v1'"),
    ({"accounts": [account(recv_window_ms=60001)]}, "recv_window_ms: must be at least 1 and at most 60000, got 60001"),
    ({"accounts": [account(recv_window_ms=1.5)]}, "recv_window_ms: must be a whole number"),
    ({"accounts": [account(recv_window_ms=True)]}, "recv_window_ms: must be a number, got a boolean"),
    ({"accounts": [account(timeout_seconds="fast")]}, "timeout_seconds: must be a number, got 'fast'"),
    ({"accounts": [account(timeout_seconds=0)]}, "timeout_seconds: must be greater than 0"),
    ({"accounts": [account(timeout_seconds=float("nan"))]}, "timeout_seconds: must be a finite number"),
    ({"accounts": [account(min_available_balance=[1])]}, "min_available_balance: must be a mapping"),
    ({"accounts": [account(min_available_balance={"USDT": -1})]}, "min_available_balance.USDT: must be at least 0"),
    ({"accounts": [account(min_available_balance={"US DT": 1})]}, "min_available_balance: asset names"),
    ({"defaults": {"alias": "x"}, "accounts": [account()]}, "cfg.yaml: defaults: unknown key 'alias'"),
    ({"defaults": {"timeout_seconds": -1}, "accounts": [account()]}, "cfg.yaml: defaults: timeout_seconds:"),
    ({"max_concurrency": 0, "accounts": [account()]}, "cfg.yaml: max_concurrency: must be at least 1"),
    ({"skip_zero_balances": "yes", "accounts": [account()]}, "skip_zero_balances: must be true or false"),
    ({"accounts": [account(private_key_file="/k")]}, "set either api_secret(_file) or private_key_file, not both"),
    ({"accounts": [account(private_key_passphrase="x")]}, "private_key_passphrase: only applies with private_key_file"),
    ({"accounts": ["main"]}, "accounts[0]: must be a mapping, got str"),
])
def test_bad_config_messages(data: object, expected: str) -> None:
    assert expected in error_of(data)


def test_env_value_with_bad_characters_does_not_leak() -> None:
    message = error_of({"accounts": [account()]}, {"MAIN_KEY": KEY + "\n", "MAIN_SECRET": SECRET})
    assert "api_key: contains whitespace" in message


def test_secret_files(tmp_path: Path) -> None:
    key_file, secret_file = tmp_path / "key", tmp_path / "secret"
    key_file.write_text(KEY + "\r\n")
    secret_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    secret_file.chmod(0o644)
    cfg = load({"accounts": [{"alias": "a", "api_key_file": str(key_file), "api_secret_file": str(secret_file)}]})
    assert cfg.accounts[0].api_key.reveal() == KEY
    # A world-readable secret file works but is warned about, naming the file, not the content.
    assert len(cfg.warnings) == 1 and "api_secret_file" in cfg.warnings[0] and "0644" in cfg.warnings[0]
    assert SECRET not in cfg.warnings[0]


def test_unreadable_and_empty_secret_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    msg = error_of({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": str(missing)}]})
    assert msg == f"cfg.yaml: accounts[0] (alias 'a'): api_secret_file: cannot read {missing}: No such file or directory"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "api_secret_file: is empty" in error_of({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": str(empty)}]})
    assert "cannot read" in error_of({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": str(tmp_path)}]})


def test_private_key_account(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"hunter2-passphrase"))
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    ok = load({"accounts": [{"alias": "ed", "api_key": KEY, "private_key_file": str(path),
                             "private_key_passphrase": "${PASS}"}]}, {"PASS": "hunter2-passphrase"})
    assert ok.accounts[0].signer.kind == "ed25519"
    assert "hunter2" not in repr(ok)
    msg = error_of({"accounts": [{"alias": "ed", "api_key": KEY, "private_key_file": str(path)}]})
    assert "private_key_file: the key is encrypted but no passphrase was given" in msg
    msg = error_of({"accounts": [{"alias": "ed", "api_key": KEY, "private_key_file": str(path),
                                  "private_key_passphrase": "wrong-pass"}]})
    assert "private_key_file: not a readable PEM private key" in msg and "wrong-pass" not in msg


def test_yaml_syntax_error_names_position_not_content() -> None:
    text = f"accounts:\n  - alias: main\n    api_secret: {SECRET}\n   bad: [\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "cfg.yaml", {})
    message = str(info.value)
    assert message.startswith("cfg.yaml: YAML syntax error at line ") and SECRET not in message
    assert "\n" not in message


def test_duplicate_yaml_keys_are_rejected() -> None:
    text = "accounts:\n  - alias: main\n    api_key: a\n    api_key: b\n    api_secret: c\n"
    with pytest.raises(ConfigError, match="duplicate key 'api_key'"):
        parse_config_text(text, "cfg.yaml", {})


def test_missing_and_non_utf8_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file: No such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(bad)


def test_plain_http_to_a_remote_host_is_warned() -> None:
    cfg = load({"accounts": [account(base_url="http://fapi.binance.com")]})
    assert any("plain http" in w for w in cfg.warnings)
    assert load({"accounts": [account(base_url="http://127.0.0.1:8080")]}).warnings == ()


@pytest.mark.parametrize("content, expected", [
    ("accounts: [\n", "YAML syntax error"),
    ("accounts:\n  - alias: main\n    api_key: ${UNSET_FOR_TEST}\n    api_secret: x\n",
     "accounts[0] (alias 'main'): api_key: environment variable UNSET_FOR_TEST is not set"),
])
def test_cli_bad_config_exits_nonzero_with_one_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={path}", "--config.check"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: {path}: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_config_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"accounts": [account()]}))
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={path}", "--config.check"],
                          cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={"MAIN_KEY": KEY, "MAIN_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "OK, 1 account(s)" in proc.stdout
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) \
    | st.sampled_from(["${MAIN_KEY}", "${UNSET}", "v3", "v2", "https://x", "main", "$$"])
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["alias", "api_key", "api_secret", "base_url", "api_version", "recv_window_ms",
                     "timeout_seconds", "min_available_balance", "USDT", "x"]), c, max_size=4), max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["defaults", "accounts", "max_concurrency", "skip_zero_balances", "bogus"]),
                       _values, max_size=3))
def test_arbitrary_documents_give_config_or_config_error(data: dict) -> None:
    try:
        cfg = parse_config(data, "cfg.yaml", ENV)
    except ConfigError as exc:
        assert "\n" not in str(exc) and SECRET not in str(exc) and KEY not in str(exc)
        return
    assert cfg.accounts


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_gives_config_or_config_error(text: str) -> None:
    try:
        parse_config_text(text, "cfg.yaml", ENV)
    except ConfigError:
        pass
