"""The Binance simulator (shipped core + testkit), driven over real HTTP exactly as the exporter drives it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from exporter import parsing
from exporter.config import Config
from exporter.demo import DEMO_ACCOUNTS, start_demo
from exporter.schema import USDM_BALANCE
from exporter.simulator.drift import drift_account, drift_rows
from exporter.simulator.gate import Credentials
from testkit import FAULT_KINDS, Fault, SimAccount, SimFutures, SimPortfolio, SimPosition, SimSubAccount, Simulator
from testkit.simulator import Simulator as KitSimulator

KEY = "dbefbc809e3e83c283a984c3a1459732ea7db1360ca80c5c2c8867408d28cc83"
SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
OTHER_KEY, OTHER_SECRET = "other-key", "other-secret"
EXAMPLE_BODY = (
    b'[{"accountAlias":"SgsR","asset":"USDT","balance":"122607.35137903",'
    b'"crossWalletBalance":"23.72469206","crossUnPnl":"0.00000000",'
    b'"availableBalance":"23.72469206","maxWithdrawAmount":"23.72469206",'
    b'"marginAvailable":true,"updateTime":1617939110373}]'
)
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5
SIGNED_PATHS = (
    "/fapi/v3/balance", "/fapi/v2/balance", "/fapi/v3/account", "/fapi/v2/account", "/fapi/v3/positionRisk",
    "/fapi/v2/positionRisk", "/dapi/v1/balance", "/dapi/v1/account", "/dapi/v1/positionRisk", "/papi/v1/balance",
    "/papi/v1/account", "/sapi/v1/sub-account/list", "/sapi/v2/sub-account/futures/account",
    "/fapi/v1/accountConfig", "/papi/v1/um/positionRisk", "/papi/v1/cm/positionRisk",
    "/sapi/v2/sub-account/futures/positionRisk",
)
# The official examples as valid JSON (SDK unit tests / docs; /work/notes/sdk-reference.md §1).
OFFICIAL: dict[str, str] = {
    "/fapi/v2/account": (
        '{"feeTier":0,"feeBurn":true,"canTrade":true,"canDeposit":true,"canWithdraw":true,"updateTime":0,"mul'
        'tiAssetsMargin":true,"tradeGroupId":-1,"totalInitialMargin":"0.00000000","totalMaintMargin":"0.00000'
        '000","totalWalletBalance":"126.72469206","totalUnrealizedProfit":"0.00000000","totalMarginBalance":"'
        '126.72469206","totalPositionInitialMargin":"0.00000000","totalOpenOrderInitialMargin":"0.00000000","'
        'totalCrossWalletBalance":"126.72469206","totalCrossUnPnl":"0.00000000","availableBalance":"126.72469'
        '206","maxWithdrawAmount":"126.72469206","assets":[{"asset":"USDT","walletBalance":"23.72469206","unr'
        'ealizedProfit":"0.00000000","marginBalance":"23.72469206","maintMargin":"0.00000000","initialMargin"'
        ':"0.00000000","positionInitialMargin":"0.00000000","openOrderInitialMargin":"0.00000000","crossWalle'
        'tBalance":"23.72469206","crossUnPnl":"0.00000000","availableBalance":"126.72469206","maxWithdrawAmou'
        'nt":"23.72469206","marginAvailable":true,"updateTime":1625474304765}],"positions":[{"symbol":"BTCUSD'
        'T","initialMargin":"0","maintMargin":"0","unrealizedProfit":"0.00000000","positionInitialMargin":"0"'
        ',"openOrderInitialMargin":"0","leverage":"100","isolated":true,"entryPrice":"0.00000","maxNotional":'
        '"250000","bidNotional":"0","askNotional":"0","positionSide":"BOTH","positionAmt":"0","updateTime":0}'
        ']}'
    ),
    "/fapi/v3/account": (
        '{"totalInitialMargin":"0.00000000","totalMaintMargin":"0.00000000","totalWalletBalance":"126.7246920'
        '6","totalUnrealizedProfit":"0.00000000","totalMarginBalance":"126.72469206","totalPositionInitialMar'
        'gin":"0.00000000","totalOpenOrderInitialMargin":"0.00000000","totalCrossWalletBalance":"126.72469206'
        '","totalCrossUnPnl":"0.00000000","availableBalance":"126.72469206","maxWithdrawAmount":"126.72469206'
        '","assets":[{"asset":"USDT","walletBalance":"23.72469206","unrealizedProfit":"0.00000000","marginBal'
        'ance":"23.72469206","maintMargin":"0.00000000","initialMargin":"0.00000000","positionInitialMargin":'
        '"0.00000000","openOrderInitialMargin":"0.00000000","crossWalletBalance":"23.72469206","crossUnPnl":"'
        '0.00000000","availableBalance":"23.72469206","maxWithdrawAmount":"23.72469206","updateTime":16254743'
        '04765}],"positions":[{"symbol":"BTCUSDT","positionSide":"BOTH","positionAmt":"1.000","unrealizedProf'
        'it":"0.00000000","isolatedMargin":"0.00000000","notional":"0","isolatedWallet":"0","initialMargin":"'
        '0","maintMargin":"0","updateTime":0}]}'
    ),
    "/fapi/v2/positionRisk": (
        '[{"entryPrice":"0.00000","breakEvenPrice":"0.0","marginType":"isolated","isAutoAddMargin":"false","i'
        'solatedMargin":"0.00000000","leverage":"10","liquidationPrice":"0","markPrice":"6679.50671178","maxN'
        'otionalValue":"20000000","positionAmt":"0.000","notional":"0","isolatedWallet":"0","symbol":"BTCUSDT'
        '","unRealizedProfit":"0.00000000","positionSide":"BOTH","updateTime":1625474304765}]'
    ),
    "/fapi/v3/positionRisk": (
        '[{"symbol":"ADAUSDT","positionSide":"BOTH","positionAmt":"30","entryPrice":"0.385","breakEvenPrice":'
        '"0.385077","markPrice":"0.41047590","unRealizedProfit":"0.76427700","liquidationPrice":"0","isolated'
        'Margin":"0","notional":"12.31427700","marginAsset":"USDT","isolatedWallet":"0","initialMargin":"0.61'
        '571385","maintMargin":"0.08004280","positionInitialMargin":"0.61571385","openOrderInitialMargin":"0"'
        ',"adl":2,"bidNotional":"0","askNotional":"0","updateTime":1720736417660}]'
    ),
    "/dapi/v1/balance": (
        '[{"accountAlias":"SgsR","asset":"BTC","balance":"0.00250000","withdrawAvailable":"0.00250000","cross'
        'WalletBalance":"0.00241969","crossUnPnl":"0.00000000","availableBalance":"0.00241969","updateTime":1'
        '592468353979}]'
    ),
    "/dapi/v1/account": (
        '{"assets":[{"asset":"BTC","walletBalance":"0.00241969","unrealizedProfit":"0.00000000","marginBalanc'
        'e":"0.00241969","maintMargin":"0.00000000","initialMargin":"0.00000000","positionInitialMargin":"0.0'
        '0000000","openOrderInitialMargin":"0.00000000","maxWithdrawAmount":"0.00241969","crossWalletBalance"'
        ':"0.00241969","crossUnPnl":"0.00000000","availableBalance":"0.00241969","updateTime":1625474304765}]'
        ',"positions":[{"symbol":"BTCUSD_201225","positionAmt":"0","initialMargin":"0","maintMargin":"0","unr'
        'ealizedProfit":"0.00000000","positionInitialMargin":"0","openOrderInitialMargin":"0","leverage":"125'
        '","isolated":false,"positionSide":"BOTH","entryPrice":"0.0","breakEvenPrice":"0.0","maxQty":"50","up'
        'dateTime":0,"notionalValue":"0"}],"canDeposit":true,"canTrade":true,"canWithdraw":true,"feeTier":2,"'
        'updateTime":0}'
    ),
    "/dapi/v1/positionRisk": (
        '[{"symbol":"BTCUSD_201225","positionAmt":"0","entryPrice":"0.0","breakEvenPrice":"0.0","markPrice":"'
        '0.00000000","unRealizedProfit":"0.00000000","liquidationPrice":"0","leverage":"125","maxQty":"50","m'
        'arginType":"cross","isolatedMargin":"0.00000000","isAutoAddMargin":"false","positionSide":"BOTH","up'
        'dateTime":0}]'
    ),
    "/papi/v1/balance": (
        '[{"asset":"USDT","totalWalletBalance":"122607.35137903","crossMarginAsset":"92.27530794","crossMargi'
        'nBorrowed":"10.00000000","crossMarginFree":"100.00000000","crossMarginInterest":"0.72469206","crossM'
        'arginLocked":"3.00000000","umWalletBalance":"0.00000000","umUnrealizedPNL":"23.72469206","cmWalletBa'
        'lance":"23.72469206","cmUnrealizedPNL":"","updateTime":1617939110373,"negativeBalance":"0"}]'
    ),
    "/papi/v1/balance?asset": (
        '{"asset":"USDT","totalWalletBalance":"122607.35137903","crossMarginBorrowed":"10.00000000","crossMar'
        'ginFree":"100.00000000","crossMarginInterest":"0.72469206","crossMarginLocked":"3.00000000","umWalle'
        'tBalance":"0.00000000","umUnrealizedPNL":"23.72469206","cmWalletBalance":"23.72469206","cmUnrealized'
        'PNL":"","updateTime":1617939110373,"negativeBalance":"0"}'
    ),
    "/papi/v1/account": (
        '{"uniMMR":"5167.92171923","accountEquity":"73.47428058","actualEquity":"122607.35137903","accountIni'
        'tialMargin":"23.72469206","accountMaintMargin":"23.72469206","accountStatus":"NORMAL","virtualMaxWit'
        'hdrawAmount":"1627523.32459208","totalAvailableBalance":"","totalMarginOpenLoss":"","updateTime":165'
        '7707212154}'
    ),
    "/sapi/v1/sub-account/list": (
        '{"subAccounts":[{"subUserId":123456,"email":"testsub@gmail.com","remark":"remark","isFreeze":false,"'
        'createTime":1544433328000,"isManagedSubAccount":false,"isAssetManagementSubAccount":false},{"subUser'
        'Id":1234567,"email":"virtual@oxebmvfonoemail.com","remark":"remarks","isFreeze":false,"createTime":1'
        '544433328000,"isManagedSubAccount":false,"isAssetManagementSubAccount":false}]}'
    ),
    "futuresType=1": (
        '{"futureAccountResp":{"email":"abc@test.com","assets":[{"asset":"USDT","initialMargin":"0.00000000",'
        '"maintenanceMargin":"0.00000000","marginBalance":"0.88308000","maxWithdrawAmount":"0.88308000","open'
        'OrderInitialMargin":"0.00000000","positionInitialMargin":"0.00000000","unrealizedProfit":"0.00000000'
        '","walletBalance":"0.88308000"}],"canDeposit":true,"canTrade":true,"canWithdraw":true,"feeTier":2,"m'
        'axWithdrawAmount":"0.88308000","totalInitialMargin":"0.00000000","totalMaintenanceMargin":"0.0000000'
        '0","totalMarginBalance":"0.88308000","totalOpenOrderInitialMargin":"0.00000000","totalPositionInitia'
        'lMargin":"0.00000000","totalUnrealizedProfit":"0.00000000","totalWalletBalance":"0.88308000","update'
        'Time":1576756674610}}'
    ),
    "futuresType=2": (
        '{"deliveryAccountResp":{"email":"abc@test.com","assets":[{"asset":"BTC","initialMargin":"0.00000000"'
        ',"maintenanceMargin":"0.00000000","marginBalance":"0.88308000","maxWithdrawAmount":"0.88308000","ope'
        'nOrderInitialMargin":"0.00000000","positionInitialMargin":"0.00000000","unrealizedProfit":"0.0000000'
        '0","walletBalance":"0.88308000"}],"canDeposit":true,"canTrade":true,"canWithdraw":true,"feeTier":2,"'
        'updateTime":1598959682001}}'
    ),
}


# -- helpers -------------------------------------------------------------------------------
def now_ms(sim: Simulator | None = None) -> int:
    return int(time.time() * 1000) + (sim.clock_skew_ms if sim else 0)


def hmac_signer(secret: str) -> Callable[[str], str]:
    return lambda payload: hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def keypair_signer(sign: Callable[[bytes], bytes]) -> Callable[[str], str]:
    # Binance: base64, then URL-encoded because of "+", "/" and "=".
    return lambda payload: quote(base64.b64encode(sign(payload.encode())).decode(), safe="")


def signed_get(
    sim: Simulator,
    *,
    key: str | None = KEY,
    signer: Callable[[str], str] | None = None,
    path: str = "/fapi/v3/balance",
    params: str = "",
    timestamp: int | None = None,
    recv_window: int | None = 5000,
    session: requests.Session | None = None,
) -> requests.Response:
    """Build the query exactly like a client would (extra `params` first), sign it, and send it."""
    signer = signer or hmac_signer(SECRET)
    ts = now_ms(sim) if timestamp is None else timestamp
    query = (params + "&" if params else "") + (f"recvWindow={recv_window}&" if recv_window is not None else "")
    query += f"timestamp={ts}"
    query += "&signature=" + signer(query)
    headers = {} if key is None else {"X-MBX-APIKEY": key}
    resp = (session or requests).get(f"{sim.base_url}{path}?{query}", headers=headers, timeout=TIMEOUT)
    assert SECRET not in resp.text and OTHER_SECRET not in resp.text
    return resp


def get_json(sim: Simulator, path: str, params: str = "", key: str = KEY, secret: str = SECRET) -> Any:
    resp = signed_get(sim, path=path, params=params, key=key, signer=hmac_signer(secret))
    assert resp.status_code == 200, resp.text
    return resp.json()


def raw_get(sim: Simulator, path_and_query: str, key: str | None = KEY) -> requests.Response:
    headers = {} if key is None else {"X-MBX-APIKEY": key}
    return requests.get(sim.base_url + path_and_query, headers=headers, timeout=TIMEOUT)


def assert_error(resp: requests.Response, status: int, code: int, msg: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["code"] == code
    if msg is not None:
        assert body["msg"] == msg


def weight(resp: requests.Response, header: str = "X-MBX-USED-WEIGHT-1M") -> int:
    return int(resp.headers[header])


def wait_until(predicate: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met before deadline")
        time.sleep(0.01)


def skew_to_minute_start(sim: Simulator) -> None:
    """Put server time just past a minute boundary, so a rate-limit test never straddles windows."""
    local = int(time.time() * 1000)
    sim.clock_skew_ms = ((local + sim.clock_skew_ms) // 60_000 + 1) * 60_000 + 200 - local


def D(value: Any) -> Decimal:  # noqa: N802 - reads as the Decimal it makes
    return Decimal(str(value))


def same_shape(actual: Any, official: Any, where: str = "answer") -> None:
    """Same field names in the same order and the same JSON types, recursively (lists: every element)."""
    assert type(actual) is type(official), f"{where}: {type(actual).__name__} != {type(official).__name__}"
    if isinstance(official, dict):
        assert list(actual) == list(official), f"{where}: {list(actual)} != {list(official)}"
        for name in official:
            same_shape(actual[name], official[name], f"{where}.{name}")
    elif isinstance(official, list):
        assert actual and official, f"{where}: empty list"
        for index, item in enumerate(actual):
            same_shape(item, official[0], f"{where}[{index}]")
    elif isinstance(official, str) and re.fullmatch(r"-?\d+(\.\d+)?", official):
        assert re.fullmatch(r"-?\d+(\.\d+)?", actual), f"{where}: {actual!r} is not a decimal string"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([SimAccount(KEY, api_secret=SECRET), SimAccount(OTHER_KEY, api_secret=OTHER_SECRET)]) as s:
        yield s


# -- layout --------------------------------------------------------------------------------
def test_layout_testkit_is_not_shipped_and_demo_needs_only_the_core() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'packages = ["exporter", "exporter.httpserver", "exporter.simulator", "exporter.streams"]' in pyproject
    assert Simulator is KitSimulator
    code = ("import sys, exporter.demo, exporter.cli; "
            "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] in ('testkit', 'tests')] else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=60).returncode == 0


def test_secrets_stay_out_of_repr() -> None:
    account = SimAccount(KEY, api_secret=SECRET)
    assert SECRET not in repr(account) and SECRET not in repr(Credentials.create(SECRET, None))


# -- public endpoints ----------------------------------------------------------------------
def test_ping_and_time_on_every_host(sim: Simulator) -> None:
    for path in ("/fapi/v1/ping", "/papi/v1/ping"):
        ping = requests.get(sim.base_url + path, timeout=TIMEOUT)
        assert ping.status_code == 200 and ping.content == b"{}"
        assert ping.headers["Content-Type"] == "application/json"
    for path in ("/fapi/v1/time", "/dapi/v1/time", "/api/v3/time"):
        before = now_ms()
        resp = requests.get(sim.base_url + path, timeout=TIMEOUT)
        server_time = resp.json()["serverTime"]
        assert list(resp.json()) == ["serverTime"] and isinstance(server_time, int)
        assert before - 5 <= server_time <= now_ms() + 5
    # Portfolio Margin has no time endpoint: 404, like any unknown path.
    assert_error(raw_get(sim, "/papi/v1/time"), 404, -1099, "Not found, unauthenticated, or unauthorized.")


def test_clock_skew_is_reflected_in_time_and_changeable_at_runtime(sim: Simulator) -> None:
    for skew in (90_000, -45_000):
        sim.clock_skew_ms = skew
        server_time = requests.get(sim.base_url + "/fapi/v1/time", timeout=TIMEOUT).json()["serverTime"]
        assert abs(server_time - (now_ms() + skew)) < 1000
        assert abs(sim.server_time_ms() - server_time) < 1000


def test_unknown_path_and_method(sim: Simulator) -> None:
    assert_error(raw_get(sim, "/fapi/v1/nope"), 404, -1099)
    post = requests.post(sim.base_url + "/fapi/v1/ping", data=b"x=1", timeout=TIMEOUT)
    assert_error(post, 405, -1099)
    assert post.headers["Allow"] == "GET"
    assert "X-MBX-USED-WEIGHT-1M" in post.headers


# -- answers: shape of the official examples -----------------------------------------------
ADA = SimPosition("ADAUSDT", "30", "0.385", "0.41047590", maint_rate="0.0065", adl=2, update_time=1720736417660)


def official_like() -> SimAccount:
    """A bare account plus what makes every list non-empty (the official v3 position, one sub-account)."""
    return SimAccount(KEY, api_secret=SECRET, positions=[ADA],
                      coinm_positions=[SimPosition("BTCUSD_PERP", "2", "60000", "61000", leverage=125)],
                      sub_accounts=[SimSubAccount("abc@test.com", coinm=SimFutures())])


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_field_names_types_and_order_match_the_official_examples(name: str) -> None:
    path, _, query = name.partition("?")
    params = {"/papi/v1/balance?asset": "asset=USDT", "futuresType=1": "email=abc%40test.com&futuresType=1",
              "futuresType=2": "email=abc%40test.com&futuresType=2",
              "/sapi/v1/sub-account/list": "limit=200"}.get(name, "")
    if name.startswith("futuresType"):
        path = "/sapi/v2/sub-account/futures/account"
    with Simulator([official_like()]) as sim:
        same_shape(get_json(sim, path, params), json.loads(OFFICIAL[name]), name)


def test_the_risk_endpoints_match_the_official_examples() -> None:
    """accountConfig, Portfolio Margin's UM/CM positionRisk and the sub-account positionRisk (official SDK tests)."""
    examples = json.loads((REPO_ROOT / "tests" / "fixtures" / "official_examples.json").read_text())
    account = SimAccount(KEY, api_secret=SECRET, multi_assets=True, positions=[ADA], pm=SimPortfolio(
        um_positions=[SimPosition("BTCUSDT", "-0.5", "60000", "61000", "SHORT", liquidation_price="62000")],
        cm_positions=[SimPosition("BTCUSD_PERP", "2", "60000", "61000", liquidation_price="40000")]),
        sub_accounts=[SimSubAccount("abc@test.com", SimFutures(None, [SimPosition("BTCUSDT", "0.01", "9975.12")]),
                                    SimFutures(None, [SimPosition("BTCUSD_PERP", "3", "60000", "61000",
                                                                  isolated=True, isolated_wallet="0.1")]))])
    with Simulator([account]) as sim:
        modes = get_json(sim, "/fapi/v1/accountConfig")
        same_shape(modes, examples["fapi_v1_account_config"], "accountConfig")
        assert modes["multiAssetsMargin"] is True and modes["dualSidePosition"] is False
        same_shape(get_json(sim, "/papi/v1/um/positionRisk"), examples["papi_v1_um_position_risk"], "um")
        same_shape(get_json(sim, "/papi/v1/cm/positionRisk"), examples["papi_v1_cm_position_risk"], "cm")
        official = examples["sapi_v2_sub_account_futures_position_risk"]
        for futures_type, key in ((1, "futurePositionRiskVos"), (2, "deliveryPositionRiskVos")):
            got = get_json(sim, "/sapi/v2/sub-account/futures/positionRisk",
                           f"email=abc%40test.com&futuresType={futures_type}")
            assert list(got) == [key]
            same_shape(got[key], official[key], key)
        assert got[key][0]["isolated"] == "true"  # a string in this answer, as in the official example
        v2 = get_json(sim, "/fapi/v2/account")
        assert v2["multiAssetsMargin"] is True and v2["assets"][0]["availableBalance"] == v2["availableBalance"]


