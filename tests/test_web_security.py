"""--web.config.file: TLS, mutual TLS and bcrypt basic auth, exercised against the real process."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import ACCOUNTS, REPO, config_dict, one_error_line, parse_metrics, run_cli, value, write_config
from exporter.config import ConfigError
from exporter.webconfig import WebConfig, load_web_config
from testkit import Simulator


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False, san: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, _name("test-ca"), ca_key, ca=True)
    out: dict[str, Path] = {}

    def write(name: str, cert, key) -> None:
        out[f"{name}_cert"] = d / f"{name}.crt"
        out[f"{name}_key"] = d / f"{name}.key"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    write("ca", ca, ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _cert(name, key, ca.subject, ca_key, san=name == "server"), key)
    return out


def _web_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_basic_auth(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4)).decode()
    web = _web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": hashed}})
    cfg = write_config(tmp_path / "c.yaml", config_dict(sim.base_url))
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}")
    for auth in (None, ("prom", "wrong"), ("other", "s3cret-pw")):
        resp = exp.get("/metrics", auth=auth)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    assert exp.get("/probe?target=alpha").status_code == 401
    assert sim.stats()["requests_by_key"] == {}, "an unauthenticated request must not cost API weight"
    assert exp.get("/-/healthy").status_code == 200  # orchestrator probes need no credentials
    ok = exp.get("/metrics", auth=("prom", "s3cret-pw"))
    assert ok.status_code == 200
    assert value(parse_metrics(ok.text), "binance_futures_up", alias="alpha") == 1.0
    exp.stop()
    assert "s3cret-pw" not in exp.logs()


def test_tls_and_mutual_tls(sim: Simulator, tmp_path: Path, pki: dict[str, Path], run_exporter) -> None:
    cfg = write_config(tmp_path / "c.yaml", config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={_web_config(tmp_path / 'tls.yml', {'tls_server_config': tls})}", scheme="https")
    resp = requests.get(f"{exp.url}/metrics", verify=str(pki["ca_cert"]), timeout=10)
    assert value(parse_metrics(resp.text), "binance_futures_up", alias="alpha") == 1.0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{exp.port}/metrics", timeout=5).raise_for_status()
    assert "Serving metrics at https://" in exp.logs()

    mtls = dict(tls, client_ca_file=str(pki["ca_cert"]))
    exp2 = run_exporter(f"--config.file={cfg}", f"--web.config.file={_web_config(tmp_path / 'm.yml', {'tls_server_config': mtls})}", scheme="https")
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{exp2.url}/metrics", verify=str(pki["ca_cert"]), timeout=5)
    ok = requests.get(f"{exp2.url}/metrics", verify=str(pki["ca_cert"]),
                      cert=(str(pki["client_cert"]), str(pki["client_key"])), timeout=10)
    assert ok.status_code == 200


@pytest.mark.parametrize("data, expected", [
    ({"tls_server_config": {"cert_file": "/nope.crt", "key_file": "/nope.key"}}, "tls_server_config.cert_file: cannot read"),
    ({"tls_server_config": {"cert_file": "x"}}, "needs both cert_file and key_file"),
    ({"basic_auth_users": {"u": "plaintext"}}, "basic_auth_users.u: must be a bcrypt hash"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_bad_web_config(tmp_path: Path, data: dict, expected: str) -> None:
    path = _web_config(tmp_path / "web.yml", data)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_web_config(str(path))
    proc = subprocess.run([sys.executable, "-m", "exporter", "--demo", f"--web.config.file={path}",
                           "--web.listen-address=127.0.0.1:0"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr


# --- Files and YAML from outside, http_server_config, basic-auth timing (issues 9 and 12) ---



SECRET = "Zq8vN2xLk4Tr7YwBc1HsJd6Fm9Gp3Qa0Ue5Ri8Oy2Pt7Xz4Vn1Mb6Kc3Lj9Hg0Fd"


def run_demo_with(web: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    """The CLI with a web config that must be refused: it exits 1 before serving (a hang fails the test)."""
    return run_cli("--demo", f"--web.config.file={web}", "--web.listen-address=127.0.0.1:0", timeout=timeout,
                   start_new_session=True)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom"])
def test_web_config_file_that_is_not_a_regular_file_is_refused(fifo: Path, special: str) -> None:
    target = fifo if special == "fifo" else Path(special)
    line = one_error_line(run_demo_with(target), target)
    assert "cannot read web config file: not a regular file (a " in line


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
def test_tls_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, pki: dict[str, Path], fifo: Path,
                                                        key: str, special: str) -> None:
    target = fifo if special == "fifo" else Path(special)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
           "client_ca_file": str(pki["ca_cert"]), key: str(target)}
    web = _web_config(tmp_path / "web.yml", {"tls_server_config": tls})
    line = one_error_line(run_demo_with(web), web)
    assert f"tls_server_config.{key}: cannot read {target}: not a regular file (a " in line


def test_oversized_web_config_is_refused(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    with web.open("wb") as f:
        f.truncate((1 << 20) + 1)
    with pytest.raises(ConfigError, match="cannot read web config file: larger than the 1 MiB limit"):
        load_web_config(str(web))


@pytest.mark.parametrize("text, expected", [
    ("basic_auth_users: {}\nbasic_auth_users: {}\n", "YAML syntax error at line 2, column 1: duplicate key 'basic_auth_users'"),
    ("basic_auth_users: " + "[" * 100_000 + "]" * 100_000 + "\n", "YAML error at line 1, column 82: nested deeper than 64 levels"),
    (f"basic_auth_users:\n  u: !{SECRET} x\n", "YAML syntax error at line 2, column 6: could not determine a constructor"),
    (f"basic_auth_users: {{{SECRET}: x}}\ntls_server_config: [\n", "YAML syntax error at line 3"),
])
def test_web_config_yaml_errors_are_one_line_without_content(tmp_path: Path, text: str, expected: str) -> None:
    web = tmp_path / "web.yml"
    web.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    message = str(info.value)
    assert message.startswith(f"{web}: {expected}") and "\n" not in message and SECRET not in message


def test_web_config_errors_never_quote_a_secret(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    cases = [
        {SECRET: 1},
        {"basic_auth_users": {SECRET: "plaintext"}},
        {"basic_auth_users": {"prom": SECRET}},
        {"tls_server_config": {SECRET: 1}},
        {"tls_server_config": {"cert_file": SECRET, "key_file": "k"}},
        {"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": SECRET}},
        {"http_server_config": {SECRET: True}},
        {"http_server_config": {"headers": {SECRET: "x"}}},
        {"http_server_config": {"headers": {"X-Frame-Options": SECRET}}},
        {"http_server_config": {"headers": {"Content-Security-Policy": SECRET + "\r\nSet-Cookie: a=b"}}},
        {"basic_auth_users": {"prom": hashed}, "http_server_config": {"http2": SECRET}},
    ]
    for i, data in enumerate(cases):
        web = _web_config(tmp_path / f"w{i}.yml", data)
        with pytest.raises(ConfigError) as info:
            load_web_config(str(web))
        assert SECRET not in str(info.value) and SECRET[:12] not in str(info.value), str(info.value)


def test_http_server_config_headers_are_validated_and_exposed(tmp_path: Path) -> None:
    web = _web_config(tmp_path / "web.yml", {"http_server_config": {"http2": False, "headers": {
        "X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "x-content-type-options": "nosniff"}}})
    assert sorted(load_web_config(str(web)).headers) == [  # names in their canonical spelling
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "deny")]
    assert WebConfig().headers == ()


@pytest.mark.parametrize("http, expected", [
    ({"http2": True}, "http_server_config.http2: HTTP/2 is not supported"),
    ({"http2": "yes"}, "http_server_config.http2: must be true or false"),
    ({"headers": {"Content-Type": "text/html"}}, "http_server_config.headers: header 'Content-Type' cannot be set"),
    ({"headers": {"Content-Length": "0"}}, "header 'Content-Length' cannot be set"),
    ({"headers": {"Content-Encoding": "gzip"}}, "header 'Content-Encoding' cannot be set"),
    ({"headers": {"Set-Cookie": "a=b"}}, "header 'Set-Cookie' cannot be set"),
    ({"headers": {"Content-Security-Policy": "default-src 'self'\r\nSet-Cookie: a=b"}},
     "http_server_config.headers.Content-Security-Policy: must be printable ASCII on one line"),
    ({"headers": {"X-Frame-Options": "allow-from x"}}, "headers.X-Frame-Options: must be one of deny, sameorigin"),
    ({"headers": {"X-XSS-Protection": 1}}, "headers.X-XSS-Protection: must be a non-empty string"),
    ({"headers": ["X-Frame-Options"]}, "http_server_config.headers: must be a mapping"),
    ({"http3": True}, "http_server_config: unknown key 'http3' (did you mean 'http2'?)"),
    ([], "http_server_config: must be a mapping"),
])
def test_bad_http_server_config(tmp_path: Path, http: object, expected: str) -> None:
    web = _web_config(tmp_path / "web.yml", {"http_server_config": http})
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    assert expected in str(info.value)


@pytest.mark.parametrize("data, expected", [
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAnyClientCert"}},
     "tls_server_config.client_ca_file: is required with client_auth_type RequireAnyClientCert"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": ["TLS12"]}},
     "tls_server_config.min_version: must be one of TLS10"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": {"a": 1}}},
     "tls_server_config.client_auth_type: must be one of NoClientCert"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": []}},
     "tls_server_config: unknown key 'cipher_suites' (or not supported here)"),
    ({"basic_auth_users": {"prom": "$2b$12$tooshort"}}, "basic_auth_users.prom: must be a bcrypt hash"),
])
def test_more_bad_tls_and_auth_settings(tmp_path: Path, pki: dict[str, Path], data: dict, expected: str) -> None:
    tls = data.get("tls_server_config")
    if tls:
        tls.update(cert_file=str(pki["server_cert"]), key_file=str(pki["server_key"]))
    web = _web_config(tmp_path / "web.yml", data)
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    assert expected in str(info.value)


@pytest.mark.parametrize("content", [b"", b"junk", "caf\u00e9".encode()])
def test_client_ca_file_that_is_not_pem(tmp_path: Path, pki: dict[str, Path], content: bytes) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    web = _web_config(tmp_path / "web.yml", {"tls_server_config": {
        "cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]), "client_ca_file": "ca.pem"}})
    with pytest.raises(ConfigError, match="tls_server_config.client_ca_file: not a PEM CA certificate"):
        load_web_config(str(web))


def test_encrypted_tls_key_is_refused_without_prompting(tmp_path: Path, pki: dict[str, Path]) -> None:
    key = serialization.load_pem_private_key(pki["server_key"].read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass-phrase")))
    web = _web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": str(pki["server_cert"]),
                                                                   "key_file": str(encrypted)}})
    line = one_error_line(run_demo_with(web), web)  # OpenSSL's default would prompt on the terminal and wait
    assert "tls_server_config.key_file: the key is encrypted" in line


def test_unknown_user_costs_as_much_as_a_wrong_password(tmp_path: Path) -> None:
    cost = 10  # ~60 ms per check: big enough to time, small enough for a fast suite
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=cost)).decode()
    web = _web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": hashed, "cheap": bcrypt.hashpw(
        b"x", bcrypt.gensalt(rounds=4)).decode()}})
    auth = load_web_config(str(web)).auth
    assert auth is not None
    assert auth._dummy.startswith(b"$2b$%02d$" % cost)  # the highest cost configured

    def best_of_3(user: str) -> float:
        header = "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert auth.check(header) is False
            times.append(time.perf_counter() - started)
        return min(times)

    known, unknown = best_of_3("prom"), best_of_3("nobody")
    # Same cost means about the same time; before the fix an unknown user cost 4 rounds (64x less).
    assert unknown > known / 3, (known, unknown)



def test_http_server_config_headers_are_sent_on_every_answer(sim: Simulator, tmp_path: Path, run_exporter) -> None:
    web = _web_config(tmp_path / "web.yml", {"http_server_config": {"headers": {
        "X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}}})
    cfg = write_config(tmp_path / "c.yaml", config_dict(sim.base_url, accounts=ACCOUNTS[:1]))
    exp = run_exporter(f"--config.file={cfg}", f"--web.config.file={web}")
    for path in ("/metrics", "/probe?target=alpha", "/", "/-/healthy", "/nope", "/probe?target=x"):
        resp = exp.get(path)
        assert resp.headers.get("X-Frame-Options") == "deny", path
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
