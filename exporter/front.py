"""The front door: HTTP/1.1 and HTTP/2 by hypercorn, on the exporter's own event loop.

hypercorn (h11 and h2) parses and answers; it was chosen by measurement (README
"Development"). Around it this module adds what a hostile client needs kept in check:
open connections are capped and refused past the cap before anything is read or
parsed; TLS runs per connection with the web config's current context (a renewed
certificate applies to the next connection) and checks ``client_allowed_sans``; and a
request head is strict (no obs-fold, no bare LF) and at most 1 MiB (431).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.events
import h11
from h11._receivebuffer import ReceiveBuffer
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from exporter.webconfig import WebConfigFile, client_sans

log = logging.getLogger(__name__)

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


# --- strict HTTP/1.1 heads ------------------------------------------------------------


_REQUEST_LINE = re.compile(rb"[^ ]+ [^ ]+ (HTTP/[0-9]\.[0-9])")
_HTTP1 = (b"HTTP/1.1", b"HTTP/1.0")
_LENGTH = b"content-length"


class _StrictBuffer(ReceiveBuffer):
    """h11's receive buffer, refusing what RFC 9112 lets a server refuse.

    h11 unfolds obs-fold, takes a bare LF as a line end, lets Transfer-Encoding
    override a Content-Length, merges equal Content-Lengths (and a list of them) into
    one, accepts chunked framing from HTTP/1.0, and serves any HTTP/x.y as 1.x; each
    is a way to make two parsers on one path (a proxy and us) read one head
    differently, so such a head gets 400 (505 for another major version).
    """

    def maybe_extract_lines(self) -> list[bytearray] | None:
        size = len(self._data)
        lines = super().maybe_extract_lines()
        if lines:
            taken = size - len(self._data)
            # Every line and the blank one after them end in CRLF, or some end in LF.
            if taken != sum(len(line) + 2 for line in lines) + 2:
                raise h11.RemoteProtocolError("bare LF in a request head", 400)
            if any(line[:1] in (bytearray(b" "), bytearray(b"\t")) for line in lines[1:]):
                raise h11.RemoteProtocolError("obs-fold in a request head", 400)
            fields = [bytes(line).partition(b":") for line in lines[1:]]
            names = [name.lower() for name, _, _ in fields]
            lengths = [
                value.strip() for name, _, value in fields if name.lower() == b"content-length"
            ]
            if len(lengths) > 1 or any(not length.isdigit() for length in lengths):
                raise h11.RemoteProtocolError("not exactly one Content-Length", 400)
            if _LENGTH in names and b"transfer-encoding" in names:
                # RFC 9112 6.1: a server may refuse the pair, the classic smuggling vector.
                raise h11.RemoteProtocolError("Content-Length with Transfer-Encoding", 400)
            # Trailers come through here too: only a request line has a version.
            request = _REQUEST_LINE.fullmatch(lines[0])
            if request is not None:
                version = request.group(1)
                if version not in _HTTP1:
                    raise h11.RemoteProtocolError("HTTP version not supported", 505)
                if version == b"HTTP/1.0" and b"transfer-encoding" in names:
                    raise h11.RemoteProtocolError("Transfer-Encoding in HTTP/1.0", 400)
        return lines


async def _plain_http1(_request: h11.Request) -> None:
    """Stands for hypercorn's h2c switch: the request stays an HTTP/1.1 one."""


def _ignore_late_data(protocol: H2Protocol) -> None:
    """Let ``protocol`` take body data for a stream already answered.

    A client may still be sending a body when the answer has gone (an early 405 or
    413): hypercorn looks the finished stream up for the data (it does so safely for
    the stream's end only), and the KeyError ends the whole connection with a warning.
    The data is acknowledged, so the connection's flow-control window stays open.
    """
    handle = protocol._handle_events

    async def handle_events(events: list[h2.events.Event]) -> None:
        for event in events:  # one by one: an earlier event may open the stream
            if (
                isinstance(event, h2.events.DataReceived)
                and event.stream_id not in protocol.streams
            ):
                protocol.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            else:
                await handle([event])
        await protocol._flush()  # the acknowledgements too

    protocol._handle_events = handle_events  # type: ignore[method-assign]


