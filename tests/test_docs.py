"""The README and docs/ are a promise: their commands run and their links lead somewhere.

- Every fenced block whose info string is ``sh test`` (in README.md and every docs/*.md)
  runs, in a fresh copy of the repository with ``.venv`` being this test's
  installation, and must succeed; so does the "Validate with" command in
  ``config.example.yaml``.
- Every relative link and ``#anchor`` in README.md and docs/*.md resolves: the file
  exists in the repository, and the anchor is a heading of that file as GitHub
  names it. The README links every doc, leads with its two commands (the demo, the
  tests) and stays short.
- Every other file that sends a reader to a doc (``docs/deployment.md, "Kubernetes"``,
  or the README and a quoted heading) names a doc and heading that exist.

Their tables (metrics, config keys, command line) are checked against the code by
tests/test_docs_tables.py. When one of these fails, the message names the missing
or extra item: fix the doc (or the code) so that the two agree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from docs_common import DOCS, DOCS_DIR, README, REPO, Block, anchors, code_blocks, headings, links
from support import sample
from support_procs import ServeProcess

from exporter.simulator import Simulator

pytestmark = pytest.mark.e2e

SHELL_TIMEOUT = 120
README_MAX_LINES = 300
# The README's two set-up commands, word for word; CI (.ci/run) runs the second.
DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/cec-phone-exporter demo"
)
TEST_COMMAND = "bash scripts/test.sh"
# Left out of the copy a shell block runs in, when git cannot list a clone's files: what is
# bulky or built, and the real-account files the README has a user make (git-ignored).
_BULKY = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-*",
    "__pycache__",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "build",
    "dist",
)
_REAL_ACCOUNT = {"config.yml", "secrets"}


def copy_ignore(folder: str, names: list[str]) -> set[str]:
    """What ``shutil.copytree`` leaves out of ``folder`` in the copy of the repository."""
    ignored = set(_BULKY(folder, names))
    return ignored | (_REAL_ACCOUNT & set(names)) if Path(folder) == REPO else ignored


# --- (a) the documented commands run ---------------------------------------------------------

SHELL_BLOCKS = [
    block
    for doc in DOCS
    for block in code_blocks(doc)
    if block.info.split()[:1] == ["sh"] and "test" in block.info.split()[1:]
]


def clone_files() -> list[str] | None:
    """The files a clone of this checkout holds, as git lists them (tracked, or new and not
    ignored), or None outside a git work tree: never the ignored ``config.yml`` and
    ``secrets/`` a user made for a real account by the README's steps."""
    git = shutil.which("git")
    if git is None:
        return None
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        return None
    return [name for name in listed.stdout.decode().split("\0") if (REPO / name).is_file()]


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository as a clone has it, whose ``.venv`` is this test's
    installation; its environment."""
    work = tmp_path / "checkout"
    names = clone_files()
    if names is None:  # a source tree without git: all but what is bulky or built
        shutil.copytree(REPO, work, ignore=copy_ignore)
    for name in names or ():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, work / name)
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


# --- (c) the links resolve, the README stays short -------------------------------------------

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def test_every_relative_link_and_anchor_resolves() -> None:
    """Links between the docs name a file of the repository and, after '#', one of its headings."""
    problems = []
    for doc in DOCS:
        where = doc.relative_to(REPO)
        for line, target in links(doc):
            if _SCHEME.match(target):
                continue  # http(s), mailto: the web, not this repository
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.is_relative_to(REPO):
                problems.append(f"{where}:{line}: {target} leads out of the repository")
            elif not file.exists():
                problems.append(f"{where}:{line}: {target}: no such file or folder")
            elif anchor and file.suffix != ".md":
                problems.append(
                    f"{where}:{line}: {target}: an anchor into a file that is not Markdown"
                )
            elif anchor and anchor not in anchors(file):
                problems.append(
                    f"{where}:{line}: {target}: {file.relative_to(REPO)} has no heading #{anchor}"
                )
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_doc() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in links(README)
        if not _SCHEME.match(target)
    }
    missing = [str(doc.relative_to(REPO)) for doc in DOCS[1:] if doc not in linked]
    assert not missing, f"README.md links none of: {', '.join(missing)}"


def test_the_readme_is_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines (at most {README_MAX_LINES}): move a topic to docs/"
    )


def test_the_readme_leads_with_its_two_commands() -> None:
    """One command installs and runs the demo, one installs and runs the tests, as CI does."""
    plain = [b.body for b in code_blocks(README) if b.info == "sh"]
    assert plain[:2] == [DEMO_COMMAND, TEST_COMMAND], plain[:2]
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-1] == TEST_COMMAND, f".ci/run ends with {ci[-1]!r}, not the README's test command"


# Where other files point readers at a doc: `docs/<name>.md`, with `#anchor`, or `README`, each
# optionally followed by a quoted heading (`docs/deployment.md, "Kubernetes"`).
_DOC_REFERENCE = re.compile(
    r"(?<![\w/.-])(docs/[\w-]+\.md|README(?:\.md)?)(?![\w-])(?:#([\w-]+))?"
    r"(?:(?:,|'s)?\s+\\?\"([^\"\\\n]+)\\?\")?"
)
# Not read for references: tooling, caches, upstream corpora with docs of their own.
_NOT_SCANNED = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_UPSTREAM = ("tests/exporter_toolkit", "tests/schemas")


def referring_files() -> list[Path]:
    files = []
    for path in sorted(REPO.rglob("*")):
        relative = path.relative_to(REPO)
        if (
            not path.is_file()
            or _NOT_SCANNED & set(relative.parts)
            or any(part.startswith(".venv-") for part in relative.parts)
            or any(part.endswith(".egg-info") for part in relative.parts)
            or str(relative).startswith(_UPSTREAM)
        ):
            continue
        files.append(path)
    return files


def test_references_to_the_docs_name_files_and_headings_that_exist() -> None:
    """Comments, docstrings, the dashboard and the changelog point at docs that exist."""
    problems = []
    for path in referring_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in _DOC_REFERENCE.finditer(text):
            name, anchor, heading = match.groups()
            doc = REPO / (name if name.endswith(".md") else "README.md")
            where = f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
            if not doc.exists():
                problems.append(f"{where}: {name}: no such doc")
            elif anchor and anchor not in anchors(doc):
                problems.append(f"{where}: {name}#{anchor}: no such heading")
            elif heading and heading not in headings(doc):
                problems.append(f"{where}: {name}, {heading!r}: no such heading")
    assert not problems, "\n".join(problems)


def readme_command(words: str) -> str:
    """The README's one-line ``sh`` block that contains ``words``."""
    [body] = [b.body for b in code_blocks(README) if b.info == "sh" and words in b.body]
    assert "\n" not in body, body
    return body


