"""hypercorn, adjusted: the one module that reaches into hypercorn's, h11's and h2's internals.

The listener (``exporter.http.listener``) admits, counts and TLS-wraps connections and
hands each stream to ``Connections.serve``; from there hypercorn parses and answers,
adjusted here: a strict HTTP/1.1 head (no obs-fold or bare LF, exactly one valid
Content-Length, never with Transfer-Encoding, HTTP/1.x only); no HTTP/2 in clear text; a
head's deadline apart from the idle keep-alive limit; the bytes of an unfinished head
reported to the shared budget (``exporter.http.limits``); HTTP/2 control frames and
request bodies bounded (``_H2Guard``); a client that has half-closed let go after its
last answer; an answer the client reads nothing of for ``write_stall`` s dropped.

That takes names hypercorn, h11 and h2 do not promise (``PRIVATE_NAMES``), and why:

- ``h11._receivebuffer.ReceiveBuffer`` (a private module), its ``maybe_extract_lines``
  and ``__len__``: the strict buffer subclasses it to check each head it extracts.
- ``h11.Connection._receive_buffer``: replaced by the strict buffer on each connection;
  its length is the unfinished head's bytes, and a refused head's are dropped with it.
- ``hypercorn.asyncio.tcp_server.TCPServer``: hypercorn's connection, subclassed and
  built with keyword arguments (its ``__init__`` parameters are checked). ``_read_data``
  is replaced (the protocol adjusted before anything is read; the head's deadline; the
  bytes held; the idle timer stopped once the client has closed); ``protocol_send`` is
  overridden (the write deadline, idle or busy reported, the close after the last
  answer). ``protocol`` (set in ``run``), ``reader``, ``writer``, ``send_lock`` and
  ``idle_task`` (an ``AsyncioSingleTask``: ``stop``) are used by both.
- ``hypercorn.protocol.ProtocolWrapper.protocol``: the H11Protocol or H2Protocol inside.
- ``H11Protocol.connection`` (its h11 connection: the buffer, and pipelined requests
  still unanswered) and ``H11Protocol._check_protocol``, replaced on each connection: it
  is what switches to HTTP/2 on ``Upgrade: h2c`` or a prior-knowledge preface.
- ``H2Protocol._handle_events``, wrapped on each connection (the guard), with
  ``H2Protocol._flush``, ``.streams`` and ``.connection`` (h2's public H2Connection),
  whose ``state_machine`` (not documented) says whether a GOAWAY has ended it.
- ``hypercorn.asyncio.worker_context.WorkerContext`` and its ``terminated`` event, set at
  shutdown so that idle connections close; ``hypercorn.app_wrappers.ASGIWrapper``;
  ``hypercorn.events``' ``Closed``, ``RawData`` (``.data``) and ``Updated`` (``.idle``).

And the ``Config`` settings ``hypercorn_config`` assigns (``SETTINGS``): public, but one
renamed would be assigned all the same, and ignored.

All are checked when this module is imported (``exporter.http.reliance``): a private
module or class that is gone fails the import; ``check_internals`` raises InternalsChanged
for a name gone, a method whose parameters changed, or a hypercorn name our subclass would
hide, with the versions needed (``SUPPORTED``, pyproject's pins) and those installed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from contextlib import suppress

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework
from priority.priority import TooManyStreamsError

from exporter.http.heads import HeadRefused, strict_head
from exporter.http.limits import Limits, Slot
from exporter.http.reliance import Reliance, problems_of, versions_needed

log = logging.getLogger(__name__)

SUPPORTED = {"hypercorn": ">=0.18,<0.19", "h11": ">=0.16,<0.17", "h2": ">=4.1,<5"}
"""The versions this module was written against: pyproject.toml's pins."""


class InternalsChanged(ImportError):
    """The installed hypercorn, h11 or h2 lack (or changed) a name this module relies on."""


def _versions() -> str:
    """The versions needed and those installed, for InternalsChanged's message."""
    return versions_needed(SUPPORTED)


try:  # a private module, and classes that are not part of hypercorn's API
    from h11._receivebuffer import ReceiveBuffer
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.asyncio.worker_context import AsyncioSingleTask, WorkerContext
    from hypercorn.events import Closed, Event, RawData, Updated
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.protocol.h11 import H11Protocol
except ImportError as err:
    raise InternalsChanged(f"{err}: {_versions()}") from err