def test_a_bare_account_answers_the_official_examples() -> None:
    with Simulator([SimAccount(KEY, api_secret=SECRET, sub_accounts=[SimSubAccount("abc@test.com",
                                                                                   coinm=SimFutures())])]) as sim:
        for path in ("/fapi/v3/balance", "/fapi/v2/balance"):
            assert signed_get(sim, path=path).content == EXAMPLE_BODY
        for name in ("/dapi/v1/balance", "/papi/v1/balance", "futuresType=1", "futuresType=2"):
            path, params = name, ""
            if name.startswith("futuresType"):
                path, params = "/sapi/v2/sub-account/futures/account", "email=abc%40test.com&" + name
            assert signed_get(sim, path=path, params=params).content == OFFICIAL[name].encode(), name
        one = signed_get(sim, path="/papi/v1/balance", params="asset=USDT")
        assert one.content == OFFICIAL["/papi/v1/balance?asset"].encode()  # one object, no crossMarginAsset
        pm = get_json(sim, "/papi/v1/account")
        assert pm["totalAvailableBalance"] == pm["totalMarginOpenLoss"] == "" and pm["accountStatus"] == "NORMAL"
        assert get_json(sim, "/papi/v1/balance")[0]["cmUnrealizedPNL"] == ""
        assert get_json(sim, "/fapi/v3/positionRisk") == []  # v3: only symbols with a position
        v2 = get_json(sim, "/fapi/v2/positionRisk")  # v2: every symbol, zero rows included
        assert {r["symbol"] for r in v2} == {"BTCUSDT", "ETHUSDT"} and all(r["positionAmt"] == "0.000" for r in v2)
        account = get_json(sim, "/fapi/v3/account")
        assert account["positions"] == [] and "accountAlias" not in json.dumps(account)
        assert "marginAvailable" not in account["assets"][0]
        assert get_json(sim, "/fapi/v2/account")["assets"][0]["marginAvailable"] is True
        assert get_json(sim, "/dapi/v1/positionRisk")[0]["markPrice"] == "0.00000000"


