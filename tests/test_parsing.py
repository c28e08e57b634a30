"""Response parsing: exact values from good payloads; everything else is a BadResponse, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.parsing import BadResponse, parse_balance, parse_error

OFFICIAL = ('[{"accountAlias":"SgsR","asset":"USDT","balance":"122607.35137903","crossWalletBalance":"23.72469206",'
            '"crossUnPnl":"0.00000000","availableBalance":"23.72469206","maxWithdrawAmount":"23.72469206",'
            '"marginAvailable":true,"updateTime":1617939110373}]')


def row(**kw: object) -> dict:
    base = json.loads(OFFICIAL)[0]
    base.update(kw)
    return base


def test_official_fixture_is_exact() -> None:
    snap = parse_balance(OFFICIAL.encode())
    assert snap.account_alias == "SgsR"
    (usdt,) = snap.assets
    assert usdt.asset == "USDT"
    assert repr(usdt.values["balance"]) == "122607.35137903"  # survives the float round trip
    assert usdt.values["available_balance"] == 23.72469206 and usdt.values["cross_unrealized_pnl"] == 0.0
    assert usdt.values["margin_available"] == 1.0
    assert usdt.values["balance_update_timestamp_seconds"] == 1617939110.373


def test_asset_order_is_not_assumed_and_negative_pnl_parses() -> None:
    body = json.dumps([row(asset="BNB", crossUnPnl="-0.50000000"), row(asset="USDT")]).encode()
    snap = parse_balance(body)
    assert [a.asset for a in snap.assets] == ["BNB", "USDT"]
    assert snap.assets[0].values["cross_unrealized_pnl"] == -0.5


def test_zero_rows_are_recognised() -> None:
    zero = row(balance="0.00000000", crossWalletBalance="0.00000000", availableBalance="0.00000000",
               maxWithdrawAmount="0.00000000", updateTime=0)
    assert parse_balance(json.dumps([zero]).encode()).assets[0].zero
    assert not parse_balance(OFFICIAL.encode()).assets[0].zero


def test_empty_array_is_valid() -> None:
    assert parse_balance(b"[]").assets == ()


@pytest.mark.parametrize("body, message", [
    ("<html><body>403 Forbidden</body></html>", "not valid JSON"),
    (OFFICIAL[: len(OFFICIAL) // 2], "not valid JSON"),
    ("", "not valid JSON"),
    ('{"code":-1000,"msg":"x"}', "expected a JSON array"),
    (json.dumps([row(balance="abc")]), "USDT.balance is not a decimal string"),
    (json.dumps([row(balance="NaN")]), "not a decimal string"),
    (json.dumps([row(balance="1e5")]), "not a decimal string"),
    (json.dumps([row(balance="1_000")]), "not a decimal string"),
    (json.dumps([row(balance=" 1")]), "not a decimal string"),
    # Only ASCII digits (issue 23): \\d and float() read these as 12, 12 and 1.5.
    (json.dumps([row(balance="\u0661\u0662")]), "USDT.balance is not a decimal string"),
    (json.dumps([row(balance="\uff11\uff12")]), "USDT.balance is not a decimal string"),
    (json.dumps([row(balance="1.\u0665")]), "USDT.balance is not a decimal string"),
    (json.dumps([row(balance={"v": 1})]), "has type dict"),
    (json.dumps([row(balance=True)]), "has type bool"),
    (json.dumps([row(balance=None)]), "has type NoneType"),
    (json.dumps([{k: v for k, v in row().items() if k != "availableBalance"}]), "availableBalance is missing"),
    (json.dumps([row(asset="")]), "asset is missing or not a plain name"),
    (json.dumps([row(asset=5)]), "asset is missing or not a plain name"),
    (json.dumps([row(asset="US DT")]), "asset is missing or not a plain name"),
    (json.dumps([row(accountAlias="x\ud800y")]), "accountAlias is missing or not a plain name"),
    (json.dumps([row(accountAlias="a\nb")]), "accountAlias is missing or not a plain name"),
    ("[" * 100_000, "not valid JSON"),
    ("[" + "1" * 5000 + "]", "not valid JSON"),
    (json.dumps([row(balance=1e308 * 10)]).replace("Infinity", "1e999"), "out of range"),
    (json.dumps([row(), row()]), "USDT appears twice"),
    (json.dumps([row(marginAvailable="true")]), "marginAvailable is not a boolean"),
    (json.dumps([row(updateTime="now")]), "updateTime"),
    (json.dumps([1]), "balance\\[0\\] is int"),
])
def test_bad_payloads(body: str, message: str) -> None:
    with pytest.raises(BadResponse, match=message):
        parse_balance(body.encode("utf-8", "surrogatepass"))


def test_numbers_instead_of_strings_are_accepted() -> None:
    assert parse_balance(json.dumps([row(balance=12.5, availableBalance=3)]).encode()).assets[0].values["balance"] == 12.5


def test_parse_error() -> None:
    assert parse_error(b'{"code":-1022,"msg":"Signature for this request is not valid."}') == \
        (-1022, "Signature for this request is not valid.")
    assert parse_error(b"<html>") == (None, None)
    assert parse_error(b'{"code":"x"}') == (None, None)
    assert parse_error(b"[1]") == (None, None)
    assert parse_error(b"[" * 100_000) == (None, None)  # as a 400 body: http_error, not an internal error
    assert parse_error(b'{"code":-1,"msg":"a\\u0000b' + b"x" * 500 + b'"}')[1] == "a?b" + "x" * 196 + "…"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_values = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none(),
                         st.from_regex(r"-?\d{1,6}\.\d{8}", fullmatch=True))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises_anything_but_bad_response(data: object) -> None:
    try:
        parse_balance(json.dumps(data).encode())
    except BadResponse:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_bad_response(body: bytes) -> None:
    try:
        parse_balance(body)
    except BadResponse:
        pass
    parse_error(body)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["asset", "balance", "availableBalance", "crossWalletBalance", "crossUnPnl",
                                        "maxWithdrawAmount", "marginAvailable", "updateTime", "accountAlias"]),
                       field_values))
def test_mutated_rows_parse_or_fail_cleanly(fields: dict) -> None:
    try:
        snap = parse_balance(json.dumps([row(**fields)]).encode())
    except BadResponse:
        return
    for asset in snap.assets:  # whatever parses is finite and typed
        assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in asset.values.values())


@pytest.mark.parametrize("body", [
    OFFICIAL.replace('"asset":"USDT"', '"asset":"USDT","asset":"BTC"'),  # a row repeats a field
    OFFICIAL.replace('"balance":"122607.35137903"', '"balance":"1.0","balance":"122607.35137903"'),
    '{"assets":[{"a":1,"a":1}],"x":0}',  # nested, even with equal values
])
def test_duplicate_json_keys_are_a_bad_response(body: str) -> None:
    """Issue 18: json keeps the last of two equal keys silently; which one Binance meant is unknown."""
    with pytest.raises(BadResponse, match="duplicate key"):
        parse_balance(body.encode())
    assert parse_error(b'{"code":-1003,"code":-1022,"msg":"x"}') == (None, None)


def test_rate_limit_headers_take_ascii_digits_only() -> None:
    """Issue 23: Retry-After, the used weight and a ban's end in another script are not numbers."""
    from exporter.hosts import BAN_UNTIL_RE, parse_weight, retry_after_seconds

    assert retry_after_seconds("12") == 12.0 and retry_after_seconds("\u0661\u0662") is None
    assert parse_weight("1200") == 1200 and parse_weight("\uff11\uff12") is None
    assert BAN_UNTIL_RE.search("IP banned until 1736996475556.") is not None
    assert BAN_UNTIL_RE.search("IP banned until " + "\u0661" * 13 + ".") is None
