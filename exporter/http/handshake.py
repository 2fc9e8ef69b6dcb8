"""TLS on an accepted connection: the handshake with the web config's context in force
now, within a deadline, ``client_allowed_sans``, and what a TLS connection may cost.

asyncio's TLS protocol reads into a buffer of its own per connection, 256 KiB by default
(``asyncio.sslproto.SSLProtocol.max_size``): ~290 KiB a connection in all, 580 MiB for
2,000 idle ones. ``TLS_READ_BUFFER_BYTES`` (one TLS record) brings that to ~50 KiB: the
exporter's requests are heads of a few hundred bytes, never bodies worth reading fast.

A failed handshake leaves its error in a reference cycle (the error's traceback holds
the frame that awaited it, which holds the future that holds the error, and the whole
TLS protocol with its buffers: CPython gh-109534, and on the timeout path in 3.13 still),
so each one was kept until the garbage collector's rare full pass, and the memory was
then too scattered to return: 500 handshakes cut at the deadline held +150 MiB a round.
The traceback is dropped as soon as the failure is logged, and the cycle with it.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import asyncio.sslproto
import logging
import ssl

from exporter.http.reliance import Reliance
from exporter.settings import WebConfigFile
from exporter.settings.tls import client_sans

log = logging.getLogger(__name__)

TLS_READ_BUFFER_BYTES = 16 * 1024
"""What asyncio's TLS protocol reads at a time, per connection (its default: 256 KiB)."""
TLS_SHUTDOWN_SECONDS = 5.0
"""How long a closing TLS connection waits for the client's close_notify (asyncio: 30 s)
before its socket is dropped: a client that never sends one held it that long."""

PRIVATE_NAMES = (
    Reliance(asyncio.sslproto.SSLProtocol, "max_size"),
    Reliance(asyncio.sslproto.SSLProtocol, "SSL_SHUTDOWN_TIMEOUT", set_in="__init__"),
)
"""asyncio's names set here: the read buffer's size (a class attribute of a private module)
and the shutdown timeout's default (``asyncio.constants.SSL_SHUTDOWN_TIMEOUT``, read by
``SSLProtocol.__init__`` when no timeout is given, as ``StreamWriter.start_tls`` gives none)."""


class TLSInternalsChanged(ImportError):
    """asyncio's TLS protocol no longer has a name this module sets."""


def tune_asyncio_tls() -> None:
    """Every TLS connection asyncio serves from now on reads ``TLS_READ_BUFFER_BYTES`` at a
    time and waits ``TLS_SHUTDOWN_SECONDS`` at most for the client's close_notify.

    Checked first, so that a Python without these names is refused at start rather than
    silently back at 290 KiB a connection."""
    problems = [problem for reliance in PRIVATE_NAMES if (problem := reliance.problem())]
    if problems or not hasattr(asyncio.constants, "SSL_SHUTDOWN_TIMEOUT"):
        raise TLSInternalsChanged("; ".join(problems) or "asyncio.constants has no timeout")
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
    asyncio.constants.SSL_SHUTDOWN_TIMEOUT = TLS_SHUTDOWN_SECONDS


async def handshake(writer: asyncio.StreamWriter, web: WebConfigFile, timeout: float) -> bool:
    """The TLS handshake on ``writer`` with the context in force now, within ``timeout``
    seconds; False when it failed or the client was refused."""
    tls = web.current().tls
    if tls is None:  # TLS cannot be turned off without a restart: serve nothing
        return False
    peer = writer.get_extra_info("peername")
    try:
        await writer.start_tls(tls.context, ssl_handshake_timeout=timeout)
    except (TimeoutError, OSError) as err:
        log.debug("TLS handshake with %s failed: %r", peer, err)
        err.__traceback__ = None  # the cycle that held the whole connection (above)
        return False
    allowed = tls.client_allowed_sans
    if allowed is None:
        return True
    ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    if ssl_object is None or not client_sans(ssl_object.getpeercert() or {}) & set(allowed):
        log.debug("client %s refused: its certificate has none of client_allowed_sans", peer)
        return False
    return True


__all__ = [
    "PRIVATE_NAMES",
    "TLS_READ_BUFFER_BYTES",
    "TLS_SHUTDOWN_SECONDS",
    "TLSInternalsChanged",
    "handshake",
    "tune_asyncio_tls",
]
