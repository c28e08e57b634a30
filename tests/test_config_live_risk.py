"""Config keys of live risk (issue 24): live_risk per account or in defaults, the market-stream bases."""

from __future__ import annotations

import pytest

from exporter.config import (
    DEFAULT_COINM_MARKET_STREAM_BASE_URL,
    DEFAULT_MARKET_STREAM_BASE_URL,
    ConfigError,
    parse_config,
)

KEY = "k" * 64
SECRET = "S3cr3t-" + "y" * 57
ENV = {"MAIN_KEY": KEY, "MAIN_SECRET": SECRET}


def account(alias: str = "main", **kw: object) -> dict:
    return {"alias": alias, "api_key": "${MAIN_KEY}", "api_secret": "${MAIN_SECRET}", **kw}


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml", ENV)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cfg.yaml: ")
    assert KEY not in message and SECRET not in message
    return message


def test_defaults() -> None:
    config = parse_config({"accounts": [account(), account("pos", positions=True)]}, "cfg.yaml", ENV)
    assert config.market_stream_base_url == DEFAULT_MARKET_STREAM_BASE_URL == "wss://fstream.binance.com/market"
    assert config.coinm_market_stream_base_url == DEFAULT_COINM_MARKET_STREAM_BASE_URL == "wss://dstream.binance.com"
    plain, with_positions = config.accounts
    assert plain.live_risk and not plain.live_risk_on  # no positions read: nothing to recompute
    assert with_positions.live_risk_on


def test_live_risk_in_defaults_and_per_account() -> None:
    config = parse_config({"defaults": {"live_risk": False, "positions": True},
                           "accounts": [account(), account("on", live_risk=True)]}, "cfg.yaml", ENV)
    off, on = config.accounts
    assert not off.live_risk_on and on.live_risk_on
    assert "live_risk: must be true or false" in error_of({"accounts": [account(live_risk="yes")]})


def test_market_stream_bases() -> None:
    config = parse_config({"market_stream_base_url": "ws://127.0.0.1:9000/market/",
                           "coinm_market_stream_base_url": "wss://dstream.example:443",
                           "accounts": [account()]}, "cfg.yaml", ENV)
    assert config.market_stream_base_url == "ws://127.0.0.1:9000/market"  # ws:// for tests, no warning
    assert config.coinm_market_stream_base_url == "wss://dstream.example:443"
    assert config.warnings == ()


@pytest.mark.parametrize(("url", "expected"), [
    (f"wss://u:{SECRET}@fstream.binance.com/market", "must not contain credentials"),
    ("https://fstream.binance.com/market", "must be a WebSocket URL like wss://fstream.binance.com/market"),
    ("wss://fstream.binance.com/market?x=1", "no query or fragment"),
    (5, "must be"),
])
def test_bad_market_stream_bases(url: object, expected: str) -> None:
    for key in ("market_stream_base_url", "coinm_market_stream_base_url"):
        message = error_of({key: url, "accounts": [account()]})
        assert f"cfg.yaml: {key}: " in message and expected in message
        assert "u:" not in message


def test_market_stream_keys_are_top_level_only() -> None:
    assert "unknown key" in error_of({"accounts": [account(market_stream_base_url="wss://x")]}).lower()