class _Connection(TCPServer):
    """hypercorn's connection, with the strict buffer in its HTTP/1.1 parser.

    Once the client has closed, the idle timer is stopped and the connection closes
    after the last answer: hypercorn would otherwise hold the socket open until the
    keep-alive timeout, and a connect-and-close flood would pile up descriptors.
    """

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
            return
        # An answer done, the connection would idle until the keep-alive timeout even
        # when the client has half-closed and no request of its is left: close it now.
        if isinstance(event, Updated) and event.idle and self._client_done():
            event = Closed()
        await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        """hypercorn's write, with a deadline on the client's progress in reading."""
        transport = self.writer.transport
        if transport.is_closing():  # dropped: asyncio warns of writes to a lost socket
            return
        async with self.send_lock:
            self.writer.write(data)
            drained = asyncio.ensure_future(self.writer.drain())
            drained.add_done_callback(lambda done: done.cancelled() or done.exception())
            left = transport.get_write_buffer_size()
            while not (await asyncio.wait({drained}, timeout=WRITE_STALL_SECONDS))[0]:
                if transport.get_write_buffer_size() >= left:
                    log.debug("client read nothing for %.0fs: dropped", WRITE_STALL_SECONDS)
                    transport.abort()
                    break
                left = transport.get_write_buffer_size()
            try:
                await drained
            except (ConnectionError, RuntimeError):
                pass
            else:
                return
        await self.protocol.handle(Closed())

    def _client_done(self) -> bool:
        """Whether the client has sent its last byte and every request in it was taken."""
        if not self.reader.at_eof():
            return False
        inner = self._wrapper.protocol
        if isinstance(inner, H11Protocol) and isinstance(inner.connection, h11.Connection):
            return not inner.connection.trailing_data[0]  # pipelined requests still to answer
        return True

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._wrapper

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        inner = wrapper.protocol
        if isinstance(inner, H11Protocol) and isinstance(inner.connection, h11.Connection):
            inner.connection._receive_buffer = _StrictBuffer()
            # No HTTP/2 in clear text (h2c upgrade or prior knowledge), as Go's net/http:
            # HTTP/2 is for TLS connections that chose it by ALPN.
            inner._check_protocol = _plain_http1  # type: ignore[method-assign,assignment]
        elif isinstance(inner, H2Protocol):
            _ignore_late_data(inner)
        self._wrapper = wrapper


def hypercorn_config() -> HypercornConfig:
    """hypercorn's settings: our limits, no ``Server`` header, no logs of its own above debug."""
    config = HypercornConfig()
    config.include_server_header = False
    config.h11_max_incomplete_size = HEAD_LIMIT_BYTES
    config.h2_max_header_list_size = HEAD_LIMIT_BYTES
    config.keep_alive_timeout = HEAD_TIMEOUT_SECONDS
    config.accesslog = None
    quiet = logging.getLogger("hypercorn.error")
    quiet.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    config.errorlog = quiet
    return config


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
    _config: HypercornConfig = field(default_factory=hypercorn_config)
    _context: WorkerContext = field(default_factory=lambda: WorkerContext(None))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _servers: list[asyncio.Server] = field(default_factory=list)

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
            loop = asyncio.get_running_loop()
            await _Connection(
                ASGIWrapper(_BodyDrained(self.app)),
                loop,
                self._config,
                self._context,
                {},
                reader,
                writer,
            )
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
        await self._context.terminated.set()
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

    def __init__(
        self,
        door: FrontDoor,
        run: Callable[[Coroutine[Any, Any, None]], None],
        addresses: Sequence[tuple[str, int]],
    ) -> None:
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


__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "HEAD_LIMIT_BYTES",
    "HEAD_TIMEOUT_SECONDS",
    "FrontDoor",
    "Server",
    "connection_cap",
    "parse_listen",
    "quiet_accept_errors",
]
