"""The front door holds against one hostile client (issue 15), over raw loopback sockets.

Each test starts a real ``serve`` process and attacks it as a client on the scrape
network would: malformed or ambiguous request heads, header bombs, connection floods,
long passwords. The answer is a 4xx at most, never a 500, an error line or a traceback,
and a real scrape is still served.
"""

from __future__ import annotations

import base64
import gzip
import re
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import bcrypt
import httpx2
import pytest
from support import RunningExporter, basic_auth, sample, target_entry
from support_procs import LISTENING, ServeProcess

from exporter.http import listener
from exporter.http.listener import parse_listen
from exporter.simulator import Simulator

Start = Callable[..., ServeProcess]


def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` on a fresh connection; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    """The status codes of every response in ``answer``."""
    return [int(code) for code in re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.MULTILINE)]


def assert_quiet(server: ServeProcess) -> None:
    """Nothing above debug came from the bad input: no error, warning or traceback."""
    output = server.output
    assert "Traceback" not in output
    loud = [line for line in server.lines if re.search(r"level=(error|warning|critical)", line)]
    assert not loud, loud


# --- strict parsing ------------------------------------------------------------------------------

AMBIGUOUS = {
    # The first Content-Length used to win: the "body" then ran as a second request.
    "two content lengths": b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    b"Content-Length: 40\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "superscript two": b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\nx",
    "signed length": b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
    "http/0.9": b"GET /-/healthy\r\n\r\n",
    "no host": b"GET /-/healthy HTTP/1.1\r\n\r\n",
    "two hosts": b"GET /-/healthy HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "obs-fold": b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "bare LF": b"GET /-/healthy HTTP/1.1\nHost: x\n\n",
    "bare LF inside": b"GET /-/healthy HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n",
    "control byte": b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "length and chunked": b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # Exactly one Content-Length: h11 merges equal ones, and a list of them, into one.
    "two equal content lengths": b"POST /-/healthy HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "listed content length": b"POST /-/healthy HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 1, 1\r\n\r\nx",
    # RFC 9112 6.1: chunked framing in an HTTP/1.0 request is faulty framing.
    "chunked in http/1.0": b"POST /-/healthy HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
}


def test_ambiguous_requests_get_400_and_only_a_debug_line(front: Start) -> None:
    server = front()
    port = server.port
    for name, data in AMBIGUOUS.items():
        answer = exchange(port, data)
        assert statuses(answer) == [400], (name, answer[:200])
    # The same connection is not reused after a refused head: nothing was smuggled.
    assert b"cec_up" not in exchange(port, AMBIGUOUS["two content lengths"])
    # Well-formed requests are still served, HTTP/1.0 included (it needs no Host).
    assert statuses(exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]
    assert statuses(exchange(port, b"GET /-/healthy HTTP/1.0\r\n\r\n")) == [200]
    # Another major version is not served as HTTP/1.x, as Go's net/http answers.
    for version in (b"HTTP/2.0", b"HTTP/3.0"):
        answer = exchange(port, b"GET /-/healthy " + version + b"\r\nHost: x\r\n\r\n")
        assert statuses(answer) == [505], (version, answer[:200])
    assert_quiet(server)


def test_request_heads_are_capped_at_one_mebibyte(front: Start) -> None:
    server = front()
    port = server.port
    line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
    under = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n" + line * 120 + b"\r\n"  # ~0.92 MiB
    over = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n" + line * 140 + b"\r\n"  # ~1.07 MiB
    assert statuses(exchange(port, under)) == [200]
    assert statuses(exchange(port, over)) == [431]
    # One line that never ends is a head too.
    assert statuses(exchange(port, b"GET /" + b"a" * (2 << 20))) in ([431], [400], [414])
    assert_quiet(server)


def test_no_server_header_names_the_runtime(front: Start) -> None:
    server = front()
    answer = exchange(server.port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nserver:" not in head, head
    assert b"python" not in head
    assert b"hypercorn" not in head


@pytest.mark.slow
def test_header_bombs_cost_little_memory(front: Start) -> None:
    """Heads under the old caps (99 lines of 65,000 bytes: 6.4 MB) that never end were
    held whole, in every connection's thread."""
    server = front()
    port = server.port
    process = server.ps
    before = process.memory_info().rss
    line = b"X-Bomb: " + b"b" * 64990 + b"\r\n"
    peak = before
    with ExitStack() as stack:
        for _ in range(10):
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            conn.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(99):  # never finished
                    conn.sendall(line)
            except OSError:
                pass  # refused with 431 and closed: what we want
        for _ in range(20):  # the server has read what it will read
            time.sleep(0.1)
            peak = max(peak, process.memory_info().rss)
        assert httpx2.get(server.url + "/metrics", timeout=10).status_code == 200
    grown = peak - before
    assert grown < 40 << 20, f"RSS grew by {grown >> 20} MiB"
    assert_quiet(server)


# --- connections: threads, cap, open-files limit -----------------------------------------------


@contextmanager
def kept_alive(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that each asked /-/healthy once and stay open."""
    with ExitStack() as stack:
        conns = []
        for _ in range(n):
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            conn.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(conn)
        for conn in conns:
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        yield conns


def test_kept_alive_connections_hold_no_thread_each(front: Start) -> None:
    server = front()
    process = server.ps
    with kept_alive(server.port, 150):
        assert process.num_threads() < 30, process.num_threads()
        response = httpx2.get(server.url + "/metrics", timeout=10)
        assert sample(response.text, "cec_up", target="sim") == 1.0


@pytest.mark.slow
def test_open_connections_are_capped_and_refused_cheaply(front: Start) -> None:
    """At the cap a new connection is refused when no open one is idle (here each is busy
    with a head under way); an idle one would be closed to make room
    (test_front_door_bounds.py)."""
    server = front("--web.max-connections", "20")
    port = server.port
    time.sleep(0.5)  # the start-up probe's connection is closed by now
    with ExitStack() as stack:
        for _ in range(20):
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            conn.sendall(b"GET /-/healthy HTTP/1.1\r\n")  # busy: a head under way
        time.sleep(0.5)
        # Past the cap: accepted and closed at once, nothing parsed, nothing answered.
        assert exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    deadline = time.monotonic() + 5
    while statuses(exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")) != [200]:
        assert time.monotonic() < deadline, "connections freed but still refused"
        time.sleep(0.1)
    assert_quiet(server)


LOW_LIMIT = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
    "from exporter.cli import main; sys.argv[0] = 'cec-phone-exporter'; main()"
)


def test_soft_open_files_limit_is_raised_to_the_hard_one(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """systemd's default soft limit (1024) is a legacy of select(): Go raises it, so do we."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("this machine's hard open-files limit is below 4096")
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])
    server = serve_process("--config", str(config), program=(sys.executable, "-c", LOW_LIMIT))
    server.wait_for_line(LISTENING)
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    found = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
    assert found is not None
    assert (int(found.group(1)), int(found.group(2))) == (4096, 4096)


# --- answers -----------------------------------------------------------------------------------


def test_exposition_is_gzipped_when_asked(front: Start) -> None:
    server = front()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"content-encoding: gzip" in head.lower()
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += conn.recv(65536)
    assert sample(gzip.decompress(body).decode(), "cec_up", target="sim") == 1.0
    for refused in ("identity", "gzip;q=0", "br, gzip; q=0.000"):  # q=0: not acceptable
        plain = httpx2.get(server.url + "/metrics", headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain.headers, refused
        assert sample(plain.text, "cec_up", target="sim") == 1.0
    zipped = httpx2.get(server.url + "/metrics", headers={"Accept-Encoding": "br, GZIP;q=0.5"})
    assert zipped.headers["content-encoding"] == "gzip"


def test_passwords_of_any_length_are_simply_wrong(front: Start, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    server = front("--web-config", str(web))
    for password in ("x" * 73, "y" * 200, "é" * 40):
        response = httpx2.get(server.url + "/metrics", headers=basic_auth("alice", password))
        assert response.status_code == 401, password
        response = httpx2.get(server.url + "/metrics", headers=basic_auth("nobody", password))
        assert response.status_code == 401, password
    assert httpx2.get(server.url + "/", headers=basic_auth("alice", "right")).status_code == 200
    assert_quiet(server)


def test_several_listen_addresses_and_the_telemetry_path(front: Start) -> None:
    server = front("--listen", "127.0.0.1:0", "--web.telemetry-path", "/scrape")
    server.wait_for_count(LISTENING.pattern, 2)
    urls = [m.group(1) for line in server.lines if (m := LISTENING.search(line))]
    assert len(urls) == 2, server.output
    assert len(set(urls)) == 2
    for url in urls:
        assert url.endswith("/scrape")
        assert sample(httpx2.get(url, timeout=10).text, "cec_up", target="sim") == 1.0
    assert httpx2.get(server.url + "/metrics", timeout=10).status_code == 404


def test_listen_addresses_as_prometheus_exporters_spell_them() -> None:
    assert parse_listen(":9877") == (None, 9877)  # every address family, as Go's ":9877"
    assert parse_listen("0.0.0.0:9877") == ("0.0.0.0", 9877)
    assert parse_listen("[::1]:9877") == ("::1", 9877)
    for bad in ("9877", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_no_http2_in_clear_text(front: Start) -> None:
    """HTTP/2 is for TLS connections that chose it (ALPN), as with Go's net/http."""
    server = front()
    port = server.port
    upgrade = exchange(
        port,
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    assert statuses(upgrade) == [200], upgrade[:200]
    prior = exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert b"\x00\x00" not in prior[:9]  # no HTTP/2 SETTINGS frame came back
    assert all(code >= 400 for code in statuses(prior)), prior[:200]
    assert_quiet(server)


# --- request bodies the app does not read -------------------------------------------------------

CHUNKED_HEAD = b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNK = b"10\r\n" + b"a" * 16 + b"\r\n"


def test_an_unread_request_body_does_not_hold_the_connection_forever(front: Start) -> None:
    """hypercorn queues at most ten body events for the app; an app that answers without
    reading them used to leave the connection stuck for good (no timeout, counted against
    the cap even after the client left), so a few small requests locked every scrape out."""
    server = front("--web.max-connections", "4")
    port = server.port
    time.sleep(0.5)  # the start-up probe's connection is closed by now
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(CHUNKED_HEAD)
            for _ in range(50):  # one small segment each: more body events than the queue holds
                conn.sendall(CHUNK)
            conn.sendall(b"0\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 405")
    deadline = time.monotonic() + 5
    while statuses(exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")) != [200]:
        assert time.monotonic() < deadline, "connections whose client left are still counted"
        time.sleep(0.2)
    assert_quiet(server)


def test_a_client_done_sending_is_answered_and_let_go(front: Start) -> None:
    """A client may half-close once its requests are sent (``nc -N``, some health
    checkers). Its connection, and its place under the cap, used to be held for the whole
    keep-alive timeout (10 s) after the last answer, when nothing more could come."""
    server = front()
    port = server.port
    started = time.monotonic()
    answer = exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" * 3, timeout=15)
    assert statuses(answer) == [200, 200, 200]  # every pipelined request is still answered
    assert time.monotonic() - started < 3
    assert_quiet(server)


def test_authorization_headers_of_any_bytes_are_a_401_at_most(front: Start, tmp_path: Path) -> None:
    """A header value of non-ASCII bytes made base64 raise a ValueError of its own: a 500
    and an error line for anyone who could reach the port."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    server = front("--web-config", str(web))
    port = server.port
    head = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
    right = base64.b64encode(b"alice:right")
    for value in (b"Basic \xff\xfe", b"Basic \xc3\xa9", b"Basic " + right + b"\xff", b"\xff"):
        assert statuses(exchange(port, head % value)) == [401], value
    # The scheme is case-insensitive (RFC 9110 11.1), as in Go's Request.BasicAuth.
    assert statuses(exchange(port, head % (b"basic " + right))) == [200]
    assert_quiet(server)


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_dropped(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that asks for a large exposition (50,000 per-phone series, 4 MB) and
    reads nothing used to hold its connection, and the unsent answer in memory, for good:
    twenty of them took 200 MiB. An answer the client takes no byte of for
    WRITE_STALL_SECONDS (shortened here) is dropped with its connection."""
    monkeypatch.setattr(listener, "WRITE_STALL_SECONDS", 1.0, raising=False)
    sim = simulator(phones=50_000)
    config = write_config(targets=[target_entry(sim, "big", per_phone_metrics=True)])
    server = exporter_server(config)
    port = server.port
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(30)
        conn.connect(("127.0.0.1", port))
        conn.sendall(b"GET /probe?target=big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(8)  # the collection (~2 s), then two stall checks
        answer = b""
        try:
            while b"\r\n\r\n" not in answer and (chunk := conn.recv(1 << 20)):
                answer += chunk
            head, body = answer.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            received = len(body)
            while received < length and (chunk := conn.recv(1 << 20)):
                received += len(chunk)
        except ConnectionResetError:
            return  # dropped: what we want
    assert received < length, "the whole answer was kept for a client that read nothing"
