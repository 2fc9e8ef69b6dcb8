"""HTTP/2's control frames and request bodies are bounded (issue 24 item 3), in a real
``serve`` process over TLS.

A flood of SETTINGS or PING frames, a rapid reset, a CONTINUATION flood end the connection
with GOAWAY ENHANCE_YOUR_CALM (or the protocol error h2 finds) and the socket is closed
right after; a request body nobody reads is reset after 64 KiB; none of it writes a line
above debug, and a scrape is answered meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from support import basic_auth, target_entry, tls_client, web_yml
from support_attacks import (
    CONTINUATION_FLOOD,
    ENHANCE_YOUR_CALM,
    HEADERS_BEGUN,
    PING,
    SETTINGS,
    Background,
    h2_flood,
    h2_unread_body,
    rapid_reset,
    scrape_every,
)
from support_procs import ServeProcess

from exporter.simulator import Simulator

USER, PASSWORD = "prometheus", "scrape"


@pytest.fixture
def h2_server(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    pki: dict[str, Path],
    tmp_path: Path,
) -> ServeProcess:
    """``serve`` over TLS (HTTP/2 on by ALPN) with basic auth, at debug level."""
    config = write_config(targets=[target_entry(simulator(phones=10), "sim")])
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = web_yml(tmp_path, pki, f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    args = ("--config", str(config), "--web-config", str(web), "--log-level", "debug")
    return serve_process(*args).start()


def assert_quiet(server: ServeProcess) -> None:
    loud = server.lines_matching(r"level=(error|warn)|Traceback")
    assert not loud, loud


@pytest.mark.parametrize("unit", [SETTINGS, PING], ids=["settings", "ping"])
@pytest.mark.slow
def test_a_control_frame_flood_is_ended(
    h2_server: ServeProcess, pki: dict[str, Path], unit: bytes
) -> None:
    """A sustained SETTINGS flood took a full core and was answered until the 10 s idle
    timer (851,966 ACKs); scrapes meanwhile took 1.5 s at the median."""
    with Background(lambda: h2_flood(h2_server.port, tls_client(pki), unit, 6)) as attack:
        scrapes = scrape_every(
            h2_server.url + "/metrics", 0.25, 3, headers=basic_auth(USER, PASSWORD)
        )
    flood = attack.result()
    assert flood.goaway == ENHANCE_YOUR_CALM, flood
    assert flood.closed_after is not None, "still open after the flood"
    assert flood.closed_after < 2.5, flood
    assert scrapes.answered == 1.0, str(scrapes)
    assert_quiet(h2_server)


@pytest.mark.slow
def test_a_rapid_reset_with_credentials_is_ended_quietly(
    h2_server: ServeProcess, pki: dict[str, Path]
) -> None:
    """Requests opened and reset at once (CVE-2023-44487) wrote a warning per connection
    (``TooManyStreamsError`` from hypercorn's priority tree)."""
    for _ in range(3):
        flood = rapid_reset(
            h2_server.port, tls_client(pki), "/metrics", basic_auth(USER, PASSWORD), 3000
        )
        assert flood.goaway == ENHANCE_YOUR_CALM, flood
    assert_quiet(h2_server)


@pytest.mark.parametrize("quiet", [False, True], ids=["flooding", "quiet-after-goaway"])
@pytest.mark.slow
def test_a_socket_is_closed_right_after_its_goaway(
    h2_server: ServeProcess, pki: dict[str, Path], quiet: bool
) -> None:
    """After the GOAWAY for a CONTINUATION flood the socket stayed open, unread, until the
    client left. A client that goes quiet at the GOAWAY, sending no close_notify of its
    own, was held for the whole TLS shutdown timeout (5 s) where h2 found the error."""
    flood = h2_flood(
        h2_server.port,
        tls_client(pki),
        CONTINUATION_FLOOD,
        8,
        first=HEADERS_BEGUN,
        quiet_after_goaway=quiet,
    )
    assert flood.goaway is not None, flood
    assert flood.closed_after is not None, "still open after 8 s"
    assert flood.closed_after < 2.5, flood
    assert_quiet(h2_server)


def test_a_body_nobody_reads_is_reset(h2_server: ServeProcess, pki: dict[str, Path]) -> None:
    """A body on a path that answers 405 was all taken: the flow-control window was kept
    open for it, so a client could send without end."""
    taken = h2_unread_body(h2_server.port, tls_client(pki), "/-/healthy", 16 << 20)
    assert taken <= 1 << 20, f"{taken >> 10} KiB of an unread body taken"
    assert_quiet(h2_server)
