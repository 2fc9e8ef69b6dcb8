"""The HTTP endpoints as an ASGI app, guarded by the web config, on the exporter's loop.

Requests are answered on the event loop the collections run on, so a scrape is a
coroutine awaiting its collections, not a thread waiting for them. Work that could
stall the loop runs in threads: encoding (and gzipping) a large exposition, bcrypt
checks (``http.auth``), and config reloads. ``/-/healthy`` and ``/-/ready`` answer
without authentication (they reveal nothing and Kubernetes probes need them); every
other path needs it when users are set. ``http.listener`` serves the app.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs

import yaml
from hypercorn.typing import ASGIFramework
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.build import running_build
from exporter.http.auth import BasicAuth, FairQueue, RateLimiter, VerdictCache
from exporter.http.debug import debug_report
from exporter.http.discovery import service_discovery
from exporter.http.landing import landing_page
from exporter.http.limits import Limits
from exporter.http.listener import Server, open_server
from exporter.http.prefix import local_path
from exporter.scrape import Exporter, Scrape
from exporter.scrape.families import Families
from exporter.settings import WebConfig, WebConfigFile, redacted_config

log = logging.getLogger(__name__)

MAX_REQUEST_BODY_BYTES = 64 * 1024
DEFAULT_TELEMETRY_PATH = "/metrics"
GZIP_LEVEL = 6
_OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
_SCRAPE_TIMEOUT_HEADER = "x-prometheus-scrape-timeout-seconds"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[["Request"], Awaitable["Response"]]


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` takes gzip: named with a weight above 0 (RFC 9110
    12.5.3; ``gzip;q=0`` refuses it, which prometheus_client's check overlooks)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        return weight > 0
    return False


@dataclass(frozen=True)
class Request:
    """What a handler needs of one request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]
    client: str

    @classmethod
    def from_scope(cls, scope: Scope) -> Request:
        headers: dict[str, list[str]] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        client = scope.get("client") or ("", 0)
        return cls(
            method=scope.get("method", "GET"),
            path=scope.get("path", "/") or "/",
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
            client=str(client[0]),
        )

    def header(self, name: str) -> str | None:
        """The header's value when given exactly once, else None."""
        values = self.headers.get(name, [])
        return values[0] if len(values) == 1 else None

    @property
    def scrape_timeout(self) -> float | None:
        """Prometheus's ``X-Prometheus-Scrape-Timeout-Seconds``, when a number."""
        raw = self.header(_SCRAPE_TIMEOUT_HEADER)
        try:
            return float(raw) if raw else None
        except ValueError:
            return None


@dataclass
class Response:
    """A whole answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Guards:
    """What one web config puts in front of the routes: its users' check and its rate limit."""

    config: WebConfig
    auth: BasicAuth | None
    limiter: RateLimiter | None


def web_config_gauge(web: WebConfigFile) -> GaugeMetricFamily:
    """``cec_exporter_web_config_last_reload_successful``, read when scraped."""
    gauge = GaugeMetricFamily(
        "cec_exporter_web_config_last_reload_successful",
        "1 if the web config in force is the file as it is now.",
    )
    gauge.add_metric([], 1.0 if web.ok else 0.0)
    return gauge


