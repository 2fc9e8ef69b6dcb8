"""Logging set-up: logfmt or JSON lines as promslog writes them, with secrets scrubbed.

Secrets are kept out of log calls by construction; redaction (``exporter.cec.redact``,
the redactor vendor text goes through too) is a second line of defence that also
covers third-party loggers. A call's context comes as ``extra=fields(...)``.
A line that could come with every request goes through a ``Throttle``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time

from exporter.cec.redact import redact
from exporter.cec.text import utc


def _context(record: logging.LogRecord) -> list[tuple[str, str | int]]:
    """The record's fields (see ``fields``), then its error: integers kept, the rest redacted."""
    pairs: list[tuple[str, str | int]] = []
    for key, value in getattr(record, "fields", {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            pairs.append((key, value))
        elif key == "duration" and isinstance(value, float):
            pairs.append((key, f"{value:.3f}s"))
        else:
            pairs.append((key, redact(str(value))))
    if record.exc_info:
        pairs.append(("error", redact(repr(record.exc_info[1]))))
    return pairs


_BARE = re.compile(r"^[^\s\"=\\]+$")


def _logfmt_value(value: str) -> str:
    """A logfmt value: bare when it can be, else a double-quoted string."""
    return value if _BARE.match(value) else json.dumps(value, ensure_ascii=False)


def _pairs(record: logging.LogRecord) -> list[tuple[str, str | int]]:
    """The keys of a line, in order: time, level, logger, message, then its context."""
    return [
        ("ts", utc(record.created)),
        ("level", _level(record)),
        ("logger", record.name),
        ("msg", redact(record.getMessage())),
        *_context(record),
    ]


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=warn logger=... msg="..." target=...``: one grep-able line per event."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(str(value))}" for key, value in _pairs(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines; the same keys as logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(_pairs(record)), ensure_ascii=False)


def _level(record: logging.LogRecord) -> str:
    """promslog's level names: ``warn``, not Python's ``warning``."""
    return "warn" if record.levelno == logging.WARNING else record.levelname.lower()


# promslog's names first; the older spellings stay accepted as aliases.
LEVELS = ("debug", "info", "warn", "error")
FORMATS = ("logfmt", "json")
LEVEL_ALIASES = {"warning": "warn"}
FORMAT_ALIASES = {"text": "logfmt"}
_PYTHON_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR"}


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Send every log record to stderr in ``fmt``, at ``level`` and above.

    ``level`` and ``fmt`` are the names in LEVELS and FORMATS or their aliases.

    Tracebacks are never printed: the formatters keep one line per event.
    httpx2 and httpcore2 stay at WARNING whatever the level, since their debug
    traces describe requests we already log in a safer form.
    """
    handler = logging.StreamHandler(sys.stderr)
    fmt = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    level = LEVEL_ALIASES.get(level.lower(), level.lower())
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_PYTHON_LEVELS[level])
    for noisy in ("httpx2", "httpcore2", "hpack", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Throttle:
    """Lets a log line that could repeat on every request through once per ``seconds``."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._last = -math.inf
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """True at most once per ``seconds``: log now."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.seconds:
                return False
            self._last = now
            return True
