"""Config keys are declared once, on their dataclass fields: the key sets, the checks and the reference come from there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.config import (
    ACCOUNT_KEYS,
    SHARED_KEYS,
    SUB_ACCOUNT_KEYS,
    TOP_KEYS,
    AccountConfig,
    Config,
    ConfigError,
    SubAccounts,
    parse_config,
)
from exporter.configkeys import checked, declared

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = {"alias": "a", "api_key": "k", "api_secret": "s"}


def test_the_key_reference_in_the_docs_is_generated_from_the_declaration() -> None:
    """`make docs` has been run since a key's declaration last changed."""
    run = subprocess.run([sys.executable, str(REPO / "docs" / "generate_docs.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in TOP_KEYS + ACCOUNT_KEYS + SUB_ACCOUNT_KEYS:
        assert f"| `{name}` |" in page


def test_the_key_names_are_the_contract() -> None:
    """Public names: add, never rename; a key declared under another name would break every config using it."""
    assert set(TOP_KEYS) >= {
        "defaults", "accounts", "max_concurrency", "weight_limit", "coinm_weight_limit", "pm_weight_limit",
        "sapi_weight_limit", "scrape_interval_seconds", "weight_budget_share", "skip_zero_balances",
        "stream_connections_per_5m", "stream_keys_per_connection"}
    assert set(SHARED_KEYS) >= {
        "base_url", "api_version", "recv_window_ms", "timeout_seconds", "cache_seconds", "max_data_age_seconds",
        "min_available_balance", "min_account_available_balance", "markets", "endpoint", "positions",
        "coinm_base_url", "pm_base_url", "sapi_base_url", "max_margin_ratio", "min_liquidation_distance",
        "min_uni_mmr", "user_stream", "stream_base_url", "coinm_stream_base_url", "pm_stream_base_url"}
    assert set(ACCOUNT_KEYS) >= set(SHARED_KEYS) | {
        "alias", "api_key", "api_key_file", "api_secret", "api_secret_file", "private_key_file",
        "private_key_passphrase", "private_key_passphrase_file", "sub_accounts"}
    assert set(SUB_ACCOUNT_KEYS) >= {"include", "exclude", "aliases", "markets", "discovery_interval_seconds"}
    for cls in (Config, AccountConfig, SubAccounts):
        names = [d.name for d in declared(cls)]
        assert len(names) == len(set(names)), f"{cls.__name__} declares a key twice"


def _yaml_form(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value


def _place(cls: type, name: str, value: Any) -> tuple[dict[str, Any], Any]:
    """A config setting `name` where its class reads it, and a getter of the parsed value."""
    if cls is Config:
        return {name: value, "accounts": [ACCOUNT]}, lambda c: getattr(c, name)
    if cls is SubAccounts:
        return ({"accounts": [{**ACCOUNT, "sub_accounts": {name: value}}]},
                lambda c: getattr(c.accounts[0].sub_accounts, name))
    return {"accounts": [{**ACCOUNT, name: value}]}, lambda c: getattr(c.accounts[0], name)


@pytest.mark.parametrize("cls", [Config, AccountConfig, SubAccounts])
def test_every_checked_key_reads_back_its_default(cls: type) -> None:
    """The declared rule is the one that runs: each key set to its own default parses to that default."""
    seen = 0
    for d in checked(cls):
        default = d.default
        if default is None or (isinstance(default, (dict, tuple)) and not default and d.name != "exclude"):
            continue  # "none" is not a value a file can give
        if d.name == "exclude":
            default = ("nobody@example.com",)  # an empty list is refused: it would mean nothing
        data, read = _place(cls, d.name, _yaml_form(default))
        assert read(parse_config(data, "c.yaml", {})) == default, d.name
        seen += 1
    assert seen >= 3


@pytest.mark.parametrize("cls", [Config, AccountConfig, SubAccounts])
def test_every_checked_key_refuses_a_value_of_the_wrong_kind_in_one_line(cls: type) -> None:
    for d in checked(cls):
        data, _ = _place(cls, d.name, [[1]])
        with pytest.raises(ConfigError) as err:
            parse_config(data, "c.yaml", {})
        message = str(err.value)
        assert "\n" not in message and f"{d.name}: must" in message and message.startswith("c.yaml: "), message