PRIVATE_NAMES: tuple[Reliance, ...] = (
    Reliance(ReceiveBuffer, "maybe_extract_lines", parameters=()),
    Reliance(ReceiveBuffer, "__len__", parameters=()),
    Reliance(h11.Connection, "_receive_buffer", set_in="__init__"),
    Reliance(
        TCPServer,
        "__init__",
        parameters=("app", "loop", "config", "context", "state", "reader", "writer"),
    ),
    Reliance(TCPServer, "_read_data", parameters=()),
    Reliance(TCPServer, "protocol_send", parameters=("event",)),
    Reliance(TCPServer, "protocol", set_in="run"),
    Reliance(TCPServer, "reader", set_in="__init__"),
    Reliance(TCPServer, "writer", set_in="__init__"),
    Reliance(TCPServer, "send_lock", set_in="__init__"),
    Reliance(TCPServer, "idle_task", set_in="__init__"),
    Reliance(AsyncioSingleTask, "stop", parameters=()),
    Reliance(ProtocolWrapper, "protocol", set_in="__init__"),
    Reliance(H11Protocol, "connection", set_in="__init__"),
    Reliance(H11Protocol, "_check_protocol", parameters=("event",)),
    Reliance(H2Protocol, "_handle_events", parameters=("events",)),
    Reliance(H2Protocol, "_flush", parameters=()),
    Reliance(H2Protocol, "streams", set_in="__init__"),
    Reliance(H2Protocol, "connection", set_in="__init__"),
    Reliance(h2.connection.H2Connection, "state_machine", set_in="__init__"),
    Reliance(WorkerContext, "terminated", set_in="__init__"),
    Reliance(RawData, "data"),
    Reliance(Updated, "idle"),
)
"""Every name of hypercorn's, h11's or h2's used here that they do not promise to keep."""

SETTINGS: tuple[Reliance, ...] = tuple(
    Reliance(HypercornConfig, name)
    for name in (
        "include_server_header",
        "h11_max_incomplete_size",
        "h2_max_header_list_size",
        "keep_alive_timeout",
        "accesslog",
        "errorlog",
    )
)
"""hypercorn's settings ``hypercorn_config`` assigns."""

_OVERRIDDEN = frozenset({"_read_data", "protocol_send"})
"""TCPServer's methods _Connection means to override; any other name both have is a clash."""


# --- strict HTTP/1.1 heads ------------------------------------------------------------


class _StrictBuffer(ReceiveBuffer):
    """h11's receive buffer, with each head it extracts checked by ``strict_head``."""

    def maybe_extract_lines(self) -> list[bytearray] | None:
        size = len(self)
        lines = super().maybe_extract_lines()
        if lines:
            try:
                strict_head(lines, size - len(self))
            except HeadRefused as err:
                raise h11.RemoteProtocolError(str(err), err.status) from None
        return lines


def _h11_of(protocol: H11Protocol | H2Protocol) -> h11.Connection | None:  # HTTP/1.1's
    inner = protocol.connection if isinstance(protocol, H11Protocol) else None
    return inner if isinstance(inner, h11.Connection) else None


async def _plain_http1(_request: h11.Request) -> None:
    """Stands for hypercorn's h2c switch: the request stays an HTTP/1.1 one."""


# --- HTTP/2 -------------------------------------------------------------------------------

_E = h2.events
_PINGS = (_E.RemoteSettingsChanged, _E.SettingsAcknowledged, _E.PingReceived, _E.PingAckReceived)
_CONTROL = (*_PINGS, _E.PriorityUpdated, _E.WindowUpdated, _E.StreamReset, _E.UnknownFrameReceived)
"""Frames that ask for work but no answer: a flood of any of them is ended."""


