"""HTTP endpoints, basic auth, rate limit and the HTTPS server of the ``--web-config``.

A threaded WSGI server speaking HTTP/1.1 with keep-alive, so one slow scrape never
blocks another and a scraper keeps its TLS connection. ``/-/healthy`` and
``/-/ready`` answer without authentication (they reveal nothing and Kubernetes
probes need them); every other path needs it when users are set. The web config
itself is read and checked by ``exporter.webconfig``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from urllib.parse import parse_qs
from wsgiref.headers import Headers
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

import bcrypt
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.collect import Exporter
from exporter.debug import debug_report
from exporter.pages import landing_page, service_discovery
from exporter.webconfig import RateLimit, WebConfig, WebConfigFile, client_sans

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]

SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
MAX_REQUEST_BODY_BYTES = 64 * 1024
HEADER_READ_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 120.0
"""How long a kept-alive connection may wait for its next request (scrape intervals are
shorter, so Prometheus reuses one TLS connection)."""
MAX_REQUEST_LINE_BYTES = 65536
_OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})


# --- authentication -----------------------------------------------------------------


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, caching successes.

    bcrypt is slow on purpose; a scrape every few seconds should not pay for it
    each time, so verified (user, password, hash) triples are remembered by digest.
    An unknown user is checked against a dummy hash of the users' highest cost, so
    it takes as long as a wrong password and timing does not reveal user names.
    Like upstream, one bcrypt check runs at a time: a flood of bad passwords
    burns one core, not all of them.
    """

    def __init__(self, users: Mapping[str, bytes], cost: int) -> None:
        self._users = users
        # A bare salt (no hashing needed to make it): checkpw hashes the password with
        # it at this cost, then compares and fails, so it costs what a real hash costs.
        self._dummy = bcrypt.gensalt(rounds=max(cost, 4))
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        self._bcrypt = threading.Lock()

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
        with self._bcrypt:
            ok = bcrypt.checkpw(password.encode(), hashed or self._dummy) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(digest)
        return ok