def test_the_official_v3_position_is_reproduced() -> None:
    official = json.loads(OFFICIAL["/fapi/v3/positionRisk"])[0]
    with Simulator([official_like()]) as sim:
        (row,) = get_json(sim, "/fapi/v3/positionRisk")
    differ = {k for k in official if row[k] != official[k]}
    assert differ == {"isolatedMargin"}, differ  # "0.00000000" here, "0" in the example: same value
    assert D(row["isolatedMargin"]) == D(official["isolatedMargin"])


def test_answers_parse_with_the_exporters_parser() -> None:
    with Simulator([official_like()]) as sim:
        def body(path: str, params: str = "") -> bytes:
            resp = signed_get(sim, path=path, params=params)
            assert resp.status_code == 200
            return resp.content
        for path in ("/fapi/v3/balance", "/fapi/v2/balance"):
            assert parsing.parse_balance(body(path)).account_alias == "SgsR"
        for path in ("/fapi/v3/account", "/fapi/v2/account"):
            assert parsing.parse_usdm_account(body(path)).totals["account_wallet_balance"] == 122607.35137903
        assert len(parsing.parse_position_risk(body("/fapi/v3/positionRisk")).positions) == 1
        assert len(parsing.parse_position_risk(body("/fapi/v2/positionRisk")).positions) == 1
        assert parsing.parse_coinm_balance(body("/dapi/v1/balance")).assets[0].asset == "BTC"
        assert parsing.parse_coinm_account(body("/dapi/v1/account")).assets
        assert len(parsing.parse_position_risk(body("/dapi/v1/positionRisk")).positions) == 1
        assert parsing.parse_pm_balance(body("/papi/v1/balance")).assets
        assert parsing.parse_pm_balance(body("/papi/v1/balance", "asset=USDT")).assets[0].asset == "USDT"
        assert parsing.parse_pm_account(body("/papi/v1/account")).status == "NORMAL"
        assert parsing.parse_sub_account_list(body("/sapi/v1/sub-account/list"))[0].email == "abc@test.com"
        for futures_type in (1, 2):
            snap = parsing.parse_sub_account(
                body("/sapi/v2/sub-account/futures/account", f"email=abc%40test.com&futuresType={futures_type}"),
                futures_type)
            assert snap.assets[0].values["balance"] == 0.88308


# -- answers: consistency ------------------------------------------------------------------
MIXED = SimAccount(
    KEY, api_secret=SECRET, account_alias="MiXd",
    balances=[{"asset": "USDT", "balance": "10000.00000000", "crossWalletBalance": "9500.00000000",
               "crossUnPnl": "0.00000000", "availableBalance": "7000.00000000", "maxWithdrawAmount": "6500.00000000",
               "marginAvailable": True, "updateTime": 1700000000000},
              {"asset": "USDC", "balance": "2500.50000000", "crossWalletBalance": "2500.50000000",
               "crossUnPnl": "0.00000000", "availableBalance": "2400.00000000", "maxWithdrawAmount": "2400.00000000",
               "marginAvailable": True, "updateTime": 1700000000001}],
    positions=[
        SimPosition("BTCUSDT", "0.500", "60000", "61234.5", "LONG", leverage=10, liquidation_price="51000"),
        SimPosition("BTCUSDT", "-0.200", "62000", "61234.5", "SHORT", leverage=10, isolated=True,
                    isolated_wallet="1250", liquidation_price="67000"),
        SimPosition("ETHUSDT", "0", "0", "3400", "LONG", open_order_margin="45.5"),  # open orders only
        SimPosition("ETHUSDC", "-3", "3500.25", "3400.75", "SHORT", leverage=5, maint_rate="0.005"),
    ],
    coinm_balances=[{"asset": "BTC", "balance": "1.00000000", "withdrawAvailable": "0.90000000",
                     "crossWalletBalance": "1.00000000", "crossUnPnl": "0.00000000",
                     "availableBalance": "0.90000000", "updateTime": 0}],
    coinm_positions=[SimPosition("BTCUSD_PERP", "-50", "60000", "61000", leverage=20),
                     SimPosition("ETHUSD_PERP", "10", "3000", "3100", leverage=10)],
)
TOTALS = {"totalInitialMargin": "initialMargin", "totalMaintMargin": "maintMargin",
          "totalWalletBalance": "walletBalance", "totalUnrealizedProfit": "unrealizedProfit",
          "totalMarginBalance": "marginBalance", "totalPositionInitialMargin": "positionInitialMargin",
          "totalOpenOrderInitialMargin": "openOrderInitialMargin", "totalCrossWalletBalance": "crossWalletBalance",
          "totalCrossUnPnl": "crossUnPnl", "availableBalance": "availableBalance",
          "maxWithdrawAmount": "maxWithdrawAmount"}
EPS = Decimal("0.00000002")
LEVERAGE = {"BTCUSDT": 10, "ETHUSDT": 20, "ETHUSDC": 5}


def close(a: Any, b: Any) -> bool:
    return abs(D(a) - D(b)) <= EPS


