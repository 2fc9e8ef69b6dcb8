"""The web config served: real TLS handshakes, client certificates, keep-alive and reloads.

Certificates come from trustme (for the names used here) or from upstream's corpus in
``tests/exporter_toolkit`` (RSA, for upstream's cipher and curve cases, checked without
verifying the server's name). Servers run in process on loopback.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme
from prometheus_client.exposition import generate_latest
from support import (
    RunningExporter,
    basic_auth,
    log_line,
    run_cli,
    sample,
    target_entry,
    tls_client,
    web_yml,
)

from exporter.http.auth import RateLimiter
from exporter.http.limits import Limits
from exporter.settings import RateLimit, WebConfigFile, load_web_config
from exporter.simulator import Simulator

TESTDATA = Path(__file__).resolve().parent / "exporter_toolkit" / "testdata"
Serve = Callable[[Path], RunningExporter]


@pytest.fixture
def serve_web(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> Serve:
    """Factory: an exporter served with the web config file ``path``, re-read on change."""
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])

    def start(path: Path) -> RunningExporter:
        return exporter_server(config, WebConfigFile(str(path), load_web_config(str(path))))

    return start


def get(
    server: RunningExporter, ctx: ssl.SSLContext, path: str = "/-/healthy", **headers: str
) -> int | str:
    """The status of one request on a new TLS connection, or "refused"."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return "refused"
    finally:
        conn.close()


# --- client certificates --------------------------------------------------------------------


def test_client_auth_types_as_go_applies_them(
    serve_web: Serve, pki: dict[str, Path], tmp_path: Path
) -> None:
    expected = {  # client certificate -> outcome, per client_auth_type
        "VerifyClientCertIfGiven": {None: 200, "scraper": 200, "stranger": "refused"},
        "RequireAndVerifyClientCert": {None: "refused", "scraper": 200, "stranger": "refused"},
        # Go asks for a certificate and never checks it: nobody is kept out.
        "RequestClientCert": {None: 200, "scraper": 200, "stranger": 200},
    }
    for auth, outcomes in expected.items():
        extra = f"  client_auth_type: {auth}\n  client_ca_file: {pki['client_ca']}\n"
        (tmp_path / auth).mkdir()
        server = serve_web(web_yml(tmp_path / auth, pki, extra))
        for cert, outcome in outcomes.items():
            assert get(server, tls_client(pki, cert)) == outcome, (auth, cert)
            # Under RequireAndVerifyClientCert the handshake comes before any path:
            # the health endpoints need a client certificate too.
            assert get(server, tls_client(pki, cert), "/metrics") in (
                outcome,
                200 if outcome == 200 else "refused",
            )


def test_client_allowed_sans(serve_web: Serve, pki: dict[str, Path], tmp_path: Path) -> None:
    extra = (
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki['client_ca']}\n"
        "  client_allowed_sans: [scraper.example, ops@example.com, 127.0.0.2]\n"
    )
    server = serve_web(web_yml(tmp_path, pki, extra))
    for cert in ("scraper", "mailer", "by_ip"):  # a DNS, an e-mail and an IP SAN
        assert get(server, tls_client(pki, cert)) == 200, cert
    assert get(server, tls_client(pki, "intruder")) == "refused"  # right CA, wrong SAN
    assert get(server, tls_client(pki, "stranger")) == "refused"  # right SAN, wrong CA
    assert get(server, tls_client(pki)) == "refused"
    assert get(server, tls_client(pki, "scraper")) == 200  # the refusals broke nothing


def test_corpus_client_san_files(serve_web: Serve, tmp_path: Path) -> None:
    """Upstream's own pair: client2_selfsigned carries "test3", allowed by the good file only."""
    ctx = tls_client(None)
    ctx.load_cert_chain(
        str(TESTDATA / "client2_selfsigned.pem"), str(TESTDATA / "client2_selfsigned.key")
    )
    good = serve_web(TESTDATA / "web_config_auth_client_san.good.yaml")
    bad = serve_web(TESTDATA / "web_config_auth_client_san.bad.yaml")
    assert get(good, ctx) == 200
    assert get(bad, ctx) == "refused"


# --- protocol versions, cipher suites, curves -------------------------------------------------


def tls12_client(*ciphers: str) -> ssl.SSLContext:
    ctx = tls_client(None)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(ciphers))
    return ctx


