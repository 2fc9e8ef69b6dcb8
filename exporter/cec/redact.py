"""Vendor text made fit to show: credentials a vendor may echo back are replaced.

A vendor that echoes the request puts the bearer token, the app key, the app secret
or a phone's SIP password in ``retMsg`` or an error body. ``CecClient`` applies this
where that text enters, so the landing page, the debug probe, the logs and
``scrape --debug`` all show the same redacted text. (Clipping vendor text to a bound
is a separate step, in the parser.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from exporter.cec.trace import CLIP_MARK
from exporter.logs import MIN_SECRET_LENGTH, REDACTED

_SHAPES = (
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"(?i)(password)[\s\S]*"),  # whatever follows: its value, quoted or not
)


def redact_vendor_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every ``known`` value (token, app key, app secret) and every
    credential shape (``Bearer x``, anything after ``password``) replaced."""
    for value in sorted(known, key=len, reverse=True):
        if len(value) < MIN_SECRET_LENGTH:
            continue
        text = text.replace(value, REDACTED)
        text = _redact_cut_end(text, value)
    for shape in _SHAPES:
        text = shape.sub(rf"\g<1>{REDACTED}", text)
    return text


def _redact_cut_end(text: str, value: str) -> str:
    """``text`` without a start of ``value`` at its end: vendor text is clipped where it
    is parsed (before this), and the cut may fall inside an echoed secret."""
    body = text.removesuffix(CLIP_MARK)
    tail = body[-(len(value) - 1) :]
    head = value[:MIN_SECRET_LENGTH]
    start = tail.find(head)
    while start != -1:
        if value.startswith(tail[start:]):
            return body[: len(body) - len(tail) + start] + REDACTED + text[len(body) :]
        start = tail.find(head, start + 1)
    return text


__all__ = ["redact_vendor_text"]
