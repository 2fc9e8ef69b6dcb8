"""What a strict HTTP/1.1 server refuses in a request head (RFC 9112), and why.

h11 unfolds obs-fold, takes a bare LF as a line end, lets Transfer-Encoding override a
Content-Length, merges equal Content-Lengths, accepts chunked framing from HTTP/1.0 and
serves any HTTP/x.y as 1.x. Each lets two parsers on one path (a proxy and us) read one
head differently, so such a head gets 400 (505 for another major version). h11 calls
this through the buffer ``exporter.http._hypercorn`` gives it; this module knows
nothing of h11.
"""

from __future__ import annotations

import re

_REQUEST_LINE = re.compile(rb"[^ ]+ [^ ]+ (HTTP/[0-9]\.[0-9])")
_HTTP1 = (b"HTTP/1.1", b"HTTP/1.0")
_LENGTH = b"content-length"


class HeadRefused(ValueError):
    """A head a strict server refuses, and the status it is answered with."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


def strict_head(lines: list[bytearray], taken: int) -> None:
    """Raise HeadRefused for a head (or trailer) of ``lines`` that took
    ``taken`` bytes of the stream, if RFC 9112 lets a server refuse it."""
    # Every line and the blank one after them end in CRLF, or some end in LF.
    if taken != sum(len(line) + 2 for line in lines) + 2:
        raise HeadRefused("bare LF in a request head", 400)
    if any(line[:1] in (bytearray(b" "), bytearray(b"\t")) for line in lines[1:]):
        raise HeadRefused("obs-fold in a request head", 400)
    fields = [bytes(line).partition(b":") for line in lines[1:]]
    names = [name.lower() for name, _, _ in fields]
    lengths = [value.strip() for name, _, value in fields if name.lower() == _LENGTH]
    if len(lengths) > 1 or any(not length.isdigit() for length in lengths):
        raise HeadRefused("not exactly one Content-Length", 400)
    if _LENGTH in names and b"transfer-encoding" in names:
        # RFC 9112 6.1: a server may refuse the pair, the classic smuggling vector.
        raise HeadRefused("Content-Length with Transfer-Encoding", 400)
    # Trailers come through here too: only a request line has a version.
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is not None:
        version = request.group(1)
        if version not in _HTTP1:
            raise HeadRefused("HTTP version not supported", 505)
        if version == b"HTTP/1.0" and b"transfer-encoding" in names:
            raise HeadRefused("Transfer-Encoding in HTTP/1.0", 400)