class _H2Guard:
    """Bounds on an HTTP/2 connection, between h2 and hypercorn's handling of its events.

    Control frames (``_CONTROL``, and empty DATA) draw on a bucket of ``CONTROL_BURST``
    refilled at ``CONTROL_PER_SECOND``: past it, or past hypercorn's 1,000 streams in
    flight, the connection ends with GOAWAY ENHANCE_YOUR_CALM (a debug line only). Body
    data past ``BODY_LIMIT`` bytes, or for a stream already answered, resets the stream
    and reopens only the connection's window: no endpoint reads a body, and an open
    window let a client send without end."""

    CONTROL_BURST = 1000
    CONTROL_PER_SECOND = 100.0
    BODY_LIMIT = 64 * 1024

    def __init__(self, protocol: H2Protocol, end: _Connection) -> None:
        self._protocol, self._end = protocol, end
        self._handle = protocol._handle_events
        self._allowance, self._at = float(self.CONTROL_BURST), time.monotonic()
        self._body: dict[int, int] = {}
        protocol._handle_events = self.handle_events  # type: ignore[method-assign]

    async def handle_events(self, events: list[h2.events.Event]) -> None:
        connection = self._protocol.connection
        for event in events:  # one by one: an earlier event may open the stream
            empty = isinstance(event, h2.events.DataReceived) and not event.flow_controlled_length
            if (isinstance(event, _CONTROL) or empty) and not self._spend():
                return await self._calm("control frames past the budget")
            if isinstance(event, h2.events.DataReceived):
                stream, size = event.stream_id, event.flow_controlled_length
                self._body[stream] = taken = self._body.get(stream, 0) + size
                if stream not in self._protocol.streams or taken > self.BODY_LIMIT:
                    with suppress(h2.exceptions.StreamClosedError):  # reset already
                        connection.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                    connection.acknowledge_received_data(size, stream)  # the connection's only
                    continue
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self._body.pop(event.stream_id, None)
            try:
                await self._handle([event])
            except TooManyStreamsError:  # its stream was made, never started: unmade
                self._protocol.streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                return await self._calm("too many streams in flight")
        await self._protocol._flush()  # the acknowledgements and resets too

    def _spend(self) -> bool:  # one control frame from the bucket; False once it is empty
        now, refill = time.monotonic(), (time.monotonic() - self._at) * self.CONTROL_PER_SECOND
        self._allowance, self._at = min(self.CONTROL_BURST, self._allowance + refill) - 1, now
        return self._allowance >= 0

    async def _calm(self, why: str) -> None:
        log.debug("HTTP/2 connection ended (ENHANCE_YOUR_CALM): %s", why)  # debug: any client
        self._protocol.connection.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        await self._protocol._flush()
        self._end.end()


def _goaway_sent(wrapper: ProtocolWrapper) -> bool:
    """Whether the connection is HTTP/2 and has ended by GOAWAY, either side's."""
    protocol = wrapper.protocol
    closed = h2.connection.ConnectionState.CLOSED
    return isinstance(protocol, H2Protocol) and protocol.connection.state_machine.state is closed


def _adjust(protocol: H11Protocol | H2Protocol, connection: _Connection) -> None:
    """The strict buffer and no h2c switch for HTTP/1.1; the guard for HTTP/2."""
    if (parser := _h11_of(protocol)) is not None and isinstance(protocol, H11Protocol):
        parser._receive_buffer = _StrictBuffer()
        # No HTTP/2 in clear text (h2c upgrade or prior knowledge), as Go's net/http:
        # HTTP/2 is for TLS connections that chose it by ALPN.
        protocol._check_protocol = _plain_http1  # type: ignore[method-assign,assignment]
    elif isinstance(protocol, H2Protocol):
        _H2Guard(protocol, connection)


# --- connections --------------------------------------------------------------------------

_HEAD_REFUSED = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\r\n"
_READ_BYTES = 64 * 1024  # at a time, as hypercorn reads
_LINGER_SECONDS = 1.0
"""How long the last bytes of a connection we end (GOAWAY, 431) may take to leave."""


