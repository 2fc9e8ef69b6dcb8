"""The lock files the image installs from agree with pyproject.toml's ranges; its metadata.

scripts/image_smoke.sh proves the image installs exactly these pins (and pip's
hash mode that the lock is complete); this catches a dependency added to
pyproject.toml without running ``bash scripts/lock.sh``, without building.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from exporter import __version__

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def pins(name: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of sha256 hashes) for each pin of a lock file."""
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            assert current not in found, f"{name}: {current} pinned twice"
            found[current] = (match[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements.lock", PYPROJECT["project"]["dependencies"]),
        ("requirements-build.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_lock_pins_every_requirement_within_its_range(lock: str, requirements: list[str]) -> None:
    locked = pins(lock)
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{name} is not in {lock}: run bash scripts/lock.sh"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside {req.specifier}: run bash scripts/lock.sh"
        )
    for name, (version, hashes) in locked.items():
        assert hashes >= 1, f"{lock}: {name}=={version} has no hash"


def test_lock_says_how_to_regenerate_it() -> None:
    for lock in ("requirements.lock", "requirements-build.lock"):
        head = (ROOT / lock).read_text(encoding="utf-8").splitlines()[:3]
        assert "#    bash scripts/lock.sh" in head, lock


def test_package_metadata_is_pep_639_and_complete() -> None:
    """An SPDX license string (the table form is deprecated), classifiers, URLs, a changelog."""
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert all((ROOT / name).is_file() for name in project["license-files"])
    # PEP 639: a license expression and a License :: classifier may not be combined.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert "Topic :: System :: Monitoring" in project["classifiers"]
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(project["urls"])
    # setuptools reads a license string from 77 on; the lock pins a version in range.
    (requirement,) = PYPROJECT["build-system"]["requires"]
    assert Requirement(requirement).specifier.contains("77.0.0")
    assert not Requirement(requirement).specifier.contains("76.9")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{__version__}]" in changelog


def test_the_python_it_needs_is_said_where_a_user_looks() -> None:
    """requires-python, the README's first command, setup.py's refusal and the classifiers
    agree; the classifiers name exactly the versions CI tests (.venv's and test_pythons.sh's)."""
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert re.fullmatch(r"3\.\d+", minimum)
    script = (ROOT / "scripts" / "test_pythons.sh").read_text(encoding="utf-8")
    others = re.search(r"versions=\$\{PYTHON_VERSIONS:-([\d. ]+)\}", script)
    assert others, "scripts/test_pythons.sh names its versions"
    classified = {
        c.rsplit(" :: ", 1)[1]
        for c in PYPROJECT["project"]["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert classified == {minimum, *others[1].split()}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    before_first_command = readme.split("```sh", 1)[0]
    assert f"Python {minimum} or newer" in before_first_command
    major, minor = minimum.split(".")
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert f"sys.version_info < ({major}, {minor})" in setup
    assert f"needs Python {minimum} or newer" in setup
