"""The front door: TLS, client certificates, basic auth, bad web configs, and hostile clients.

TLS and basic auth run the real CLI (``python -m exporter serve ...``) as a subprocess;
request-level checks also go through a subprocess so its stderr can be checked for
tracebacks.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import httpx2
import pytest
import trustme
import yaml
from support import basic_auth, run_cli, sample, target_entry
from support_procs import ServeProcess

from exporter.http.app import MAX_REQUEST_BODY_BYTES
from exporter.http.limits import Limits
from exporter.settings import ConfigError, load_web_config
from exporter.simulator import Simulator

HEADER_READ_TIMEOUT_SECONDS = Limits.head_timeout


def query_requests(sim: Simulator) -> int:
    stats = sim.stats()
    return int(str(stats["query_requests"])) + int(str(stats["token_requests"]))


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A server CA and certificate for 127.0.0.1, a client CA and a client, and a stranger."""
    where = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("scraper@example.com")
    stranger = other_ca.issue_cert("stranger@example.com")
    files = {
        "server_ca": server_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_ca": client_ca.cert_pem,
        "client": client.private_key_and_cert_chain_pem,
        "stranger": stranger.private_key_and_cert_chain_pem,
        "other_ca": other_ca.cert_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = where / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return paths


def client_context(pki: dict[str, Path], cert: str | None = None, ca: str = "server_ca") -> Any:
    ctx = ssl.create_default_context(cafile=str(pki[ca]))
    if cert is not None:
        ctx.load_cert_chain(str(pki[cert]))
    return ctx


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_tls_serves_https_and_survives_bad_clients(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=120)
    config = write_config(targets=[target_entry(sim, "sim")])
    web = write_yaml(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert_file": str(pki["server_cert"]),
                "key_file": str(pki["server_key"]),
            }
        },
    )
    with httpx2.Client(verify=client_context(pki), timeout=30) as client:
        server = serve_process("--config", str(config), "--web-config", str(web)).start(client)
        assert server.url.startswith("https://127.0.0.1:")
        host, port = server.url.removeprefix("https://").split(":")

        # A client that opens a TCP connection and never starts the handshake
        # must not hold up the accept loop.
        with socket.create_connection((host, int(port))):
            response = client.get(server.url + "/metrics")
            assert response.status_code == 200
            assert sample(response.text, "cec_up", target="sim") == 1.0
            assert sample(response.text, "cec_softphones_allocated", target="sim") == 120

        # Plain HTTP to the TLS port is not served.
        with pytest.raises(httpx2.HTTPError):
            httpx2.get(server.url.replace("https://", "http://") + "/metrics", timeout=5)
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(server.url + "/metrics", verify=client_context(pki, ca="other_ca"))
        # ... and the server still serves afterwards.
        assert client.get(server.url + "/probe?target=sim").status_code == 200
    output = server.stop()
    assert "Traceback" not in output


def test_tls_requires_a_verified_client_certificate(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=10)
    config = write_config(targets=[target_entry(sim, "sim")])
    web = write_yaml(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert_file": str(pki["server_cert"]),
                "key_file": str(pki["server_key"]),
                "client_ca_file": str(pki["client_ca"]),
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
    )
    with httpx2.Client(verify=client_context(pki, cert="client"), timeout=30) as client:
        server = serve_process("--config", str(config), "--web-config", str(web)).start(client)
        for cert in (None, "stranger"):  # no certificate, or one the client CA did not sign
            refused = httpx2.Client(verify=client_context(pki, cert=cert), timeout=10)
            with refused, pytest.raises(httpx2.TransportError):
                refused.get(server.url + "/metrics")
        response = client.get(server.url + "/metrics")
        assert response.status_code == 200
        assert sample(response.text, "cec_up", target="sim") == 1.0
        assert client.get(server.url + "/-/ready").status_code == 200
    output = server.stop()
    assert "Traceback" not in output


# --- basic auth -----------------------------------------------------------------------------