def test_usdm_account_and_positions_agree() -> None:
    with Simulator([MIXED]) as sim:
        balance = {r["asset"]: r for r in get_json(sim, "/fapi/v3/balance")}
        account = get_json(sim, "/fapi/v3/account")
        risk = get_json(sim, "/fapi/v3/positionRisk")
        v2_account = get_json(sim, "/fapi/v2/account")
        v2_risk = get_json(sim, "/fapi/v2/positionRisk")
    assert {(r["symbol"], r["positionSide"]) for r in risk} == {
        ("BTCUSDT", "LONG"), ("BTCUSDT", "SHORT"), ("ETHUSDT", "LONG"), ("ETHUSDC", "SHORT")}
    for row in risk:
        amount, mark, entry = D(row["positionAmt"]), D(row["markPrice"]), D(row["entryPrice"])
        assert close(row["notional"], amount * mark)
        assert close(row["unRealizedProfit"], (mark - entry) * amount)
        assert close(row["positionInitialMargin"], abs(amount * mark) / LEVERAGE[row["symbol"]])
        assert close(row["initialMargin"], D(row["positionInitialMargin"]) + D(row["openOrderInitialMargin"]))
        assert row["marginAsset"] == ("USDC" if row["symbol"].endswith("USDC") else "USDT")
    short = next(r for r in risk if r["positionSide"] == "SHORT" and r["symbol"] == "BTCUSDT")
    assert close(short["isolatedMargin"], D("1250") + D(short["unRealizedProfit"])) and short["isolatedWallet"] == "1250.00000000"
    assert next(r for r in risk if r["symbol"] == "ETHUSDC")["maintMargin"] == "51.01125000"  # 3 x 3400.75 x 0.5 %
    assert next(r for r in risk if r["symbol"] == "ETHUSDT")["liquidationPrice"] == "0"

    assert [a["asset"] for a in account["assets"]] == ["USDT", "USDC"]
    for asset in account["assets"]:
        mine = [r for r in risk if r["marginAsset"] == asset["asset"]]
        cross = [r for r in mine if D(r["isolatedWallet"]) == 0]
        for name, source in (("unrealizedProfit", "unRealizedProfit"), ("maintMargin", "maintMargin"),
                             ("positionInitialMargin", "positionInitialMargin"),
                             ("openOrderInitialMargin", "openOrderInitialMargin"), ("initialMargin", "initialMargin")):
            assert close(asset[name], sum(D(r[source]) for r in mine)), (asset["asset"], name)
        assert close(asset["crossUnPnl"], sum(D(r["unRealizedProfit"]) for r in cross))
        assert close(asset["marginBalance"], D(asset["walletBalance"]) + D(asset["unrealizedProfit"]))
        row = balance[asset["asset"]]
        assert asset["walletBalance"] == row["balance"] and asset["crossUnPnl"] == row["crossUnPnl"]
        for name in ("crossWalletBalance", "availableBalance", "maxWithdrawAmount"):
            assert asset[name] == row[name]
    usdt = next(a for a in account["assets"] if a["asset"] == "USDT")  # single-asset mode: the USDT pool's
    for total, name in TOTALS.items():
        assert close(account[total], D(usdt[name])), total
    assert D(account["totalUnrealizedProfit"]) != 0 and D(account["totalOpenOrderInitialMargin"]) == D("45.5")

    # v2: the same figures; its position lists also hold zero rows (hedge mode: LONG and SHORT).
    for name in TOTALS:
        assert v2_account[name] == account[name]
    assert {(r["symbol"], r["positionSide"]) for r in v2_risk} >= {("ETHUSDT", "SHORT"), ("ETHUSDC", "LONG")}
    assert len(v2_account["positions"]) == len(v2_risk) == 6
    assert all(D(r["positionAmt"]) == 0 and r["notional"] == "0" for r in v2_risk
               if (r["symbol"], r["positionSide"]) in {("ETHUSDT", "SHORT"), ("ETHUSDC", "LONG")})
    assert {r["marginType"] for r in v2_risk} == {"cross", "isolated"} and all(
        r["isAutoAddMargin"] == "false" for r in v2_risk)


def test_position_risk_symbol_filter(sim: Simulator) -> None:
    sim.update_account(KEY, positions=[SimPosition("BTCUSDT", "0.010", "60000", "61000")])
    assert [r["symbol"] for r in get_json(sim, "/fapi/v3/positionRisk", "symbol=BTCUSDT")] == ["BTCUSDT"]
    assert get_json(sim, "/fapi/v3/positionRisk", "symbol=ETHUSDT") == []
    assert [r["symbol"] for r in get_json(sim, "/fapi/v2/positionRisk", "symbol=ETHUSDT")] == ["ETHUSDT"]
    assert_error(signed_get(sim, path="/fapi/v3/positionRisk", params="symbol=NOPEUSDT"), 400, -1121, "Invalid symbol.")


def test_coinm_account_and_positions_agree() -> None:
    with Simulator([MIXED]) as sim:
        balance = get_json(sim, "/dapi/v1/balance")
        account = get_json(sim, "/dapi/v1/account")
        risk = {r["symbol"]: r for r in get_json(sim, "/dapi/v1/positionRisk")}
        assert list(get_json(sim, "/dapi/v1/positionRisk", "pair=ETHUSD")[0].values())[0] == "ETHUSD_PERP"
    assert set(risk) == {"BTCUSD_PERP", "ETHUSD_PERP"}
    btc, eth = risk["BTCUSD_PERP"], risk["ETHUSD_PERP"]
    # Inverse contracts: 100 USD (BTC) or 10 USD (ETH) each, PnL and notional in the coin.
    assert close(btc["unRealizedProfit"], D(-50) * 100 * (1 / D(60000) - 1 / D(61000)))
    assert close(eth["unRealizedProfit"], D(10) * 10 * (1 / D(3000) - 1 / D(3100)))
    positions = {p["symbol"]: p for p in account["positions"]}
    assert close(positions["BTCUSD_PERP"]["notionalValue"], D(-50) * 100 / D(61000))
    assert close(positions["BTCUSD_PERP"]["initialMargin"], abs(D(-50) * 100 / D(61000)) / 20)
    assets = {a["asset"]: a for a in account["assets"]}
    assert set(assets) == {"BTC", "ETH"}  # ETH has a position but no row: listed with a zero wallet
    for name, a in assets.items():
        assert close(a["marginBalance"], D(a["walletBalance"]) + D(a["unrealizedProfit"]))
        assert a["unrealizedProfit"] == risk[f"{name}USD_PERP"]["unRealizedProfit"]
    assert balance[0]["withdrawAvailable"] == assets["BTC"]["maxWithdrawAmount"] == "0.90000000"
    assert balance[0]["crossUnPnl"] == btc["unRealizedProfit"]
    assert "maxWithdrawAmount" not in balance[0] and "marginAvailable" not in balance[0]
    assert "totalWalletBalance" not in account


def test_portfolio_margin_figures_and_blanks(sim: Simulator) -> None:
    pm = SimPortfolio(balances=[
        {"asset": "USDT", "totalWalletBalance": "1000.00000000", "crossMarginAsset": "0.00000000",
         "crossMarginBorrowed": "0.00000000", "crossMarginFree": "0.00000000", "crossMarginInterest": "0.00000000",
         "crossMarginLocked": "0.00000000", "umWalletBalance": "1000.00000000", "umUnrealizedPNL": "-100.00000000",
         "cmWalletBalance": "0.00000000", "cmUnrealizedPNL": "", "updateTime": 5, "negativeBalance": "0"},
        {"asset": "USDC", "totalWalletBalance": "500.00000000", "crossMarginAsset": "0.00000000",
         "crossMarginBorrowed": "0.00000000", "crossMarginFree": "0.00000000", "crossMarginInterest": "0.00000000",
         "crossMarginLocked": "0.00000000", "umWalletBalance": "500.00000000", "umUnrealizedPNL": "0.00000000",
         "cmWalletBalance": "0.00000000", "cmUnrealizedPNL": "20.00000000", "updateTime": 6,
         "negativeBalance": "0"}],
        maint_margin="1000", initial_margin="1200", collateral_rate="0.9")
    sim.update_account(KEY, pm=pm)
    account = get_json(sim, "/papi/v1/account")
    assert account["actualEquity"] == "1420.00000000"  # 1000 - 100 + 500 + 20, every asset at price 1
    assert account["accountEquity"] == "1278.00000000" and account["uniMMR"] == "1.27800000"
    assert account["accountStatus"] == "MARGIN_CALL" and account["virtualMaxWithdrawAmount"] == "78.00000000"
    assert account["totalAvailableBalance"] == "" and account["totalMarginOpenLoss"] == ""
    for maint, status in (("800", "NORMAL"), ("1150", "REDUCE_ONLY"), ("1250", "FORCE_LIQUIDATION")):
        sim.update_account(KEY, pm=SimPortfolio(balances=pm.balances, maint_margin=maint, collateral_rate="0.9"))
        assert get_json(sim, "/papi/v1/account")["accountStatus"] == status
    sim.update_account(KEY, pm=SimPortfolio(balances=pm.balances, maint_margin="1000", initial_margin="1200",
                                            blanks=False, status="SUPPLY_MARGIN"))
    account = get_json(sim, "/papi/v1/account")
    assert account["totalAvailableBalance"] == "220.00000000" and account["totalMarginOpenLoss"] == "0.00000000"
    assert account["accountStatus"] == "SUPPLY_MARGIN"
    one = get_json(sim, "/papi/v1/balance", "asset=USDC")
    assert isinstance(one, dict) and one["cmUnrealizedPNL"] == "20.00000000" and "crossMarginAsset" not in one
    assert get_json(sim, "/papi/v1/balance", "asset=BNB")["totalWalletBalance"] == "0.00000000"
    assert [r["asset"] for r in get_json(sim, "/papi/v1/balance")] == ["USDT", "USDC"]


# -- sub-accounts --------------------------------------------------------------------------
def subs(n: int) -> list[SimSubAccount]:
    return [SimSubAccount(f"sub{i}@example.com", frozen=i == 2,
                          usdm=SimFutures([{"asset": "USDT", "balance": f"{100 + i}.00000000",
                                            "crossWalletBalance": f"{100 + i}.00000000", "crossUnPnl": "0.00000000",
                                            "availableBalance": "90.00000000", "maxWithdrawAmount": "80.00000000",
                                            "marginAvailable": True, "updateTime": 1000 + i}],
                                          [SimPosition("BTCUSDT", "0.010", "60000", "61000")] if i == 0 else []),
                          coinm=SimFutures() if i == 1 else None)
            for i in range(n)]


