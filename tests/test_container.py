"""The container image, built and run: the Dockerfile proven, not only read.

There is no Docker engine on the development and CI machines, and no registry
can be reached, so (as /work/shared/containers.md describes) the image is built
with Debian's podman on a local stand-in for the `python:*-slim` base: a
Debian bookworm root file system made by mmdebstrap from Debian packages, with
a venv at /usr/local so `python` and `pip` sit where the slim images have them.
The Dockerfile itself is built unchanged; only `PYTHON_IMAGE` is passed.
Package downloads here go through a proxy whose CA only the machine's bundle
holds, so the stand-in carries that bundle (and PIP_CERT), and the host's pip
settings for finding packages (index URLs, trusted hosts, timeouts; read with
`pip config list` at test time) as its /etc/pip.conf: the build's `pip wheel`
finds packages the way the host's pip does, and no index host is written here.

The test then runs the image with `--demo` on a free loopback port
(host network), checks that the exporter runs as uid 10001, scrapes /metrics
from this process, runs the image's own HEALTHCHECK command inside a container
with `podman exec`, and reports the image size.

Needs root, `podman`, `runc` and `mmdebstrap` (Debian: apt-get install podman
runc mmdebstrap). Without them it skips, except under CI=true: then it fails.
Every image and container it makes is removed again, also on failure.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, free_port
from exporter.demo import DEMO_ACCOUNTS

TOOLS = ("podman", "runc", "mmdebstrap")
# crun fails on these machines' cgroup setup; every podman call needs these.
PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager=cgroupfs"]
# The default ulimits cannot be set here; `build` and `run` need these.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]

# Package downloads go through a proxy whose CA only this bundle holds.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# pip settings that decide where and how pip finds packages. Local paths and
# file:// indexes are left out: a container build cannot see the host's disk.
PIP_FORWARDED = ("index-url", "extra-index-url", "find-links", "trusted-host", "proxy",
                 "timeout", "default-timeout", "retries")
PIP_URL_KEYS = ("index-url", "extra-index-url", "find-links")

UID = 10001
MAX_IMAGE_MB = 300      # the whole image on the stand-in base (about 180 MB when written)
MAX_ADDED_MB = 60       # what the Dockerfile adds on top of the base (about 24 MB when written)

_SESSION = uuid.uuid4().hex[:10]
# Passed as build args: the image must show them in its OCI labels and build_info.
REVISION = f"test{_SESSION}"
SOURCE = "https://example.invalid/binance-futures-exporter"
# The version as the Dockerfile's header says to pass it: setuptools-scm's, from git.
VERSION = subprocess.run([sys.executable, "-m", "setuptools_scm"], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip().splitlines()[-1]
_REPORT: dict[str, str] = {}


# --------------------------------------------------------------------------- helpers

def require_container_tools() -> None:
    """Skip without the tools or root, except under CI (then fail: CI installs them)."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        msg = f"{', '.join(missing)} not found on PATH (Debian/Ubuntu: apt-get install podman runc mmdebstrap)"
    elif os.geteuid() != 0:
        msg = "the container test needs root (rootful podman, mmdebstrap in root mode)"
    else:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this must not be skipped")
    pytest.skip(msg)


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with the flags every call needs; on failure, fail the test with its output."""
    cmd = ["podman", *PODMAN_GLOBAL, *args]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {args[0]} exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def podman_quiet(*args: str) -> None:
    """Cleanup call: never raises, so one failed removal does not hide the test's own failure."""
    try:
        subprocess.run(["podman", *PODMAN_GLOBAL, *args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        pass


def inspect(kind: str, name: str) -> dict:
    return json.loads(podman(kind, "inspect", name).stdout)[0]


def host_pip_settings() -> dict[str, str]:
    """The pip settings the host's `pip wheel` uses to find packages (env > [wheel] > [global]).

    Read with `pip config list` at test time, so no index host name is written into the repo.
    """
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=60, check=True)
    merged: dict[tuple[str, str], str] = {}
    for line in proc.stdout.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not (sep and dot):
            continue
        try:
            merged[(section, key)] = str(ast.literal_eval(raw))
        except (ValueError, SyntaxError):
            continue
    settings = {}
    for key in PIP_FORWARDED:
        value = next((merged[(s, key)] for s in (":env:", "wheel", "global") if (s, key) in merged), None)
        if value is None:
            continue
        if key in PIP_URL_KEYS:
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            settings[key] = value
    return settings


def pip_conf_hooks(tmp: Path, settings: dict[str, str]) -> list[str]:
    """mmdebstrap hooks that install the host's pip settings as the root file system's /etc/pip.conf."""
    if not settings:
        return []
    pip_conf = tmp / "pip.conf"
    pip_conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return [f"--customize-hook=upload {pip_conf} /etc/pip.conf"]


@dataclass
class Image:
    tag: str
    config: dict          # `podman image inspect`
    base_bytes: int


@dataclass
class Container:
    cid: str
    url: str | None = None

    def logs(self) -> str:
        proc = podman("logs", self.cid, check=False)
        return (proc.stdout + proc.stderr)[-4000:]

    def running(self) -> bool:
        return podman("container", "inspect", "--format", "{{.State.Running}}", self.cid,
                      check=False).stdout.strip() == "true"

    def exec(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return podman("exec", self.cid, *cmd, timeout=timeout, check=False)


def poll(predicate, what: str, container: Container, timeout: float) -> object:
    """Poll with a deadline; stop early, with the logs, if the container exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if not container.running():
            pytest.fail(f"container exited while waiting for {what}:\n{container.logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s:\n{container.logs()}")
        time.sleep(0.2)


def http_get(url: str, timeout: float = 5) -> tuple[int, str, str]:
    """(status, content type, body); connection errors are status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", ""
    except OSError:
        return 0, "", ""


def run_container(image: Image, name: str, network: str, *args: str) -> Container:
    # --no-healthcheck: without systemd, podman's healthcheck timers only log errors;
    # the test runs the HEALTHCHECK command itself.
    cid = podman("run", "-d", "--name", name, "--no-healthcheck", f"--network={network}", *ULIMITS,
                 image.tag, *args).stdout.strip()
    return Container(cid)


# --------------------------------------------------------------------------- fixtures

def debian_image(tag: str, options: list[str], hooks: list[str], env: list[str]) -> list[str]:
    """mmdebstrap a bookworm root file system with `options` and `hooks` (plus the host's pip settings) and
    import it into podman as `tag` with the ENV lines `env`; the names of the pip settings forwarded."""
    with tempfile.TemporaryDirectory(prefix="bfe-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        pip_settings = host_pip_settings()
        cmd = ["mmdebstrap", "--quiet", "--variant=minbase", *options, *hooks,
               *pip_conf_hooks(Path(tmp), pip_settings), "bookworm", str(rootfs)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"mmdebstrap exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
        try:
            podman("import", *(arg for line in env for arg in ("--change", f"ENV {line}")), str(rootfs), tag,
                   timeout=300)
        except BaseException:
            podman_quiet("rmi", "--force", tag)
            raise
    return list(pip_settings)


@pytest.fixture(scope="session")
def stand_in_base(pytestconfig: pytest.Config) -> Iterator[tuple[str, int]]:
    """A local stand-in for `python:*-slim`, built once per session: (tag, size in bytes)."""
    require_container_tools()
    _register_summary(pytestconfig)
    tag = f"localhost/bfe-test-python-{_SESSION}:bookworm"
    started = time.monotonic()
    pip_settings = debian_image(tag, [
        "--include=python3,python3-venv,ca-certificates",
        # merged /usr without the usrmerge package (which pulls in perl), and no docs,
        # man pages or locales, like Debian's slim images.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    ], [
        # python/pip in /usr/local/bin as in the slim images.
        '--customize-hook=chroot "$1" python3 -m venv /usr/local',
        f"--customize-hook=upload {CA_BUNDLE} {CA_BUNDLE}",
    ], ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"PIP_CERT={CA_BUNDLE}"])
    _REPORT["stand-in"] = (f"stand-in base (mmdebstrap bookworm) built in {time.monotonic() - started:.1f} s; "
                           f"pip settings forwarded from the host: {', '.join(pip_settings) or 'none'}")
    try:
        yield tag, int(inspect("image", tag)["Size"])
    finally:
        podman_quiet("rmi", "--force", tag)


@pytest.fixture(scope="module")
def image(stand_in_base: tuple[str, int]) -> Iterator[Image]:
    """The repo's Dockerfile built with podman on the stand-in base."""
    base_tag, base_bytes = stand_in_base
    tag = f"localhost/bfe-test-image-{_SESSION}:latest"
    started = time.monotonic()
    try:
        # --format docker keeps HEALTHCHECK (OCI drops it); --no-cache works around
        # buildah 1.28 handing an empty RUN --mount from a cached stage; --layers=false
        # leaves no intermediate images behind; --pull=never: nothing comes from a registry.
        podman("build", "--no-cache", "--layers=false", "--force-rm", "--pull=never", "--format", "docker",
               "--network=host", *ULIMITS, "--build-arg", f"PYTHON_IMAGE={base_tag}",
               "--build-arg", f"REVISION={REVISION}", "--build-arg", f"SOURCE={SOURCE}",
               "--build-arg", f"VERSION={VERSION}",
               "-t", tag, "-f", str(REPO / "Dockerfile"), str(REPO), timeout=900)
        built = Image(tag, inspect("image", tag), base_bytes)
        _REPORT["build"] = f"image built in {time.monotonic() - started:.1f} s"
        size, added = built.config["Size"], built.config["Size"] - base_bytes
        _REPORT["size"] = (f"image size {size / 1e6:.1f} MB: stand-in base {base_bytes / 1e6:.1f} MB "
                           f"+ {added / 1e6:.1f} MB added by the Dockerfile")
        yield built
    finally:
        podman_quiet("rmi", "--force", tag)


@pytest.fixture(scope="module")
def demo_container(image: Image) -> Iterator[Container]:
    """The image with --demo on a free loopback port of the host network, ready to scrape."""
    port = free_port()
    container = run_container(image, f"bfe-test-demo-{_SESSION}", "host",
                              "--demo", f"--web.listen-address=127.0.0.1:{port}")
    try:
        container.url = f"http://127.0.0.1:{port}"
        poll(lambda: http_get(f"{container.url}/-/ready", timeout=2)[0] == 200, "/-/ready answering 200",
             container, timeout=60)
        yield container
    finally:
        podman_quiet("rm", "--force", "--time", "0", container.cid)


@pytest.fixture(scope="module")
def health_container(image: Image) -> Iterator[Container]:
    """The image with --demo on its default port, in a network namespace of its own.

    The HEALTHCHECK probes the default port, which on the host network may belong to
    someone else; inside `--network=none` (loopback only) it is ours.
    """
    container = run_container(image, f"bfe-test-health-{_SESSION}", "none", "--demo")
    try:
        yield container
    finally:
        podman_quiet("rm", "--force", "--time", "0", container.cid)


class _Summary:
    """Prints the image figures at the end of the run, also under -q."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_sep("-", "container image")
        for line in _REPORT.values():
            terminalreporter.write_line(line)


def _register_summary(config: pytest.Config) -> None:
    # Hooks in a test module are not collected; register a small plugin instead.
    if not config.pluginmanager.has_plugin("bfe-container-summary"):
        config.pluginmanager.register(_Summary(), "bfe-container-summary")


# --------------------------------------------------------------------------- tests

def test_exporter_runs_as_uid_10001(demo_container: Container):
    status = demo_container.exec("cat", "/proc/1/status")
    assert status.returncode == 0, status.stderr
    ids = {line.split(":")[0]: line.split()[1:] for line in status.stdout.splitlines()
           if line.startswith(("Uid:", "Gid:"))}
    # real, effective, saved and filesystem ids of PID 1, the exporter itself.
    assert ids == {"Uid": [str(UID)] * 4, "Gid": [str(UID)] * 4}, ids
    cmdline = demo_container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(arg.endswith("/binance-futures-exporter") for arg in cmdline), cmdline


def test_metrics_scraped_from_outside_the_container(demo_container: Container):
    aliases = sorted(DEMO_ACCOUNTS)

    def all_up() -> dict | None:
        status, ctype, body = http_get(f"{demo_container.url}/metrics", timeout=10)
        if status != 200:
            return None
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body) for s in family.samples}
        up = {dict(labels)["alias"]: v for (name, labels), v in samples.items() if name == "binance_futures_up"}
        ok = set(aliases) <= set(up) and all(v == 1.0 for v in up.values())
        return {"ctype": ctype, "samples": samples} if ok else None

    result = poll(all_up, f"binance_futures_up 1 for every account (at least {aliases})", demo_container,
                  timeout=30)
    assert result["ctype"].startswith("text/plain"), result["ctype"]
    samples = result["samples"]
    assert samples[("binance_futures_exporter_build_info", (("revision", REVISION), ("version", VERSION)))] == 1.0
    auth_errors = [v for (name, labels), v in samples.items()
                   if name == "binance_futures_scrape_errors_total" and dict(labels)["reason"] == "auth"]
    assert auth_errors and not any(auth_errors)
    assert any(name == "binance_futures_balance" for name, _ in samples)


def test_healthcheck_command_passes_inside_the_container(image: Image, health_container: Container):
    health = image.config.get("Healthcheck") or {}
    test = health.get("Test") or []
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"image has no HEALTHCHECK: {health}"
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]

    port = int(next(iter(image.config["Config"]["ExposedPorts"])).split("/")[0])

    def listening() -> bool:
        tables = health_container.exec("cat", "/proc/net/tcp", "/proc/net/tcp6").stdout
        # local_address ends in :PORT (hex); st 0A is LISTEN.
        return any(f[1].endswith(f":{port:04X}") and f[3] == "0A"
                   for f in (line.split() for line in tables.splitlines()[1:]) if len(f) > 3)

    poll(listening, f"the exporter listening on its default port {port}", health_container, timeout=60)
    result = health_container.exec(*command, timeout=30)
    assert result.returncode == 0, f"HEALTHCHECK {command} exited {result.returncode}: {result.stderr[-2000:]}"

    # And it is not vacuous: with nothing listening, the same command fails.
    idle = podman("run", "--rm", "--network=none", *ULIMITS, "--entrypoint", command[0], image.tag,
                  *command[1:], check=False, timeout=60)
    assert idle.returncode != 0, "HEALTHCHECK passed with no exporter running"


def test_oci_labels_from_build_args(image: Image):
    labels = image.config.get("Labels") or image.config["Config"]["Labels"]
    oci = {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")}
    assert oci.items() >= {
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.revision": REVISION,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }.items(), oci


def test_malloc_arena_max_is_set(demo_container: Container):
    environ = demo_container.exec("cat", "/proc/1/environ").stdout.split("\0")
    assert "MALLOC_ARENA_MAX=2" in environ


def test_image_size_is_sane(image: Image):
    size, added = image.config["Size"], image.config["Size"] - image.base_bytes
    assert size < MAX_IMAGE_MB * 1e6, _REPORT["size"]
    assert added < MAX_ADDED_MB * 1e6, _REPORT["size"]


# --------------------------------------------------------------------------- the README's first commands

README_BLOCK_INTRO = "In a checkout, on Debian or Ubuntu (as root; with `sudo` otherwise):"


def readme_first_commands() -> str:
    """The README's first shell block: the commands a newcomer types first."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text.split(README_BLOCK_INTRO, 1)
    assert len(after) == 2, "the README's first-commands block moved: update README_BLOCK_INTRO"
    block = after[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.strip().endswith("binance-futures-exporter --demo"), block
    return block


def checkout_copy(dest: Path) -> None:
    """The working tree as a user's checkout has it: tracked and new files, nothing git ignores (no .venv)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="session")
def fresh_debian(pytestconfig: pytest.Config) -> Iterator[str]:
    """Debian bookworm as its minimal image is: no Python, no pip, apt lists not fetched yet.

    Only this machine's environment is added, as a user's machine has its own: the CA bundle of the
    proxy that downloads go through (PIP_CERT) and the host's pip settings for finding packages.
    """
    require_container_tools()
    _register_summary(pytestconfig)
    tag = f"localhost/bfe-test-debian-{_SESSION}:bookworm"
    started = time.monotonic()
    debian_image(tag, [], ['--customize-hook=mkdir -p "$1/etc/bfe-test"',
                           f"--customize-hook=upload {CA_BUNDLE} /etc/bfe-test/ca.crt"],
                 ["PIP_CERT=/etc/bfe-test/ca.crt"])
    _REPORT["debian"] = f"fresh Debian bookworm (minbase) built in {time.monotonic() - started:.1f} s"
    try:
        yield tag
    finally:
        podman_quiet("rmi", "--force", tag)


def test_readme_first_commands_work_in_a_fresh_debian_container(fresh_debian: str, tmp_path: Path):
    """Issue 26: apt-get, venv, pip install and --demo, as the README writes them, in bookworm without Python."""
    block = readme_first_commands()
    src = tmp_path / "binance-futures-exporter"
    checkout_copy(src)
    # The demo listens on 127.0.0.1:9894 (its default); the container shares the host's network
    # (package downloads), so that port must be free here.
    with __import__("socket").socket() as sock:
        if sock.connect_ex(("127.0.0.1", 9894)) == 0:
            pytest.fail("127.0.0.1:9894 is in use on this machine; the README's --demo needs it")
    found = podman("run", "--rm", *ULIMITS, "--network=none", fresh_debian, "sh", "-c",
                   "command -v python3; command -v pip; ls /var/lib/apt/lists | grep Packages", check=False)
    # (mmdebstrap removes the apt lists at the end, as Debian's container images ship none)
    assert not found.stdout.strip(), f"the base is not fresh: {found.stdout}{found.stderr}"
    name = f"bfe-test-readme-{_SESSION}"
    cid = podman("run", "-d", "--name", name, "--network=host", *ULIMITS, "-v", f"{src}:/root/binance-futures-exporter",
                 "-w", "/root/binance-futures-exporter", "-e", "DEBIAN_FRONTEND=noninteractive",
                 fresh_debian, "bash", "-euc", block).stdout.strip()
    container = Container(cid, url="http://127.0.0.1:9894")
    started = time.monotonic()
    try:
        line = poll(lambda: next((ln for ln in container.logs().splitlines() if ln.startswith("Serving metrics at")),
                                 None), "the demo's 'Serving metrics at' line", container, timeout=600)
        assert line == "Serving metrics at http://127.0.0.1:9894/metrics", line
        status, _, body = poll(lambda: (lambda r: r if r[0] == 200 and "binance_futures_up{" in r[2] else None)(
            http_get(f"{container.url}/metrics", timeout=10)), "/metrics with accounts", container, timeout=60)
        ups = [s for f in text_string_to_metric_families(body) for s in f.samples if s.name == "binance_futures_up"]
        assert {s.labels["alias"] for s in ups} >= set(DEMO_ACCOUNTS)
        _REPORT["readme"] = (f"README's first commands in fresh Debian: demo serving after "
                             f"{time.monotonic() - started:.0f} s")
    finally:
        podman_quiet("rm", "--force", "--time", "0", cid)