class _Connection(TCPServer):
    """hypercorn's connection, adjusted, reporting what it does to its admission ``slot``.

    A request head must be complete within ``head_timeout`` of the connection's start or
    of its first byte; between requests it may idle for hypercorn's keep-alive timeout.
    Once the client has closed, it closes after the last answer (not at the timeout)."""

    slot: Slot
    head_timeout: float
    write_stall: float  # seconds an answer may wait for the client to take a byte of it
    _head_due: float | None = None
    _between_requests = False
    _ended = False

    async def _read_data(self) -> None:
        _adjust(self.protocol.protocol, self)  # ``run`` has just made it; nothing is read yet
        self.slot.refuse_head = self._refuse_head
        loop = asyncio.get_running_loop()
        self._head_due = loop.time() + self.head_timeout
        while not self.reader.at_eof() and not self._ended:
            wait = None if self._head_due is None else max(0.0, self._head_due - loop.time())
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_BYTES), wait)
            except (OSError, TimeoutError, ssl.SSLError):
                break
            if data and self._between_requests:  # a next request begins: its head's clock
                self._between_requests = False
                self._head_due = loop.time() + self.head_timeout
                self.slot.active()
            await self.protocol.handle(RawData(data))
            self.slot.held(self._head_bytes())
        await self.protocol.handle(Closed())
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
            return
        if isinstance(event, Updated):
            self._head_due = None  # a head is complete, or an answer done
            self._between_requests = event.idle
            if event.idle:
                self.slot.idle()
                # An answer done, the connection would idle until the keep-alive timeout
                # even when the client has half-closed and no request of its is left.
                if self._client_done():
                    event = Closed()
            else:
                self.slot.active()
        elif isinstance(event, Closed) and not self._ended and _goaway_sent(self.protocol):
            # h2 itself ended it (a protocol error: its GOAWAY is out). hypercorn's close
            # would wait the whole TLS shutdown timeout for a client gone quiet.
            self.end()
        await super().protocol_send(event)

    def end(self) -> None:
        """Stop reading, and close once what is written has gone (or the linger is up)."""
        self._ended = True
        self.writer.transport.close()  # TLS: close_notify, then waits for the client's
        asyncio.get_running_loop().call_later(_LINGER_SECONDS, self.slot.close)

    def _refuse_head(self) -> None:
        """The shared head budget is spent: 431 for this head, its bytes dropped now."""
        if (parser := _h11_of(self.protocol.protocol)) is not None:
            parser._receive_buffer = _StrictBuffer()
        if not self.writer.transport.is_closing():
            self.writer.write(_HEAD_REFUSED)
        self.end()

    def _head_bytes(self) -> int:  # of an incomplete request head (HTTP/1.1)
        parser = _h11_of(self.protocol.protocol)
        return len(parser._receive_buffer) if parser and parser.their_state is h11.IDLE else 0

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
            while not (await asyncio.wait({drained}, timeout=self.write_stall))[0]:
                if transport.get_write_buffer_size() >= left:
                    log.debug("client read nothing for %.0fs: dropped", self.write_stall)
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
        parser = _h11_of(self.protocol.protocol)
        return parser is None or not parser.trailing_data[0]  # pipelined requests unanswered


def check_internals(relied_on: Sequence[Reliance] = PRIVATE_NAMES + SETTINGS) -> None:
    """Raise InternalsChanged naming what the installed hypercorn, h11 and h2 fail of
    ``relied_on``, and any name of theirs that _Connection would hide."""
    if problems := problems_of(relied_on, TCPServer, _Connection, _OVERRIDDEN):
        raise InternalsChanged(f"{'; '.join(problems)}: {_versions()}")


check_internals()


def hypercorn_config(head_limit: int, idle_timeout: float) -> HypercornConfig:
    """hypercorn's settings: a head's size limit, how long a kept-alive connection may idle,
    no ``Server`` header, no logs of its own above debug."""
    config = HypercornConfig()
    config.include_server_header = False
    config.h11_max_incomplete_size = head_limit
    config.h2_max_header_list_size = head_limit
    config.keep_alive_timeout = idle_timeout
    config.accesslog = None
    quiet = logging.getLogger("hypercorn.error")
    quiet.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    config.errorlog = quiet
    return config


class Connections:
    """hypercorn serving one ASGI app's connections, adjusted as above."""

    def __init__(
        self, app: ASGIFramework, limits: Limits, head_limit: int, write_stall: float
    ) -> None:
        self._app = ASGIWrapper(app)
        self._config = hypercorn_config(head_limit, limits.idle_timeout)
        self._context = WorkerContext(None)  # shared: its ``terminated`` reaches every one
        self._head_timeout, self._write_stall = limits.head_timeout, write_stall

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        """HTTP on one accepted stream (TLS already done) until either side closes."""
        connection = _Connection(
            app=self._app,
            loop=asyncio.get_running_loop(),
            config=self._config,
            context=self._context,
            state={},
            reader=reader,
            writer=writer,
        )
        connection.slot = slot
        connection.head_timeout = self._head_timeout
        connection.write_stall = self._write_stall
        try:
            await connection
        finally:  # protocol and connection refer to each other: a cycle, and a 1 MiB head
            del connection.protocol  # in it, held until a full gc pass

    async def close(self) -> None:
        """Tell every connection the server is stopping: idle ones close now."""
        await self._context.terminated.set()


__all__ = [
    "PRIVATE_NAMES",
    "SETTINGS",
    "SUPPORTED",
    "Connections",
    "InternalsChanged",
    "Reliance",
    "check_internals",
    "hypercorn_config",
]
