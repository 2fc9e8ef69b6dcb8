"""The listener: accepts connections on the exporter's own event loop, for hypercorn to serve.

hypercorn (h11 and h2) parses and answers (``exporter.http._hypercorn`` holds every
adjustment made to it); it was chosen by measurement (docs/development.md, "HTTP server"). Around it
this module adds what a hostile client needs kept in check: open connections are capped
and refused past the cap before anything is read or parsed; TLS runs per connection with
the web config's current context (a renewed certificate applies to the next connection)
and checks ``client_allowed_sans``; a request head is at most 1 MiB (431) and must come
within a deadline; an answer the client reads nothing of is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from exporter.http._hypercorn import Connections
from exporter.settings import WebConfigFile
from exporter.settings.tls import client_sans

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HEAD_LIMIT_BYTES = 1 << 20
"""A request head (request line and every header) is at most this long, or 431."""
HEAD_TIMEOUT_SECONDS = 10.0
"""A TLS handshake, and each request head, must be complete within this. The head's
clock starts when the connection opens or the previous answer is sent, so it is also
how long a kept-alive connection may stay idle."""
DEFAULT_MAX_CONNECTIONS = 2048
"""Open connections served at once; past it new ones are closed at once. About
30-35 KiB each (bench/bench_attacks.py), so the default stays well inside a 256 MiB
container."""
WRITE_STALL_SECONDS = 30.0
"""An answer of which the client takes no byte for this long is dropped with its
connection: a client that reads nothing would hold both, and the unsent answer in
memory (4 MB for 50,000 series), for good."""
FD_RESERVE = 64
"""Descriptors kept free of connections: targets' sockets, files, the log."""
GRACE_SECONDS = 3.0
"""At shutdown, how long answers in flight may take to finish."""


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to fit the open-files limit (less a reserve) if need be."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or wanted <= soft - FD_RESERVE:
        return wanted
    fitted = max(1, soft - FD_RESERVE)
    log.info(
        "--web.max-connections %d is above the open files limit %d: capped at %d",
        wanted,
        soft,
        fitted,
    )
    return fitted


def parse_listen(value: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (IPv6 in brackets) into (host, port); ``:PORT`` is every address
    family (host None). Raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT or :PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]") or None, int(port)


@dataclass(frozen=True)
class _BodyDrained:
    """The app, with the request body read and dropped while it runs.

    The app answers from the head alone and reads no body. hypercorn queues at most
    ten body events for it, and when the answer ends it puts ``http.disconnect`` on
    that queue: full, that put waits forever and the connection is never closed, not
    even after the client has left. Read meanwhile, the queue never fills; a body
    still coming when the answer is done closes the connection (h11 cannot recycle it).
    """

    app: ASGIFramework

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def drain() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        drainer = asyncio.ensure_future(drain())
        try:
            await self.app(scope, receive, send)
        finally:
            drainer.cancel()


# --- connections --------------------------------------------------------------------------


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is accepted, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


class _Counted(asyncio.StreamReaderProtocol):
    """A served connection, counted from accept to close."""

    def __init__(self, door: FrontDoor, reader: asyncio.StreamReader) -> None:
        super().__init__(reader, door.handle)
        self._door = door
        self._open = True
        door.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open:
            self._open = False
            self._door.open -= 1
        super().connection_lost(exc)