def test_basic_auth(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=10)
    config = write_config(targets=[target_entry(sim, "sim")])
    hashed = bcrypt.hashpw(b"right-horse", bcrypt.gensalt(rounds=4)).decode()
    other = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(rounds=4)).decode()
    web = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"alice": hashed, "bob": other}})
    server = serve_process("--config", str(config), "--web-config", str(web)).start()
    good = basic_auth("alice", "right-horse")
    refusals = {
        "none": {},
        "wrong password": basic_auth("alice", "wrong-horse"),
        "other user's password": basic_auth("bob", "right-horse"),
        "unknown user": basic_auth("mallory", "right-horse"),
        "not base64": {"Authorization": "Basic %%%"},
        "no colon": {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
        "bearer": {"Authorization": "Bearer right-horse"},
    }
    protected = [
        ("GET", "/metrics"),
        ("GET", "/probe?target=sim"),
        ("GET", "/"),
        ("POST", "/-/reload"),
        ("GET", "/no-such-page"),
    ]
    with httpx2.Client(timeout=30) as client:
        before = query_requests(sim)
        for method, path in protected:
            for why, headers in refusals.items():
                response = client.request(method, server.url + path, headers=headers)
                assert response.status_code == 401, (method, path, why)
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
                assert "cec_" not in response.text
        assert query_requests(sim) == before  # refused scrapes reach nothing upstream
        for path in ("/-/healthy", "/-/ready"):
            assert client.get(server.url + path).status_code == 200
            assert client.get(server.url + path, headers=basic_auth("x", "y")).status_code == 200
        expected = {"/metrics": 200, "/probe?target=sim": 200, "/": 200, "/no-such-page": 404}
        for path, status in expected.items():
            assert client.get(server.url + path, headers=good).status_code == status, path
        metrics = client.get(server.url + "/metrics", headers=good).text
        assert sample(metrics, "cec_up", target="sim") == 1.0
        assert client.post(server.url + "/-/reload", headers=good).status_code == 200
        assert client.get(server.url + "/", headers=basic_auth("bob", "bob-pw")).status_code == 200
    output = server.stop()
    assert "Traceback" not in output
    assert "right-horse" not in output


# --- bad web configs --------------------------------------------------------------------------


def _bad_web_configs(pki: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """name -> (YAML text, what the error must name)."""
    cert, key = str(pki["server_cert"]), str(pki["server_key"])
    good_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    return {
        "unknown-top-level-key": (f"basic_auth_user:\n  alice: '{good_hash}'\n", "basic_auth_user"),
        "unknown-tls-key": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  ciphers: [x]\n",
            "tls_server_config.ciphers",
        ),
        "plain-password": (
            "basic_auth_users:\n  alice: plain-canary-pw\n",
            "basic_auth_users.alice",
        ),
        "md5-crypt-hash": (
            "basic_auth_users:\n  alice: '$1$saltsalt$qjXMvbEw8oaL.CzflDugX/'\n",
            "basic_auth_users.alice",
        ),
        "truncated-bcrypt-hash": (
            f"basic_auth_users:\n  alice: '{good_hash[:30]}'\n",
            "basic_auth_users.alice",
        ),
        "users-not-a-mapping": ("basic_auth_users: [alice]\n", "basic_auth_users"),
        "missing-cert-file": (
            f"tls_server_config:\n  cert_file: /nonexistent/cert.pem\n  key_file: {key}\n",
            "tls_server_config.cert_file",
        ),
        "missing-key-file-key": (
            f"tls_server_config:\n  cert_file: {cert}\n",
            "tls_server_config.key_file",
        ),
        "key-does-not-match": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {pki['client']}\n",
            "tls_server_config",
        ),
        "bad-client-auth-type": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type",
        ),
        "missing-client-ca-file": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_ca_file: /nonexistent/ca.pem\n",
            "tls_server_config.client_ca_file",
        ),
        "client-ca-without-auth-type": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            f"  client_ca_file: {pki['client_ca']}\n",
            "tls_server_config.client_auth_type",
        ),
        "require-any-client-cert": (
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: RequireAnyClientCert\n",
            "tls_server_config.client_auth_type",
        ),
        "duplicate-key": (f"basic_auth_users:\n  a: '{good_hash}'\n  a: '{good_hash}'\n", "FILE"),
        "not-a-mapping": ("- tls_server_config\n", "(top level)"),
        "unparseable": ("tls_server_config: [\n", "FILE"),
    }


