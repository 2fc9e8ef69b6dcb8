"""Text the exporter shows: vendor text clipped, secrets redacted, log fields, UTC times.

Every bound on text that reaches a log line, a page or an error is named here, so one
place answers "how long can this get?". Secrets are kept out of text by construction
(the parser drops phone passwords, ``Secret`` never shows its value); redaction is the
second line of defence, for what a vendor echoes back and what third-party code logs.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

VENDOR_TEXT_CHARS = 512
"""Vendor text (``retCode``, ``retMsg``, a transport error's cause) is cut to this where it
is parsed: every copy kept, shown or logged is bounded, whatever the vendor sends."""
TRACE_TEXT_CHARS = 200
"""A ``retMsg`` as one request's line of a collection log shows it."""
ERROR_TEXT_CHARS = 400
"""A collection's error as the landing page, the debug probe and its summary show it."""
RET_CODE_CHARS = 20
"""A ``retCode`` in a log line or a collection log."""
CLIP_MARK = "…"
"""Where ``clip`` cut the text."""

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4
"""Shorter values are not scrubbed: they would mangle ordinary words."""
MAX_SECRETS = 1024
"""Secrets remembered for redaction; past it the least recently registered is forgotten."""


def clip(text: str, limit: int) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (``…`` marks a cut)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 2])
    return shown if len(shown) <= limit else shown[: limit - 1] + CLIP_MARK


# --- the secrets in use ------------------------------------------------------------------------

_secrets: OrderedDict[str, None] = OrderedDict()
"""Registered secrets, least recently registered first."""
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Scrub ``value`` from every log line and vendor text from now on.

    Registering a value again (a token on each target's first use, a secret on each
    read) makes it the newest; past ``MAX_SECRETS`` the least recently registered is
    forgotten, so the ones in use stay known.
    """
    if len(value) < MIN_SECRET_LENGTH:
        return  # too short to scrub without mangling ordinary words
    with _secrets_lock:
        _secrets[value] = None
        _secrets.move_to_end(value)
        while len(_secrets) > MAX_SECRETS:
            _secrets.popitem(last=False)


def known_secrets() -> tuple[str, ...]:
    """Every secret registered and not yet forgotten (app secrets read, tokens used)."""
    with _secrets_lock:
        return tuple(_secrets)


# --- redaction ---------------------------------------------------------------------------------

_LOG_SHAPES = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[^\s\"',]+"),
    # JSON ("password": "x y"), Python reprs ('password': 'x') and key=value forms; not
    # config key paths (``targets[0].app_secret: must be a string``), which hold no value.
    re.compile(
        r"(?i)((?<!\.)[\"']?(?:password|app_secret|access_?token)[\"']?\s*[:=]\s*)"
        r"(?:\"[^\"]*\"|'[^']*'|[^\s\"',}]+)"
    ),
)
_VENDOR_SHAPES = (
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"(?i)(password)[\s\S]*"),  # whatever follows: its value, quoted or not
)


def redact(text: str) -> str:
    """A log line's ``text`` with known secrets and credential-shaped fragments replaced."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _LOG_SHAPES:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return text


def redact_vendor_text(text: str, known: Iterable[str] = ()) -> str:
    """Vendor text with every ``known`` value (token, app key, app secret) and every
    credential shape (``Bearer x``, anything after ``password``) replaced.

    A vendor that echoes the request puts those in ``retMsg`` or an error body; the
    client applies this where that text enters, so every place shows the same text.
    """
    for value in sorted(known, key=len, reverse=True):
        if len(value) < MIN_SECRET_LENGTH:
            continue
        text = text.replace(value, REDACTED)
        text = _redact_cut_end(text, value)
    for shape in _VENDOR_SHAPES:
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


# --- log lines and times -----------------------------------------------------------------------


def fields(**context: object) -> dict[str, object]:
    """``extra=`` for a log call: its context as keys of the line, not words of the message.

    ``log.warning("collection failed", extra=fields(target=name, duration=d))`` writes
    ``msg="collection failed" target=prod duration=0.120s``, so Loki or Elasticsearch
    filter on ``target`` without parsing the message. ``None`` values are left out;
    a ``duration`` given in seconds (a float) is written as ``0.120s``.
    """
    return {"fields": {key: value for key, value in context.items() if value is not None}}


def utc(timestamp: float) -> str:
    """``2026-11-27T13:30:00.123Z``: how log lines and pages write a time."""
    millis = int(timestamp * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{millis:03d}Z"
