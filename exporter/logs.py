"""Logging set-up: logfmt or JSON lines as promslog writes them, with secrets scrubbed.

Secrets are kept out of log calls by construction; the redacting filter is a
second line of defence that also covers third-party loggers. Every secret the
exporter learns (app secrets, access tokens) is registered here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict

REDACTED = "<redacted>"
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[^\s\"',]+"),
    # JSON ("password": "x y"), Python reprs ('password': 'x') and key=value forms; not
    # config key paths (``targets[0].app_secret: must be a string``), which hold no value.
    re.compile(
        r"(?i)((?<!\.)[\"']?(?:password|app_secret|access_?token)[\"']?\s*[:=]\s*)"
        r"(?:\"[^\"]*\"|'[^']*'|[^\s\"',}]+)"
    ),
)
_secrets: OrderedDict[str, None] = OrderedDict()
"""Registered secrets, least recently registered first."""
_secrets_lock = threading.Lock()
_MAX_SECRETS = 1024
MIN_SECRET_LENGTH = 4
"""Shorter values are not scrubbed: they would mangle ordinary words."""


def register_secret(value: str) -> None:
    """Scrub ``value`` from every log line from now on.

    Registering a value again (a token on each target's first use, a secret on each
    read) makes it the newest; past ``_MAX_SECRETS`` the least recently registered is
    forgotten, so the ones in use stay known.
    """
    if len(value) < MIN_SECRET_LENGTH:
        return  # too short to scrub without mangling ordinary words
    with _secrets_lock:
        _secrets[value] = None
        _secrets.move_to_end(value)
        while len(_secrets) > _MAX_SECRETS:
            _secrets.popitem(last=False)


def known_secrets() -> tuple[str, ...]:
    """Every secret registered and not yet forgotten (app secrets read, tokens used)."""
    with _secrets_lock:
        return tuple(_secrets)


def redact(text: str) -> str:
    """``text`` with known secrets and credential-shaped fragments replaced."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return text


def fields(**context: object) -> dict[str, object]:
    """``extra=`` for a log call: its context as keys of the line, not words of the message.

    ``log.warning("collection failed", extra=fields(target=name, duration=d))`` writes
    ``msg="collection failed" target=prod duration=0.120s``, so Loki or Elasticsearch
    filter on ``target`` without parsing the message. ``None`` values are left out;
    a ``duration`` given in seconds (a float) is written as ``0.120s``.
    """
    return {"fields": {key: value for key, value in context.items() if value is not None}}


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
        ("ts", _timestamp(record.created)),
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


def _timestamp(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


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
