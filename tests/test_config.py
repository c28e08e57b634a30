"""Config loading: good files load; each bad one gives one clear line and never a secret."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, one_error_line, run_cli
from exporter.config import ConfigError, load_config, parse_config, parse_config_text
from exporter.files import CONFIG_FILE_MAX, SECRET_FILE_MAX, YAML_MAX_DEPTH, YAML_MAX_NODES

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


def test_account_level_available_balance_threshold() -> None:
    """min_account_available_balance (USD, Multi-Assets pools): in defaults or per account, a plain number."""
    cfg = load({"defaults": {"min_account_available_balance": 5000},
                "accounts": [account(), account(alias="b", min_account_available_balance="2500.5")]})
    a, b = cfg.accounts
    assert a.min_account_available_balance == 5000 and b.min_account_available_balance == 2500.5
    assert load({"accounts": [account()]}).accounts[0].min_account_available_balance is None


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
    ({"accounts": [account(min_account_available_balance={"USD": 1})]},
     "min_account_available_balance: must be a number, got a mapping"),
    ({"accounts": [account(min_account_available_balance=-5)]},
     "min_account_available_balance: must be at least 0 and at most 1e+15, got -5"),
    ({"defaults": {"alias": "x"}, "accounts": [account()]}, "cfg.yaml: defaults: unknown key 'alias'"),
    ({"defaults": {"timeout_seconds": -1}, "accounts": [account()]}, "cfg.yaml: defaults: timeout_seconds:"),
    ({"max_concurrency": 0, "accounts": [account()]}, "cfg.yaml: max_concurrency: must be at least 1"),
    ({"skip_zero_balances": "yes", "accounts": [account()]}, "skip_zero_balances: must be true or false"),
    ({"accounts": [account(private_key_file="/k")]}, "set either api_secret(_file) or private_key_file, not both"),
    ({"accounts": [account(private_key_passphrase="x")]}, "private_key_passphrase: only applies with private_key_file"),
    ({"accounts": ["main"]}, "accounts[0]: must be a mapping, got str"),
    ({"accounts": [account(sub_accounts={"aliases": {"a@b.test": 123}})]}, "aliases must be 1-64 characters"),
    ({"accounts": [account(sub_accounts={"aliases": {"a@b.test": None}})]}, "aliases must be 1-64 characters of letters, digits and _ . : @ -, got nothing for"),
    ({"accounts": [account(sub_accounts={"aliases": {"a@b.test": ["x"]}})]}, "aliases must be 1-64 characters of letters, digits and _ . : @ -, got a list for"),
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
    proc = run_cli(f"--config.file={path}", "--config.check", timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: {path}: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_config_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"accounts": [account()]}))
    proc = run_cli(f"--config.file={path}", "--config.check", timeout=30,
                   env={"MAIN_KEY": KEY, "MAIN_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "OK, 1 account(s)" in proc.stdout
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr



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


# --- Files and YAML from outside: bounded, one line, never a secret (issue 9) ---



# Shaped like a real Binance secret: 64 random letters and digits.
RANDOM_SECRET = "".join(random.Random(9).choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=64))
DIGIT_SECRET = "80417725399046331527"  # a secret that happens to parse as a number


def run_check(config: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return run_cli(f"--config.file={config}", "--config.check", timeout=timeout,
                   env={"PATH": "/usr/bin:/bin", "MAIN_KEY": KEY, "MAIN_SECRET": SECRET})


SPECIAL_FILES = ["fifo", "/dev/zero", "/dev/urandom", "directory"]


def _special(name: str, fifo: Path) -> Path:
    return {"fifo": fifo, "directory": fifo.parent}.get(name, Path(name))


@pytest.mark.parametrize("special", SPECIAL_FILES)
@pytest.mark.parametrize("key", ["api_key_file", "api_secret_file", "private_key_file", "private_key_passphrase_file"])
def test_secret_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, fifo: Path, key: str,
                                                                   special: str) -> None:
    target = _special(special, fifo)
    acc = {"alias": "main", "api_key": "${MAIN_KEY}", key: str(target)}
    if key == "api_key_file":
        acc = {"alias": "main", key: str(target), "api_secret": "${MAIN_SECRET}"}
    elif key == "private_key_passphrase_file":
        pem = tmp_path / "key.pem"
        pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        acc["private_key_file"] = str(pem)
    config = write_yaml(tmp_path / "c.yaml", {"accounts": [acc]})
    started = time.monotonic()
    line = one_error_line(run_check(config), config)
    assert time.monotonic() - started < 10
    assert f"accounts[0] (alias 'main'): {key}: cannot read {target}: not a regular file" in line
    assert KEY not in line and SECRET not in line


@pytest.mark.parametrize("special", SPECIAL_FILES)
def test_config_file_that_is_not_a_regular_file_is_refused_at_once(fifo: Path, special: str) -> None:
    target = _special(special, fifo)
    line = one_error_line(run_check(target), target)
    assert "cannot read config file: not a regular file (a " in line


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_oversized_files_are_refused_by_size(tmp_path: Path) -> None:
    big_secret = tmp_path / "secret"
    big_secret.write_text("s" * (SECRET_FILE_MAX + 1))
    msg = error_of({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": str(big_secret)}]})
    assert msg.endswith(f"api_secret_file: cannot read {big_secret}: larger than the 16 KiB limit for a secret file")
    ok = tmp_path / "ok"
    ok.write_text("s" * SECRET_FILE_MAX)
    assert load({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": str(ok)}]}).accounts
    sparse = tmp_path / "huge.yaml"
    with sparse.open("wb") as f:
        f.truncate(CONFIG_FILE_MAX + 1)  # sparse: costs no disk, and would cost a read of 4 MiB of NULs
    with pytest.raises(ConfigError, match=r"huge.yaml: cannot read config file: larger than the 4 MiB limit"):
        load_config(sparse)


def _laughs(levels: int, width: int) -> list:
    """`width ** levels` values, held in `levels * width` references (YAML aliases build the same)."""
    value: list = ["lol"] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


@pytest.mark.parametrize("key", ["alias", "api_version", "base_url", "timeout_seconds", "api_key", "api_secret_file"])
def test_huge_shared_value_gives_a_short_message(key: str) -> None:
    started = time.monotonic()
    message = error_of({"accounts": [account(**{key: _laughs(10, 4)})]})  # a million values if walked
    assert time.monotonic() - started < 2
    assert len(message) < 300, message[:300]


def test_billion_laughs_yaml_is_refused_in_one_line(tmp_path: Path) -> None:
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    for key in ("alias", "api_version"):
        path = tmp_path / f"{key}.yaml"
        path.write_text("junk:\n" + "".join(f"  {line}\n" for line in lines)
                        + f"accounts:\n  - alias: main\n    api_key: k\n    api_secret: s\n    {key}: *a9\n")
        line = one_error_line(run_check(path), path)
        assert f"YAML error at line 7, column 17: more than {YAML_MAX_NODES} values" in line


def test_merge_key_bomb_is_refused() -> None:
    text = "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 40))
    with pytest.raises(ConfigError, match="more than .* values"):
        parse_config_text(text, "cfg.yaml", ENV)


def test_merge_keys_and_modest_aliases_work() -> None:
    text = ("defaults: &d {timeout_seconds: 3}\n"
            "common: &c {api_key: '${MAIN_KEY}', api_secret: '${MAIN_SECRET}'}\n")
    with pytest.raises(ConfigError, match="unknown key 'common'"):
        parse_config_text(text + "accounts: [{alias: a, <<: *c}]\n", "cfg.yaml", ENV)
    cfg = parse_config_text("defaults: {timeout_seconds: 3}\naccounts:\n"
                            "  - &base {alias: a, api_key: '${MAIN_KEY}', api_secret: '${MAIN_SECRET}'}\n"
                            "  - {<<: *base, alias: b, timeout_seconds: 7}\n", "cfg.yaml", ENV)
    assert [(a.alias, a.timeout_seconds) for a in cfg.accounts] == [("a", 3.0), ("b", 7.0)]


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="an alias refers to the list or mapping that contains it"):
        parse_config_text("accounts: &a [*a]\n", "cfg.yaml", ENV)


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("accounts: " + "[" * 100_000 + "]" * 100_000 + "\n")
    line = one_error_line(run_check(path), path)
    assert line == f"error: {path}: YAML error at line 1, column {11 + YAML_MAX_DEPTH - 1}: nested deeper than 64 levels"
    block = "".join("  " * i + f"k{i}:\n" for i in range(YAML_MAX_DEPTH + 5))
    with pytest.raises(ConfigError, match="nested deeper than"):
        parse_config_text(block, "cfg.yaml", ENV)


@pytest.mark.parametrize("text, expected", [
    ("accounts: [{alias: a, timeout_seconds: " + "1" * 5000 + "}]\n", "YAML error at line 1, column 40: cannot convert this int"),
    ("accounts: [{alias: a, timeout_seconds: 2024-13-45}]\n", "cannot convert this timestamp (ValueError)"),
])
def test_values_that_do_not_convert_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "cfg.yaml", ENV)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("url", [
    f"http://user:{SECRET}@127.0.0.1:8080", f"https://{SECRET}@fapi.binance.com", "https://u:p@fapi.binance.com",
    "https://user@fapi.binance.com", "${URL_WITH_CREDENTIALS}",
])
def test_credentials_in_base_url_are_refused_without_echo(url: str) -> None:
    env = dict(ENV, URL_WITH_CREDENTIALS=f"https://me:{RANDOM_SECRET}@fapi.binance.com")
    message = error_of({"accounts": [account(base_url=url)]}, env)
    assert "base_url: must not contain credentials (user:password@host)" in message
    assert RANDOM_SECRET not in message and ":p@" not in message and "user@" not in message


SECRETS = (SECRET, KEY, RANDOM_SECRET, DIGIT_SECRET)


def _leak_cases(secret: str) -> list[tuple[str, object, dict]]:
    env = dict(ENV, LEAK=secret)
    cases: list[tuple[str, object, dict]] = []
    for key in ("recv_window_ms", "timeout_seconds", "cache_seconds"):
        cases.append((f"{key} direct", {"accounts": [account(**{key: secret})]}, env))
        cases.append((f"{key} env", {"accounts": [account(**{key: "${LEAK}"})]}, env))
        cases.append((f"{key} env+text", {"accounts": [account(**{key: "1${LEAK}"})]}, env))
        cases.append((f"defaults.{key}", {"defaults": {key: "${LEAK}"}, "accounts": [account()]}, env))
    for key in ("max_concurrency", "weight_limit", "scrape_interval_seconds", "weight_budget_share"):
        cases.append((key, {key: "${LEAK}", "accounts": [account()]}, env))
        cases.append((key + " direct", {key: secret, "accounts": [account()]}, env))
    cases += [
        ("threshold", {"accounts": [account(min_available_balance={"USDT": "${LEAK}"})]}, env),
        ("threshold direct", {"accounts": [account(min_available_balance={"USDT": secret})]}, env),
        ("asset name", {"accounts": [account(min_available_balance={secret + "!": 1})]}, env),
        ("base_url direct", {"accounts": [account(base_url=secret)]}, env),
        ("base_url env", {"accounts": [account(base_url="${LEAK}")]}, env),
        ("base_url path", {"accounts": [account(base_url=f"https://fapi.binance.com/{secret}")]}, env),
        ("base_url port", {"accounts": [account(base_url=f"https://fapi.binance.com:{secret}")]}, env),
        ("base_url query", {"accounts": [account(base_url=f"https://fapi.binance.com?k={secret}")]}, env),
        ("api_version direct", {"accounts": [account(api_version=secret)]}, env),
        ("api_version env", {"accounts": [account(api_version="${LEAK}")]}, env),
        ("alias", {"accounts": [account(alias=secret + " x")]}, env),
        ("key in account", {"accounts": [account(**{secret: 1})]}, env),
        ("key in defaults", {"defaults": {secret: 1}, "accounts": [account()]}, env),
        ("key at top", {secret: 1, "accounts": [account()]}, env),
        ("api_secret_file direct", {"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": secret}]}, env),
        ("api_secret_file env", {"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": "${LEAK}"}]}, env),
        ("api_key_file env", {"accounts": [{"alias": "a", "api_key_file": "${LEAK}", "api_secret": "s"}]}, env),
        ("private_key_file env", {"accounts": [{"alias": "a", "api_key": "k", "private_key_file": "${LEAK}"}]}, env),
        ("passphrase_file env", {"accounts": [{"alias": "a", "api_key": "k", "private_key_file": "/nonexistent.pem",
                                               "private_key_passphrase_file": "${LEAK}"}]}, env),
        ("api_key whitespace", {"accounts": [account(api_key="${LEAK} ")]}, env),
        ("skip_zero_balances", {"skip_zero_balances": "${LEAK}", "accounts": [account()]}, env),
    ]
    if secret.isidentifier():
        cases.append(("env var name", {"accounts": [account(api_secret="${" + secret + "}")]}, env))
    return cases


@pytest.mark.parametrize("secret", SECRETS, ids=["secret", "key", "random", "digits"])
def test_no_error_message_quotes_a_secret(secret: str) -> None:
    failures = []
    for name, data, env in _leak_cases(secret):
        try:
            parse_config(data, "cfg.yaml", env)
        except ConfigError as exc:
            text = str(exc)
            if secret[:8] in text or "\n" in text:
                failures.append(f"{name}: {text}")
            continue
        failures.append(f"{name}: accepted")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("secret", [SECRET, RANDOM_SECRET], ids=["secret", "random"])
@pytest.mark.parametrize("template", [
    "accounts: [{alias: a, api_key: k, api_secret: s, {s}: 1, {s}: 2}]",  # duplicate key
    "accounts: [{alias: a, api_key: k, api_secret: !{s} x}]",               # unknown tag
    "accounts: [{alias: a, api_key: k, api_secret: *{s}}]",                 # undefined alias
    "x: &{s} 1\ny: &{s} 2\naccounts: []",                                   # duplicate anchor
    "accounts: [{alias: a, api_key: k, api_secret: \"{s}\\q\"}]",           # bad escape after the secret
    "accounts:\n  - alias: a\n    api_secret: {s}\n   bad: [\n",            # syntax error near the secret
])
def test_yaml_errors_never_quote_a_secret(secret: str, template: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(template.replace("{s}", secret), "cfg.yaml", ENV)
    message = str(info.value)
    assert message.startswith("cfg.yaml: YAML") and "\n" not in message and len(message) < 300
    assert secret not in message and secret[:12] not in message


@pytest.mark.parametrize("data, expected", [
    ({"accounts": [account(timeout_seconds="fast")]}, "timeout_seconds: must be a number, got 'fast'"),
    ({"accounts": [account(timeout_seconds="${MAIN_SECRET}")]},
     "timeout_seconds: must be a number, got the value from the environment (not shown)"),
    ({"accounts": [account(recv_window_ms="${DIGITS}")]}, "recv_window_ms: must be at least 1 and at most 60000"),
    ({"accounts": [account(recv_window_ms=60001)]}, "must be at least 1 and at most 60000, got 60001"),
    ({"accounts": [account(api_secrte="x")]}, "unknown key 'api_secrte' (did you mean 'api_secret'?)"),
    ({"accounts": [account(apiSecret="x")]}, "unknown key 'apiSecret' (did you mean 'api_secret'?)"),
    ({"accounts": [account(color="x")]}, "unknown key 'color'"),
    ({"accounts": [account(**{RANDOM_SECRET: "x"})]}, "unknown key [64 characters, not shown]"),
    ({"accounts": [account(api_version="v1")]}, "api_version: must be v3 or v2, got 'v1'"),
    ({"accounts": [account(api_secret="${" + "A" * 60 + "}")]}, "environment variable [60 characters, not shown] is not set"),
    ({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": RANDOM_SECRET}]},
     "api_secret_file: cannot read [64 characters, not shown] (no / or . in it: is this the value rather than a file name?)"),
    ({"accounts": [{"alias": "a", "api_key": "k", "api_secret_file": "missing-secret"}]},
     "api_secret_file: cannot read missing-secret: No such file or directory"),
    ({"accounts": [account(alias="main\n")]}, "accounts[0]: alias: must be 1-64 characters"),
])
def test_messages_stay_useful_without_quoting_secrets(data: object, expected: str) -> None:
    message = error_of(data, dict(ENV, DIGITS=DIGIT_SECRET))
    assert expected in message
    assert RANDOM_SECRET not in message and DIGIT_SECRET not in message


# ---- issue 18: secrets that can never sign, unclosed ${, kernel files -----------------------------
def secret_file(tmp_path: Path, content: bytes, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    return path


UNSIGNABLE = [  # (the secret as stored, what the one line must say)
    ("\ufeff" + SECRET, "starts with a UTF-8 byte order mark"),
    (SECRET + " ", "has leading or trailing blanks"),
    (" " + SECRET, "has leading or trailing blanks"),
    (SECRET + "\t", "has leading or trailing blanks"),
    (SECRET[:20] + "\x01" + SECRET[20:], "contains control characters"),
    (SECRET[:20] + "\x7f" + SECRET[20:], "contains control characters"),
    (SECRET[:20] + "\u00e9" + SECRET[20:], "contains non-ASCII characters"),
    (SECRET[:20] + "\u2013" + SECRET[20:], "contains non-ASCII characters"),
]


@pytest.mark.parametrize("stored, expected", UNSIGNABLE)
def test_an_hmac_secret_that_can_never_sign_is_refused(tmp_path: Path, stored: str, expected: str) -> None:
    """In a file, inline, or through ${VAR}: one line naming the key, never the value."""
    path = secret_file(tmp_path, stored.encode("utf-8") + b"\n")
    bare = stored.strip("\ufeff \t")
    for acc, key in ((account(api_secret=None, api_secret_file=str(path)), "api_secret_file"),
                     (account(api_secret=stored), "api_secret"),
                     (account(api_secret="${STORED}"), "api_secret")):
        acc = {k: v for k, v in acc.items() if v is not None}
        message = error_of({"accounts": [acc]}, {**ENV, "STORED": stored})
        assert f"accounts[0] (alias 'main'): {key}: " in message and expected in message, message
        assert "can never sign" in message
        assert stored not in message and bare[:20] not in message and bare[-20:] not in message


def test_an_api_key_file_with_a_bom_says_so(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"\xef\xbb\xbf" + KEY.encode() + b"\n", "key")
    message = error_of({"accounts": [{"alias": "main", "api_key_file": str(path), "api_secret": "${MAIN_SECRET}"}]})
    assert "api_key_file: the file's content starts with a UTF-8 byte order mark" in message


def test_blanks_and_a_newline_at_the_end_of_a_secret_file_are_still_fine(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET.encode() + b"\r\n")
    cfg = load({"accounts": [{"alias": "main", "api_key": "${MAIN_KEY}", "api_secret_file": str(path)}]})
    from exporter.signing import hmac_sha256_hex

    assert cfg.accounts[0].signer.sign("a=1") == hmac_sha256_hex(SECRET, "a=1")


@pytest.mark.parametrize("raw", ["${MAIN_SECRET", "pre-${MAIN_SECRET", "${", "${1ABC}", "${MAIN SECRET}",
                                 "x${}"])
@pytest.mark.parametrize("key", ["api_secret", "api_key", "base_url", "timeout_seconds", "api_version"])
def test_an_unclosed_or_invalid_dollar_brace_is_refused_not_used_literally(key: str, raw: str) -> None:
    message = error_of({"accounts": [account(**{key: raw})]})
    assert f"accounts[0] (alias 'main'): {key}: has a '${{' that is not closed" in message, message
    assert (raw == "${" or raw not in message) and "MAIN_SECRET" not in message


def test_a_doubled_dollar_still_writes_a_literal_dollar_brace() -> None:
    cfg = load({"accounts": [account(api_secret="pre$${MAIN_SECRET")]})
    from exporter.signing import hmac_sha256_hex

    assert cfg.accounts[0].signer.sign("a=1") == hmac_sha256_hex("pre${MAIN_SECRET", "a=1")


def _kernel_targets(tmp_path: Path) -> list[Path]:
    link = tmp_path / "innocent-looking"
    link.symlink_to("/proc/self/environ")
    targets = [Path("/proc/self/environ"), Path("/proc/version"), link]
    targets += [p for p in (Path("/sys/kernel/mm/transparent_hugepage/enabled"), Path("/sys/devices/system/cpu/online"))
                if p.exists()][:1]
    return targets


@pytest.mark.parametrize("key", ["api_key_file", "api_secret_file", "private_key_file", "private_key_passphrase_file"])
def test_secret_files_under_proc_and_sys_are_refused(tmp_path: Path, key: str) -> None:
    for target in _kernel_targets(tmp_path):
        acc = {"alias": "main", "api_key": "${MAIN_KEY}", "api_secret": "${MAIN_SECRET}", key: str(target)}
        acc.pop({"api_key_file": "api_key", "api_secret_file": "api_secret"}.get(key, "-"), None)
        if key.startswith("private_key"):
            acc.pop("api_secret")
            if key == "private_key_passphrase_file":
                acc["private_key_file"] = str(secret_file(tmp_path, ed25519.Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()), "key.pem"))
        message = error_of({"accounts": [acc]})
        assert f"{key}: cannot read {target}: a file of /proc or /sys" in message, message


@pytest.mark.parametrize("case", ["bom", "trailing_blank", "unclosed", "proc_environ"])
def test_config_check_refuses_what_can_never_sign_in_one_line_without_the_value(tmp_path: Path, case: str) -> None:
    marker = "Zq7" + "v" * 61  # the secret: in the file, and in the environment /proc/self/environ would give
    acc: dict = {"alias": "main", "api_key": KEY}
    if case == "bom":
        acc["api_secret_file"] = str(secret_file(tmp_path, b"\xef\xbb\xbf" + marker.encode() + b"\n"))
    elif case == "trailing_blank":
        acc["api_secret_file"] = str(secret_file(tmp_path, marker.encode() + b" \n"))
    elif case == "unclosed":
        acc["api_secret"] = marker + "${MARKER"
    else:
        acc["api_secret_file"] = "/proc/self/environ"
    config = write_yaml(tmp_path / "c.yaml", {"accounts": [acc]})
    proc = run_cli(f"--config.file={config}", "--config.check", timeout=30,
                   env={"PATH": "/usr/bin:/bin", "MARKER": marker})
    line = one_error_line(proc, config)
    key = "api_secret" if case == "unclosed" else "api_secret_file"
    assert f"accounts[0] (alias 'main'): {key}: " in line
    assert marker not in proc.stdout + proc.stderr and marker[:16] not in proc.stderr


# ---- issue 23: no key material in an error line, whatever a *_file key holds -----------------------
def _pem_with_a_slash() -> bytes:
    """An Ed25519 PEM whose base64 holds a `/` (about 6 in 10 do): it passes for a path."""
    while True:
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        if b"/" in pem.splitlines()[1]:
            return pem


PEM_TEXT = _pem_with_a_slash().decode("ascii")
PEM_BODY = PEM_TEXT.splitlines()[1]
KEY_MATERIAL = (PEM_TEXT, PEM_BODY, RANDOM_SECRET)


def assert_no_key_material(text: str) -> None:
    for material in KEY_MATERIAL:
        body = "".join(line for line in material.splitlines() if not line.startswith("-----"))
        pieces = [body[i:i + 12] for i in range(0, len(body) - 11)]
        assert not [p for p in pieces if p in text], text


def _file_key_cases(tmp_path: Path) -> list[tuple[str, dict]]:
    """(key, account) for every *_file key of an account, the key's value left as VALUE."""
    pem = tmp_path / "key.pem"
    pem.write_text(PEM_TEXT)
    pem.chmod(0o600)
    return [
        ("api_key_file", {"alias": "main", "api_key_file": "VALUE", "api_secret": "${MAIN_SECRET}"}),
        ("api_secret_file", {"alias": "main", "api_key": "${MAIN_KEY}", "api_secret_file": "VALUE"}),
        ("private_key_file", {"alias": "main", "api_key": "${MAIN_KEY}", "private_key_file": "VALUE"}),
        ("private_key_passphrase_file", {"alias": "main", "api_key": "${MAIN_KEY}", "private_key_file": str(pem),
                                         "private_key_passphrase_file": "VALUE"}),
    ]