def negotiated(server: RunningExporter, ctx: ssl.SSLContext) -> str | None:
    """The cipher suite a handshake settles on, or None when it fails."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/-/healthy")
        conn.getresponse().read()
        assert conn.sock is not None
        return str(conn.sock.cipher()[0])
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_cipher_suites_and_their_order(serve_web: Serve) -> None:
    aes256, aes128 = "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"
    server_order = serve_web(TESTDATA / "web_config_noAuth_someCiphers.good.yml")
    assert negotiated(server_order, tls12_client(aes256, aes128)) == aes128  # server's choice
    assert negotiated(server_order, tls12_client("ECDHE-RSA-AES256-SHA")) is None  # not listed
    client_order = serve_web(TESTDATA / "web_config_noAuth_someCiphers_noOrder.good.yml")
    assert negotiated(client_order, tls12_client(aes128, aes256)) == aes128  # client's choice
    assert negotiated(client_order, tls12_client(aes256, aes128)) == aes256


def test_curves_and_versions(serve_web: Serve, pki: dict[str, Path], tmp_path: Path) -> None:
    p521_only = serve_web(TESTDATA / "web_config_noAuth_someCurves.good.yml")  # and TLS 1.3 only
    for curve, works in (("secp521r1", True), ("secp384r1", False)):
        ctx = tls_client(None)
        ctx.set_ecdh_curve(curve)
        assert (negotiated(p521_only, ctx) is not None) is works, curve
    assert negotiated(p521_only, tls12_client("ECDHE-RSA-AES128-GCM-SHA256")) is None
    tls12_only = serve_web(TESTDATA / "web_config_noAuth_noHTTP2.good.yml")
    tls13 = tls_client(None)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    assert negotiated(tls12_only, tls13) is None
    assert negotiated(tls12_only, tls_client(None)) == "ECDHE-RSA-AES256-GCM-SHA384"

    old = tls_client(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is, on purpose
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    default = serve_web(web_yml(tmp_path, pki))
    assert get(default, old) == "refused"  # TLS12 is the default minimum
    (tmp_path / "legacy").mkdir()
    legacy = serve_web(web_yml(tmp_path / "legacy", pki, "  min_version: TLS11\n"))
    assert get(legacy, old) == 200  # when asked for, as Go allows it


# --- keep-alive ---------------------------------------------------------------------------------


def test_one_tls_handshake_serves_many_requests(
    serve_web: Serve, pki: dict[str, Path], tmp_path: Path
) -> None:
    server = serve_web(web_yml(tmp_path, pki))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=tls_client(pki), timeout=10
    )
    conn.connect()
    first_socket = conn.sock
    bodies = []
    for method, path in [("GET", "/metrics"), ("HEAD", "/-/ready"), ("GET", "/-/healthy")]:
        conn.request(method, path)
        response = conn.getresponse()
        assert response.version == 11
        assert response.getheader("Connection") is None
        bodies.append(response.read())
        assert conn.sock is first_socket  # still open: no new connection, no new handshake
    assert b"cec_up" in bodies[0]
    assert bodies[1] == b""  # HEAD: headers only, the connection stays in step
    assert bodies[2] == b"Healthy\n"
    conn.request("GET", "/-/healthy", headers={"Connection": "close"})
    response = conn.getresponse()
    assert response.getheader("Connection") == "close"
    response.read()
    assert conn.sock is None  # closed as asked
    conn.close()


# --- basic auth, rate limit, headers -------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return basic_auth(user, password)["Authorization"]


def test_unknown_user_costs_what_a_wrong_password_costs(serve_web: Serve, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=11)).decode()
    weak = bcrypt.hashpw(b"weak", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n  bob: '{weak}'\n")
    server = serve_web(web)

    def fastest(authorization: str) -> float:
        times = []
        for _ in range(4):
            start = time.perf_counter()
            response = server.get("/nope", headers={"Authorization": authorization})
            times.append(time.perf_counter() - start)
            assert response.status_code == 401
        return min(times)

    wrong_password = fastest(basic("alice", "wrong"))
    unknown_user = fastest(basic("mallory", "wrong"))
    # Same order of magnitude (cost 11 is ~100x cost 4); generous for a loaded machine.
    assert unknown_user > wrong_password / 3, (unknown_user, wrong_password)
    assert unknown_user < wrong_password * 3 + 0.5, (unknown_user, wrong_password)


@pytest.mark.slow
def test_rate_limit(serve_web: Serve, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("rate_limit:\n  interval: 30s\n  burst: 2\n")
    server = serve_web(web)
    assert [server.get("/nope").status_code for _ in range(3)] == [404, 404, 429]
    assert server.get("/-/healthy").status_code == 200  # probes are never limited
    never = serve_web(TESTDATA / "web_config_rate_limiter_one_second.yaml")  # burst 0
    assert never.get("/metrics").status_code == 429
    unlimited = serve_web(TESTDATA / "web_config_rate_limiter_nonblocking.yaml")
    assert all(unlimited.get("/-/ready").status_code == 200 for _ in range(10))
    # The bucket refills one token per interval, never beyond the burst.
    bucket = RateLimiter(RateLimit(interval_seconds=0.2, burst=2))
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    time.sleep(0.25)
    assert bucket.allow()
    time.sleep(1.0)
    assert [bucket.allow() for _ in range(3)] == [True, True, False]


def test_extra_headers(serve_web: Serve, tmp_path: Path) -> None:
    server = serve_web(TESTDATA / "web_config_headers.good.yml")
    response = server.get("/metrics")
    assert response.headers["X-Frame-Options"] == "deny"
    assert response.headers["X-XSS-Protection"] == "1"
    assert response.headers["Content-Security-Policy"] == "default-src 'self' *.test.example.net"
    assert len(response.headers.get_list("Content-Type")) == 1
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-XSS-Protection:\n")
    blank = serve_web(web).get("/-/healthy")
    assert "X-XSS-Protection" not in blank.headers  # "unset if blank", never "None"


# --- reload on change --------------------------------------------------------------------------


@pytest.mark.slow
def test_renewed_certificate_and_changed_password_apply_without_restart(
    serve_web: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_cert, new_cert = old_ca.issue_cert("127.0.0.1"), new_ca.issue_cert("127.0.0.1")
    cert = tmp_path / "tls" / "server.pem"
    cert.parent.mkdir()
    old_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    first = bcrypt.hashpw(b"first", bcrypt.gensalt(rounds=4)).decode()
    second = bcrypt.hashpw(b"second", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    tls = "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.pem\n"
    web.write_text(tls + f"basic_auth_users:\n  alice: '{first}'\n")
    server = serve_web(web)
    ctx = ssl.create_default_context()
    for ca in (old_ca, new_ca):
        ca.configure_trust(ctx)

    def served_cert() -> bytes:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        conn.close()
        assert der is not None
        return der

    def wait_for(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not check():
            assert time.monotonic() < deadline, "change not picked up"
            time.sleep(0.2)

    old_der = served_cert()
    assert get(server, ctx, "/", Authorization=basic("alice", "first")) == 200
    new_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    web.write_text(tls + f"basic_auth_users:\n  alice: '{second}'\n")
    wait_for(lambda: served_cert() != old_der)
    assert get(server, ctx, "/", Authorization=basic("alice", "second")) == 200
    assert get(server, ctx, "/", Authorization=basic("alice", "first")) == 401

    # A broken file fails closed, as upstream: 500 on every path but health, one error
    # line however often it is seen, and the gauge at 0; fixing the file recovers.
    caplog.set_level(logging.INFO, logger="exporter.settings.watch")
    good = web.read_text()
    web.write_text(tls + "basic_auth_users:\n  alice: not-a-hash\n")
    for _ in range(3):
        time.sleep(1.1)
        assert get(server, ctx, "/", Authorization=basic("alice", "second")) == 500
        assert get(server, ctx, "/metrics", Authorization=basic("alice", "second")) == 500
        assert get(server, ctx, "/-/healthy") == 200
        assert get(server, ctx, "/-/ready") == 200
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "basic_auth_users.alice" in log_line(errors[0])  # the error, as a key of the line
    assert "not-a-hash" not in log_line(errors[0])
    gauge = "cec_exporter_web_config_last_reload_successful"
    assert sample(generate_latest(server.exporter.registry).decode(), gauge) == 0
    web.write_text(good)
    wait_for(lambda: get(server, ctx, "/", Authorization=basic("alice", "second")) == 200)
    assert sample(generate_latest(server.exporter.registry).decode(), gauge) == 1
    # A missing file fails closed too.
    web.unlink()
    wait_for(lambda: get(server, ctx, "/", Authorization=basic("alice", "second")) == 500)
    web.write_text(good)
    wait_for(lambda: get(server, ctx, "/", Authorization=basic("alice", "second")) == 200)
    # Turning TLS off needs a restart: refused the same way.
    web.write_text(f"basic_auth_users:\n  alice: '{first}'\n")
    wait_for(lambda: get(server, ctx, "/", Authorization=basic("alice", "second")) == 500)
    assert any("needs a restart" in log_line(record) for record in caplog.records)


def test_cli_refuses_what_upstream_refuses(
    write_config: Callable[..., Path], simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    """client_ca_file without client_auth_type used to serve with no client check."""
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])
    shutil.copytree(TESTDATA, tmp_path / "corpus")
    web = tmp_path / "corpus" / "web_config_noAuth.bad.yml"
    result = run_cli(
        "serve", "--config", str(config), "--web-config", str(web), "--listen", "127.0.0.1:0"
    )
    assert result.returncode == 2, result.stderr
    assert "tls_server_config.client_auth_type" in result.stderr
    assert "without a Client Auth Policy" in result.stderr
    assert "listening" not in result.stdout + result.stderr


@pytest.mark.slow
def test_kept_alive_connections_are_bounded(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """A kept-alive connection may idle for the idle limit, which is not the head's deadline:
    the next request, once begun, must be whole within the head deadline."""
    config = write_config(targets=[target_entry(simulator(phones=1), "sim")])
    server = exporter_server(config, None, Limits(head_timeout=1.0, idle_timeout=2.5))
    request = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"

    def answer(conn: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"Healthy\n"):
            chunk = conn.recv(4096)
            assert chunk, data
            data += chunk
        return data

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        assert answer(conn).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # idle past the head deadline, within the idle limit: still served
        conn.sendall(request)
        assert answer(conn).startswith(b"HTTP/1.1 200 ")
        idle_since = time.monotonic()
        assert conn.recv(4096) == b""  # closed once idle for the idle limit
        assert 2.2 < time.monotonic() - idle_since < 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        assert answer(conn).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # idle first: the head's clock starts at its first byte
        started = time.monotonic()
        conn.settimeout(0.2)
        closed = False
        for byte in request:  # one byte every 0.2 s: each read is quick, the whole is not
            try:
                conn.sendall(bytes([byte]))
                closed = conn.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed on unread bytes
                closed = True
            if closed:
                break
        assert closed
        assert 0.8 < time.monotonic() - started < 4


# --- HTTP/2 ---------------------------------------------------------------------------------------


def h2_get(server: RunningExporter, ctx: ssl.SSLContext, path: str) -> tuple[str | None, int]:
    """(negotiated ALPN protocol, status of GET ``path`` over HTTP/2 if h2 was chosen)."""
    import h2.connection
    import h2.events

    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        chosen = conn.selected_alpn_protocol()
        if chosen != "h2":
            return chosen, 0
        h2c = h2.connection.H2Connection()
        h2c.initiate_connection()
        h2c.send_headers(
            1,
            [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "x")],
            end_stream=True,
        )
        conn.sendall(h2c.data_to_send())
        while True:
            data = conn.recv(65536)
            assert data, "closed before an answer"
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return chosen, int(dict(event.headers)[b":status"])
            conn.sendall(h2c.data_to_send())


def test_http2_is_served_when_on(serve_web: Serve, pki: dict[str, Path], tmp_path: Path) -> None:
    on = serve_web(web_yml(tmp_path, pki))
    assert h2_get(on, tls_client(pki), "/-/healthy") == ("h2", 200)
    assert h2_get(on, tls_client(pki), "/metrics") == ("h2", 200)
    off = serve_web(web_yml(tmp_path, pki, "http_server_config:\n  http2: false\n"))
    assert h2_get(off, tls_client(pki), "/-/healthy") == ("http/1.1", 0)


def test_http2_body_data_after_the_answer_is_ignored(
    serve_web: Serve, pki: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client may still be sending a body when the answer has gone (an early 405 here):
    hypercorn looked the finished stream up for its data, and the KeyError ended the whole
    connection with a warning line, which anyone reaching the port could cause."""
    import h2.connection
    import h2.events

    server = serve_web(web_yml(tmp_path, pki))
    ctx = tls_client(pki)
    ctx.set_alpn_protocols(["h2"])
    head = [(":scheme", "https"), (":authority", "x"), (":path", "/-/healthy")]
    statuses: dict[int, int] = {}
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        h2c = h2.connection.H2Connection()
        h2c.initiate_connection()
        h2c.send_headers(1, [(":method", "POST"), *head])  # the body is still to come

        def answer(stream: int) -> int:
            conn.sendall(h2c.data_to_send())
            while stream not in statuses:
                data = conn.recv(65536)
                assert data, "closed before an answer"
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                conn.sendall(h2c.data_to_send())
            return statuses[stream]

        assert answer(1) == 405
        time.sleep(0.2)  # the stream is finished on the server's side
        h2c.send_data(1, b"late body", end_stream=True)
        h2c.send_headers(3, [(":method", "GET"), *head], end_stream=True)
        assert answer(3) == 200  # the same connection goes on
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
