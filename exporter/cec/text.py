"""Text the exporter shows: vendor text clipped, log fields, UTC times.

Every bound on text that reaches a log line, a page or an error is named here, so one
place answers "how long can this get?". What text may not show is ``redact``'s job.
"""

from __future__ import annotations

import time

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


def clip(text: str, limit: int) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (``…`` marks a cut)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 2])
    return shown if len(shown) <= limit else shown[: limit - 1] + CLIP_MARK


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