class RateLimiter:
    """A token bucket as golang.org/x/time/rate: ``burst`` tokens, one more per interval.

    With ``burst`` 0 nothing is ever allowed (upstream's behaviour, kept as is).
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if one is there."""
        with self._lock:
            now = time.monotonic()
            refill = (now - self._at) / self.limit.interval_seconds
            self._tokens = min(float(self.limit.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass(frozen=True)
class _Front:
    """What guards the door for one web config: its users' check and its rate limiter."""

    config: WebConfig
    auth: BasicAuth | None
    limiter: RateLimiter | None


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
        web_config: WebConfig | WebConfigFile | None = None,
        reload: Callable[[], bool] | None = None,
    ) -> None:
        self.exporter = exporter
        self.web = (
            web_config if isinstance(web_config, WebConfigFile) else WebConfigFile(None, web_config)
        )
        self._front_lock = threading.Lock()
        self._front = self._guard(self.web.current(), None)
        self._reload = reload or exporter.reload

    @property
    def web_config(self) -> WebConfig:
        """The web config in force now (re-read from its file when that changed)."""
        return self.web.current()

    @staticmethod
    def _guard(config: WebConfig, old: _Front | None) -> _Front:
        """Auth and rate limiter for ``config``; an unchanged limit keeps its bucket."""
        auth = BasicAuth(config.users, config.max_bcrypt_cost) if config.users else None
        limiter = old.limiter if old else None
        if config.rate_limit is None:
            limiter = None
        elif limiter is None or limiter.limit != config.rate_limit:
            limiter = RateLimiter(config.rate_limit)
        return _Front(config, auth, limiter)

    def front(self) -> _Front:
        """The guard for the web config in force, rebuilt when the config changed."""
        config = self.web.current()
        with self._front_lock:
            if config is not self._front.config:
                self._front = self._guard(config, self._front)
            return self._front

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._route(environ, start_response)
        except Exception:  # one log line and a 500, never a traceback on stderr
            log.exception("internal error serving %s", environ.get("PATH_INFO"))
            return self._send(start_response, "500 Internal Server Error", b"Internal error\n")

    def _route(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        front = self.front()
        # Health probes are neither limited nor authenticated: they cost nothing upstream.
        if path not in _OPEN_PATHS and front.limiter and not front.limiter.allow():
            return self._send(start_response, "429 Too Many Requests", b"Too Many Requests\n")
        auth = None if path in _OPEN_PATHS else front.auth
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
        all_headers += [(k, v) for k, v in self.front().config.headers.items() if v]
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


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded by an absolute deadline (a request head must arrive in time).

    A per-read timeout alone lets a client trickle one byte at a time forever; with
    ``deadline`` unset the socket's own timeout applies (request bodies).
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._timeout)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received in time")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _handshake(conn: ssl.SSLSocket, seconds: float) -> None:
    """The TLS handshake, all of it within ``seconds`` however slowly the client sends."""
    deadline = time.monotonic() + seconds
    conn.setblocking(False)
    with selectors.DefaultSelector() as selector:
        while True:
            try:
                conn.do_handshake()
                break
            except ssl.SSLWantReadError:
                events = selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                events = selectors.EVENT_WRITE
            left = deadline - time.monotonic()
            selector.register(conn, events)
            ready = selector.select(left) if left > 0 else []
            selector.unregister(conn)
            if not ready:
                raise TimeoutError("TLS handshake not completed in time")
    conn.setblocking(True)


class ClientRefused(OSError):
    """The client's certificate carries none of ``client_allowed_sans``."""


class _Response(ServerHandler):
    """One WSGI response over HTTP/1.1: framed by Content-Length, no body for HEAD."""

    http_version = "1.1"
    keep_alive = True
    environ: Environ
    headers: Headers
    headers_sent: bool

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        if "Content-Length" not in self.headers:
            self.keep_alive = False  # the end of the body is the end of the connection
        if not self.keep_alive:
            self.headers["Connection"] = "close"

    def write(self, data: bytes) -> None:
        if self.environ.get("REQUEST_METHOD") != "HEAD":
            super().write(data)
        elif not self.headers_sent:
            self.bytes_sent = len(data)
            self.send_headers()


class _Handler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, TLS handshake per connection, request-head deadline.

    The handshake runs here, in the connection's thread, with the TLS settings in
    force when the connection came in (a renewed certificate applies to the next
    connection). Requests are debug-logged only.
    """

    protocol_version = "HTTP/1.1"
    timeout = HEADER_READ_TIMEOUT_SECONDS
    # A response goes out as one buffered write where it fits (one TLS record), and
    # without Nagle's wait for the client's delayed ACK (40 ms per kept-alive request).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        tls = self.server.tls and self.server.web.current().tls
        if tls:
            conn = tls.context.wrap_socket(
                self.request, server_side=True, do_handshake_on_connect=False
            )
            try:
                _handshake(conn, HEADER_READ_TIMEOUT_SECONDS)
                allowed = tls.client_allowed_sans
                if allowed is not None and not client_sans(conn.getpeercert() or {}) & set(allowed):
                    raise ClientRefused("client certificate has none of client_allowed_sans")
            except BaseException:
                conn.close()
                raise
            self.request = conn
        super().setup()
        self.rfile.close()  # replaced by one that keeps the request-head deadline
        self._reader = _DeadlineReader(self.connection, HEADER_READ_TIMEOUT_SECONDS)
        self._input = io.BufferedReader(self._reader)
        self.rfile = self._input

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()  # the server closes only the plain socket it accepted

    def handle(self) -> None:
        self.close_connection = False
        first = True
        while not self.close_connection:
            try:
                self._handle_one(first)
            except TimeoutError:  # an idle or slow client: nothing to answer
                self.close_connection = True
            first = False

    def _handle_one(self, first: bool) -> None:
        if not first:  # wait for the next request, then give it the head deadline
            self._reader.deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS
            if not self._input.peek(1):
                self.close_connection = True
                return
        self._reader.deadline = time.monotonic() + HEADER_READ_TIMEOUT_SECONDS
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE_BYTES + 1)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > MAX_REQUEST_LINE_BYTES:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error was sent; parse_request closes
            return
        if self.request_version != "HTTP/1.1":
            self.close_connection = True  # HTTP/1.0 keep-alive is not worth supporting
        body = self._body()
        self._reader.deadline = None
        output = cast(IO[bytes], self.wfile)
        response = _Response(
            io.BytesIO(body), output, self.get_stderr(), self.get_environ(), multithread=True
        )
        response.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        response.keep_alive = not self.close_connection
        app = self.server.get_app()
        assert app is not None
        response.run(app)
        self.wfile.flush()
        if not response.keep_alive:
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the client waits for it before sending the body
        return accepted

    def _body(self) -> bytes:
        """The request body when small and framed; otherwise it is left and the
        connection closed after the answer (the app refuses large bodies with 413)."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            return b""
        if not length:
            return b""
        if not length.isdigit() or int(length) > MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            return b""
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            self.close_connection = True
        return body

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog of 5 drops the SYNs of a burst of scrapes
    # (an HA pair plus ad-hoc curls); they come back a second later, miss the collection
    # in flight and start another one.
    request_queue_size = 128
    web: WebConfigFile
    tls: bool = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, never a traceback on stderr (socketserver prints one by default).

        Clients that time out, hang up or fail the TLS handshake are routine: debug level.
        """
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # includes TimeoutError, ssl.SSLError, ClientRefused
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
    """Bind ``listen`` and return the server (HTTPS when the web config has TLS); not started."""
    host, port = parse_listen(listen)
    server_class = _Server
    if ":" in host:

        class _Server6(_Server):
            address_family = socket.AF_INET6

        server_class = _Server6
    server = make_server(host, port, app, server_class=server_class, handler_class=_Handler)
    assert isinstance(server, _Server)
    server.web = app.web
    # Fixed for the server's life: the listener speaks HTTPS or it does not.
    server.tls = app.web.current().tls is not None
    return server