def test_sub_account_list_paging_and_filters(sim: Simulator) -> None:
    sim.update_account(KEY, sub_accounts=subs(5))

    def emails(params: str) -> list[str]:
        return [s["email"] for s in get_json(sim, "/sapi/v1/sub-account/list", params)["subAccounts"]]

    assert emails("") == ["sub0@example.com"]  # the doc's default limit is 1
    assert [emails(f"page={p}&limit=2") for p in (1, 2, 3, 4)] == [
        ["sub0@example.com", "sub1@example.com"], ["sub2@example.com", "sub3@example.com"], ["sub4@example.com"], []]
    assert len(emails("limit=200")) == 5
    assert emails("email=sub3%40example.com&limit=10") == ["sub3@example.com"]
    assert emails("isFreeze=true&limit=10") == ["sub2@example.com"]
    for bad in ("limit=201", "limit=0", "page=0", "limit=x"):
        name = bad.split("=")[0]
        assert_error(signed_get(sim, path="/sapi/v1/sub-account/list", params=bad), 400, -1130,
                     f"Data sent for parameter '{name}' is not valid.")
    entry = get_json(sim, "/sapi/v1/sub-account/list", "page=3&limit=2")["subAccounts"][0]
    assert isinstance(entry["subUserId"], int) and entry["isFreeze"] is False and entry["remark"] == ""


def test_sub_account_futures_answers_and_errors(sim: Simulator) -> None:
    sim.update_account(KEY, sub_accounts=subs(3))
    path = "/sapi/v2/sub-account/futures/account"
    usdm = get_json(sim, path, "email=sub0%40example.com&futuresType=1")
    assert list(usdm) == ["futureAccountResp"]
    resp = usdm["futureAccountResp"]
    asset = resp["assets"][0]
    assert asset["walletBalance"] == "100.00000000" and asset["maxWithdrawAmount"] == "80.00000000"
    assert close(asset["unrealizedProfit"], D("0.010") * 1000) and close(asset["maintenanceMargin"], D("2.44"))
    assert close(asset["marginBalance"], D(asset["walletBalance"]) + D(asset["unrealizedProfit"]))
    for total, name in (("totalWalletBalance", "walletBalance"), ("totalMaintenanceMargin", "maintenanceMargin"),
                        ("totalMarginBalance", "marginBalance"), ("totalUnrealizedProfit", "unrealizedProfit"),
                        ("maxWithdrawAmount", "maxWithdrawAmount"), ("totalInitialMargin", "initialMargin")):
        assert close(resp[total], sum(D(a[name]) for a in resp["assets"]))
    assert resp["updateTime"] == 1000 and resp["canTrade"] is True and "asset" not in resp
    assert "availableBalance" not in json.dumps(usdm)
    frozen = get_json(sim, path, "email=sub2%40example.com&futuresType=1")["futureAccountResp"]
    assert frozen["canTrade"] is False
    coinm = get_json(sim, path, "email=sub1%40example.com&futuresType=2")
    assert list(coinm) == ["deliveryAccountResp"] and "totalWalletBalance" not in coinm["deliveryAccountResp"]
    assert "maxWithdrawAmount" not in coinm["deliveryAccountResp"]
    assert_error(signed_get(sim, path=path, params="email=sub0%40example.com&futuresType=2"), 400, -5011,
                 "future account not exists.")
    assert_error(signed_get(sim, path=path, params="email=someone%40else.com&futuresType=1"), 400, -5012,
                 "future account or sub relation not exists.")
    other = signed_get(sim, path=path, params="email=sub0%40example.com&futuresType=1", key=OTHER_KEY,
                       signer=hmac_signer(OTHER_SECRET))  # not this master's sub-account
    assert_error(other, 400, -5012)
    assert_error(signed_get(sim, path=path, params="futuresType=1"), 400, -1102,
                 "Mandatory parameter 'email' was not sent, was empty/null, or malformed.")
    assert_error(signed_get(sim, path=path, params="email=sub0%40example.com"), 400, -1102)
    assert_error(signed_get(sim, path=path, params="email=sub0%40example.com&futuresType=3"), 400, -1130)


def test_sub_accounts_change_while_serving(sim: Simulator) -> None:
    sim.update_account(KEY, sub_accounts=subs(3))
    path = "/sapi/v2/sub-account/futures/account"
    query = "email=sub1%40example.com&futuresType=1"
    assert get_json(sim, path, query)["futureAccountResp"]["totalWalletBalance"] == "101.00000000"
    sim.remove_sub_account(KEY, "sub1@example.com")
    listed = [s["email"] for s in get_json(sim, "/sapi/v1/sub-account/list", "limit=200")["subAccounts"]]
    assert listed == ["sub0@example.com", "sub2@example.com"]
    assert_error(signed_get(sim, path=path, params=query), 400, -5012)
    sim.add_sub_account(KEY, SimSubAccount("sub1@example.com", usdm=SimFutures(
        [{"asset": "USDT", "balance": "7.00000000", "crossWalletBalance": "7.00000000", "crossUnPnl": "0.00000000",
          "availableBalance": "7.00000000", "maxWithdrawAmount": "7.00000000", "marginAvailable": True,
          "updateTime": 9}])))
    assert get_json(sim, path, query)["futureAccountResp"]["totalWalletBalance"] == "7.00000000"
    sim.add_sub_account(KEY, SimSubAccount("sub1@example.com", usdm=None))  # same email: replaced
    assert_error(signed_get(sim, path=path, params=query), 400, -5011)
    with pytest.raises(KeyError):
        sim.add_sub_account("unknown", SimSubAccount("x@example.com"))


# -- signed requests -----------------------------------------------------------------------
def test_hmac_signed_request_gets_exact_payload_on_v2_and_v3(sim: Simulator) -> None:
    for path in ("/fapi/v3/balance", "/fapi/v2/balance"):
        resp = signed_get(sim, path=path)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.content == EXAMPLE_BODY


def test_hmac_matches_official_derived_vector() -> None:
    creds = Credentials.create(SECRET, None)
    payload = b"recvWindow=5000&timestamp=1591702613943"
    assert creds.verify(payload, "5581570ecf76b9b74c6f1a66ef6520c2959a75c32641affb2634d655d6e64db8")
    assert not creds.verify(payload, "84901bbeed96ffa9adf9995c40fcadcb0a9ddad37c2605ce82491f2c771077a6")


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_every_signed_endpoint_checks_key_time_and_signature(sim: Simulator, path: str) -> None:
    sim.update_account(KEY, sub_accounts=[SimSubAccount("a@example.com")])
    params = "email=a%40example.com&futuresType=1" if "futures" in path else ""
    assert signed_get(sim, path=path, params=params).status_code == 200
    assert_error(signed_get(sim, path=path, params=params, signer=hmac_signer("wrong")), 400, -1022,
                 "Signature for this request is not valid.")
    assert_error(signed_get(sim, path=path, params=params, key="nobody"), 401, -2015,
                 "Invalid API-key, IP, or permissions for action.")
    assert_error(signed_get(sim, path=path, params=params, key=None), 401, -2014, "API-key format invalid.")
    assert_error(signed_get(sim, path=path, params=params, timestamp=now_ms() - 6000), 400, -1021,
                 "Timestamp for this request is outside of the recvWindow.")
    assert_error(signed_get(sim, path=path, params=params, timestamp=now_ms() + 2000), 400, -1021,
                 "Timestamp for this request was 1000ms ahead of the server's time.")
    assert_error(signed_get(sim, path=path, params=params, recv_window=70_000), 400, -1130)
    assert_error(raw_get(sim, f"{path}?timestamp={now_ms()}"), 400, -1102,
                 "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
    # The parameters are signed too: tamper with one after signing.
    if params:
        ts = now_ms()
        query = f"{params}&timestamp={ts}"
        sig = hmac_signer(SECRET)(query)
        tampered = query.replace("futuresType=1", "futuresType=2")
        assert_error(raw_get(sim, f"{path}?{tampered}&signature={sig}"), 400, -1022)


def test_signature_checks(sim: Simulator) -> None:
    upper = signed_get(sim, signer=lambda q: hmac_signer(SECRET)(q).upper())
    assert upper.status_code == 200
    # Signed over one parameter order, sent in another: the raw query is what counts.
    ts = now_ms()
    sig = hmac_signer(SECRET)(f"timestamp={ts}&recvWindow=5000")
    assert_error(raw_get(sim, f"/fapi/v3/balance?recvWindow=5000&timestamp={ts}&signature={sig}"), 400, -1022)


def test_api_key_checks(sim: Simulator) -> None:
    assert_error(signed_get(sim, key="has space"), 401, -2014)
    assert_error(signed_get(sim, key=""), 401, -2014)


def test_parameter_checks(sim: Simulator) -> None:
    sig = "0" * 64
    assert_error(
        raw_get(sim, f"/fapi/v3/balance?recvWindow=5000&signature={sig}"),
        400,
        -1102,
        "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
    )
    assert_error(raw_get(sim, f"/fapi/v3/balance?timestamp=12ab&signature={sig}"), 400, -1102)
    assert_error(
        signed_get(sim, recv_window=70_000), 400, -1130, "Data sent for parameter 'recvWindow' is not valid."
    )
    assert_error(signed_get(sim, recv_window=0), 400, -1130)
    ts = now_ms()
    good = hmac_signer(SECRET)(f"timestamp={ts}")
    assert_error(raw_get(sim, f"/fapi/v3/balance?timestamp={ts}&signature={good}&recvWindow=5000"), 400, -1102)
    assert_error(raw_get(sim, f"/fapi/v3/balance?timestamp={ts}&timestamp={ts}&signature={good}"), 400, -1101)
    assert signed_get(sim, recv_window=None).status_code == 200  # recvWindow defaults to 5000


def test_timing_rule(sim: Simulator) -> None:
    assert signed_get(sim, timestamp=now_ms() - 6000, recv_window=60_000).status_code == 200
    sim.clock_skew_ms = -10_000  # our clock runs ahead of the server's
    assert_error(signed_get(sim, timestamp=int(time.time() * 1000)), 400, -1021)
    assert signed_get(sim).status_code == 200  # timestamp from server time


def test_recv_window_cap_can_be_disabled() -> None:
    with Simulator([SimAccount(KEY, api_secret=SECRET)], max_recv_window_ms=None) as sim:
        assert signed_get(sim, recv_window=9_999_999).status_code == 200


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_keypair_accounts(kind: str) -> None:
    private: Any
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        sign: Callable[[bytes], bytes] = private.sign
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sign = lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with Simulator([SimAccount("kp-key", public_key_pem=pem)]) as sim:
        signer = keypair_signer(sign)
        ok = signed_get(sim, key="kp-key", signer=signer)
        assert ok.status_code == 200 and ok.content == EXAMPLE_BODY
        assert signed_get(sim, key="kp-key", signer=signer, path="/papi/v1/account").status_code == 200
        # Signed for one recvWindow, sent with another.
        ts = now_ms()
        sig = signer(f"recvWindow=5000&timestamp={ts}")
        tampered = raw_get(sim, f"/fapi/v3/balance?recvWindow=6000&timestamp={ts}&signature={sig}", key="kp-key")
        assert_error(tampered, 400, -1022)
        assert_error(signed_get(sim, key="kp-key", signer=hmac_signer("x")), 400, -1022)


def test_account_needs_exactly_one_credential() -> None:
    with pytest.raises(ValueError):
        Simulator([SimAccount("k")])


# -- state ---------------------------------------------------------------------------------
def test_set_balances_add_account_update_and_alias(sim: Simulator) -> None:
    rows = [
        {"asset": "BTC", "balance": "1.00000000", "crossWalletBalance": "1.00000000", "crossUnPnl": "0.00000000",
         "availableBalance": "1.00000000", "maxWithdrawAmount": "1.00000000", "marginAvailable": True,
         "updateTime": 0},
    ]
    sim.set_balances(KEY, rows)
    rows[0]["balance"] = "mutated after the call"
    body = signed_get(sim).json()
    assert body[0]["balance"] == "1.00000000" and body[0]["accountAlias"] == "SgsR"
    sim.update_account(KEY, account_alias="NeWa")
    assert signed_get(sim).json()[0]["accountAlias"] == "NeWa"
    sim.add_account(SimAccount("late", api_secret="late-secret", account_alias="XyZw"))
    late = signed_get(sim, key="late", signer=hmac_signer("late-secret")).json()
    assert late[0]["accountAlias"] == "XyZw"
    with pytest.raises(KeyError):
        sim.set_balances("unknown", rows)
    with pytest.raises(ValueError):
        sim.update_account(KEY, api_key="changed")
    sim.update_account(KEY, api_secret="rotated")  # new credentials apply at once
    assert_error(signed_get(sim), 400, -1022)
    assert signed_get(sim, signer=hmac_signer("rotated")).status_code == 200


# -- rate limits ---------------------------------------------------------------------------
def test_used_weight_header_counts_per_ip(sim: Simulator) -> None:
    skew_to_minute_start(sim)
    assert weight(raw_get(sim, "/fapi/v1/time")) == 1
    assert weight(signed_get(sim)) == 6
    assert weight(signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET))) == 11  # shared per IP
    assert weight(signed_get(sim, path="/fapi/v2/balance")) == 16
    assert weight(signed_get(sim, signer=hmac_signer("bad"))) == 21  # charged before validation
    assert weight(raw_get(sim, "/fapi/v1/ping")) == 22
    assert weight(signed_get(sim, path="/fapi/v3/account")) == 27
    assert weight(signed_get(sim, path="/fapi/v2/positionRisk")) == 32
    assert sim.stats()["used_weight"] == 32


