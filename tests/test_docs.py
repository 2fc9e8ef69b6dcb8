"""The README and docs/ are a promise: their commands run.

- Every fenced block whose info string is ``sh test`` (in README.md and every docs/*.md)
  runs, in a fresh copy of the repository with ``.venv`` being this test's
  installation, and must succeed; so does the "Validate with" command in
  ``config.example.yaml``.

Their tables (metrics, config keys, command line) are checked against the code by
tests/test_docs_tables.py. When one of these fails, the message names the missing
or extra item: fix the doc (or the code) so that the two agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_common import DOCS, DOCS_DIR, README, REPO, Block, code_blocks

SHELL_TIMEOUT = 120
# Left out of the copy a shell block runs in: bulky or machine-specific.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


# --- (a) the documented commands run ---------------------------------------------------------

SHELL_BLOCKS = [
    block
    for doc in DOCS
    for block in code_blocks(doc)
    if block.info.split()[:1] == ["sh"] and "test" in block.info.split()[1:]
]


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository whose ``.venv`` is this test's installation; its environment."""
    work = tmp_path / "checkout"
    shutil.copytree(REPO, work, ignore=COPY_IGNORE)
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CEC_")},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
    }
    return work, env


def run_shell(script: str, where: str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"the commands at {where} failed (exit {result.returncode}):\n{script}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_the_docs_have_runnable_blocks() -> None:
    assert any(b.doc == README for b in SHELL_BLOCKS), "no ```sh test block in README.md"
    assert any(b.doc.parent == DOCS_DIR for b in SHELL_BLOCKS), "no ```sh test block in docs/"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.where for b in SHELL_BLOCKS])
def test_shell_block_runs(block: Block, fresh_checkout: tuple[Path, dict[str, str]]) -> None:
    work, env = fresh_checkout
    run_shell(block.body, block.where, work, env)


def test_files_the_readme_makes_in_the_clone_are_git_ignored(
    fresh_checkout: tuple[Path, dict[str, str]],
) -> None:
    """A real app secret and config written as the README says must not be one `git add .` away."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    work, env = fresh_checkout

    def files() -> set[Path]:
        return {
            p.relative_to(work) for p in work.rglob("*") if p.is_file() and ".venv" not in p.parts
        }

    before = files()
    for block in (b for b in SHELL_BLOCKS if b.doc == README):
        run_shell(block.body, block.where, work, env)
    made = files() - before
    assert Path("secrets/cec_app_secret") in made
    assert Path("config.yml") in made
    subprocess.run([git, "init", "-q"], cwd=work, check=True)
    for path in sorted(made):
        ignored = subprocess.run([git, "check-ignore", "-q", str(path)], cwd=work, check=False)
        assert ignored.returncode == 0, f"{path}, made by the README's commands, is not git-ignored"


def test_config_example_validate_command_runs(fresh_checkout: tuple[Path, dict[str, str]]) -> None:
    """The example's own "Validate with" line works with what its comment says to set."""
    work, env = fresh_checkout
    lines = (REPO / "config.example.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "Validate with" in line)
    prerequisites = lines[start]
    command = lines[start + 1].lstrip("#").strip()
    assert command.startswith(".venv/bin/cec-phone-exporter check-config"), command
    for name in ("CEC_APP_KEY", "CEC_APP_SECRET_FILE"):
        assert name in prerequisites, f"the Validate-with comment must say to set {name}"
    (work / "app_secret").write_text("example-secret")
    env = {**env, "CEC_APP_KEY": "example-key", "CEC_APP_SECRET_FILE": str(work / "app_secret")}
    run_shell(command, "config.example.yaml (Validate with)", work, env)


def test_docs_stand_alone() -> None:
    """The README and docs/ document this repository alone: no outside contract files."""
    for doc in (*DOCS, REPO / "bench" / "README.md", REPO / "CHANGELOG.md"):
        text = doc.read_text(encoding="utf-8")
        for outside in ("SPEC.md", "../shared"):
            assert outside not in text, f"{doc.relative_to(REPO)} mentions {outside}"


def test_docs_run_python_from_the_venv() -> None:
    """A bare ``python`` is the system's, without the project's packages: say .venv/bin/python."""
    problems = []
    for doc in (*DOCS, REPO / "config.example.yaml"):
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if "docker compose exec" in line:  # inside the image, its python is the right one
                continue
            for match in re.finditer(r"(?<![\w/.:-])python3?\s+(?!-m venv\b)[^\s`)]+", line):
                problems.append(
                    f"{doc.relative_to(REPO)}:{number}: `{match[0]}`: use .venv/bin/python"
                )
    assert not problems, "\n".join(problems)
