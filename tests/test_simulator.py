"""The Binance simulator, driven over real HTTP exactly as the exporter drives it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from exporter.simulator import FAULT_KINDS, Fault, SimAccount, Simulator
from exporter.simulator.auth import Credentials
from exporter.simulator.drift import drift_rows

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
    timestamp: int | None = None,
    recv_window: int | None = 5000,
    session: requests.Session | None = None,
) -> requests.Response:
    """Build the query exactly like a client would, sign it, and send it."""
    signer = signer or hmac_signer(SECRET)
    ts = now_ms(sim) if timestamp is None else timestamp
    query = (f"recvWindow={recv_window}&" if recv_window is not None else "") + f"timestamp={ts}"
    query += "&signature=" + signer(query)
    headers = {} if key is None else {"X-MBX-APIKEY": key}
    return (session or requests).get(f"{sim.base_url}{path}?{query}", headers=headers, timeout=TIMEOUT)


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


def weight(resp: requests.Response) -> int:
    return int(resp.headers["X-MBX-USED-WEIGHT-1M"])


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


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([SimAccount(KEY, api_secret=SECRET), SimAccount(OTHER_KEY, api_secret=OTHER_SECRET)]) as s:
        yield s


# -- public endpoints ----------------------------------------------------------------------
def test_ping_and_time(sim: Simulator) -> None:
    ping = requests.get(sim.base_url + "/fapi/v1/ping", timeout=TIMEOUT)
    assert ping.status_code == 200 and ping.json() == {}
    assert ping.headers["Content-Type"] == "application/json"
    before = now_ms()
    server_time = requests.get(sim.base_url + "/fapi/v1/time", timeout=TIMEOUT).json()["serverTime"]
    assert isinstance(server_time, int)
    assert before - 5 <= server_time <= now_ms() + 5


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


def test_signature_checks(sim: Simulator) -> None:
    assert_error(signed_get(sim, signer=hmac_signer("wrong")), 400, -1022, "Signature for this request is not valid.")
    upper = signed_get(sim, signer=lambda q: hmac_signer(SECRET)(q).upper())
    assert upper.status_code == 200
    # Signed over one parameter order, sent in another: the raw query is what counts.
    ts = now_ms()
    sig = hmac_signer(SECRET)(f"timestamp={ts}&recvWindow=5000")
    assert_error(raw_get(sim, f"/fapi/v3/balance?recvWindow=5000&timestamp={ts}&signature={sig}"), 400, -1022)


def test_api_key_checks(sim: Simulator) -> None:
    assert_error(signed_get(sim, key="nobody"), 401, -2015, "Invalid API-key, IP, or permissions for action.")
    assert_error(signed_get(sim, key=None), 401, -2014, "API-key format invalid.")
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
    assert_error(
        raw_get(sim, f"/fapi/v3/balance?timestamp={now_ms()}"),
        400,
        -1102,
        "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
    )
    ts = now_ms()
    good = hmac_signer(SECRET)(f"timestamp={ts}")
    assert_error(raw_get(sim, f"/fapi/v3/balance?timestamp={ts}&signature={good}&recvWindow=5000"), 400, -1102)
    assert_error(raw_get(sim, f"/fapi/v3/balance?timestamp={ts}&timestamp={ts}&signature={good}"), 400, -1101)
    assert signed_get(sim, recv_window=None).status_code == 200  # recvWindow defaults to 5000


def test_timing_rule(sim: Simulator) -> None:
    assert_error(
        signed_get(sim, timestamp=now_ms() - 6000),
        400,
        -1021,
        "Timestamp for this request is outside of the recvWindow.",
    )
    assert_error(
        signed_get(sim, timestamp=now_ms() + 2000),
        400,
        -1021,
        "Timestamp for this request was 1000ms ahead of the server's time.",
    )
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
def test_set_balances_add_account_and_alias(sim: Simulator) -> None:
    rows = [
        {"asset": "BTC", "balance": "1.00000000", "crossWalletBalance": "1.00000000", "crossUnPnl": "0.00000000",
         "availableBalance": "1.00000000", "maxWithdrawAmount": "1.00000000", "marginAvailable": True,
         "updateTime": 0},
    ]
    sim.set_balances(KEY, rows)
    rows[0]["balance"] = "mutated after the call"
    body = signed_get(sim).json()
    assert body[0]["balance"] == "1.00000000" and body[0]["accountAlias"] == "SgsR"
    sim.add_account(SimAccount("late", api_secret="late-secret", account_alias="XyZw"))
    late = signed_get(sim, key="late", signer=hmac_signer("late-secret")).json()
    assert late[0]["accountAlias"] == "XyZw"
    with pytest.raises(KeyError):
        sim.set_balances("unknown", rows)


# -- rate limits ---------------------------------------------------------------------------
def test_used_weight_header_counts_per_ip(sim: Simulator) -> None:
    skew_to_minute_start(sim)
    assert weight(raw_get(sim, "/fapi/v1/time")) == 1
    assert weight(signed_get(sim)) == 6
    assert weight(signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET))) == 11  # shared per IP
    assert weight(signed_get(sim, path="/fapi/v2/balance")) == 16
    assert weight(signed_get(sim, signer=hmac_signer("bad"))) == 21  # charged before validation
    assert weight(raw_get(sim, "/fapi/v1/ping")) == 22
    assert sim.stats()["used_weight"] == 22


def test_v2_weight_is_configurable() -> None:
    with Simulator([SimAccount(KEY, api_secret=SECRET)], v2_balance_weight=10) as sim:
        skew_to_minute_start(sim)
        assert weight(signed_get(sim, path="/fapi/v2/balance")) == 10


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


def _check_fault_answer(kind: str, resp: requests.Response, normal: bytes) -> None:
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
    elif kind == "rate_limit_429":
        assert_error(resp, 429, -1003)
        assert resp.headers["Retry-After"] == "30"
    elif kind == "ban_418":
        assert_error(resp, 418, -1003)
        assert resp.headers["Retry-After"] == "30" and "IP banned until" in resp.json()["msg"]
    elif kind == "latency":
        assert resp.status_code == 200 and resp.content == normal
    else:
        raise AssertionError(f"no expectation for {kind}")


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "reset"])
def test_account_fault_kinds_and_times(sim: Simulator, kind: str) -> None:
    normal = signed_get(sim).content
    sim.set_fault(KEY, Fault(kind, times=1, latency_s=0.2))
    started = time.monotonic()
    resp = signed_get(sim)
    if kind == "latency":
        assert time.monotonic() - started >= 0.2
    _check_fault_answer(kind, resp, normal)
    after = signed_get(sim)  # times=1: cleared itself
    assert after.status_code == 200 and after.content == normal


def test_reset_fault_aborts_connection(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("reset", times=1))
    with pytest.raises(requests.ConnectionError):
        signed_get(sim)
    assert signed_get(sim).status_code == 200


def test_fault_scope_and_lifetime(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("http_500", times=2))
    assert signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET)).status_code == 200
    assert raw_get(sim, "/fapi/v1/time").status_code == 200  # account faults: signed balance only
    assert [signed_get(sim).status_code for _ in range(3)] == [500, 500, 200]
    sim.set_fault(KEY, Fault("http_503"))  # times=None: until cleared
    assert [signed_get(sim).status_code for _ in range(3)] == [503] * 3
    sim.set_fault(KEY, None)
    assert signed_get(sim).status_code == 200
    with pytest.raises(ValueError):
        Fault("nope")


def test_fault_retry_after_can_be_omitted(sim: Simulator) -> None:
    sim.set_fault(KEY, Fault("rate_limit_429", retry_after_s=None))
    resp = signed_get(sim)
    assert resp.status_code == 429 and "Retry-After" not in resp.headers


def test_global_fault_hits_every_path(sim: Simulator) -> None:
    sim.set_global_fault(Fault("http_500"))
    assert raw_get(sim, "/fapi/v1/ping").status_code == 500
    assert raw_get(sim, "/fapi/v1/time").status_code == 500
    assert signed_get(sim, key=OTHER_KEY, signer=hmac_signer(OTHER_SECRET)).status_code == 500
    sim.set_global_fault(Fault("missing_fields", times=1))
    assert raw_get(sim, "/fapi/v1/time").json() == {}
    assert "serverTime" in raw_get(sim, "/fapi/v1/time").json()
    sim.set_global_fault(Fault("reset", times=1))
    with pytest.raises(requests.ConnectionError):
        raw_get(sim, "/fapi/v1/ping")
    assert raw_get(sim, "/fapi/v1/ping").status_code == 200


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
    for a, b in zip(seen, seen[1:]):
        assert abs(float(a["balance"]) - float(b["balance"])) < 10000 * 0.03


def test_drift_invariants_dense() -> None:
    rows = [dict(DRIFT_ROWS[0], availableBalance="9800.00000000", maxWithdrawAmount="9800.00000000"), DRIFT_ROWS[1]]
    for second in range(0, 1200, 3):
        server_ms = 1_700_000_000_000 + second * 1000
        _check_drift_invariants(drift_rows(rows, "any", server_ms), server_ms)


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
        [sys.executable, "-m", "exporter.simulator", "--accounts", "2", "--stats-file", str(stats_file)],
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
        assert resp.status_code == 200 and isinstance(resp.json(), list) and resp.json()
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
                                         "rate_limit_429", "ban_418", "latency", "reset"}
    assert covered == set(FAULT_KINDS)
