"""Signing against Binance's published test vectors (binance-api.md §3.2) and key-pair formats."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from freezegun import freeze_time

from exporter.secrets import Secret
from exporter.signing import HmacSigner, build_query, hmac_sha256_hex, load_private_key, signed_query

SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
ORDER_QUERY = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
               "&recvWindow=5000&timestamp=1591702613943")


def test_official_vector_example_1() -> None:
    assert hmac_sha256_hex(SECRET, ORDER_QUERY) == "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_official_vector_mixed_query_and_body_without_separator() -> None:
    payload = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC" + "quantity=1&price=9000&recvWindow=5000&timestamp=1591702613943"
    assert hmac_sha256_hex(SECRET, payload) == "30baaf0fab549bbeda7f5ef201898b34122da25fd23c646cac2c529aebe670a4"


@pytest.mark.parametrize("params, expected", [
    ([("recvWindow", "5000"), ("timestamp", "1591702613943")],
     "5581570ecf76b9b74c6f1a66ef6520c2959a75c32641affb2634d655d6e64db8"),
    ([("timestamp", "1591702613943")], "84901bbeed96ffa9adf9995c40fcadcb0a9ddad37c2605ce82491f2c771077a6"),
    ([("timestamp", "1591702613943"), ("recvWindow", "5000")],
     "b944ea46b707ca97ae6956c3e381b0ceaf517dac418a6d64af1fb3b0e878d11d"),
])
def test_balance_vectors_and_parameter_order(params: list, expected: str) -> None:
    signer = HmacSigner(Secret(SECRET))
    query = signed_query(params, signer)
    assert query == f"{build_query(params)}&signature={expected}"
    assert query.endswith(f"&signature={expected}")  # signature is last, as Binance requires


def test_signed_timestamp_follows_the_clock() -> None:
    from exporter.clock import Clock

    clock = Clock()
    with freeze_time("2020-06-09T11:36:53.943Z"):  # 1591702613943 ms
        assert clock.sync(lambda deadline: 1591702613943 - 2500, deadline=0)
        assert clock.offset_ms == -2500
        assert clock.now_ms() == 1591702613943 - 2500
        query = signed_query([("recvWindow", "5000"), ("timestamp", str(clock.now_ms()))], HmacSigner(Secret(SECRET)))
    assert "timestamp=1591702611443&" in query
    assert query.endswith(hmac_sha256_hex(SECRET, "recvWindow=5000&timestamp=1591702611443"))


def test_encoding_is_rfc3986() -> None:
    assert build_query([("symbol", "币安人生USDT"), ("a", "x y/z~")]) == \
        "symbol=%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT&a=x%20y%2Fz~"


def test_an_email_goes_out_with_its_at_sign_percent_encoded() -> None:
    """Binance since 2026-01-15 (issue 23): percent-encode, then sign; its SDK sends `@` as %40."""
    assert build_query([("email", "bot+1@desk.example.com"), ("futuresType", "1")]) == \
        "email=bot%2B1%40desk.example.com&futuresType=1"


def test_every_byte_outside_the_unreserved_set_is_encoded() -> None:
    unreserved = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    text = "".join(chr(c) for c in range(1, 256))
    query = build_query([("v", text)])
    value = query.removeprefix("v=")
    assert all(ch in unreserved or ch == "%" for ch in value)
    from urllib.parse import unquote
    assert unquote(value) == text
    signer = HmacSigner(Secret(SECRET))
    signed = signed_query([("email", "a@b.c")], signer)
    assert signed == f"email=a%40b.c&signature={hmac_sha256_hex(SECRET, 'email=a%40b.c')}"


def test_repr_hides_secret() -> None:
    signer = HmacSigner(Secret(SECRET))
    assert SECRET not in repr(signer) and SECRET not in str(signer)
    assert SECRET not in repr(Secret(SECRET)) and SECRET not in f"{Secret(SECRET)}"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_ed25519_signature_is_base64_url_encoded_and_verifies() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signer = load_private_key(_pem(key), None)
    assert signer.kind == "ed25519"
    payload = "recvWindow=5000&timestamp=1591702613943"
    sig = signer.sign(payload)
    assert all(c not in sig for c in "+/=")  # percent-encoded
    key.public_key().verify(base64.b64decode(unquote(sig)), payload.encode())
    assert "PRIVATE" not in repr(signer)


def test_rsa_signature_verifies_and_encrypted_pem_needs_passphrase() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError, match="no passphrase"):
        load_private_key(pem, None)
    with pytest.raises(ValueError) as info:
        load_private_key(pem, b"wrong")
    assert "pw" not in str(info.value)
    signer = load_private_key(pem, b"pw")
    payload = "recvWindow=5000&timestamp=1"
    key.public_key().verify(base64.b64decode(unquote(signer.sign(payload))), payload.encode(),
                            padding.PKCS1v15(), hashes.SHA256())


def test_unsupported_key_type_is_a_clear_error() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(ValueError, match="Ed25519 or RSA"):
        load_private_key(_pem(ec.generate_private_key(ec.SECP256R1())), None)
    with pytest.raises(ValueError, match="PEM"):
        load_private_key(b"not a key", None)


def test_a_masters_sub_account_requests_carry_percent_40_and_pass_binances_check() -> None:
    """Issue 23: the exporter's own client against the simulator, which verifies signatures over the
    percent-encoded payload as Binance does since 2026-01-15 (a raw `@` would get -1022)."""
    from conftest import Harness, wait_until
    from exporter.config import parse_config
    from exporter.engine import Engine
    from exporter.simulator import Request, SimAccount, SimFutures, SimSubAccount, balance_row
    from testkit import Simulator

    queries: list[str] = []

    class Recording(Simulator):
        def handle(self, req: Request):  # type: ignore[no-untyped-def]
            if req.path.startswith("/sapi/v2/sub-account/futures/account"):
                queries.append(req.query)
            return super().handle(req)

    subs = [SimSubAccount(f"bot+{i}@x.test", SimFutures([balance_row("USDT", f"{100 + i}")])) for i in range(2)]
    sim = Recording([SimAccount("K" * 64, SECRET, sub_accounts=subs)])
    sim.start()
    engine = Engine(parse_config({"defaults": {"base_url": sim.base_url, "sapi_base_url": sim.base_url},
                                  "accounts": [{"alias": "desk", "api_key": "K" * 64, "api_secret": SECRET,
                                                "markets": [], "sub_accounts": {}}]}, "c.yaml", {}))
    harness = None
    try:
        started = engine.start()
        wait_until(lambda: all(f.done() for f in started) and engine._exported_subs("desk") == 2)
        harness = Harness(engine)
        metrics = harness.scrape()
        ups = {dict(labels)["alias"]: v for (name, labels), v in metrics.items() if name == "binance_futures_up"}
        assert ups == {"bot+0@x.test": 1, "bot+1@x.test": 1}, ups  # markets: [] for the master itself
        assert len(queries) >= 2
        assert all("email=bot%2B" in q and "%40x.test" in q and "@" not in q for q in queries), queries
    finally:
        if harness is not None:
            harness.close()
        else:
            engine.close()
        sim.stop()