def test_each_api_family_has_its_own_counter_and_header(sim: Simulator) -> None:
    skew_to_minute_start(sim)
    sim.update_account(KEY, sub_accounts=[SimSubAccount("a@example.com")])
    expected = [("/dapi/v1/balance", 1), ("/dapi/v1/account", 6), ("/dapi/v1/positionRisk", 7),
                ("/dapi/v1/time", 8), ("/papi/v1/balance", 20), ("/papi/v1/account", 40), ("/papi/v1/ping", 41),
                ("/fapi/v3/account", 5), ("/fapi/v3/positionRisk", 10), ("/api/v3/time", 1)]
    for path, used in expected:
        resp = signed_get(sim, path=path) if "time" not in path and "ping" not in path else raw_get(sim, path)
        assert resp.status_code == 200 and weight(resp) == used, path
        assert "X-SAPI-USED-IP-WEIGHT-1M" not in resp.headers
    # /sapi: per endpoint, in its own header only.
    for used in (1, 2, 3):
        listed = signed_get(sim, path="/sapi/v1/sub-account/list")
        assert weight(listed, "X-SAPI-USED-IP-WEIGHT-1M") == used and "X-MBX-USED-WEIGHT-1M" not in listed.headers
    futures = signed_get(sim, path="/sapi/v2/sub-account/futures/account", params="email=a%40example.com&futuresType=1")
    assert weight(futures, "X-SAPI-USED-IP-WEIGHT-1M") == 1
    assert sim.used_weight("sapi", path="/sapi/v1/sub-account/list") == 3 and sim.used_weight("papi") == 41
    assert sim.used_weight("dapi") == 8 and sim.used_weight("api") == 1 and sim.stats()["used_weight"] == 10


def test_a_ban_on_one_family_leaves_the_others_alone() -> None:
    with Simulator([SimAccount(KEY, api_secret=SECRET, sub_accounts=[SimSubAccount("a@example.com")])],
                   dapi_weight_limit=3, sapi_weight_limit=2, send_retry_after=False, ban_after_429s=1) as sim:
        skew_to_minute_start(sim)
        statuses = [signed_get(sim, path="/dapi/v1/balance").status_code for _ in range(6)]
        assert statuses == [200, 200, 200, 429, 429, 418]
        assert_error(raw_get(sim, "/dapi/v1/time"), 418, -1003)
        assert "Retry-After" not in raw_get(sim, "/dapi/v1/time").headers
        for path in ("/fapi/v3/account", "/papi/v1/account", "/sapi/v1/sub-account/list"):
            assert signed_get(sim, path=path).status_code == 200, path
        assert raw_get(sim, "/api/v3/time").status_code == 200
        assert signed_get(sim, path="/sapi/v1/sub-account/list").status_code == 200
        refused = signed_get(sim, path="/sapi/v1/sub-account/list")
        # /sapi: the spot wording, and Retry-After always (documented for /api and /sapi).
        assert_error(refused, 429, -1003, "Too much request weight used; current limit is 2 request weight per "
                     "1 MINUTE. Please use the websocket for live updates to avoid polling the API.")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        other = signed_get(sim, path="/sapi/v2/sub-account/futures/account",
                           params="email=a%40example.com&futuresType=1")
        assert other.status_code == 200  # another /sapi endpoint: its own budget


def test_weights_are_configurable() -> None:
    with Simulator([SimAccount(KEY, api_secret=SECRET)], v2_balance_weight=10,
                   weights={"/fapi/v2/account": 10, "/papi/v1/ping": 3}) as sim:
        skew_to_minute_start(sim)
        assert weight(signed_get(sim, path="/fapi/v2/balance")) == 10
        assert weight(signed_get(sim, path="/fapi/v2/account")) == 20
        assert weight(raw_get(sim, "/papi/v1/ping")) == 3
        sim.v2_balance_weight = 7
        assert weight(signed_get(sim, path="/fapi/v2/balance")) == 27


