"""What a user gets besides the code: licence, changelog, dependency pins, image labels, build revision."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from test_stack_files import stages

import exporter
from exporter import render
from stack_helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_licence_is_the_full_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text) > 11000
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_changelog_follows_keep_a_changelog() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings and headings[0] == "Unreleased"
    for kind in re.findall(r"^### (.+)$", text, re.M):
        assert kind in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"), kind


def requirement(name: str) -> Requirement:
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            return req
    raise AssertionError(f"{name} not a dependency")


@pytest.mark.parametrize("name, floor, ceiling", [("urllib3", "2.7.0", "3"), ("prometheus-client", "0.25", "1")])
def test_dependency_floor_and_upper_major(name: str, floor: str, ceiling: str) -> None:
    spec = requirement(name).specifier
    assert Version(floor) in spec and Version(ceiling) not in spec
    assert Version(version(name)) in spec, f"installed {name} {version(name)} outside {spec}"


def test_urllib3_below_the_decompression_fixes_is_refused() -> None:
    spec = requirement("urllib3").specifier
    for vulnerable in ("2.5.0", "2.6.0", "2.6.3"):
        assert Version(vulnerable) not in spec


# --------------------------------------------------------------------------- image


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def test_dockerfile_oci_labels_from_build_args() -> None:
    final = final_stage()
    args = dict((a.split("=", 1) + [""])[:2] for i, a in final if i == "ARG")
    # No version typed here: the build passes setuptools-scm's; without it, setuptools-scm's own fallback.
    assert args["VERSION"] == PYPROJECT["tool"]["setuptools_scm"]["fallback_version"] == "0.0.0+unknown"
    build_args = dict((a.split("=", 1) + [""])[:2] for i, a in stages()[0] if i == "ARG")
    assert build_args["VERSION"] == args["VERSION"]
    assert {"REVISION", "SOURCE"} <= set(args)
    labels = " ".join(a for i, a in final if i == "LABEL")
    for key, value in (("version", '"${VERSION}"'), ("revision", '"${REVISION}"'), ("source", '"${SOURCE}"'),
                       ("licenses", '"Apache-2.0"')):
        assert f"org.opencontainers.image.{key}={value}" in labels, key
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_dockerfile_sets_malloc_arena_max_and_passes_revision_to_the_wheel() -> None:
    env = " ".join(a for i, a in final_stage() if i == "ENV")
    assert re.search(r"\bMALLOC_ARENA_MAX=2\b", env)
    build = stages()[0]
    assert any(i == "ARG" and a.startswith("REVISION") for i, a in build)
    run = " ".join(a for i, a in build if i == "RUN")
    assert "exporter/REVISION" in run and run.index("exporter/REVISION") < run.index("pip wheel")
    assert "REVISION" in PYPROJECT["tool"]["setuptools"]["package-data"]["exporter"]


# --------------------------------------------------------------------------- version and locks


def test_version_comes_from_git_not_from_a_typed_number() -> None:
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert "setuptools-scm>=8" in PYPROJECT["build-system"]["requires"]
    assert PYPROJECT["tool"]["setuptools_scm"]["version_file"] == "exporter/_version.py"
    source = (REPO / "exporter" / "__init__.py").read_text(encoding="utf-8")
    assert not re.search(r"__version__ = ['\"]\d", source), "a version typed into exporter/__init__.py"
    assert "exporter/_version.py" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_a_fresh_clone_gets_a_version_from_git(tmp_path: Path) -> None:
    """CI's `git clone` (full or shallow) and the sdist built from it: a PEP 440 version from git."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True,
                   capture_output=True, timeout=120)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "setuptools_scm"], cwd=clone, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = Version(proc.stdout.strip().splitlines()[-1])
    assert seen.local is not None and head[:7] in seen.local, seen  # 0.1.dev1+g<head>: untagged, shallow
    assert not str(seen).startswith("0.0.0"), seen


def test_the_image_installs_only_the_locks_with_hashes() -> None:
    from packaging.utils import canonicalize_name

    build, final = stages()[0], final_stage()
    build_runs = " ".join(a for i, a in build if i == "RUN")
    assert "pip install --require-hashes --only-binary=:all: -r requirements-build.lock" in build_runs
    assert "--no-build-isolation" in build_runs and "--no-deps" in build_runs
    final_runs = " ".join(a for i, a in final if i == "RUN")
    assert "pip install --require-hashes --only-binary=:all: -r /wheels/requirements.lock" in final_runs
    assert "pip install --no-index --no-deps /wheels/*.whl" in final_runs and "pip check" in final_runs
    for name, wanted in (("requirements.lock", [Requirement(d).name for d in PYPROJECT["project"]["dependencies"]]),
                         ("requirements-build.lock", [Requirement(d).name
                                                      for d in PYPROJECT["build-system"]["requires"]])):
        text = (REPO / name).read_text(encoding="utf-8")
        pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", text, re.M))
        assert {canonicalize_name(n) for n in wanted} <= {canonicalize_name(n) for n in pins}, name
        for block in re.split(r"\n(?=[A-Za-z])", text.split("\n\n", 1)[-1]):
            if "==" in block.splitlines()[0]:
                assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"
        assert "--find-links" not in text and "--index-url" not in text, name
    # The runtime pins are within pyproject's ranges.
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", (REPO / "requirements.lock").read_text(), re.M))
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert Version(pins[req.name.lower()]) in req.specifier, (req, pins[req.name.lower()])


def test_no_mallopt_call_left() -> None:
    source = (REPO / "exporter" / "cli.py").read_text(encoding="utf-8")
    assert "ctypes" not in source and "mallopt" not in source


# --------------------------------------------------------------------------- build_info revision


def revision_label(monkeypatch: pytest.MonkeyPatch, path: Path) -> str:
    monkeypatch.setattr(exporter, "_REVISION_FILE", path)
    exporter.build_revision.cache_clear()
    try:
        (sample,) = render.build_info().samples
    finally:
        exporter.build_revision.cache_clear()
    assert sample.labels["version"] == exporter.__version__
    return sample.labels["revision"]


@pytest.mark.parametrize("content, shown", [
    ("3f2c1a9e0b7d4c6e8f1a2b3c4d5e6f708192a3b4\n", "3f2c1a9e0b7d4c6e8f1a2b3c4d5e6f708192a3b4"),
    ("v0.1.0-3-g3f2c1a9\n", "v0.1.0-3-g3f2c1a9"),
    ("", "unknown"),
    ('x"} 1\nevil{a="', "unknown"),      # never anything that is not a plain revision
    ("a" * 65, "unknown"),
])
def test_build_info_revision_from_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            content: str, shown: str) -> None:
    path = tmp_path / "REVISION"
    path.write_text(content, encoding="utf-8")
    assert revision_label(monkeypatch, path) == shown


def test_build_info_revision_unknown_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert revision_label(monkeypatch, tmp_path / "missing") == "unknown"


def test_wheel_carries_the_revision_file(tmp_path: Path) -> None:
    """What the Dockerfile does: a REVISION file next to the package goes into the wheel."""
    subprocess.run(["cp", "-r", str(REPO / "exporter"), str(REPO / "pyproject.toml"), str(REPO / "README.md"),
                    str(REPO / "LICENSE"), str(tmp_path)], check=True)
    (tmp_path / "exporter" / "REVISION").write_text("abc123\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(tmp_path / "wheels"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("exporter/REVISION").decode().strip() == "abc123"
        metadata = next(n for n in zf.namelist() if n.endswith("METADATA"))
        assert "License-Expression: Apache-2.0" in zf.read(metadata).decode()
