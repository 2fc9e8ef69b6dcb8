"""The fixtures: a real simulator, config files, and a real exporter over loopback.

Only fixtures live here; the plain helpers they use, and the tests import, are in
support.py and support_procs.py.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trustme
import yaml
from support import EXPORTER, RunningExporter, target_entry
from support_procs import ServeProcess

from exporter.http import App, serve
from exporter.http.limits import Limits
from exporter.scrape import Exporter
from exporter.settings import WebConfig, WebConfigFile, load_config
from exporter.simulator import SimConfig, Simulator


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


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_config(targets=[...], defaults={...})`` writes a YAML file, returns it."""
    counter = iter(range(1_000_000))

    def write(data: dict[str, Any] | None = None, text: str | None = None, **top: Any) -> Path:
        path = tmp_path / f"config-{next(counter)}.yml"
        path.write_text(text if text is not None else yaml.safe_dump(data or top))
        return path

    return write


@pytest.fixture
def exporter_server() -> Iterator[Callable[..., RunningExporter]]:
    """Factory: ``exporter_server(config_path, web_config=None, limits=None)`` serves an
    exporter on loopback (the front door's default limits unless given)."""
    running: list[tuple[Any, Exporter, threading.Thread, httpx2.Client]] = []

    def start(
        config_path: Path,
        web_config: WebConfig | WebConfigFile | None = None,
        limits: Limits | None = None,
    ) -> RunningExporter:
        exporter = Exporter(load_config(config_path), str(config_path))
        app = App(exporter, web_config)
        server = serve(app, "127.0.0.1:0", limits)
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


@pytest.fixture
def front(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> Callable[..., ServeProcess]:
    """Factory: ``front(*args, log_level="debug", nofile=None)`` starts ``serve`` for one
    small simulated target; ``nofile`` runs it under that open-files limit (soft and hard,
    as ``prlimit`` sets it)."""
    config = write_config(targets=[target_entry(simulator(phones=10), "sim")])

    def start(*args: str, log_level: str = "debug", nofile: int | None = None) -> ServeProcess:
        limit: tuple[str, ...] = ()
        if nofile is not None:
            prlimit = shutil.which("prlimit")
            if prlimit is None:
                pytest.skip("no prlimit on this machine")
            limit = (prlimit, f"--nofile={nofile}:{nofile}")
        flags = ("--config", str(config), "--log-level", log_level, *args)
        return serve_process(*flags, program=(*limit, *EXPORTER)).start()

    return start


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Server and client CAs, a server certificate for 127.0.0.1 and assorted clients."""
    where = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    blobs = {
        "server_ca": server_ca.cert_pem,
        "client_ca": client_ca.cert_pem,
        "server": server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem,
        "scraper": client_ca.issue_cert("scraper.example").private_key_and_cert_chain_pem,
        "mailer": client_ca.issue_cert("ops@example.com").private_key_and_cert_chain_pem,
        "by_ip": client_ca.issue_cert("127.0.0.2").private_key_and_cert_chain_pem,
        "intruder": client_ca.issue_cert("intruder.example").private_key_and_cert_chain_pem,
        "stranger": other_ca.issue_cert("scraper.example").private_key_and_cert_chain_pem,
    }
    paths = {}
    for name, blob in blobs.items():
        paths[name] = where / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return paths


@pytest.fixture(autouse=True)
def _quiet_third_party_logs() -> None:
    logging.getLogger("httpx2").setLevel(logging.WARNING)