@pytest.mark.slow
def test_bad_web_configs_exit_2(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=1)
    config = write_config(targets=[target_entry(sim, "sim")])
    cases = _bad_web_configs(pki)
    files = {name: tmp_path / f"{name}.yml" for name in cases}
    for name, (text, _) in cases.items():
        files[name].write_text(text)
    files["not-utf8"] = tmp_path / "not-utf8.yml"
    files["not-utf8"].write_bytes(b"basic_auth_users:\n  \xff\xfe: x\n")
    files["missing-file"] = tmp_path / "nowhere" / "web.yml"
    expected = {name: what for name, (_, what) in cases.items()}
    expected["not-utf8"] = expected["missing-file"] = "FILE"

    def serve(path: Path) -> subprocess.CompletedProcess[str]:
        args = ("serve", "--config", str(config), "--web-config", str(path))
        return run_cli(*args, "--listen", "127.0.0.1:0")

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(files, pool.map(serve, files.values()), strict=True))
    for name, result in results.items():
        what = str(files[name]) if expected[name] == "FILE" else expected[name]
        output = result.stdout + result.stderr
        assert result.returncode == 2, (name, output)
        assert what in result.stderr, (name, result.stderr)
        assert "Traceback" not in output, name
        assert "listening" not in output, name
        assert "plain-canary-pw" not in output, name
        # The same error in process, with the key path as ``ConfigError.path``.
        with pytest.raises(ConfigError) as caught:
            load_web_config(str(files[name]))
        assert caught.value.path == what, name
    assert sim.stats()["token_requests"] == 0


def test_empty_web_config_is_plain_http(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=1)
    config = write_config(targets=[target_entry(sim, "sim")])
    web = tmp_path / "web.yml"
    web.write_text("# nothing configured\n")
    server = serve_process("--config", str(config), "--web.config.file", str(web)).start()
    assert server.url.startswith("http://")
    assert httpx2.get(server.url + "/metrics").status_code == 200


# --- hostile and mistaken requests --------------------------------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_hostile_and_mistaken_requests(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    sim = simulator(phones=10)
    config = write_config(targets=[target_entry(sim, "sim")])
    server = serve_process("--config", str(config), "--log-level", "debug").start()
    port = server.port

    # A client that connects and sends nothing: the rest below is served meanwhile.
    idle = socket.create_connection(("127.0.0.1", port))
    idle.settimeout(HEADER_READ_TIMEOUT_SECONDS + 15)
    idle_since = time.monotonic()
    # A client that sends half a request line and stops.
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"GET /metr")
    stalled.settimeout(HEADER_READ_TIMEOUT_SECONDS + 15)

    with httpx2.Client(timeout=10) as client:
        before = query_requests(sim)
        for query in ("", "?target=", "?target=sim&target=sim", "?other=sim"):
            response = client.get(server.url + "/probe" + query)
            assert response.status_code == 400, query
        for target in ("bogus", sim.url, "http://127.0.0.1:1/", "127.0.0.1", "../sim", "sim "):
            response = client.get(server.url + "/probe", params={"target": target})
            assert response.status_code == 400, target
            assert "cec_" not in response.text
        assert query_requests(sim) == before  # nothing went upstream

        assert client.get(server.url + "/nope").status_code == 404
        assert client.get(server.url + "/metrics/extra").status_code == 404
        for method, path in [("POST", "/metrics"), ("DELETE", "/probe"), ("GET", "/-/reload")]:
            response = client.request(method, server.url + path)
            assert response.status_code == 405, (method, path)
            assert response.headers.get("Allow")
        assert query_requests(sim) == before

        # A body larger than the server accepts: 413 without reading it, nothing upstream.
        too_big = raw_request(
            port,
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {10**15}\r\n\r\n".encode()
            + b"x" * 1024,
        )
        assert too_big.startswith(b"HTTP/1.")
        assert b" 413 " in too_big.split(b"\r\n")[0]
        just_over = raw_request(
            port,
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_REQUEST_BODY_BYTES + 1}"
            "\r\n\r\n".encode(),
        )
        assert b" 413 " in just_over.split(b"\r\n")[0]
        negative = raw_request(
            port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
        )
        assert b" 413 " in negative.split(b"\r\n")[0] or b" 400 " in negative.split(b"\r\n")[0]
        assert query_requests(sim) == before
        assert server.count(r"config reload") == 0  # the refused reload never ran

        # A real scrape is served while the idle clients wait.
        assert client.get(server.url + "/metrics").status_code == 200
        assert client.get(server.url + "/-/healthy").status_code == 200

    # The idle clients are dropped once the header read timeout passes.
    assert idle.recv(1024) == b""
    assert stalled.recv(1024) == b""
    assert time.monotonic() - idle_since < HEADER_READ_TIMEOUT_SECONDS + 10
    idle.close()
    stalled.close()
    output = server.stop()
    assert "Traceback" not in output
    assert "Exception occurred" not in output
