"""--web.config.file: TLS, mutual TLS and bcrypt basic auth, exercised against the real process."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import ACCOUNTS, REPO, config_dict, parse_metrics, value, write_config
from exporter.config import ConfigError
from exporter.simulator import Simulator
from exporter.webconfig import load_web_config


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
