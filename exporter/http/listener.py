"""The listener: accepts connections on the exporter's own event loop, for hypercorn to serve.

hypercorn (h11 and h2) parses and answers (``exporter.http._hypercorn`` holds every
adjustment made to it); it was chosen by measurement (docs/development.md, "HTTP server").
Around it this module adds what a hostile client needs kept in check: each connection is
admitted or refused (``exporter.http.limits``) before anything is read or parsed; TLS runs
per connection with the web config's current context (``exporter.http.handshake``); a
request head is at most 1 MiB (431); an answer the client reads nothing of is dropped;
the memory a burst of connections took is handed back once they are gone.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from exporter.cec.text import fields
from exporter.http._hypercorn import Connections
from exporter.http.handshake import handshake, tune_asyncio_tls
from exporter.http.limits import Admission, Limits, Slot
from exporter.logs import Throttle
from exporter.runtime import return_free_memory
from exporter.settings import WebConfigFile

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HEAD_LIMIT_BYTES = 1 << 20
"""A request head (request line and every header) is at most this long, or 431."""
WRITE_STALL_SECONDS = 30.0
"""An answer of which the client takes no byte for this long is dropped with its
connection: a client that reads nothing would hold both, and the unsent answer in
memory (4 MB for 50,000 series), for good."""
FD_RESERVE = 64
"""Descriptors kept free of connections: targets' sockets, files, the log."""
GRACE_SECONDS = 3.0
"""At shutdown, how long answers in flight may take to finish."""
READ_BYTES = 16 * 1024
"""Read from a socket at a time, and buffered before reading pauses (twice this): asyncio
reads 256 KiB at a time, and 300 clients sending heads held 100 MiB in read buffers."""
TRIM_SECONDS = 1.0
"""Freed memory is handed back at most this often, and only after connections closed."""


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


class _Admitted(asyncio.StreamReaderProtocol):
    """A connection, admitted (or refused) as it is accepted, counted until it closes."""

    def __init__(self, door: FrontDoor) -> None:
        super().__init__(asyncio.StreamReader(limit=READ_BYTES), door.handle)
        self._door = door
        self.slot: Slot | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.slot = self._door.admission.admit(address, transport.abort)
        if self.slot is None:  # refused: nothing read, nothing answered
            transport.abort()
            return
        if isinstance(getattr(transport, "max_size", None), int):  # asyncio's recv() size
            transport.max_size = READ_BYTES  # type: ignore[attr-defined]
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.slot.closed()
            self._door.closed()
            # As an end of input, not an error: an error kept in the reader refers to the
            # frames that read it, a cycle that held the reader's buffer to a full gc.
            super().connection_lost(None)


@dataclass
class FrontDoor:
    """Accepts connections for one ASGI app, within ``limits``."""

    app: ASGIFramework
    web: WebConfigFile
    limits: Limits = field(default_factory=Limits)
    tls: bool = False
    admission: Admission = field(init=False)
    _http: Connections = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _trim: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.admission = Admission(self.limits.max_connections, self.limits.max_per_client)
        # Read now, not at import, so that a test can shorten them.
        self._http = Connections(
            _BodyDrained(self.app), self.limits, HEAD_LIMIT_BYTES, WRITE_STALL_SECONDS
        )

    @property
    def open(self) -> int:
        """Connections open now."""
        return self.admission.open

    async def listen(self, address: str) -> list[tuple[str, int]]:
        """Start listening on ``address``; the (host, port) pairs actually bound."""
        host, port = parse_listen(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Admitted(self), host, port, backlog=1024)
        self._servers.append(server)
        return [sock.getsockname()[:2] for sock in server.sockets]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One admitted connection: TLS if configured, then HTTP until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        protocol = writer.transport.get_protocol()
        assert isinstance(protocol, _Admitted)
        assert protocol.slot is not None
        try:
            if self.tls and not await handshake(writer, self.web, self.limits.head_timeout):
                return
            await self._http.serve(reader, writer, protocol.slot)
        except OSError as err:  # a client that goes away is routine
            log.debug("connection dropped: %r", err)
        except Exception as err:  # noqa: BLE001  # hypercorn's, on input it did not expect
            log.warning("connection ended by an unexpected error: %r", err)
        finally:
            writer.transport.abort()
            self._tasks.discard(task)
            # Here, not only when the connection is lost: after a failed TLS handshake
            # asyncio tells the protocol nothing, and the slot would be held for good.
            protocol.slot.closed()
            self.closed()

    def closed(self) -> None:
        """A connection is gone: hand its memory back soon (once for a burst of them)."""
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_SECONDS, self._trimmed)

    def _trimmed(self) -> None:
        self._trim = None
        return_free_memory()

    async def close(self) -> None:
        """Stop accepting, close idle connections, let answers in flight finish (briefly)."""
        for server in self._servers:
            server.close()
        await self._http.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=GRACE_SECONDS)
        for server in self._servers:
            await server.wait_closed()
        if self._trim is not None:
            self._trim.cancel()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Accept errors (EMFILE) are logged at most once a minute, as a warning.

    asyncio already backs off a second after each one; its default handler would
    log an error line each time.
    """
    throttle = Throttle(60.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError):
            if "accept" in str(context.get("message", "")) and throttle.ready():
                log.warning(
                    "cannot accept connections; retrying every second",
                    extra=fields(error=error),
                )
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
    limits: Limits,
    run: _Runner,
) -> Server:
    """Listen on every address (HTTPS when the web config has TLS), serving ``app`` on the
    loop ``run`` reaches from now on; raises OSError or ValueError before serving anything."""
    addresses = [listen] if isinstance(listen, str) else list(listen)
    for address in addresses:
        parse_listen(address)
    tune_asyncio_tls()
    cap = connection_cap(limits.max_connections)
    limits = replace(limits, max_connections=cap, max_per_client=min(limits.max_per_client, cap))
    # Fixed for the server's life: the listener speaks HTTPS or it does not.
    door = FrontDoor(app, web, limits, tls=web.current().tls is not None)

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
    "HEAD_LIMIT_BYTES",
    "FrontDoor",
    "Limits",
    "Server",
    "connection_cap",
    "open_server",
    "parse_listen",
    "quiet_accept_errors",
]