def test_429_then_418_ban_then_reset(sim: Simulator) -> None:
    sim.weight_limit = 20
    skew_to_minute_start(sim)
    for _ in range(20):
        assert raw_get(sim, "/fapi/v1/time").status_code == 200
    first = raw_get(sim, "/fapi/v1/time")
    assert_error(
        first,
        429,
        -1003,
        "Too many requests; current limit is 20 requests per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    )
    assert 55 <= int(first.headers["Retry-After"]) <= 60
    for _ in range(3):  # ban_after_429s=3 further requests are still only 429
        assert raw_get(sim, "/fapi/v1/time").status_code == 429
    banned = raw_get(sim, "/fapi/v1/time")
    assert_error(banned, 418, -1003)
    assert re.fullmatch(
        r"Way too many requests; IP banned until \d{13}\. "
        r"Please use the websocket for live updates to avoid bans\.",
        banned.json()["msg"],
    )
    assert banned.headers["Retry-After"] == "120"
    again = signed_get(sim)
    assert again.status_code == 418 and again.json()["msg"] == banned.json()["msg"]
    assert "X-MBX-USED-WEIGHT-1M" in again.headers

    # Repeat offenders: after the first ban expires, the next one lasts twice as long.
    sim.clock_skew_ms += 121_000
    skew_to_minute_start(sim)
    statuses = [raw_get(sim, "/fapi/v1/time").status_code for _ in range(25)]
    assert statuses == [200] * 20 + [429] * 4 + [418]
    assert raw_get(sim, "/fapi/v1/time").headers["Retry-After"] in {"240", "239"}

    sim.reset_rate_limits()
    ok = raw_get(sim, "/fapi/v1/time")
    assert ok.status_code == 200 and weight(ok) == 1


def test_429_without_retry_after() -> None:
    with Simulator(weight_limit=1, send_retry_after=False) as sim:
        skew_to_minute_start(sim)
        assert raw_get(sim, "/fapi/v1/ping").status_code == 200
        refused = raw_get(sim, "/fapi/v1/ping")
        assert refused.status_code == 429 and "Retry-After" not in refused.headers


# -- faults --------------------------------------------------------------------------------
def _json_fails(resp: requests.Response) -> bool:
    try:
        json.loads(resp.content)
    except ValueError:
        return True
    return False


FAULT_EXPECTATIONS: dict[str, Callable[[requests.Response], None]] = {
    "http_500": lambda r: assert_error(r, 500, -1000, "An unknown error occured while processing the request."),
    "http_503": lambda r: assert_error(r, 503, -1001, "Service Unavailable."),
    "http_503_unknown": lambda r: assert_error(
        r, 503, -1000, "Unknown error, please check your request or try again later."
    ),
    "http_408": lambda r: assert_error(
        r, 408, -1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."
    ),
    "auth_2015": lambda r: assert_error(r, 401, -2015),
    "timestamp_1021": lambda r: assert_error(r, 400, -1021, "Timestamp for this request is outside of the recvWindow."),
}
RAW = Fault("raw", times=1, status=502, headers=[("Content-Type", "text/plain"), ("X-Custom", "yes")],
            body=b"upstream \xff broke")


def _check_fault_answer(kind: str, resp: requests.Response, normal: bytes) -> None:
    if kind != "raw":
        assert "X-MBX-USED-WEIGHT-1M" in resp.headers
    if kind in FAULT_EXPECTATIONS:
        FAULT_EXPECTATIONS[kind](resp)
    elif kind == "not_a_list":
        assert resp.status_code == 200 and resp.json() == {"foo": 1}
    elif kind == "html_403":
        assert resp.status_code == 403 and resp.headers["Content-Type"].startswith("text/html")
        assert _json_fails(resp)
    elif kind == "truncated_json":
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
        assert int(resp.headers["Content-Length"]) == len(resp.content) == len(normal) // 2
        assert normal.startswith(resp.content) and _json_fails(resp)
    elif kind == "wrong_types":
        assert resp.status_code == 200
        for row in resp.json():
            for name in ("balance", "crossWalletBalance", "availableBalance"):
                value = row[name]
                assert not isinstance(value, str) or not re.fullmatch(r"-?\d+(\.\d+)?", value)
    elif kind == "missing_fields":
        rows = resp.json()
        assert resp.status_code == 200 and rows and all("availableBalance" not in row for row in rows)
        with pytest.raises(parsing.BadResponse):
            parsing.parse_balance(resp.content)
    elif kind == "rate_limit_429":
        assert_error(resp, 429, -1003)
        assert resp.headers["Retry-After"] == "30"
    elif kind == "ban_418":
        assert_error(resp, 418, -1003)
        assert resp.headers["Retry-After"] == "30" and "IP banned until" in resp.json()["msg"]
    elif kind == "latency":
        assert resp.status_code == 200 and resp.content == normal
    elif kind == "raw":
        assert resp.status_code == 502 and resp.content == b"upstream \xff broke"
        assert dict(resp.headers) == {"Content-Type": "text/plain", "X-Custom": "yes", "Content-Length": "16"}
    else:
        raise AssertionError(f"no expectation for {kind}")


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "reset"])
def test_account_fault_kinds_and_times(sim: Simulator, kind: str) -> None:
    normal = signed_get(sim).content
    sim.set_fault(KEY, RAW if kind == "raw" else Fault(kind, times=1, latency_s=0.2))
    started = time.monotonic()
    resp = signed_get(sim)
    if kind == "latency":
        assert time.monotonic() - started >= 0.2
    _check_fault_answer(kind, resp, normal)
    after = signed_get(sim)  # times=1: cleared itself
    assert after.status_code == 200 and after.content == normal


@pytest.mark.parametrize("path", ["/fapi/v3/account", "/papi/v1/account", "/dapi/v1/positionRisk"])
@pytest.mark.parametrize("kind", ["wrong_types", "missing_fields"])
def test_payload_faults_break_every_answer_for_the_parser(sim: Simulator, path: str, kind: str) -> None:
    parse = {"/fapi/v3/account": parsing.parse_usdm_account, "/papi/v1/account": parsing.parse_pm_account,
             "/dapi/v1/positionRisk": parsing.parse_position_risk}[path]
    sim.update_account(KEY, coinm_positions=[SimPosition("BTCUSD_PERP", "3", "60000", "61000")])
    parse(signed_get(sim, path=path).content)
    sim.set_fault(KEY, Fault(kind, times=1))
    resp = signed_get(sim, path=path)
    assert resp.status_code == 200
    if kind == "wrong_types" or path != "/papi/v1/account":  # PM requires no field: nothing to remove
        with pytest.raises(parsing.BadResponse):
            parse(resp.content)


def test_reset_fault_aborts_connection(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("reset", times=1))
    with pytest.raises(requests.ConnectionError):
        signed_get(sim)
    assert signed_get(sim).status_code == 200


def test_fault_scope_and_lifetime(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("http_500", times=2))
    assert signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET)).status_code == 200
    assert raw_get(sim, "/fapi/v1/time").status_code == 200  # account faults: signed requests only
    assert [signed_get(sim).status_code for _ in range(3)] == [500, 500, 200]
    sim.set_fault(KEY, Fault("http_503"))  # times=None: until cleared
    assert [signed_get(sim, path=p).status_code for p in ("/fapi/v3/balance", "/dapi/v1/balance",
                                                          "/sapi/v1/sub-account/list")] == [503] * 3
    sim.set_fault(KEY, None)
    assert signed_get(sim).status_code == 200
    assert_error(signed_get(sim, signer=hmac_signer("bad")), 400, -1022)  # validation comes first
    with pytest.raises(ValueError):
        Fault("nope")
    with pytest.raises(ValueError):
        Fault("raw", status=42)


def test_faults_for_one_path(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("http_500", path="/fapi/v3/positionRisk"))
    sim.set_fault(KEY, Fault("raw", path="/fapi/v3/account", status=200, body=b"[]",
                             headers=[("Content-Type", "application/json")]))
    assert signed_get(sim).status_code == 200
    assert signed_get(sim, path="/fapi/v3/positionRisk").status_code == 500
    assert signed_get(sim, path="/fapi/v3/account").content == b"[]"
    assert signed_get(sim, path="/fapi/v3/positionRisk", key=OTHER_KEY,
                      signer=hmac_signer(OTHER_SECRET)).status_code == 200
    sim.set_fault(KEY, Fault("http_503", times=1))  # path-less: the others take precedence on their path
    assert signed_get(sim, path="/fapi/v3/positionRisk").status_code == 500
    assert signed_get(sim).status_code == 503
    sim.set_fault(KEY, None)  # clears every path
    assert signed_get(sim, path="/fapi/v3/positionRisk").status_code == 200
    sim.set_global_fault(Fault("html_403", path="/fapi/v1/time", times=1))
    assert raw_get(sim, "/fapi/v1/ping").status_code == 200
    assert raw_get(sim, "/fapi/v1/time").status_code == 403
    assert raw_get(sim, "/fapi/v1/time").status_code == 200


def test_fault_retry_after_can_be_omitted_and_429_fault_names_the_familys_limit(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("rate_limit_429", retry_after_s=None))
    resp = signed_get(sim)
    assert resp.status_code == 429 and "Retry-After" not in resp.headers
    resp = signed_get(sim, path="/papi/v1/balance")
    assert "current limit is 6000 requests per minute" in resp.json()["msg"]


def test_global_fault_hits_every_path(sim: Simulator) -> None:
    sim.set_global_fault(Fault("http_500"))
    assert raw_get(sim, "/fapi/v1/ping").status_code == 500
    assert raw_get(sim, "/fapi/v1/time").status_code == 500
    assert raw_get(sim, "/api/v3/time").status_code == 500
    assert signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET)).status_code == 500
    sim.set_global_fault(Fault("missing_fields", times=1))
    assert raw_get(sim, "/fapi/v1/time").json() == {}
    assert "serverTime" in raw_get(sim, "/fapi/v1/time").json()
    sim.set_global_fault(Fault("reset", times=1))
    with pytest.raises(requests.ConnectionError):
        raw_get(sim, "/fapi/v1/ping")
    assert raw_get(sim, "/fapi/v1/ping").status_code == 200
    sim.set_global_fault(RAW)
    _check_fault_answer("raw", raw_get(sim, "/papi/v1/ping"), b"")


# -- HTTP plumbing -------------------------------------------------------------------------
def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    with requests.Session() as session:
        for i in range(20):
            if i % 5 == 4:  # error answers must not close the connection either
                assert signed_get(sim, signer=hmac_signer("bad"), session=session).status_code == 400
            else:
                assert signed_get(sim, session=session).status_code == 200
    stats = sim.stats()
    assert stats["connections"] == 1
    assert stats["requests"] == 20
    assert stats["requests_by_path"] == {"/fapi/v3/balance": 20}
    assert stats["requests_by_key"] == {KEY: 20}


def test_stop_is_quick_with_open_and_busy_connections() -> None:
    sim = Simulator([SimAccount(KEY, api_secret=SECRET)])
    sim.start()
    session = requests.Session()
    assert session.get(sim.base_url + "/fapi/v1/ping", timeout=TIMEOUT).status_code == 200  # idle keep-alive
    sim.latency_s = 30.0
    slow_errors: list[BaseException] = []

    def slow_call() -> None:
        try:
            signed_get(sim)
        except requests.RequestException as exc:
            slow_errors.append(exc)

    worker = threading.Thread(target=slow_call)
    worker.start()
    wait_until(lambda: sim.stats()["requests"] == 2)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.0
    worker.join(timeout=2)
    assert not worker.is_alive() and slow_errors
    with pytest.raises(requests.ConnectionError):
        session.get(sim.base_url + "/fapi/v1/ping", timeout=TIMEOUT)
    session.close()