WRITTEN = [  # (the value as written in the file, its environment, what the line names instead)
    ("${PEM}", {"PEM": PEM_TEXT}, "the path from ${PEM} (not shown)"),
    ("/x/${SECRET}", {"SECRET": PEM_BODY}, "/x/${SECRET} (the path from ${SECRET} is not shown)"),
    ("/x/${SECRET}", {"SECRET": RANDOM_SECRET}, "/x/${SECRET} (the path from ${SECRET} is not shown)"),
    ("${DIR}/${SECRET}", {"DIR": "/run", "SECRET": PEM_BODY}, "the path from ${DIR}, ${SECRET} is not shown"),
    (PEM_TEXT, {}, "looks like key material"),
    (" ".join(PEM_TEXT.split()), {}, "looks like key material"),  # folded onto one line
    (PEM_BODY, {}, "looks like key material"),
    ("/etc/keys/" + PEM_BODY, {}, "looks like key material"),
    (RANDOM_SECRET, {}, "not shown"),
]


@pytest.mark.parametrize("written, env, named", WRITTEN, ids=[f"form{i}" for i in range(len(WRITTEN))])
def test_a_file_key_holding_key_material_is_named_never_quoted(tmp_path: Path, written: str, env: dict,
                                                               named: str) -> None:
    for key, acc in _file_key_cases(tmp_path):
        acc = {**acc, key: written}
        message = error_of({"accounts": [acc]}, {**ENV, **env})
        assert f"accounts[0] (alias 'main'): {key}: cannot read " in message and named in message, message
        assert_no_key_material(message)


def test_a_path_from_the_environment_that_works_is_still_not_shown_in_a_warning(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "secret").chmod(0o644)
    config = load({"accounts": [{"alias": "main", "api_key": "${MAIN_KEY}", "api_secret_file": "${DIR}/secret"}]},
                  {**ENV, "DIR": str(tmp_path)})
    assert config.warnings == ("cfg.yaml: accounts[0] (alias 'main'): api_secret_file: ${DIR}/secret (the path "
                               "from ${DIR} is not shown) is accessible by group or others (mode 0644); chmod 600 it",)


@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
@pytest.mark.parametrize("written", [PEM_TEXT, PEM_BODY, "/etc/ssl/" + PEM_BODY], ids=["pem", "body", "path"])
def test_a_web_config_file_key_holding_key_material_is_never_quoted(tmp_path: Path, key: str, written: str) -> None:
    from exporter.webconfig import load_web_config

    tls = {"cert_file": "missing.crt", "key_file": "missing.key", key: written}
    if key == "client_ca_file":
        tls["client_auth_type"] = "RequireAndVerifyClientCert"
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": tls}))
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    assert "looks like key material" in str(info.value) or key != "cert_file" and "missing.crt" in str(info.value)
    assert_no_key_material(str(info.value))
