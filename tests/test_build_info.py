"""``cec_exporter_build_info`` carries the source revision when it can be known (issue 18)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, run_cli, samples_named, target_entry

from exporter.simulator import Simulator


def build_info(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path], **env: str
) -> dict[str, str]:
    """The labels of the one build_info sample of a real ``scrape``."""
    config = write_config(targets=[target_entry(simulator(phones=5))])
    result = run_cli("scrape", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    [(labels, value)] = samples_named(result.stdout, "cec_exporter_build_info")
    assert value == 1
    return labels


def test_revision_from_the_environment(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    """The container image sets CEC_EXPORTER_REVISION from its REVISION build argument."""
    labels = build_info(simulator, write_config, CEC_EXPORTER_REVISION="v1.2.3-4-gabc1234")
    assert labels["revision"] == "v1.2.3-4-gabc1234"
    assert labels["version"]
    assert labels["python_version"]


def test_revision_from_the_git_checkout(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not run from a git checkout")
    described = subprocess.run(
        [git, "-C", str(REPO), "describe", "--always", "--dirty", "--tags"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    labels = build_info(simulator, write_config, CEC_EXPORTER_REVISION="")
    assert labels["revision"] == described != "unknown"


def test_image_passes_the_revision_build_argument() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    final = text.rsplit("\nFROM ", 1)[1]
    assert "ARG REVISION" in final
    assert "CEC_EXPORTER_REVISION=${REVISION}" in final