def test_the_real_account_steps_run_as_written_against_a_stand_in_vendor(
    fresh_checkout: tuple[Path, dict[str, str]], simulator: Callable[..., Simulator]
) -> None:
    """Steps 2 and 3 of the README with the simulator as the vendor: credentials as the
    README spells them, the one edit it asks for (base_url), the credentials tested with
    ``scrape --debug``, then ``serve`` (its port from the environment, as operators may)."""
    work, env = fresh_checkout
    sim = simulator(phones=7, app_key="my-app-key", app_secret="my-app-secret")
    [setup] = [b.body for b in SHELL_BLOCKS if b.doc == README and "check-config" in b.body]
    check = readme_command("scrape --config config.yml --debug")
    serve = readme_command("serve --config config.yml")
    script = (
        f"{setup}\n"
        f"sed -i 's|base_url: .*|base_url: {sim.url}|' config.yml\n"  # the README's one edit
        f"{check}\n"
        'printf "%s\\n%s\\n" "$CEC_APP_KEY" "$CEC_APP_SECRET_FILE" > env.txt\n'
    )
    checked = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work, env=env, capture_output=True, text=True, timeout=SHELL_TIMEOUT, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Result: UP" in checked.stdout
    assert "my-app-secret" not in checked.stdout + checked.stderr
    key, secret_file = (work / "env.txt").read_text().splitlines()
    exported = {**env, "CEC_APP_KEY": key, "CEC_APP_SECRET_FILE": secret_file}
    server = ServeProcess(
        command=shlex.split(serve),
        program=(),
        cwd=work,
        env={**exported, "CEC_EXPORTER_LISTEN": "127.0.0.1:0"},
    )
    with server:
        text = httpx2.get(server.url + "/metrics", timeout=30).text
    assert sample(text, "cec_softphones_allocated", target="production") == 7
