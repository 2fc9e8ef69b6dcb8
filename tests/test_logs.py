"""Log lines as promslog writes them (issue 18), from the real command's stderr.

``--log.level`` (debug, info, warn, error) and ``--log.format`` (logfmt, json),
with the older ``--log-level`` / ``--log-format`` / ``warning`` / ``text``
kept as aliases, on every command that logs; ``level=warn``; context (target,
api, offset, status, ret_code, duration) as keys of the line, never packed
into the message.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support import run_cli, target_entry
from support_procs import ServeProcess

from exporter import __version__
from exporter.build import revision
from exporter.simulator import Fault, Simulator

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
CONTEXT_KEYS = ("target", "api", "offset", "status", "ret_code", "duration")


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line into a dict; fails on anything that is not key=value pairs."""
    pairs = _PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, f"not logfmt: {line!r}"
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def parse_lines(text: str, fmt: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if fmt == "json":
        return [json.loads(line) for line in lines]
    return [dict(parse_logfmt(line)) for line in lines]


@pytest.mark.parametrize(
    ("level_flag", "warn", "format_flag", "fmt"),
    [
        pytest.param("--log.level", "warn", "--log.format", "logfmt", id="promslog"),
        pytest.param("--log-level", "warning", "--log-format", "text", id="aliases"),
        pytest.param("--log.level", "WARN", "--log.format", "json", id="json"),
    ],
)
def test_failed_collection_is_one_warn_line_with_its_context_as_keys(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    level_flag: str,
    warn: str,
    format_flag: str,
    fmt: str,
) -> None:
    sim = simulator(phones=250)
    sim.set_faults([Fault("ret_code", pages=(1,), value="1")])
    config = write_config(targets=[target_entry(sim, "sim", max_concurrency=1)])
    result = run_cli("scrape", "--config", str(config), level_flag, warn, format_flag, fmt)
    assert result.returncode == 1, result.stderr
    [line] = parse_lines(result.stderr, "json" if fmt == "json" else "logfmt")
    assert line["level"] == "warn"
    assert line["msg"] == "collection failed"
    assert line["target"] == "sim"
    assert line["reason"] == "ret_code"
    assert re.fullmatch(r"\d+\.\d{3}s", str(line["duration"]))
    assert "retCode 1" in str(line["error"])
    assert "sim" not in str(line["msg"])


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_debug_request_lines_carry_target_api_offset_status_ret_code_duration(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path], fmt: str
) -> None:
    sim = simulator(phones=250)
    sim.set_faults([Fault("http_status", pages=(1,), value=503, times=1)])
    config = write_config(targets=[target_entry(sim, "sim", max_concurrency=1)])
    result = run_cli("scrape", "--config", str(config), "--log.level=debug", f"--log.format={fmt}")
    assert result.returncode == 0, result.stderr
    lines = parse_lines(result.stderr, fmt)
    requests = [line for line in lines if line["msg"] == "API request"]
    stats = sim.stats()
    assert len(requests) == stats["query_requests"] + stats["token_requests"]  # type: ignore[operator]
    assert all(line["level"] == "debug" for line in requests)
    pages = [line for line in requests if line["api"] == "queryPhone"]
    for line in pages:
        assert set(CONTEXT_KEYS) - {"ret_code"} <= set(line), line  # no retCode from a 503
        assert line["target"] == "sim"
        assert re.fullmatch(r"\d+\.\d{3}s", str(line["duration"]))
    by_offset = [(str(p["offset"]), str(p["status"]), str(p["attempt"])) for p in pages]
    assert by_offset == [
        ("0", "200", "1"),
        ("100", "503", "1"),
        ("100", "200", "2"),
        ("200", "200", "1"),
    ]
    assert [p.get("ret_code") for p in pages] == ["0", None, "0", "0"]
    if fmt == "json":  # numbers stay numbers for log pipelines
        assert pages[1]["offset"] == 100
        assert pages[1]["status"] == 503
    [token] = [line for line in requests if line["api"] == "tokenByAkSk"]
    assert "offset" not in token
    assert str(token["status"]) == "200"
    assert not any(re.search(r"\b(target|api|offset|status)=", str(line["msg"])) for line in lines)
    assert sim.config.app_secret not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("serve", "--listen", "127.0.0.1:0"), id="serve"),
        pytest.param(("demo", "--listen", "127.0.0.1:0", "--phones", "5"), id="demo"),
    ],
)
def test_serve_and_demo_log_json_with_the_promslog_flags(
    serve_process: Callable[..., ServeProcess],
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    command: tuple[str, ...],
) -> None:
    args: tuple[str, ...] = ()
    if command[0] == "serve":
        args = ("--config", str(write_config(targets=[target_entry(simulator(phones=5))])))
    process = serve_process(
        *args, "--log.level", "debug", "--log.format", "json", command=command
    ).start()
    process.wait_for_line(r'"msg": "listening", "url": "http://127\.0\.0\.1:\d+/metrics"')
    output = process.stop()
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {"ts", "level", "logger", "msg"} <= set(logged[0])
    assert any(line["msg"] == "stopped" for line in logged)


def test_simulate_accepts_the_promslog_flags(serve_process: Callable[..., ServeProcess]) -> None:
    process = serve_process(
        "--log.level",
        "error",
        "--log.format",
        "json",
        command=("simulate", "--listen", "127.0.0.1:0"),
    )
    process.wait_for_line(r"CEC simulator listening on http://127\.0\.0\.1:\d+")
    assert "Error" not in process.stop()


def test_an_unknown_level_is_refused_with_the_choices() -> None:
    result = run_cli("check-config", "--help")
    assert "--log" not in result.stdout  # check-config logs nothing
    result = run_cli("scrape", "--config", "x.yml", "--log.level", "trace")
    assert result.returncode == 2
    assert "'trace' is not one of" in result.stderr
    assert "warn" in result.stderr


def test_serve_start_and_reload_lines_carry_their_values_as_keys(
    serve_process: Callable[..., ServeProcess],
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
) -> None:
    """Not ``msg="cec-phone-exporter 0.1.0, 1 target(s)"`` or ``msg="config reloaded: 1
    target(s)"``: the message names the event, the values are keys a pipeline filters on."""
    config = write_config(targets=[target_entry(simulator(phones=5))])
    process = serve_process("--config", str(config)).start()
    process.signal(signal.SIGHUP)
    process.wait_for_line("config reloaded")
    lines = parse_lines(process.stop(), "logfmt")
    by_message = {str(line["msg"]): line for line in lines}
    started = by_message["starting cec-phone-exporter"]
    assert started["version"] == __version__
    assert started["revision"] == revision()
    assert started["targets"] == "1"
    assert by_message["config reloaded"]["targets"] == "1"
    assert by_message["listening"]["url"] == process.url + "/metrics"
    packed = [line["msg"] for line in lines if re.search(r"[\d/:]", str(line["msg"]))]
    assert not packed, f"values packed into messages: {packed}"
