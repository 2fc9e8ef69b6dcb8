"""HTTP endpoints, basic auth and TLS (exporter-toolkit ``--web-config`` format).

A threaded WSGI server, so one slow scrape never blocks another. ``/-/healthy``
and ``/-/ready`` answer without authentication (they reveal nothing and
Kubernetes probes need them); every other path needs it when users are set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
import yaml
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.collect import Exporter
from exporter.config import ConfigError
from exporter.debug import debug_report
from exporter.pages import landing_page, service_discovery

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]

SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
MAX_REQUEST_BODY_BYTES = 64 * 1024
HEADER_READ_TIMEOUT_SECONDS = 10.0
_OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


# --- web config ------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """``tls_server_config`` of the exporter-toolkit web config."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context; raises ``ssl.SSLError``/``OSError`` on bad files."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
        return ctx


@dataclass(frozen=True)
class WebConfig:
    """TLS, basic-auth users (bcrypt hashes) and extra response headers."""

    tls: TLSConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _mapping(path: str, raw: object, known: tuple[str, ...] | None) -> dict[str, Any]:
    """``raw`` as a mapping; with ``known``, any other key is an error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path or "(top level)", f"must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if known is not None and key not in known:
            raise ConfigError(f"{path}.{key}" if path else str(key), "unknown key")
    return raw


def _file(path: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(path, "must be a file path")
    if not Path(raw).is_file():
        raise ConfigError(path, f"cannot read {raw}")
    return raw


def _choice(path: str, raw: object, choices: Iterable[str], default: str) -> str:
    value = default if raw is None else raw
    options = sorted(choices)
    if value not in options:
        raise ConfigError(path, f"must be one of {', '.join(options)}, got {value!r}")
    return str(value)


def _tls(raw: object) -> TLSConfig | None:
    path = "tls_server_config"
    data = _mapping(
        path, raw, ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version")
    )
    if not data:
        return None
    tls = TLSConfig(
        cert_file=_file(f"{path}.cert_file", data.get("cert_file")),
        key_file=_file(f"{path}.key_file", data.get("key_file")),
        client_ca_file=None
        if data.get("client_ca_file") is None
        else _file(f"{path}.client_ca_file", data["client_ca_file"]),
        client_auth_type=_choice(
            f"{path}.client_auth_type", data.get("client_auth_type"), _CLIENT_AUTH, "NoClientCert"
        ),
        min_version=_choice(f"{path}.min_version", data.get("min_version"), _TLS_VERSIONS, "TLS12"),
    )
    try:
        tls.context()
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(path, f"cannot load certificate or key: {err}") from None
    return tls


def _users(raw: object) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in _mapping("basic_auth_users", raw, None).items():
        path = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(path, "user names must be non-empty strings without ':'")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            # A malformed hash would only fail at the first login (bcrypt: "Invalid salt").
            raise ConfigError(path, "must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)")
        users[user] = hashed.encode()
    return users


def load_web_config(path: str) -> WebConfig:
    """Read an exporter-toolkit web config file; raises ``ConfigError``."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(path, f"cannot read web config: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "web config is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ConfigError(path, f"invalid YAML: {getattr(err, 'problem', err)}") from None
    data = _mapping("", raw, ("tls_server_config", "basic_auth_users", "http_server_config"))
    server = _mapping("http_server_config", data.get("http_server_config"), ("headers",))
    headers = _mapping("http_server_config.headers", server.get("headers"), None)
    return WebConfig(
        tls=_tls(data.get("tls_server_config")),
        users=_users(data.get("basic_auth_users")),
        headers={str(k): str(v) for k, v in headers.items()},
    )


# --- authentication -----------------------------------------------------------------


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, caching successes.

    bcrypt is slow on purpose; a scrape every few seconds should not pay for it
    each time, so verified (user, password, hash) triples are remembered by digest.
    """

    _DUMMY = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=4))

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        """True when ``header`` carries a known user and the right password."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        hashed = self._users.get(user)
        digest = hashlib.sha256(
            b"\0".join((user.encode(), password.encode(), hashed or b""))
        ).digest()
        with self._lock:
            if hashed is not None and digest in self._verified:
                return True
        # Unknown users still cost one bcrypt check, so timing does not reveal names.
        ok = bcrypt.checkpw(password.encode(), hashed or self._DUMMY) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(digest)
        return ok


# --- the WSGI application -------------------------------------------------------------


def _scrape_timeout(environ: Environ) -> float | None:
    raw = environ.get(SCRAPE_TIMEOUT_HEADER)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


