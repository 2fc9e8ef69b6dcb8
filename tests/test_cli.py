"""The command line's environment variables follow one documented rule, and --help shows them.

``CEC_EXPORTER_CONFIG``, ``..._WEB_CONFIG``, ``..._LOG_LEVEL`` and ``..._LOG_FORMAT``
serve every command that has the option; ``CEC_EXPORTER_LISTEN`` is the exporter's
address (``serve``, ``demo``); everything else is ``CEC_EXPORTER_<COMMAND>_<OPTION>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import click
import httpx2
import pytest
from click.testing import CliRunner
from support import run_cli, sample, target_entry
from support_procs import ServeProcess

from exporter.cli import cli
from exporter.simulator import Simulator

SHARED = {
    "config": "CEC_EXPORTER_CONFIG",
    "web-config": "CEC_EXPORTER_WEB_CONFIG",
    "log-level": "CEC_EXPORTER_LOG_LEVEL",
    "log-format": "CEC_EXPORTER_LOG_FORMAT",
}
# An address nothing can listen on here: a command that wrongly obeys it fails.
UNUSABLE_LISTEN = "127.0.0.1:1"


def expected_envvar(command: str, option: str) -> str:
    """The rule as docs/configuration.md states it, written independently of exporter.cli."""
    if option == "listen" and command in ("serve", "demo"):
        return "CEC_EXPORTER_LISTEN"
    if option in SHARED:
        return SHARED[option]
    return f"CEC_EXPORTER_{command}_{option}".upper().replace("-", "_").replace(".", "_")


def long_options() -> list[tuple[str, str]]:
    """(command, option without dashes) for every option of every command."""
    return [
        (name, next(o for o in param.opts if o.startswith("--"))[2:])
        for name, command in cli.commands.items()
        for param in command.params
        if isinstance(param, click.Option)
    ]


def test_every_option_has_the_documented_variable_and_help_shows_it() -> None:
    options = long_options()
    assert ("simulate", "faults") in options
    runner = CliRunner()
    helps = {name: runner.invoke(cli, [name, "--help"]).output for name in cli.commands}
    for command, option in options:
        variable = expected_envvar(command, option)
        # click wraps help text: compare with whitespace removed.
        shown = re.sub(r"\s+", "", helps[command])
        assert f"envvar:{variable}" in shown, f"{command} --{option}: {variable} not in --help"


@pytest.mark.parametrize("command", ["serve", "demo", "simulate", "check-config", "scrape"])
def test_help_lists_the_options_of_each_command(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    if command in ("serve", "demo", "simulate", "scrape"):
        assert "--log-level" in result.output
        assert "--log-format" in result.output


def test_simulate_takes_its_options_from_its_own_variables(
    serve_process: Callable[..., ServeProcess],
) -> None:
    env = {
        "CEC_EXPORTER_SIMULATE_FAULTS": '[{"kind": "ret_code", "value": "2", "pages": [0]}]',
        "CEC_EXPORTER_SIMULATE_LISTEN": "127.0.0.1:0",
        "CEC_EXPORTER_SIMULATE_PHONES": "42",
        "CEC_EXPORTER_LISTEN": UNUSABLE_LISTEN,  # the exporter's address, not the simulator's
    }
    sim = serve_process(command=("simulate",), env=env)
    url = sim.wait_for_line(r"listening on (http://\S+)").group(1)
    assert not url.endswith(UNUSABLE_LISTEN[-2:]), url
    state = httpx2.get(f"{url}/_sim/state", timeout=10).json()
    assert [f["kind"] for f in state["faults"]] == ["ret_code"], state["faults"]
    assert state["config"]["phones"] == 42


def test_demo_obeys_the_exporter_listen_variable(
    serve_process: Callable[..., ServeProcess],
) -> None:
    env = {"CEC_EXPORTER_LISTEN": "127.0.0.1:0", "CEC_EXPORTER_DEMO_PHONES": "7"}
    demo = serve_process(command=("demo",), env=env).start()
    text = httpx2.get(f"{demo.url}/metrics", timeout=30).text
    assert sample(text, "cec_softphones_allocated", target="demo") == 7


def test_demo_listens_on_loopback_and_shows_its_banner_once_listening(
    serve_process: Callable[..., ServeProcess],
) -> None:
    help_text = CliRunner().invoke(cli, ["demo", "--help"]).output
    assert "default: 127.0.0.1:9877" in re.sub(r"\s+", " ", help_text)
    demo = serve_process(command=("demo", "--listen", "127.0.0.1:0")).start()
    # The banner names the port really bound, so it comes after listening.
    shown = demo.wait_for_line(r"exporter:\s+(http://127\.0\.0\.1:(\d+)/metrics)")
    assert shown.group(2) != "0"
    assert shown.group(1) == demo.url + "/metrics"


def test_options_alone_run_serve(
    serve_process: Callable[..., ServeProcess],
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
) -> None:
    """As the Go exporters (and ``docker run IMAGE --config.file=...``): no command, serve."""
    config = write_config(targets=[target_entry(simulator(phones=4))])
    flags = (f"--config.file={config}", "--web.listen-address", "127.0.0.1:0")
    server = serve_process(*flags, command=()).start()
    text = httpx2.get(f"{server.url}/metrics", timeout=30).text
    assert sample(text, "cec_softphones_allocated", target="sim") == 4
    group_help = CliRunner().invoke(cli, ["--help"])
    assert group_help.exit_code == 0
    commands = group_help.output.split("\nCommands:\n", 1)[1]
    for command in ("serve", "demo", "simulate", "check-config", "scrape"):
        assert re.search(rf"^  {command}\s", commands, re.MULTILINE), group_help.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], ["cec-phone-exporter serve [OPTIONS]", "No such option '--bogus'"]),
        (["--config.file"], ["Option '--config.file' requires an argument"]),
    ],
)
def test_a_mistake_in_options_alone_is_reported_as_serves(args: list[str], says: list[str]) -> None:
    result = CliRunner().invoke(cli, args, prog_name="cec-phone-exporter")
    assert result.exit_code == 2
    for words in says:
        assert words in result.output, result.output


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("30", "must be a duration"),  # Prometheus's durations carry a unit
        ("soon", "must be a duration"),
        ("500ms", "at least 1s"),
        ("-1m", "at least 1s"),
    ],
)
def test_the_auto_reload_interval_is_a_duration_of_a_second_or_more(value: str, says: str) -> None:
    option = "--config.auto-reload-interval"
    result = CliRunner().invoke(cli, ["serve", "--config", "x.yml", option, value])
    assert result.exit_code == 2
    assert option in result.output
    assert says in result.output, result.output


@pytest.mark.slow
def test_good_auto_reload_intervals_are_taken() -> None:
    for good in ("0", "1s", "1m30s"):
        result = run_cli("--config.file", "/nonexistent.yml", "--config.auto-reload-interval", good)
        assert result.returncode == 2
        assert "auto-reload-interval" not in result.stderr, result.stderr
        assert "/nonexistent.yml: cannot read config file" in result.stderr, result.stderr
