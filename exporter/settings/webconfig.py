"""The ``--web-config`` file, in the Prometheus exporter-toolkit format: read and check it.

A file that exporter-toolkit accepts is accepted and one it refuses is refused, with the
key path in the error; the checks run in upstream's order, so a file with several faults
gets upstream's error. ``settings.tls`` builds the TLS context; ``settings.watch``
re-reads the file when it changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.settings.readers import (
    ConfigError,
    go_bool,
    go_int,
    go_string,
    load_yaml_file,
    mapping,
    parse_duration,
)
from exporter.settings.tls import TLS_KEYS, TLSConfig, TLSFields, build_tls

# Upstream's fixed list (web/handler.go): only these may be set; None = any value.
_EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
KEYS: dict[str, tuple[str, ...]] = {
    "": ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
    "tls_server_config": TLS_KEYS,
    "http_server_config": ("http2", "headers"),
    "rate_limit": ("interval", "burst"),
}
"""Every key of the format, per section."""


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit``: a token bucket refilled one token per ``interval_seconds``."""

    interval_seconds: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """TLS, basic-auth users (bcrypt hashes), extra response headers and the rate limit."""

    tls: TLSConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers; blank ones are left out ("unset if blank")."""
    http2: bool = True
    rate_limit: RateLimit | None = None

    @property
    def max_bcrypt_cost(self) -> int:
        """The highest cost among the users' hashes (0 without users)."""
        return max((int(h[4:6]) for h in self.users.values()), default=0)


# --- the sections ----------------------------------------------------------------------------


def _users(raw: object) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for name, hashed in mapping("basic_auth_users", raw, None).items():
        user = go_string("basic_auth_users", name)
        path = f"basic_auth_users.{user}"
        if not _BCRYPT_HASH.match(go_string(path, hashed)):
            # Upstream refuses these at start too (bcrypt.Cost); never echo the value.
            # Worded without "password": a reload's log line redacts whatever follows it.
            raise ConfigError(
                path, "not a bcrypt hash: must start $2a$, $2b$ or $2y$ and be 60 characters"
            )
        users[user] = str(hashed).encode()
    return users


def _headers(raw: object) -> dict[str, str]:
    path = "http_server_config.headers"
    headers: dict[str, str] = {}
    for name, value in mapping(path, raw, None).items():
        key = go_string(path, name)
        text = go_string(f"{path}.{key}", value)
        if key not in _EXTRA_HEADERS:
            allowed = ", ".join(sorted(_EXTRA_HEADERS))
            raise ConfigError(
                f"{path}.{key}", f"HTTP header {key!r} can not be configured (allowed: {allowed})"
            )
        choices = _EXTRA_HEADERS[key]
        if choices is not None and text not in choices:
            raise ConfigError(
                f"{path}.{key}",
                f"invalid value for {key}: expected one of {', '.join(choices)}, got {text!r}",
            )
        # As Go's Header.Set does: a line break cannot start a header of its own.
        text = text.replace("\r", " ").replace("\n", " ")
        if not _FIELD_VALUE.fullmatch(text):
            # Checked here, not when the first answer is cut off: a header must be
            # Latin-1 without control characters (RFC 9110 field-value).
            raise ConfigError(
                f"{path}.{key}",
                "value must be Latin-1 text without control characters (an HTTP header "
                "value cannot carry it)",
            )
        headers[key] = text
    return headers


def _rate_limit(raw: object) -> RateLimit | None:
    data = mapping("rate_limit", raw, KEYS["rate_limit"])
    interval = parse_duration("rate_limit.interval", data.get("interval"))
    burst = go_int("rate_limit.burst", data.get("burst"))
    # Upstream: interval 0 disables the limiter; a negative one means "no limit" (rate.Inf).
    return RateLimit(interval, burst) if interval > 0 else None


def parse_web_config(raw: object, folder: Path) -> WebConfig:
    """Validate already-parsed YAML; relative file names are taken from ``folder``.

    The checks run in upstream's order (YAML types, headers, users, then TLS files),
    so a file with several faults is refused for the reason upstream gives.
    """
    data = mapping("", raw, KEYS[""])
    server = mapping(
        "http_server_config", data.get("http_server_config"), KEYS["http_server_config"]
    )
    http2 = go_bool("http_server_config.http2", server["http2"]) if "http2" in server else True
    tls = TLSFields.parse(data.get("tls_server_config"))
    rate_limit = _rate_limit(data.get("rate_limit"))
    headers = _headers(server.get("headers"))
    users = _users(data.get("basic_auth_users"))
    return WebConfig(build_tls(tls, folder, http2), users, headers, http2, rate_limit)


def load_web_config(path: str) -> WebConfig:
    """Read and check an exporter-toolkit web config file; raises ``ConfigError``."""
    raw = load_yaml_file(path, "web config")
    try:
        return parse_web_config(raw, Path(path).resolve().parent)
    except RecursionError:  # a self-referencing alias (&a [*a])
        raise ConfigError(path, "nested too deeply or refers to itself") from None