class App:
    """Routes requests to the exporter: metrics, probe, landing page, health, reload."""

    def __init__(
        self,
        exporter: Exporter,
        web_config: WebConfig | None = None,
        reload: Callable[[], bool] | None = None,
    ) -> None:
        self.exporter = exporter
        self.web_config = web_config or WebConfig()
        self.auth = BasicAuth(self.web_config.users) if self.web_config.users else None
        self._reload = reload or exporter.reload

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._route(environ, start_response)
        except Exception:  # one log line and a 500, never a traceback on stderr
            log.exception("internal error serving %s", environ.get("PATH_INFO"))
            return self._send(start_response, "500 Internal Server Error", b"Internal error\n")

    def _route(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        auth = None if path in _OPEN_PATHS else self.auth
        if auth is not None and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            extra = [("WWW-Authenticate", 'Basic realm="cec-phone-exporter"')]
            return self._send(start_response, "401 Unauthorized", b"Unauthorized\n", extra)
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > MAX_REQUEST_BODY_BYTES:
            return self._send(start_response, "413 Content Too Large", b"Request too large\n")
        routes: dict[str, tuple[tuple[str, ...], Callable[..., Iterable[bytes]]]] = {
            "/metrics": (("GET", "HEAD"), self._metrics),
            "/probe": (("GET", "HEAD"), self._probe),
            "/": (("GET", "HEAD"), self._landing),
            "/sd": (("GET", "HEAD"), self._sd),
            "/-/healthy": (("GET", "HEAD"), self._healthy),
            "/-/ready": (("GET", "HEAD"), self._ready),
            "/-/reload": (("POST", "PUT"), self._reload_endpoint),
        }
        route = routes.get(path)
        if route is None:
            return self._send(start_response, "404 Not Found", b"Not found\n")
        methods, handler = route
        if method not in methods:
            allow = [("Allow", ", ".join(methods))]
            return self._send(
                start_response, "405 Method Not Allowed", b"Method not allowed\n", allow
            )
        return handler(environ, start_response)

    def _send(
        self,
        start_response: StartResponse,
        status: str,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> list[bytes]:
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        all_headers += headers or []
        all_headers += list(self.web_config.headers.items())
        start_response(status, all_headers)
        return [body]

    def _exposition(
        self, environ: Environ, start_response: StartResponse, target: str | None
    ) -> list[bytes]:
        registry, _ = self.exporter.scrape(target, _scrape_timeout(environ))
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        return self._send(start_response, "200 OK", encoder(registry), content_type=content_type)

    def _metrics(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        # node_exporter's collect[] filter: `collect[]=exporter` gives the exporter's own
        # metrics without collecting any target (sharded replicas, see README).
        wanted = parse_qs(environ.get("QUERY_STRING", "")).get("collect[]")
        if wanted is None:
            return self._exposition(environ, start_response, None)
        if set(wanted) != {"exporter"}:
            message = b"collect[] accepts only exporter (the exporter's own metrics)\n"
            return self._send(start_response, "400 Bad Request", message)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = encoder(self.exporter.own_metrics())
        return self._send(start_response, "200 OK", body, content_type=content_type)

    def _probe(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        names = query.get("target", [])
        if len(names) != 1 or not names[0]:
            return self._send(start_response, "400 Bad Request", b"Give one target=NAME\n")
        if names[0] not in self.exporter.target_names:
            message = "Unknown target: name a target from the config file\n"
            return self._send(start_response, "400 Bad Request", message.encode())
        if query.get("debug", [""])[-1].lower() in ("true", "1"):
            report, _ = debug_report(self.exporter, names[0], _scrape_timeout(environ))
            return self._send(start_response, "200 OK", report.encode())
        return self._exposition(environ, start_response, names[0])

    def _landing(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        page = landing_page(__version__, self.exporter.recent())
        content_type = "text/html; charset=utf-8"
        return self._send(start_response, "200 OK", page.encode(), content_type=content_type)

    def _sd(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        body = service_discovery(self.exporter.config)
        return self._send(start_response, "200 OK", body, content_type="application/json")

    def _healthy(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        return self._send(start_response, "200 OK", b"Healthy\n")

    def _ready(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        return self._send(start_response, "200 OK", b"Ready\n")

    def _reload_endpoint(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        if self._reload():
            return self._send(start_response, "200 OK", b"Reloaded\n")
        message = b"Reload failed; the previous config is still in use (see the log)\n"
        return self._send(start_response, "500 Internal Server Error", message)


# --- the server ------------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    """Bounds header read time; logs requests at debug level only."""

    timeout = HEADER_READ_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog of 5 drops the SYNs of a burst of scrapes
    # (an HA pair plus ad-hoc curls); they come back a second later, miss the collection
    # in flight and start another one.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, never a traceback on stderr (socketserver prints one by default).

        Clients that time out, hang up or fail the TLS handshake are routine: debug level.
        """
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # includes TimeoutError and ssl.SSLError
            log.debug("connection from %s dropped: %r", client_address[0], error)
        else:
            log.error("error handling a connection from %s: %r", client_address[0], error)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) into a (host, port) pair; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(app: App, listen: str) -> WSGIServer:
    """Bind ``listen`` and return the server (TLS-wrapped if configured); not started."""
    host, port = parse_listen(listen)
    server_class = _Server
    if ":" in host:

        class _Server6(_Server):
            address_family = socket.AF_INET6

        server_class = _Server6
    server = make_server(host, port, app, server_class=server_class, handler_class=_Handler)
    tls = app.web_config.tls
    if tls is not None:
        # The handshake runs in the request thread, under the handler's timeout,
        # so a client that stalls it cannot block the accept loop.
        server.socket = tls.context().wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server
