"""Logging set-up: logfmt-style text or JSON lines, with secrets scrubbed.

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
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MAX_SECRETS = 1024
_MIN_SECRET_LENGTH = 4


def register_secret(value: str) -> None:
    """Scrub ``value`` from every log line from now on."""
    if len(value) < _MIN_SECRET_LENGTH:
        return  # too short to scrub without mangling ordinary words
    with _secrets_lock:
        if len(_secrets) >= _MAX_SECRETS:
            _secrets.clear()  # old tokens; current ones are registered again on use
        _secrets.add(value)


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


class _TextFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."``: one grep-able line per event."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        line = (
            f"ts={_timestamp(record.created)} level={record.levelname.lower()} "
            f"logger={record.name} msg={json.dumps(message, ensure_ascii=False)}"
        )
        if record.exc_info:
            error = record.exc_info[1]
            line += f" error={json.dumps(redact(repr(error)), ensure_ascii=False)}"
        return line


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["error"] = redact(repr(record.exc_info[1]))
        return json.dumps(entry, ensure_ascii=False)


def _timestamp(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to stderr in ``fmt``, at ``level`` and above.

    Tracebacks are never printed: the formatters keep one line per event.
    httpx2 and httpcore2 stay at WARNING whatever the level, since their debug
    traces describe requests we already log in a safer form.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx2", "httpcore2", "hpack", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
