"""The names of hypercorn's, h11's and h2's that exporter.http._hypercorn relies on (and
asyncio's that exporter.http.handshake sets) are still there, their loss is refused at
start, and the adjustments made through them take effect on a real connection.

An upgrade that renames one of them fails here with its name, not in production, where
the assignment would still succeed and the strict heads or the h2c refusal be lost.
HTTP/2 body data on a finished stream is tested end to end in test_web_tls.py
(``test_http2_body_data_after_the_answer_is_ignored``), over TLS as HTTP/2 needs.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import asyncio.sslproto
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import h11
import pytest
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from support import RunningExporter, target_entry, tls_client, web_yml
from support_attacks import PREFACE, frame, h2_tls

from exporter.http import _hypercorn, handshake
from exporter.http._hypercorn import (
    PRIVATE_NAMES,
    SETTINGS,
    SUPPORTED,
    InternalsChanged,
    Reliance,
    check_internals,
)
from exporter.settings import WebConfigFile, load_web_config
from exporter.simulator import Simulator

NEEDED = re.escape("cec-phone-exporter needs hypercorn>=0.18,<0.19, h11>=0.16,<0.17")


# --- (a) every declared name is there --------------------------------------------------------


@pytest.mark.parametrize("reliance", PRIVATE_NAMES + SETTINGS, ids=str)
def test_each_declared_name_is_in_the_installed_packages(reliance: Reliance) -> None:
    assert reliance.problem() is None


def test_each_private_name_is_listed_with_its_reason() -> None:
    doc = _hypercorn.__doc__ or ""
    unlisted = [
        str(reliance)
        for reliance in PRIVATE_NAMES
        if not re.search(rf"``[\w.]*\b{re.escape(reliance.name)}``", doc)
    ]
    assert not unlisted


def test_the_versions_named_are_pyprojects_pins() -> None:
    pins: dict[str, set[str]] = {}
    for requirement in requires("cec-phone-exporter") or []:
        found = re.fullmatch(r"([\w.-]+)([^;]*)(;.*)?", requirement)
        assert found is not None, requirement
        pins[found.group(1).lower()] = set(found.group(2).split(","))
    for name, wanted in SUPPORTED.items():
        assert pins[name] == set(wanted.split(",")), name


# --- (b) a missing or changed name is refused, by name ---------------------------------------


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (H2Protocol, "_handle_events"),
        (H11Protocol, "_check_protocol"),
        (TCPServer, "_read_data"),
        (Config, "include_server_header"),
    ],
)
def test_a_missing_name_is_refused_by_name(
    owner: type, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(InternalsChanged, match=rf"{owner.__qualname__}\.{name} is gone.*{NEEDED}"):
        check_internals()


def test_a_missing_instance_attribute_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def renamed(self: Any, *args: object) -> None:
        self.open_streams = {}  # what ``streams`` might become

    monkeypatch.setattr(H2Protocol, "__init__", renamed)
    with pytest.raises(InternalsChanged, match=r"H2Protocol\.streams \(set in __init__\) is gone"):
        check_internals()


def test_a_changed_signature_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def fewer(self: Any, app: object, loop: object, config: object, stream: object) -> None:
        pass

    monkeypatch.setattr(TCPServer, "__init__", fewer)
    with pytest.raises(InternalsChanged, match=r"TCPServer\.__init__ takes \(app, loop, config"):
        check_internals()
    monkeypatch.setattr(H2Protocol, "_handle_events", lambda self: None)  # no events taken
    with pytest.raises(InternalsChanged, match=r"H2Protocol\._handle_events takes \(\), not"):
        check_internals()


def test_a_new_hypercorn_name_our_subclass_would_hide_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TCPServer, "_write", lambda self, data: None, raising=False)
    with pytest.raises(InternalsChanged, match=r"TCPServer\._write is new"):
        check_internals()


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("import h11._receivebuffer as m; del m.ReceiveBuffer.maybe_extract_lines", "is gone"),
        ("import hypercorn.asyncio.tcp_server as m; del m.TCPServer", "cannot import name"),
    ],
)
def test_the_exporter_refuses_to_start(
    breakage: str,
    named: str,
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
) -> None:
    """The check runs when the listener's module is imported: before anything is served."""
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])
    command = f"{breakage}; from exporter.cli import main; main()"
    serve = ("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    argv = [sys.executable, "-c", command, *serve]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "InternalsChanged" in result.stderr
    assert re.search(rf"{named}.*{NEEDED}", result.stderr), result.stderr[-2000:]
    assert "listening" not in result.stdout + result.stderr


# --- (c) on a live connection, each adjustment took effect -----------------------------------


def exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` and half-close; everything answered, and how long until the close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


@pytest.fixture
def adjusted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every protocol adjusted from now on (``_adjust`` still does its work)."""
    seen: list[Any] = []
    adjust = _hypercorn._adjust

    def spy(protocol: Any, connection: Any) -> None:
        adjust(protocol, connection)
        seen.append(protocol)

    monkeypatch.setattr(_hypercorn, "_adjust", spy)
    return seen


def test_a_live_connection_is_adjusted(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    adjusted: list[Any],
) -> None:
    server = exporter_server(write_config(targets=[target_entry(simulator(phones=1), "sim")]))
    port = int(server.url.rsplit(":", 1)[1])
    good = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"

    answer, took = exchange(port, good * 2)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer
    # Half-closed: let go after its last answer, not after the 10 s keep-alive.
    assert took < 3
    assert len(adjusted) == 1
    protocol = adjusted[0]
    assert isinstance(protocol, H11Protocol)
    assert isinstance(protocol.connection, h11.Connection)
    assert type(protocol.connection._receive_buffer) is _hypercorn._StrictBuffer
    assert protocol._check_protocol is _hypercorn._plain_http1

    for refused in (
        b"GET /-/healthy HTTP/1.1\nHost: x\n\n",  # bare LF: h11 alone answers 200
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold: likewise
    ):
        assert exchange(port, refused)[0].startswith(b"HTTP/1.1 400 "), refused
    upgrade = (
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    answer = exchange(port, upgrade)[0]
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]  # answered as HTTP/1.1, no 101
    assert len(adjusted) == 4  # every connection went through the adjustment


def test_a_live_http2_connection_is_guarded(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    adjusted: list[Any],
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    web = web_yml(tmp_path, pki)
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])
    server = exporter_server(config, WebConfigFile(str(web), load_web_config(str(web))))
    with h2_tls(server.port, tls_client(pki)) as conn:
        conn.sendall(PREFACE + frame(0x4, 0, 0))
        conn.recv(65536)  # the server's SETTINGS, sent before it reads: wait for the read
        deadline = time.monotonic() + 5
        while not adjusted and time.monotonic() < deadline:
            time.sleep(0.01)
    (protocol,) = adjusted
    assert isinstance(protocol, H2Protocol)
    assert isinstance(protocol._handle_events.__self__, _hypercorn._H2Guard)


@pytest.mark.parametrize("reliance", handshake.PRIVATE_NAMES, ids=str)
def test_each_asyncio_name_set_is_there(reliance: Reliance) -> None:
    assert reliance.problem() is None


def test_asyncio_tls_is_tuned_when_serving(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    exporter_server(write_config(targets=[target_entry(simulator(phones=1), "sim")]))
    assert asyncio.sslproto.SSLProtocol.max_size == handshake.TLS_READ_BUFFER_BYTES
    assert asyncio.constants.SSL_SHUTDOWN_TIMEOUT == handshake.TLS_SHUTDOWN_SECONDS


def test_a_missing_asyncio_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(asyncio.sslproto.SSLProtocol, "max_size")
    with pytest.raises(handshake.TLSInternalsChanged, match=r"SSLProtocol\.max_size is gone"):
        handshake.tune_asyncio_tls()
