"""hypercorn, adjusted: the one module that reaches into hypercorn's and h11's internals.

The listener (``exporter.http.listener``) accepts, counts and TLS-wraps connections and
hands each stream to ``Connections.serve``; from there hypercorn parses and answers,
adjusted here: a strict HTTP/1.1 head (no obs-fold or bare LF, exactly one valid
Content-Length, never with Transfer-Encoding, HTTP/1.x only); no HTTP/2 in clear text;
HTTP/2 body data for a stream already answered is acknowledged and dropped; a client
that has half-closed is let go after its last answer; an answer the client reads nothing
of for ``write_stall`` seconds is dropped with its connection.

That takes names hypercorn and h11 do not promise (``PRIVATE_NAMES``), and why:

- ``h11._receivebuffer.ReceiveBuffer`` (a private module), its ``maybe_extract_lines``
  and ``__len__``: the strict buffer subclasses it to check each head it extracts.
- ``h11.Connection._receive_buffer``: replaced by the strict buffer on each connection.
- ``hypercorn.asyncio.tcp_server.TCPServer``: hypercorn's connection, subclassed and
  built with keyword arguments (its ``__init__`` parameters are checked). ``_read_data``
  is overridden (to adjust the protocol before anything is read, and to stop the idle
  timer once the client has closed); ``protocol_send`` too (the write deadline, and the
  close after the last answer). ``protocol`` (set in ``run``), ``reader``, ``writer``,
  ``send_lock`` and ``idle_task`` (an ``AsyncioSingleTask``: ``stop``) are used by both.
- ``hypercorn.protocol.ProtocolWrapper.protocol``: the H11Protocol or H2Protocol inside.
- ``H11Protocol.connection`` (its h11 connection: the buffer, and pipelined requests
  still unanswered) and ``H11Protocol._check_protocol``, replaced on each connection: it
  is what switches to HTTP/2 on ``Upgrade: h2c`` or a prior-knowledge preface.
- ``H2Protocol._handle_events``, wrapped on each connection (late body data), with
  ``H2Protocol._flush``, ``.streams`` and ``.connection`` (h2's public H2Connection).
- ``hypercorn.asyncio.worker_context.WorkerContext`` and its ``terminated`` event, set at
  shutdown so that idle connections close; ``hypercorn.app_wrappers.ASGIWrapper``;
  ``hypercorn.events``' ``Closed``, ``RawData`` (``.data``) and ``Updated`` (``.idle``).

And the ``Config`` settings ``hypercorn_config`` assigns (``SETTINGS``): public, but one
hypercorn renamed would be assigned all the same, and ignored.

All are checked when this module is imported, so that an upgrade is refused at start
rather than found out per connection, or never: a private module or class that is gone
fails the import; ``check_internals`` raises InternalsChanged for a name that is gone, a
method whose parameters changed, or a hypercorn name our subclass would now hide, naming
it with the versions needed (``SUPPORTED``, pyproject's pins) and those installed. An
instance attribute, which no instance has before a connection, is looked for in the code
of the method that sets it.

The ASGI type aliases are hypercorn's public ``hypercorn.typing``: imported where they
are used, not re-exported from here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import h2.events
import h11
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework

log = logging.getLogger(__name__)

SUPPORTED = {"hypercorn": ">=0.18,<0.19", "h11": ">=0.16,<0.17", "h2": ">=4.1,<5"}
"""The versions this module was written against: pyproject.toml's pins."""


class InternalsChanged(ImportError):
    """The installed hypercorn or h11 lack (or changed) a name this module relies on."""