@dataclass
class FrontDoor:
    """Accepts connections for one ASGI app, up to ``max_connections`` at a time."""

    app: ASGIFramework
    web: WebConfigFile
    max_connections: int
    open: int = 0
    tls: bool = False
    _http: Connections = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _servers: list[asyncio.Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The limits are read now, not at import, so that a test can shorten them.
        self._http = Connections(_BodyDrained(self.app), HEAD_LIMIT_BYTES, HEAD_TIMEOUT_SECONDS)

    def _protocol(self) -> asyncio.Protocol:
        if self.open >= self.max_connections:
            return _Refused()
        return _Counted(self, asyncio.StreamReader(limit=64 * 1024))

    async def listen(self, address: str) -> list[tuple[str, int]]:
        """Start listening on ``address``; the (host, port) pairs actually bound."""
        host, port = parse_listen(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol, host, port, backlog=1024)
        self._servers.append(server)
        return [sock.getsockname()[:2] for sock in server.sockets]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: TLS if configured, then HTTP until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.tls and not await self._handshake(writer):
                return
            await self._http.serve(reader, writer, WRITE_STALL_SECONDS)
        except OSError as err:  # a client that goes away is routine
            log.debug("connection dropped: %r", err)
        except Exception as err:  # noqa: BLE001  # hypercorn's, on input it did not expect
            log.warning("connection ended by an unexpected error: %r", err)
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def _handshake(self, writer: asyncio.StreamWriter) -> bool:
        """The TLS handshake with the context in force now; False when refused."""
        tls = self.web.current().tls
        if tls is None:  # TLS cannot be turned off without a restart: serve nothing
            return False
        peer = writer.get_extra_info("peername")
        try:
            await writer.start_tls(tls.context, ssl_handshake_timeout=HEAD_TIMEOUT_SECONDS)
        except (TimeoutError, OSError) as err:
            log.debug("TLS handshake with %s failed: %r", peer, err)
            return False
        allowed = tls.client_allowed_sans
        if allowed is not None:
            ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
            sans = client_sans(ssl_object.getpeercert() or {}) if ssl_object else set()
            if not sans & set(allowed):
                log.debug(
                    "client %s refused: its certificate has none of client_allowed_sans", peer
                )
                return False
        return True

    async def close(self) -> None:
        """Stop accepting, close idle connections, let answers in flight finish (briefly)."""
        for server in self._servers:
            server.close()
        await self._http.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=GRACE_SECONDS)
        for server in self._servers:
            await server.wait_closed()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Accept errors (EMFILE) are logged at most once a minute, as a warning.

    asyncio already backs off a second after each one; its default handler would
    log an error line each time.
    """
    last = [0.0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError):
            now = time.monotonic()
            if "accept" in str(context.get("message", "")) and now - last[0] > 60:
                last[0] = now
                log.warning("cannot accept connections: %s (retrying every second)", error)
            else:
                log.debug("%s: %r", context.get("message"), error)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class Server:
    """The front door as the CLI and the tests drive it: bound at creation, serving on the
    exporter's loop until ``shutdown``."""

    def __init__(self, door: FrontDoor, run: _Runner, addresses: Sequence[tuple[str, int]]) -> None:
        self.door = door
        self._run = run
        self.addresses = list(addresses)
        self._stopped = threading.Event()
        self._closing = threading.Lock()

    @property
    def server_address(self) -> tuple[str, int]:
        """The first address bound (host, port)."""
        return self.addresses[0]

    @property
    def server_port(self) -> int:
        """The first port bound (the real one when asked for port 0)."""
        return self.addresses[0][1]

    def urls(self, path: str) -> list[str]:
        """The URL of ``path`` on every address bound (the real port for port 0)."""
        scheme = "https" if self.door.tls else "http"
        return [
            f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"
            for host, port in self.addresses
        ]

    def serve_forever(self) -> None:
        """Block until ``shutdown`` (serving happens on the loop meanwhile)."""
        self._stopped.wait()

    def shutdown(self) -> None:
        """Stop serving: no new connections, answers in flight finish (briefly)."""
        with self._closing:
            if not self._stopped.is_set():
                self._run(self.door.close())
                self._stopped.set()

    def server_close(self) -> None:
        """As ``socketserver``'s: after ``shutdown`` there is nothing left to close."""
        self.shutdown()


class _Runner(Protocol):
    """Runs a coroutine on the exporter's loop from another thread (``LoopThread.run``)."""

    def __call__(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T: ...


def open_server(
    app: ASGIFramework,
    web: WebConfigFile,
    listen: str | Sequence[str],
    max_connections: int,
    run: _Runner,
) -> Server:
    """Listen on every address (HTTPS when the web config has TLS), serving ``app`` on the
    loop ``run`` reaches from now on; raises OSError or ValueError before serving anything."""
    addresses = [listen] if isinstance(listen, str) else list(listen)
    for address in addresses:
        parse_listen(address)
    # Fixed for the server's life: the listener speaks HTTPS or it does not.
    tls = web.current().tls is not None
    door = FrontDoor(app, web, connection_cap(max_connections), tls=tls)

    async def start() -> list[tuple[str, int]]:
        quiet_accept_errors(asyncio.get_running_loop())
        bound: list[tuple[str, int]] = []
        try:
            for address in addresses:
                bound += await door.listen(address)
        except BaseException:
            await door.close()
            raise
        return bound

    return Server(door, run, run(start()))


__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "HEAD_LIMIT_BYTES",
    "HEAD_TIMEOUT_SECONDS",
    "FrontDoor",
    "Server",
    "connection_cap",
    "open_server",
    "parse_listen",
    "quiet_accept_errors",
]
