"""The README and the runbook are a promise: their commands run, and their tables match the code.

- Every fenced block whose info string is ``sh test`` runs, in a fresh copy of the
  repository with ``.venv`` being this test's installation, and must succeed; so does
  the "Validate with" command in ``config.example.yaml``.
- The README's metric tables match a live ``/metrics`` of an exporter against the
  simulator (names, types, label sets), its config tables match the keys the config
  loader accepts, and its command-line tables match each command's ``--help``
  (options and environment variables), in both directions.

When one of these fails, the message names the missing or extra item: fix the
README (or the code) so that the two agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, RunningExporter, run_cli, target_entry

from exporter.build import REVISION_ENVVAR
from exporter.config import _IDENTITY, _SETTINGS, _TOP_LEVEL
from exporter.simulator import Fault, Simulator

README = REPO / "README.md"
DOCS = (README, REPO / "docs" / "runbook.md")
SHELL_TIMEOUT = 120
# Left out of the copy a shell block runs in: bulky or machine-specific.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


# --- reading Markdown ------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it starts, its info string and its text."""

    doc: Path
    line: int
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def code_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    info = ""
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, info = number, line[3:].strip()
            else:
                blocks.append(Block(doc, start, info, "\n".join(lines[start : number - 1])))
                start = None
    return blocks


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next heading of its level)."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"README has no section {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _cells(line: str) -> list[str]:
    # Split on "|" but not on "\|" (an escaped pipe inside a cell, as in `text\|json`).
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text``: a list of rows, each {header: cell}."""
    found: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [h.lower() for h in _cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=False)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def tables_with(text: str, *columns: str) -> list[dict[str, str]]:
    """The rows of every table in ``text`` that has all of ``columns``."""
    return [
        row for table in tables(text) if table and set(columns) <= set(table[0]) for row in table
    ]


def ticked(cell: str) -> list[str]:
    """The `backticked` parts of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def readme() -> str:
    return README.read_text(encoding="utf-8")


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
    """The README and runbook document this repository alone: no outside contract files."""
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


# --- (b) metrics: README tables against a live /metrics --------------------------------------

# Standard collectors, documented as a family ("the standard process_* metrics").
_STANDARD = ("process_", "python_")


@pytest.fixture
def live_exporter(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> tuple[RunningExporter, str]:
    """A real exporter against the simulator, and its /metrics after three scrapes.

    A retCode failure, an HTTP error, then a success with per-phone metrics in pool
    mode, so every documented series has at least one sample.
    """
    sim = simulator(phones=30, tenants=2, mode="pool")
    sim.set_faults(
        [
            Fault("ret_code", pages=(0,), value="1", times=1),
            Fault("http_status", value=404, times=1),
        ]
    )
    entry = target_entry(sim, "sim", per_phone_metrics=True)
    server = exporter_server(write_config(targets=[entry]))
    text = ""
    for _ in range(3):
        text = server.metrics()
    return server, text


@pytest.fixture
def live_metrics(
    live_exporter: tuple[RunningExporter, str],
) -> dict[str, tuple[str, frozenset[str]]]:
    """{metric name: (type, label names)} from the live exporter's /metrics."""
    _, text = live_exporter
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(_STANDARD) or not family.samples:
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {key for s in family.samples for key in s.labels if key not in ("le", "quantile")}
        found[name] = (family.type, frozenset(labels))
    assert 'cec_up{target="sim"} 1.0' in text, text
    return found


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """{metric: (type, label names)} from the README's metric tables."""
    documented: dict[str, tuple[str, frozenset[str]]] = {}
    for row in tables_with(section(readme(), "What it exports"), "metric", "labels"):
        names = ticked(row["metric"])
        assert len(names) == 1, f"README metric row without one `name`: {row}"
        cell = re.sub(r"\([^)]*\)", "", row["labels"])  # value lists like (`a`, `b`)
        labels = {c.strip().strip("`") for c in cell.split(",")}
        labels -= {"", "—", "-", "none"}
        kind = row.get("type", "").split()[0] if row.get("type") else ""
        documented[names[0]] = (kind, frozenset(labels))
    return documented


def test_readme_metric_tables_match_live_metrics(
    live_metrics: dict[str, tuple[str, frozenset[str]]],
) -> None:
    documented = documented_metrics()
    problems = [
        f"{name} is on /metrics but not in README's metric tables (labels: {sorted(labels)})"
        for name, (_, labels) in live_metrics.items()
        if name not in documented
    ]
    problems += [
        f"README lists {name} but /metrics has no such metric"
        for name in documented
        if name not in live_metrics
    ]
    for name in documented.keys() & live_metrics.keys():
        (doc_type, doc_labels), (live_type, live_labels) = documented[name], live_metrics[name]
        if doc_labels != live_labels:
            problems.append(
                f"{name}: README labels {sorted(doc_labels)}, /metrics labels {sorted(live_labels)}"
            )
        if doc_type != live_type:
            problems.append(f"{name}: README type {doc_type!r}, /metrics type {live_type!r}")
    assert not problems, "\n".join(problems)


def test_every_metric_the_docs_name_exists(
    live_metrics: dict[str, tuple[str, frozenset[str]]],
) -> None:
    """Metric names in prose (README, runbook) exist; recording rules (a:b:c) are skipped."""
    known = set(live_metrics)
    known |= {n.removesuffix("_total") for n in known}  # prose may name a counter's family
    problems = []
    for doc in DOCS:
        for name in set(
            re.findall(r"(?<![\w/:.-])cec_[a-z0-9_]*[a-z0-9](?![\w:])", doc.read_text())
        ):
            if name not in known:
                problems.append(
                    f"{doc.relative_to(REPO)} names {name}, which /metrics does not have"
                )
    assert not problems, "\n".join(sorted(problems))


def test_every_documented_endpoint_answers(live_exporter: tuple[RunningExporter, str]) -> None:
    server, _ = live_exporter
    rows = tables_with(section(readme(), "HTTP endpoints"), "path")
    assert rows, "README's HTTP endpoints section has no table with a path column"
    problems = []
    for row in rows:
        method = "POST" if "POST" in " ".join(row.values()) else "GET"
        for path in ticked(row["path"]):
            url = path.replace("NAME", "sim")
            status = server.client.request(method, server.url + url).status_code
            if status in (404, 405):
                problems.append(f"README's endpoint {method} {path} answers {status}")
    assert not problems, "\n".join(problems)


# --- (b) config: README tables against the loader ---------------------------------------------


def test_readme_config_tables_match_the_loader() -> None:
    documented = {
        key
        for row in tables_with(section(readme(), "Configuration"), "key")
        for key in ticked(row["key"])
    }
    accepted = set(_SETTINGS) | set(_IDENTITY) | set(_TOP_LEVEL)
    problems = [
        f"config key {key} is accepted by exporter/config.py but not in README's config tables"
        for key in sorted(accepted - documented)
    ]
    problems += [
        f"README's config tables list {key}, which exporter/config.py does not accept"
        for key in sorted(documented - accepted)
    ]
    assert not problems, "\n".join(problems)


def test_config_example_shows_every_key() -> None:
    text = (REPO / "config.example.yaml").read_text()
    shown = set(re.findall(r"^[\s#-]*([a-z_]+):", text, re.MULTILINE))
    accepted = set(_SETTINGS) | set(_IDENTITY) | set(_TOP_LEVEL)
    missing = sorted(accepted - shown)
    assert not missing, f"config.example.yaml does not show: {', '.join(missing)}"


# --- (b) command line: README tables against --help -------------------------------------------


@dataclass(frozen=True)
class HelpOption:
    """One option as ``--help`` shows it."""

    flags: tuple[str, ...]
    envvar: str | None

    @property
    def primary(self) -> str:
        return next(f for f in self.flags if f.startswith("--"))


def parse_help(text: str) -> list[HelpOption]:
    """The options of a ``--help`` page (click's layout: each starts on a line "  -...")."""
    body = text.split("\nOptions:\n", 1)[1].split("\nCommands:\n", 1)[0]
    blocks: list[list[str]] = []
    for line in body.splitlines():
        if re.match(r"^  -", line):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    options = []
    for block in blocks:
        spec = re.split(r"\s{2,}", block[0].strip(), maxsplit=1)[0]
        envvar = re.search(r"env\s+var:\s+(\S+?)[;\]]", " ".join(block))
        options.append(HelpOption(tuple(re.findall(r"--?[\w.-]+", spec)), envvar and envvar[1]))
    return [o for o in options if "--help" not in o.flags]


@pytest.fixture(scope="module")
def helps() -> dict[str, list[HelpOption]]:
    """{command: its options}; "" is the group itself."""
    group = run_cli("--help")
    assert group.returncode == 0, group.stderr
    commands = re.findall(r"^  (\S+)\s", group.stdout.split("\nCommands:\n", 1)[1], re.MULTILINE)
    found = {"": parse_help(group.stdout)}
    for command in commands:
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        found[command] = parse_help(result.stdout)
    return found


def cli_section() -> str:
    return section(readme(), "Command line")


def test_readme_command_table_matches_help(helps: dict[str, list[HelpOption]]) -> None:
    rows = tables_with(cli_section(), "command")
    table: dict[str, set[str]] = {}
    for row in rows:
        synopsis = " ".join(ticked(row["command"]))
        name = synopsis.split()[0]
        table["" if name.startswith("-") else name] = set(re.findall(r"--[\w.-]+", synopsis))
    problems = [
        f"command {c!r} is in `cec-phone-exporter --help` but not in README's command table"
        for c in sorted(helps.keys() - table.keys())
    ]
    problems += [
        f"README's command table lists {c!r}, which `cec-phone-exporter --help` does not have"
        for c in sorted(table.keys() - helps.keys())
    ]
    for command in sorted(helps.keys() & table.keys()):
        shown = {o.primary for o in helps[command]}
        label = f"`{command} --help`" if command else "`cec-phone-exporter --help`"
        problems += [
            f"{opt} is in {label} but not in README's command table"
            for opt in sorted(shown - table[command])
        ]
        problems += [
            f"README's command table lists {opt} for {command or 'the group'}, not in {label}"
            for opt in sorted(table[command] - shown)
        ]
    assert not problems, "\n".join(problems)


def cli_invocations(doc: Path) -> list[str]:
    """Code spans and lines that run the exporter's CLI: ``cec-phone-exporter <command> ...``."""
    text = doc.read_text()
    spans = re.findall(r"`([^`\n]+)`", text) + text.splitlines()
    return [s for s in spans if re.search(r"cec-phone-exporter [a-z-]+", s)]


def test_every_option_the_docs_name_exists(helps: dict[str, list[HelpOption]]) -> None:
    flags = {f for options in helps.values() for o in options for f in o.flags} | {"--help"}
    aliases = {f for options in helps.values() for o in options for f in o.flags if f != o.primary}
    section_text = cli_section()
    problems = [
        f"the alias {alias} is accepted but README's Command line section does not mention it"
        for alias in sorted(aliases)
        if alias.startswith("--") and alias not in section_text
    ]
    named = {("README.md", flag) for flag in re.findall(r"--[a-z][\w.-]*[a-z]", section_text)}
    for doc in DOCS:
        for span in cli_invocations(doc):
            after = span.split("cec-phone-exporter", 1)[1]
            named |= {(doc.name, flag) for flag in re.findall(r"--[a-z][\w.-]*[a-z]", after)}
    problems += [
        f"{doc} names {flag}, which no cec-phone-exporter command accepts"
        for doc, flag in sorted(named)
        if flag not in flags
    ]
    assert not problems, "\n".join(problems)


def expected_envvar(command: str, option: str) -> str:
    return (
        f"CEC_EXPORTER_{command}_{option.lstrip('-')}".upper().replace("-", "_").replace(".", "_")
    )


def test_readme_environment_variables_match_help(helps: dict[str, list[HelpOption]]) -> None:
    text = cli_section()
    assert "`CEC_EXPORTER_<COMMAND>_<OPTION>`" in text, "README must state the variable rule"
    shared: dict[tuple[str, str], str] = {}
    for row in tables_with(text, "variable", "option", "commands"):
        variable, option = ticked(row["variable"])[0], ticked(row["option"])[0]
        for command in re.split(r"[,\s]+", row["commands"].strip()):
            shared[(command, option)] = variable
    problems = []
    actual: set[str] = set()
    for command, options in helps.items():
        for option in options:
            if not command:
                continue
            actual.add(option.envvar or "")
            want = shared.get((command, option.primary)) or expected_envvar(command, option.primary)
            if option.envvar != want:
                problems.append(
                    f"`{command} {option.primary}`: --help shows env var {option.envvar}, "
                    f"README says {want}"
                )
    problems += [
        f"README's variable table: `{command} {option}` does not exist"
        for command, option in shared
        if not any(o.primary == option for o in helps.get(command, []))
    ]
    actual.add(REVISION_ENVVAR)  # not an option: the build's revision (exporter/build.py)
    for doc in DOCS:
        for name in sorted(set(re.findall(r"CEC_EXPORTER_[A-Z0-9_]*[A-Z0-9]", doc.read_text()))):
            if name not in actual:
                problems.append(f"{doc.relative_to(REPO)} names {name}, which no option reads")
    assert not problems, "\n".join(problems)
