"""Shared fixtures: a real simulator, config files, and a real exporter over loopback."""

from __future__ import annotations

import base64
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from exporter.http import App, serve
from exporter.scrape import Exporter
from exporter.settings import WebConfig, WebConfigFile, load_config
from exporter.simulator import SimConfig, Simulator

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    """Factory: ``simulator(phones=..., mode=...)`` starts a simulator, stopped after the test."""
    started: list[Simulator] = []

    def start(**config: Any) -> Simulator:
        sim = Simulator(SimConfig(**config)).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def target_entry(sim: Simulator, name: str = "sim", **settings: Any) -> dict[str, Any]:
    """A config ``targets`` entry pointing at ``sim`` with its credentials."""
    return {
        "name": name,
        "base_url": sim.url,
        "app_key": sim.config.app_key,
        "app_secret": sim.config.app_secret,
        **settings,
    }


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_config(targets=[...], defaults={...})`` writes a YAML file, returns it."""
    counter = iter(range(1_000_000))

    def write(data: dict[str, Any] | None = None, text: str | None = None, **top: Any) -> Path:
        path = tmp_path / f"config-{next(counter)}.yml"
        path.write_text(text if text is not None else yaml.safe_dump(data or top))
        return path

    return write


@dataclass
class RunningExporter:
    """An exporter served over loopback HTTP, as Prometheus would see it."""

    exporter: Exporter
    url: str
    client: httpx2.Client

    def get(self, path: str, **kwargs: Any) -> httpx2.Response:
        return self.client.get(self.url + path, **kwargs)

    def metrics(self, path: str = "/metrics", **kwargs: Any) -> str:
        response = self.get(path, **kwargs)
        response.raise_for_status()
        return response.text


@pytest.fixture
def exporter_server() -> Iterator[Callable[..., RunningExporter]]:
    """Factory: ``exporter_server(config_path, web_config=None)`` serves an exporter on loopback."""
    running: list[tuple[Any, Exporter, threading.Thread, httpx2.Client]] = []

    def start(
        config_path: Path, web_config: WebConfig | WebConfigFile | None = None
    ) -> RunningExporter:
        exporter = Exporter(load_config(config_path), str(config_path))
        app = App(exporter, web_config)
        server = serve(app, "127.0.0.1:0")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        client = httpx2.Client(timeout=30, verify=False)
        running.append((server, exporter, thread, client))
        scheme = "https" if app.web_config.tls else "http"
        return RunningExporter(exporter, f"{scheme}://127.0.0.1:{server.server_port}", client)

    yield start
    for server, exporter, thread, client in running:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        exporter.close()


def log_line(record: logging.LogRecord) -> str:
    """A captured log record as the exporter writes it (logfmt: message and context keys)."""
    from exporter.logs import LogfmtFormatter

    return LogfmtFormatter().format(record)


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``cec-phone-exporter ARGS`` in a subprocess, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def parse_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Exposition text into {(name, labels): value}, via prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample with exactly these labels, or None."""
    return parse_samples(text).get((name, frozenset(labels.items())))


def samples_named(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name``, with its labels."""
    return [
        (dict(labels), value)
        for (sample_name, labels), value in parse_samples(text).items()
        if sample_name == name
    ]


def softphone_counts(text: str, target: str = "sim") -> dict[tuple[str, str], float]:
    """``cec_softphones`` of one target as {(tenant_id, status): value}."""
    return {
        (labels["tenant_id"], labels["status"]): value
        for labels, value in samples_named(text, "cec_softphones")
        if labels["target"] == target
    }


def expected_counts(sim: Simulator) -> dict[tuple[str, str], float]:
    """What the simulator says ``cec_softphones`` should show (non-zero counts only)."""
    return {key: float(n) for key, n in sim.expected().counts.items() if n}


_LISTENING = re.compile(r"listening on (https?)://([^/\s\"]+)/")


class ServeProcess:
    """``cec-phone-exporter serve`` (or ``command``) in a subprocess on a free loopback port.

    Output (stdout and stderr together) is collected line by line as it comes.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("serve", "--listen", "127.0.0.1:0"),
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", *command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        """The first output line (from the start) matching ``pattern``; fails after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {regex.pattern!r} in:\n{self.output}")
                self._changed.wait(min(left, 0.2))

    def count(self, pattern: str) -> int:
        """How many output lines so far match ``pattern``."""
        return len(self.lines_matching(pattern))

    def lines_matching(self, pattern: str) -> list[str]:
        """Output lines so far that match ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.lines if regex.search(line)]

    def wait_for_count(self, pattern: str, n: int, timeout: float = 20) -> None:
        """Wait until at least ``n`` output lines match ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count(pattern) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} lines match {pattern!r}:\n{self.output}")
                self._changed.wait(min(left, 0.2))

    def start(self, client: httpx2.Client | None = None) -> ServeProcess:
        """Wait for the listening line, then for ``/-/healthy``."""
        match = self.wait_for_line(_LISTENING)
        self.url = f"{match.group(1)}://{match.group(2)}"
        probe = client or httpx2.Client(verify=False)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if probe.get(self.url + "/-/healthy", timeout=5).status_code == 200:
                        return self
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"/-/healthy never answered:\n{self.output}")
                time.sleep(0.1)
        finally:
            if client is None:
                probe.close()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.output


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process("--config", C, ...)`` starts ``serve`` (not yet waited for)."""
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> ServeProcess:
        process = ServeProcess(*args, env=env, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def _quiet_third_party_logs() -> None:
    logging.getLogger("httpx2").setLevel(logging.WARNING)
