"""Which build is running: ``--version``, ``cec_exporter_build_info`` and the image agree.

Run from this checkout (an editable install), the revision is git's, asked at run time;
an installed package carries the revision baked in when it was built
(tests/test_packaging.py builds and installs a clone to prove it, and
scripts/image_smoke.sh checks the image's labels against its ``--version``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, run_cli, samples_named, target_entry

from exporter import __version__
from exporter.build import BUILD_FILE, Build, build_for_package
from exporter.simulator import Simulator

VERSION_LINE = re.compile(r"^cec-phone-exporter, version (\S+) \(branch: (\S+), revision: (\S+)\)$")


def git(*args: str) -> str:
    found = shutil.which("git")
    if found is None or not (REPO / ".git").exists():
        pytest.skip("not run from a git checkout")
    return subprocess.run(
        [found, "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_version_and_build_info_name_the_checkouts_revision(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    described = git("describe", "--always", "--dirty", "--tags")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    shown = run_cli("--version")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    match = VERSION_LINE.fullmatch(lines[0])
    assert match, shown.stdout
    assert match.groups() == (__version__, branch, described)
    assert lines[1].split() == ["build", "date:", "unknown"]  # a checkout was never built
    python = lines[2].split()[-1]
    config = write_config(targets=[target_entry(simulator(phones=5))])
    scraped = run_cli("scrape", "--config", str(config))
    assert scraped.returncode == 0, scraped.stderr
    [(labels, value)] = samples_named(scraped.stdout, "cec_exporter_build_info")
    assert value == 1
    assert labels == {"version": __version__, "revision": described, "python_version": python}


def test_a_build_prefers_what_it_is_told_then_git_then_its_sdist(tmp_path: Path) -> None:
    """setup.py's one call, on a source without .git (an sdist, the image's build context)."""
    source = tmp_path / "source"
    (source / "exporter").mkdir(parents=True)
    fixed = {"SOURCE_DATE_EPOCH": "1767225600"}
    assert build_for_package(source, fixed) == Build("unknown", "unknown", "2026-01-01T00:00:00Z")
    Build("v1-2-gabc", "main", "2025-12-31T00:00:00Z").write(source / "exporter" / BUILD_FILE)
    assert build_for_package(source, fixed) == Build("v1-2-gabc", "main", "2025-12-31T00:00:00Z")
    told = {**fixed, "CEC_EXPORTER_REVISION": "v2", "CEC_EXPORTER_BRANCH": "release"}
    assert build_for_package(source, told) == Build("v2", "release", "2025-12-31T00:00:00Z")
    (source / "exporter" / BUILD_FILE).write_text("{not json")
    assert build_for_package(source, fixed).revision == "unknown"


def test_the_image_bakes_its_build_arguments_and_labels_its_version() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    builder, final = text.split("\nFROM ", 2)[1:]
    assert "ARG REVISION" in builder
    assert "ARG BRANCH" in builder
    assert 'CEC_EXPORTER_REVISION="${REVISION}" CEC_EXPORTER_BRANCH="${BRANCH}"' in builder
    assert f"ARG VERSION={__version__}\n" in final, (
        "the image's version label must be the package's"
    )
    for label in ("version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final, label
    assert "CEC_EXPORTER_REVISION" not in final  # baked into the wheel, not set at run time