def _versions() -> str:
    """The versions needed and those installed, for InternalsChanged's message."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    needed = ", ".join(f"{name}{pins}" for name, pins in SUPPORTED.items())
    found = ", ".join(f"{name} {installed(name)}" for name in SUPPORTED)
    return f"cec-phone-exporter needs {needed} (installed: {found})"


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


@dataclass(frozen=True)
class Reliance:
    """A name of hypercorn's or h11's this module relies on, and how it is checked.

    A method, class attribute or field is looked up on ``owner``; an instance attribute
    among the names the code of ``set_in``, the method that sets it, uses. A method that
    is called, overridden or replaced must still take ``parameters`` after ``self`` (any
    further one with a default), or our calls and overrides would break per connection.
    """

    owner: type
    name: str
    set_in: str = ""
    parameters: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def problem(self) -> str | None:
        """What is wrong with the installed packages' ``owner.name``, or None."""
        if self.set_in:
            code = getattr(getattr(self.owner, self.set_in, None), "__code__", None)
            if code is None or self.name not in code.co_names:
                return f"{self} (set in {self.set_in}) is gone"
            return None
        if not (hasattr(self.owner, self.name) or self.name in inspect.get_annotations(self.owner)):
            return f"{self} is gone"
        if self.parameters is None:
            return None
        try:
            signature = inspect.signature(getattr(self.owner, self.name))
        except (TypeError, ValueError):
            return f"{self} is no longer a method"
        taken = list(signature.parameters.values())[1:]  # after self
        names = tuple(parameter.name for parameter in taken)
        further = taken[len(self.parameters) :]
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if names[: len(self.parameters)] != self.parameters or any(
            parameter.default is parameter.empty and parameter.kind not in variadic
            for parameter in further
        ):
            return f"{self} takes ({', '.join(names)}), not ({', '.join(self.parameters)})"
        return None


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
    Reliance(WorkerContext, "terminated", set_in="__init__"),
    Reliance(RawData, "data"),
    Reliance(Updated, "idle"),
)
"""Every name of hypercorn's or h11's used here that they do not promise to keep."""

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
        size = len(self)
        lines = super().maybe_extract_lines()
        if lines:
            taken = size - len(self)
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


def _adjust(protocol: H11Protocol | H2Protocol) -> None:
    """The strict buffer and no h2c switch for HTTP/1.1; the late-data filter for HTTP/2."""
    if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, h11.Connection):
        protocol.connection._receive_buffer = _StrictBuffer()
        # No HTTP/2 in clear text (h2c upgrade or prior knowledge), as Go's net/http:
        # HTTP/2 is for TLS connections that chose it by ALPN.
        protocol._check_protocol = _plain_http1  # type: ignore[method-assign,assignment]
    elif isinstance(protocol, H2Protocol):
        _ignore_late_data(protocol)


# --- connections --------------------------------------------------------------------------


class _Connection(TCPServer):
    """hypercorn's connection, its protocol adjusted, with a deadline on writes.

    Once the client has closed, the idle timer is stopped and the connection closes
    after the last answer: hypercorn would otherwise hold the socket open until the
    keep-alive timeout, and a connect-and-close flood would pile up descriptors.
    """

    write_stall: float
    """Seconds an answer may wait for the client to take a byte of it."""

    async def _read_data(self) -> None:
        _adjust(self.protocol.protocol)  # ``run`` has just made it; nothing is read yet
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
        inner = self.protocol.protocol
        if isinstance(inner, H11Protocol) and isinstance(inner.connection, h11.Connection):
            return not inner.connection.trailing_data[0]  # pipelined requests still to answer
        return True


def check_internals(relied_on: Sequence[Reliance] = PRIVATE_NAMES + SETTINGS) -> None:
    """Raise InternalsChanged naming what the installed hypercorn and h11 fail of
    ``relied_on``, and any name of theirs that _Connection would hide."""
    problems = [problem for reliance in relied_on if (problem := reliance.problem())]
    theirs = set(dir(TCPServer)) | set(TCPServer.__init__.__code__.co_names)
    ours = set(vars(_Connection)) | set(inspect.get_annotations(_Connection))
    problems += [
        f"{TCPServer.__module__}.TCPServer.{name} is new: _Connection's {name} would hide it"
        for name in sorted(ours & theirs - _OVERRIDDEN)
        if not name.startswith("__")
    ]
    if problems:
        raise InternalsChanged(f"{'; '.join(problems)}: {_versions()}")


check_internals()


def hypercorn_config(head_limit: int, head_timeout: float) -> HypercornConfig:
    """hypercorn's settings: the head's size and time limits (``head_timeout`` is also the
    keep-alive), no ``Server`` header, no logs of its own above debug."""
    config = HypercornConfig()
    config.include_server_header = False
    config.h11_max_incomplete_size = head_limit
    config.h2_max_header_list_size = head_limit
    config.keep_alive_timeout = head_timeout
    config.accesslog = None
    quiet = logging.getLogger("hypercorn.error")
    quiet.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    config.errorlog = quiet
    return config


class Connections:
    """hypercorn serving one ASGI app's connections, adjusted as above."""

    def __init__(self, app: ASGIFramework, head_limit: int, head_timeout: float) -> None:
        self._app = ASGIWrapper(app)
        self._config = hypercorn_config(head_limit, head_timeout)
        self._context = WorkerContext(None)  # shared: its ``terminated`` reaches every one

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, write_stall: float
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
        connection.write_stall = write_stall
        await connection

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
