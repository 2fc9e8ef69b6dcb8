"""The docs' tables match the code, in both directions.

- The metric tables (docs/metrics.md) match a live ``/metrics`` of an exporter against
  the simulator (names, types, label sets), and every metric any doc names exists.
- The HTTP endpoints table (docs/configuration.md) lists paths that answer.
- The config tables (docs/configuration.md, "The config file") match the keys the
  config loader accepts; ``config.example.yaml`` shows every key.
- The command-line tables (docs/configuration.md, "Command line") match each
  command's ``--help`` (options and environment variables), and every option or
  ``CEC_EXPORTER_*`` variable any doc names exists.

When one of these fails, the message names the missing or extra item: fix the doc
(or the code) so that the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from docs_common import CONFIGURATION_DOC, DOCS, METRICS_DOC, section, tables_with, ticked
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, RunningExporter, run_cli, target_entry

from exporter.build import BUILD_ENVVARS
from exporter.settings.targets import _IDENTITY, _SETTINGS, _TOP_LEVEL
from exporter.simulator import Fault, Simulator

CONFIG_SECTION = "The config file"
CLI_SECTION = "Command line"
ENDPOINTS_SECTION = "HTTP endpoints"


# --- metrics: docs/metrics.md against a live /metrics ---------------------------------------

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
    """{metric: (type, label names)} from the metric tables of docs/metrics.md."""
    documented: dict[str, tuple[str, frozenset[str]]] = {}
    rows = tables_with(METRICS_DOC.read_text(encoding="utf-8"), "metric", "labels")
    assert rows, "docs/metrics.md has no table with metric and labels columns"
    for row in rows:
        names = ticked(row["metric"])
        assert len(names) == 1, f"docs/metrics.md: a metric row without one `name`: {row}"
        cell = re.sub(r"\([^)]*\)", "", row["labels"])  # value lists like (`a`, `b`)
        labels = {c.strip().strip("`") for c in cell.split(",")}
        labels -= {"", "—", "-", "none"}
        kind = row.get("type", "").split()[0] if row.get("type") else ""
        documented[names[0]] = (kind, frozenset(labels))
    return documented


def test_metric_tables_match_live_metrics(
    live_metrics: dict[str, tuple[str, frozenset[str]]],
) -> None:
    documented = documented_metrics()
    problems = [
        f"{name} is on /metrics but not in docs/metrics.md (labels: {sorted(labels)})"
        for name, (_, labels) in live_metrics.items()
        if name not in documented
    ]
    problems += [
        f"docs/metrics.md lists {name} but /metrics has no such metric"
        for name in documented
        if name not in live_metrics
    ]
    for name in documented.keys() & live_metrics.keys():
        (doc_type, doc_labels), (live_type, live_labels) = documented[name], live_metrics[name]
        if doc_labels != live_labels:
            problems.append(
                f"{name}: docs/metrics.md labels {sorted(doc_labels)}, "
                f"/metrics labels {sorted(live_labels)}"
            )
        if doc_type != live_type:
            problems.append(f"{name}: docs/metrics.md type {doc_type!r}, /metrics {live_type!r}")
    assert not problems, "\n".join(problems)


def test_every_metric_the_docs_name_exists(
    live_metrics: dict[str, tuple[str, frozenset[str]]],
) -> None:
    """Metric names in any doc's prose exist; recording rules (a:b:c) are skipped."""
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
    rows = tables_with(section(CONFIGURATION_DOC, ENDPOINTS_SECTION), "path")
    assert rows, "docs/configuration.md's HTTP endpoints section has no table with a path column"
    problems = []
    for row in rows:
        method = "POST" if "POST" in " ".join(row.values()) else "GET"
        for path in ticked(row["path"]):
            url = path.replace("NAME", "sim")
            status = server.client.request(method, server.url + url).status_code
            if status in (404, 405):
                problems.append(f"the documented endpoint {method} {path} answers {status}")
    assert not problems, "\n".join(problems)


