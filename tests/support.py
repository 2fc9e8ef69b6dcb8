"""The one helper library of the tests and the benchmarks: ports, processes, expositions.

Plain functions and classes, no fixtures: tests/conftest.py builds its fixtures on these,
and the bench scripts import them through bench/_path.py. Process helpers (serving,
sampling, machine figures) are in support_procs.py.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    from exporter.scrape import Exporter
    from exporter.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent
EXPORTER = (sys.executable, "-m", "exporter")  # the cec-phone-exporter of this checkout
APP_KEY, APP_SECRET = "bench-app-key", "bench-app-secret"  # the bench simulators' app
PAGE_SIZE = 100  # phones per queryPhone page, the exporter's default
MIB = 1024 * 1024

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- ports and HTTP ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server that must be told its port (racy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_of(url: str) -> int:
    """The port of a ``scheme://host:port`` URL: for raw sockets to a server under test."""
    return int(url.rsplit(":", 1)[1])


def wait_http(
    url: str,
    client: httpx2.Client | None = None,
    timeout: float = 20,
    proc: subprocess.Popen[str] | None = None,
) -> None:
    """Wait until ``GET url`` answers 200; AssertionError after ``timeout`` s or once ``proc``
    has exited. Without ``client``, one that does not verify certificates (test servers)."""
    deadline = time.monotonic() + timeout
    probe = client or httpx2.Client(verify=False)
    try:
        while True:
            try:
                if probe.get(url, timeout=5).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} before {url} answered")
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer 200 within {timeout:g} s")
            time.sleep(0.1)
    finally:
        if client is None:
            probe.close()


def scrape(
    client: httpx2.Client, url: str, timeout_header: float | None = None
) -> tuple[float, str]:
    """(seconds, body) of one ``GET url`` as Prometheus sends it; raises on an HTTP error."""
    headers = {}
    if timeout_header is not None:
        headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(timeout_header)
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.text


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- TLS ---------------------------------------------------------------------------------------


def web_yml(tmp_path: Path, pki: dict[str, Path], extra: str = "") -> Path:
    """A web config in ``tmp_path`` serving TLS with the ``pki`` fixture's server certificate."""
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki['server']}\n  key_file: {pki['server']}\n{extra}"
    )
    return path


def tls_client(pki: dict[str, Path] | None, cert: str | None = None) -> ssl.SSLContext:
    """A client context trusting our server CA (or nothing, for the corpus's certificate)."""
    if pki is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=str(pki["server_ca"]))
    if cert is not None:
        ctx.load_cert_chain(str(pki[cert]))
    return ctx


# --- the command line and an exporter in this process --------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``cec-phone-exporter ARGS`` in a subprocess, capturing output."""
    return subprocess.run(
        [*EXPORTER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def target_entry(sim: Simulator, name: str = "sim", **settings: Any) -> dict[str, Any]:
    """A config ``targets`` entry pointing at the in-process ``sim`` with its credentials."""
    return {
        "name": name,
        "base_url": sim.url,
        "app_key": sim.config.app_key,
        "app_secret": sim.config.app_secret,
        **settings,
    }


@dataclass
class RunningExporter:
    """An exporter served over loopback HTTP from this process, as Prometheus would see it."""

    exporter: Exporter
    url: str
    client: httpx2.Client

    @property
    def port(self) -> int:
        return port_of(self.url)

    def get(self, path: str, **kwargs: Any) -> httpx2.Response:
        return self.client.get(self.url + path, **kwargs)

    def metrics(self, path: str = "/metrics", **kwargs: Any) -> str:
        response = self.get(path, **kwargs)
        response.raise_for_status()
        return response.text


def log_line(record: logging.LogRecord) -> str:
    """A captured log record as the exporter writes it (logfmt: message and context keys)."""
    from exporter.logs import LogfmtFormatter

    return LogfmtFormatter().format(record)


# --- samples of an exposition ------------------------------------------------------------------


def parse_samples(text: str) -> Samples:
    """Exposition text into {(name, labels): value}, via prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for one in family.samples:
            samples[(one.name, frozenset(one.labels.items()))] = one.value
    return samples


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample with exactly these labels, or None."""
    return parse_samples(text).get((name, frozenset(labels.items())))


def samples_named(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name``, with its labels."""
    return [
        (dict(labels), found)
        for (sample_name, labels), found in parse_samples(text).items()
        if sample_name == name
    ]


def value(text: str, name: str) -> float | None:
    """The first sample called ``name``, whatever its labels, or None."""
    return next((found for _, found in samples_named(text, name)), None)


def total(text: str, name: str) -> float:
    """The sum of every sample called ``name``, over all its labels."""
    return sum(found for _, found in samples_named(text, name))


def softphone_counts(text: str, target: str = "sim") -> dict[tuple[str, str], float]:
    """``cec_softphones`` of one target as {(tenant_id, status): value}."""
    return {
        (labels["tenant_id"], labels["status"]): found
        for labels, found in samples_named(text, "cec_softphones")
        if labels["target"] == target
    }


def expected_counts(sim: Simulator) -> dict[tuple[str, str], float]:
    """What the simulator says ``cec_softphones`` should show (non-zero counts only)."""
    return {key: float(n) for key, n in sim.expected().counts.items() if n}
