"""What ``pip install .`` and ``python -m build`` make of a clone (issue 25).

A fresh ``git clone`` of this repository is built as a user or CI builds it, and the
installed package (no checkout beside it) must know its build: ``--version`` and
``cec_exporter_build_info`` name the revision git gave the clone, baked into the wheel
(and into the sdist, whose wheel is built where there is no ``.git``). ``twine check``
accepts both distributions. An interpreter older than ``requires-python`` is refused
with a message that names the Python needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from support import REPO, samples_named, target_entry

from exporter import __version__
from exporter.simulator import Simulator

pytestmark = pytest.mark.e2e

GIT = shutil.which("git")
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
VERSION_LINE = re.compile(
    r"^cec-phone-exporter, version (\S+) \(branch: (\S+), revision: (\S+)\)$", re.MULTILINE
)


def run(*args: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command; environment variables of this project's build are left out unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CEC_")}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def clone(tmp_path: Path) -> tuple[Path, str, str]:
    """A ``git clone`` of this repository's HEAD; its ``git describe`` and branch."""
    if GIT is None:
        pytest.skip("git is not installed")
    work = tmp_path / "clone"
    cloned = run(GIT, "clone", "-q", REPO, work)
    assert cloned.returncode == 0, cloned.stderr
    described = run(GIT, "-C", work, "describe", "--always", "--dirty", "--tags").stdout.strip()
    branch = run(GIT, "-C", work, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    assert described
    assert branch
    return work, described, branch


def installed_version(site: Path, cwd: Path) -> tuple[str, str, str]:
    """(version, branch, revision) that ``--version`` of the package installed in ``site`` says."""
    shown = run(sys.executable, "-m", "exporter", "--version", cwd=cwd, PYTHONPATH=str(site))
    assert shown.returncode == 0, shown.stderr
    match = VERSION_LINE.search(shown.stdout)
    assert match, shown.stdout
    assert re.search(r"^  build date: +\d{4}-\d\d-\d\dT", shown.stdout, re.MULTILINE), shown.stdout
    assert f"python version:   {sys.version.split()[0]}" in shown.stdout, shown.stdout
    version, branch, revision = match.groups()
    return version, branch, revision


def installed_build_info(site: Path, cwd: Path, sim: Simulator) -> dict[str, str]:
    """The labels of ``cec_exporter_build_info`` from a ``scrape`` by the installed package."""
    config = cwd / "config.yml"
    config.write_text(yaml.safe_dump({"targets": [target_entry(sim)]}))
    scraped = run(sys.executable, "-m", "exporter", "scrape", "--config", config, cwd=cwd,
                  PYTHONPATH=str(site))  # fmt: skip
    assert scraped.returncode == 0, scraped.stderr
    [(labels, _)] = samples_named(scraped.stdout, "cec_exporter_build_info")
    return labels


def test_pip_install_of_a_clone_knows_its_revision(
    clone: tuple[Path, str, str], tmp_path: Path, simulator: Callable[..., Simulator]
) -> None:
    """``pip install .`` in a clone: the installed package names the clone's revision."""
    work, described, branch = clone
    site = tmp_path / "site"
    installed = run(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
        "--target", site, ".", cwd=work,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"  # no checkout here: only the installed package is found
    elsewhere.mkdir()
    assert installed_version(site, elsewhere) == (__version__, branch, described)
    labels = installed_build_info(site, elsewhere, simulator(phones=3))
    assert labels["revision"] == described
    assert labels["version"] == __version__


def test_python_m_build_makes_dists_that_twine_accepts_and_that_know_their_revision(
    clone: tuple[Path, str, str], tmp_path: Path
) -> None:
    """The sdist carries the revision, so the wheel built from it (no .git there) does too."""
    work, described, branch = clone
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, work)
    assert built.returncode == 0, built.stdout + built.stderr
    names = sorted(p.name for p in dist.iterdir())
    assert names == [
        f"cec_phone_exporter-{__version__}-py3-none-any.whl",
        f"cec_phone_exporter-{__version__}.tar.gz",
    ], names
    checked = run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout
    site = tmp_path / "site"
    wheel = next(dist.glob("*.whl"))
    installed = run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                    wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert installed_version(site, tmp_path) == (__version__, branch, described)


def test_an_explicit_revision_wins_over_git(clone: tuple[Path, str, str], tmp_path: Path) -> None:
    """The image's build passes REVISION and BRANCH (its context has no .git)."""
    work, _, _ = clone
    site = tmp_path / "site"
    installed = run(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
        "--target", site, ".", cwd=work,
        CEC_EXPORTER_REVISION="v9.9.9-1-gabcdef0", CEC_EXPORTER_BRANCH="release",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert installed_version(site, tmp_path) == (__version__, "release", "v9.9.9-1-gabcdef0")


def older_pythons() -> list[Path]:
    """Interpreters on this machine older than ``requires-python`` (pyenv's, /usr/bin's)."""
    needed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = int(re.fullmatch(r">=3\.(\d+)", needed)[1])  # type: ignore[index]
    found = [PYENV_VERSIONS / f"3.{minor - 1}" / "bin" / "python3"]
    found += sorted(PYENV_VERSIONS.glob(f"3.{minor - 1}.*/bin/python3"))
    found.append(Path(f"/usr/bin/python3.{minor - 1}"))
    return [p for p in found if p.exists()][:1]


@pytest.mark.parametrize("python", older_pythons(), ids=lambda p: p.parent.parent.name)
def test_an_older_python_is_told_which_python_is_needed(python: Path, clone: tuple[Path, str, str],
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Not pip's "No matching distribution found for httpx2": the Python the project needs."""
    work, _, _ = clone
    installed = run(
        python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--target", tmp_path / "site", ".", cwd=work, PIP_FIND_LINKS="",
    )  # fmt: skip
    assert installed.returncode != 0
    output = installed.stdout + installed.stderr
    assert "cec-phone-exporter needs Python 3.11 or newer" in output, output[-3000:]