def test_slow_requests_are_served_concurrently() -> None:
    accounts = [SimAccount(f"k{i}", api_secret=f"s{i}") for i in range(60)]
    with Simulator(accounts, latency_s=0.3) as sim:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=60) as pool:
            codes = list(
                pool.map(lambda i: signed_get(sim, key=f"k{i}", signer=hmac_signer(f"s{i}")).status_code, range(60))
            )
        elapsed = time.monotonic() - started
        assert codes == [200] * 60
        assert 0.3 <= elapsed < 2.5  # serialised would take 18 s
        assert sim.stats()["connections"] == 60


# -- drift ---------------------------------------------------------------------------------
DRIFT_ROWS = [
    {"asset": "USDT", "balance": "10000.00000000", "crossWalletBalance": "9800.00000000",
     "crossUnPnl": "150.00000000", "availableBalance": "9000.00000000", "maxWithdrawAmount": "8900.00000000",
     "marginAvailable": True, "updateTime": 1},
    {"asset": "BNB", "balance": "0.00000000", "crossWalletBalance": "0.00000000", "crossUnPnl": "0.00000000",
     "availableBalance": "0.00000000", "maxWithdrawAmount": "0.00000000", "marginAvailable": True,
     "updateTime": 0},
]
DECIMAL_RE = re.compile(r"-?\d+\.\d{8}")


def _check_drift_invariants(rows: list[dict[str, Any]], server_ms: int) -> None:
    usdt, bnb = rows
    for name in ("balance", "crossWalletBalance", "crossUnPnl", "availableBalance", "maxWithdrawAmount"):
        assert DECIMAL_RE.fullmatch(usdt[name]), usdt[name]
        assert bnb[name] == "0.00000000"
    assert float(usdt["maxWithdrawAmount"]) <= float(usdt["availableBalance"]) <= float(usdt["crossWalletBalance"])
    assert abs(float(usdt["balance"]) - 10000) <= 10000 * 0.04
    assert abs(usdt["updateTime"] - server_ms) < 2000


def test_drift_moves_with_server_time_and_keeps_invariants(sim: Simulator) -> None:
    sim.add_account(SimAccount("drift", api_secret="drift-secret", balances=DRIFT_ROWS, drift=True))
    signer = hmac_signer("drift-secret")
    seen: list[dict[str, Any]] = []
    for step in range(12):  # a full 600 s period, driven by the clock skew rather than sleeping
        sim.clock_skew_ms = step * 50_000
        resp = signed_get(sim, key="drift", signer=signer)
        assert resp.status_code == 200
        rows = resp.json()
        _check_drift_invariants(rows, now_ms(sim))
        seen.append(rows[0])
    assert len({row["balance"] for row in seen}) == len(seen)
    assert min(float(row["crossUnPnl"]) for row in seen) < 0 < max(float(row["crossUnPnl"]) for row in seen)
    # Smooth: consecutive samples 50 s apart move by well under the 3 % amplitude.
    for a, b in itertools.pairwise(seen):
        assert abs(float(a["balance"]) - float(b["balance"])) < 10000 * 0.03


def test_drift_invariants_dense() -> None:
    rows = [dict(DRIFT_ROWS[0], availableBalance="9800.00000000", maxWithdrawAmount="9800.00000000"), DRIFT_ROWS[1]]
    for second in range(0, 1200, 3):
        server_ms = 1_700_000_000_000 + second * 1000
        _check_drift_invariants(drift_rows(rows, USDM_BALANCE, "any", server_ms), server_ms)


def test_drift_moves_mark_prices_and_keeps_positions_consistent() -> None:
    near = SimPosition("ETHUSDT", "-2", "3300", "3420", "BOTH", liquidation_price="3600")
    accounts = [SimAccount(KEY, api_secret=SECRET, drift=True, positions=[near]),
                SimAccount(OTHER_KEY, api_secret=OTHER_SECRET, drift=True,
                           positions=[SimPosition("ETHUSDT", "1", "3000", "3420")])]
    base_distance = (3600 - 3420) / 3420
    with Simulator(accounts) as sim:
        marks, distances = set(), []
        for step in range(24):
            sim.clock_skew_ms = step * 25_000
            (row,) = get_json(sim, "/fapi/v3/positionRisk")
            (other,) = get_json(sim, "/fapi/v3/positionRisk", key=OTHER_KEY, secret=OTHER_SECRET)
            # A mark price belongs to the symbol (the two requests are some ms of drift apart).
            assert abs(D(row["markPrice"]) / D(other["markPrice"]) - 1) < D("0.0001")
            same_instant = [drift_account(a, 1_700_000_000_000 + step * 25_000).positions[0].mark_price
                            for a in accounts]
            assert same_instant[0] == same_instant[1]
            mark, liq = D(row["markPrice"]), D(row["liquidationPrice"])
            assert liq > mark and close(row["unRealizedProfit"], (mark - 3300) * -2)
            distances.append(float((liq - mark) / mark))
            marks.add(row["markPrice"])
            account = get_json(sim, "/fapi/v3/account")
            usdt, (position,) = account["assets"][0], account["positions"]  # one answer: one instant
            assert close(usdt["marginBalance"], D(usdt["walletBalance"]) + D(position["unrealizedProfit"]))
            assert usdt["unrealizedProfit"] == position["unrealizedProfit"] != "0.00000000"
            assert close(usdt["maintMargin"], position["maintMargin"])
        assert len(marks) == 24 and all(abs(float(m) / 3420 - 1) < 0.025 for m in marks)
        assert all(0.7 * base_distance <= d <= 1.3 * base_distance for d in distances)
        assert max(distances) - min(distances) > 0.2 * base_distance  # it does move


# -- demo ----------------------------------------------------------------------------------
def test_demo_config_and_its_alerts_hold_while_drifting() -> None:
    sim, config = start_demo()
    try:
        assert isinstance(config, Config) and [a.alias for a in config.accounts] == list(DEMO_ACCOUNTS)
        by_alias = {a.alias: a for a in config.accounts}
        assert {m for a in config.accounts for m in a.markets} == {"usdm", "coinm", "pm"}
        for account in config.accounts:
            urls = {account.base_url_for(m) for m in ("usdm", "coinm", "pm", "sapi")}
            assert urls == {sim.base_url} and account.host_label == "demo-simulator"
        hedge, master = by_alias["hedge"], by_alias["master"]
        assert hedge.endpoint == "account" and hedge.positions and hedge.max_margin_ratio
        assert master.sub_accounts is not None and master.sub_accounts.aliases
        assert by_alias["portfolio"].min_uni_mmr

        def call(alias: str, path: str, params: str = "") -> Any:
            account = by_alias[alias]
            key = account.api_key.reveal()
            ts = sim.server_time_ms()
            query = (params + "&" if params else "") + f"timestamp={ts}"
            url = f"{sim.base_url}{path}?{query}&signature={account.signer.sign(query)}"
            resp = requests.get(url, headers={"X-MBX-APIKEY": key}, timeout=TIMEOUT)
            assert resp.status_code == 200, resp.text
            return resp.json()

        for step in range(20):  # two drift periods
            sim.clock_skew_ms = step * 60_000
            risk = call("hedge", "/fapi/v3/positionRisk")
            distances = [abs(D(r["markPrice"]) - D(r["liquidationPrice"])) / D(r["markPrice"]) for r in risk]
            assert min(distances) < D(hedge.min_liquidation_distance)  # one position near liquidation
            assert max(distances) > D(hedge.min_liquidation_distance)
            usdt = next(r for r in call("grid-bot", "/fapi/v3/balance") if r["asset"] == "USDT")
            assert float(usdt["availableBalance"]) < by_alias["grid-bot"].min_available_balance["USDT"]
            assert float(call("portfolio", "/papi/v1/account")["uniMMR"]) > 0
        emails = [s["email"] for s in call("master", "/sapi/v1/sub-account/list", "limit=200")["subAccounts"]]
        assert len(emails) >= 3 and call("main", "/dapi/v1/balance")
    finally:
        sim.stop()


# -- standalone process --------------------------------------------------------------------
def _read_line(proc: subprocess.Popen[str], deadline_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=deadline_s):
            raise AssertionError("simulator printed nothing before the deadline")
    return proc.stdout.readline().strip()


def test_standalone_process(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "testkit", "--accounts", "2", "--stats-file", str(stats_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        url = _read_line(proc, 10.0)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert requests.get(url + "/fapi/v1/ping", timeout=TIMEOUT).json() == {}
        ts = now_ms()
        query = f"timestamp={ts}"
        sig = hmac_signer("secret-0001")(query)
        resp = requests.get(f"{url}/fapi/v3/balance?{query}&signature={sig}",
                            headers={"X-MBX-APIKEY": "key-0001"}, timeout=TIMEOUT)
        assert resp.status_code == 200 and [r["asset"] for r in resp.json()] == ["USDT", "USDC", "BNB"]
        proc.send_signal(signal.SIGUSR1)
        wait_until(stats_file.exists)
        assert json.loads(stats_file.read_text())["requests"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        final = json.loads(stats_file.read_text())
        assert final["requests_by_key"] == {"key-0001": 1}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_every_fault_kind_is_covered() -> None:
    covered = set(FAULT_EXPECTATIONS) | {"not_a_list", "html_403", "truncated_json", "wrong_types", "missing_fields",
                                         "rate_limit_429", "ban_418", "latency", "reset", "raw"}
    assert covered == set(FAULT_KINDS) and len(FAULT_KINDS) == 16


def test_signatures_are_verified_over_the_percent_encoded_payload(sim: Simulator) -> None:
    """Binance since 2026-01-15 (issue 23): a query signed with a raw `@` is refused with -1022."""
    sim.update_account(KEY, sub_accounts=subs(2))
    path = "/sapi/v2/sub-account/futures/account"
    assert_error(signed_get(sim, path=path, params="email=sub1@example.com&futuresType=1"), 400, -1022,
                 "Signature for this request is not valid.")
    body = get_json(sim, path, "email=sub1%40example.com&futuresType=1")
    assert body["futureAccountResp"]["totalWalletBalance"] == "101.00000000"