class App:
    """Routes requests to the exporter: metrics, probe, landing page, config, health, reload.

    Every path lives under ``prefix`` (``--web.route-prefix``: ``""`` or ``/a/b``);
    ``/`` and the bare prefix redirect to the landing page at ``prefix + "/"``.
    """

    def __init__(
        self,
        exporter: Exporter,
        web_config: WebConfig | WebConfigFile | None = None,
        reload: Callable[[], bool] | None = None,
        telemetry_path: str = DEFAULT_TELEMETRY_PATH,
        prefix: str = "",
    ) -> None:
        self.exporter = exporter
        self.web = (
            web_config if isinstance(web_config, WebConfigFile) else WebConfigFile(None, web_config)
        )
        self._verdicts = VerdictCache()
        self._checks = FairQueue()
        self._guards = self._guards_for(self.web.current(), None)
        self._reload = reload or exporter.reload
        self.telemetry_path = telemetry_path
        self.prefix = prefix
        self._routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            telemetry_path: (("GET", "HEAD"), self._metrics),
            "/probe": (("GET", "HEAD"), self._probe),
            "/": (("GET", "HEAD"), self._landing),
            "/sd": (("GET", "HEAD"), self._sd),
            "/config": (("GET", "HEAD"), self._config),
            "/-/healthy": (("GET", "HEAD"), self._healthy),
            "/-/ready": (("GET", "HEAD"), self._ready),
            "/-/reload": (("POST", "PUT"), self._reload_endpoint),
        }
        """path -> (methods allowed, handler): built once."""
        exporter.registry.register(Families(lambda: [web_config_gauge(self.web)]))

    @property
    def web_config(self) -> WebConfig:
        """The web config in force now (re-read from its file when that changed)."""
        return self.web.current()

    def _guards_for(self, config: WebConfig, old: _Guards | None) -> _Guards:
        """Auth and rate limiter for ``config``; an unchanged limit keeps its bucket.

        The verdict cache is shared by every config: an unchanged user keeps its
        verdicts (a renewed certificate forgets nothing), a changed hash misses.
        """
        auth = None
        if config.users:
            auth = BasicAuth(config.users, config.max_bcrypt_cost, self._verdicts, self._checks)
        limiter = old.limiter if old else None
        if config.rate_limit is None:
            limiter = None
        elif limiter is None or limiter.limit != config.rate_limit:
            limiter = RateLimiter(config.rate_limit)
        return _Guards(config, auth, limiter)

    def guards(self) -> _Guards:
        """The guards of the web config in force, rebuilt when the config changed."""
        config = self.web.current()
        if config is not self._guards.config:
            self._guards = self._guards_for(config, self._guards)
        return self._guards

    def reload_if_changed(self) -> None:
        """``--config.auto-reload-interval``'s look: the config reloaded as SIGHUP does when
        it or a file it names changed, the web config re-read when it or its files did."""
        self.exporter.reload_if_changed()
        self.web.current()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan events are sent, and websockets are refused
        request = Request.from_scope(scope)
        try:
            response = await self._route(request)
        except Exception:  # a bug: one log line and a 500, never a traceback on stderr
            log.exception("internal error serving %s", request.path)
            response = Response(500, b"Internal error\n")
        await self._send(send, request, response)

    async def _send(self, send: Send, request: Request, response: Response) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
            *((k, v) for k, v in self._guards.config.headers.items() if v),
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        body = b"" if request.method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    async def _route(self, request: Request) -> Response:
        path = local_path(self.prefix, request.path)  # None: outside the route prefix
        guards = self.guards()
        if path not in _OPEN_PATHS and not self.web.ok:
            # Fail closed, as upstream: a broken web config serves nothing but health.
            return Response(500, b"The web config cannot be loaded; see the log\n")
        # Health probes are neither limited nor authenticated: they cost nothing upstream.
        if path not in _OPEN_PATHS and guards.limiter and not guards.limiter.allow():
            return Response(429, b"Too Many Requests\n")
        if path not in _OPEN_PATHS and guards.auth is not None:
            verdict = await guards.auth.check(request.header("authorization"), request.client)
            if verdict is None:
                return Response(429, b"Too many logins waiting\n")
            if not verdict:
                challenge = [("WWW-Authenticate", 'Basic realm="cec-phone-exporter"')]
                return Response(401, b"Unauthorized\n", headers=challenge)
        length = request.header("content-length") or "0"
        if not (length.isascii() and length.isdigit()):  # h11 already refuses these
            return Response(400, b"Bad Content-Length\n")
        if int(length) > MAX_REQUEST_BODY_BYTES:
            return Response(413, b"Request too large\n")
        if path is None and request.path in ("/", self.prefix):
            # As Prometheus does: the root and the bare prefix lead to the landing page.
            return Response(302, b"", headers=[("Location", self.prefix + "/")])
        route = None if path is None else self._routes.get(path)
        if route is None:
            return Response(404, b"Not found\n")
        methods, handler = route
        if request.method not in methods:
            allow = [("Allow", ", ".join(methods))]
            return Response(405, b"Method not allowed\n", headers=allow)
        return await handler(request)

    async def _encode(self, request: Request, registry: CollectorRegistry) -> Response:
        """The exposition in the format asked for, gzipped when asked, built in a thread:
        50,000 series take long enough to hold up every other collection on the loop."""
        encoder, content_type = choose_encoder(request.header("accept") or "")
        zipped = gzip_accepted(request.header("accept-encoding") or "")

        def encode() -> bytes:
            body = encoder(registry)
            return gzip.compress(body, GZIP_LEVEL) if zipped else body

        body = await asyncio.get_running_loop().run_in_executor(None, encode)
        headers = [("Vary", "Accept-Encoding")]
        if zipped:
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, body, content_type, headers)

    async def _answer(self, request: Request, scrape: Scrape) -> Response:
        """The exposition of ``scrape``; how long it took widens the next scrapes' margin."""
        started = time.monotonic()
        response = await self._encode(request, scrape.registry)
        self.exporter.answered(scrape, time.monotonic() - started)
        return response

    async def _metrics(self, request: Request) -> Response:
        # node_exporter's collect[] filter: `collect[]=exporter` gives the exporter's own
        # metrics without collecting any target (sharded replicas: docs/scaling.md).
        wanted = request.query.get("collect[]")
        if wanted is None:
            scrape = await self.exporter.scrape(None, request.scrape_timeout)
            return await self._answer(request, scrape)
        if set(wanted) != {"exporter"}:
            message = b"collect[] accepts only exporter (the exporter's own metrics)\n"
            return Response(400, message)
        return await self._encode(request, self.exporter.registry)

    async def _probe(self, request: Request) -> Response:
        names = request.query.get("target", [])
        if len(names) != 1 or not names[0]:
            return Response(400, b"Give one target=NAME\n")
        if names[0] not in self.exporter.target_names:
            return Response(400, b"Unknown target: name a target from the config file\n")
        if request.query.get("debug", [""])[-1].lower() in ("true", "1"):
            report, _ = await debug_report(self.exporter, names[0], request.scrape_timeout)
            return Response(200, report.encode())
        scrape = await self.exporter.scrape(names[0], request.scrape_timeout)
        return await self._answer(request, scrape)

    async def _landing(self, request: Request) -> Response:
        page = landing_page(
            __version__, running_build(), self.telemetry_path, self.exporter.recent()
        )
        return Response(200, page.encode(), "text/html; charset=utf-8")

    async def _config(self, request: Request) -> Response:
        # As blackbox_exporter's /config: the config in force, every secret redacted.
        shown = yaml.safe_dump(redacted_config(self.exporter.config), sort_keys=False)
        return Response(200, shown.encode())

    async def _sd(self, request: Request) -> Response:
        return Response(200, service_discovery(self.exporter.config), "application/json")

    async def _healthy(self, request: Request) -> Response:
        return Response(200, b"Healthy\n")

    async def _ready(self, request: Request) -> Response:
        return Response(200, b"Ready\n")

    async def _reload_endpoint(self, request: Request) -> Response:
        # The reload waits for the loop itself: it runs in a thread, not on the loop.
        if await asyncio.get_running_loop().run_in_executor(None, self._reload):
            return Response(200, b"Reloaded\n")
        message = b"Reload failed; the previous config is still in use (see the log)\n"
        return Response(500, message)


def serve(app: App, listen: str | Sequence[str], limits: Limits | None = None) -> Server:
    """Listen on every address (HTTPS when the web config has TLS), serving ``app`` on the
    exporter's loop from now on; raises OSError or ValueError before serving anything."""
    asgi = cast(ASGIFramework, app)  # hypercorn's scope types are TypedDicts of these dicts
    return open_server(asgi, app.web, listen, limits or Limits(), app.exporter.run)


__all__ = ["App", "Request", "Response", "serve"]