# --- config: docs/configuration.md against the loader -----------------------------------------


def test_config_tables_match_the_loader() -> None:
    documented = {
        key
        for row in tables_with(section(CONFIGURATION_DOC, CONFIG_SECTION), "key")
        for key in ticked(row["key"])
    }
    accepted = set(_SETTINGS) | set(_IDENTITY) | set(_TOP_LEVEL)
    problems = [
        f"config key {key} is accepted by exporter/settings/targets.py but not in the config tables"
        for key in sorted(accepted - documented)
    ]
    problems += [
        f"the config tables list {key}, which exporter/settings/targets.py does not accept"
        for key in sorted(documented - accepted)
    ]
    assert not problems, "\n".join(problems)


def test_config_example_shows_every_key() -> None:
    text = (REPO / "config.example.yaml").read_text()
    shown = set(re.findall(r"^[\s#-]*([a-z_]+):", text, re.MULTILINE))
    accepted = set(_SETTINGS) | set(_IDENTITY) | set(_TOP_LEVEL)
    missing = sorted(accepted - shown)
    assert not missing, f"config.example.yaml does not show: {', '.join(missing)}"


# --- command line: docs/configuration.md against --help ---------------------------------------


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
        # click breaks a name longer than its column across lines: joined without the break.
        envvar = re.search(r"env\s+var:\s+([A-Z0-9_\s]+?)[;\]]", " ".join(block))
        name = re.sub(r"\s+", "", envvar[1]) if envvar else None
        options.append(HelpOption(tuple(re.findall(r"--?[\w.-]+", spec)), name))
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
    return section(CONFIGURATION_DOC, CLI_SECTION)


@pytest.mark.slow
def test_command_table_matches_help(helps: dict[str, list[HelpOption]]) -> None:
    rows = tables_with(cli_section(), "command")
    table: dict[str, set[str]] = {}
    for row in rows:
        synopsis = " ".join(ticked(row["command"]))
        name = synopsis.split()[0]
        table["" if name.startswith("-") else name] = set(re.findall(r"--[\w.-]+", synopsis))
    problems = [
        f"command {c!r} is in `cec-phone-exporter --help` but not in the command table"
        for c in sorted(helps.keys() - table.keys())
    ]
    problems += [
        f"the command table lists {c!r}, which `cec-phone-exporter --help` does not have"
        for c in sorted(table.keys() - helps.keys())
    ]
    for command in sorted(helps.keys() & table.keys()):
        shown = {o.primary for o in helps[command]}
        label = f"`{command} --help`" if command else "`cec-phone-exporter --help`"
        problems += [
            f"{opt} is in {label} but not in the command table"
            for opt in sorted(shown - table[command])
        ]
        problems += [
            f"the command table lists {opt} for {command or 'the group'}, not in {label}"
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
        f"the alias {alias} is accepted but the Command line section does not mention it"
        for alias in sorted(aliases)
        if alias.startswith("--") and alias not in section_text
    ]
    named = {
        ("configuration.md", flag) for flag in re.findall(r"--[a-z][\w.-]*[a-z]", section_text)
    }
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


def test_environment_variables_match_help(helps: dict[str, list[HelpOption]]) -> None:
    text = cli_section()
    assert "`CEC_EXPORTER_<COMMAND>_<OPTION>`" in text, (
        "the Command line section must state the rule"
    )
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
                    f"the docs say {want}"
                )
    problems += [
        f"the variable table: `{command} {option}` does not exist"
        for command, option in shared
        if not any(o.primary == option for o in helps.get(command, []))
    ]
    actual.update(BUILD_ENVVARS)  # not options: what a build bakes in (exporter/build.py)
    for doc in DOCS:
        for name in sorted(set(re.findall(r"CEC_EXPORTER_[A-Z0-9_]*[A-Z0-9]", doc.read_text()))):
            if name not in actual:
                problems.append(f"{doc.relative_to(REPO)} names {name}, which no option reads")
    assert not problems, "\n".join(problems)
