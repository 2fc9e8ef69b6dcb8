"""The ``--web-config`` file (Prometheus exporter-toolkit format): read, validate, build TLS.

A file that exporter-toolkit accepts is accepted and one it refuses is refused, with
the key path in the error. Where Python's ``ssl`` cannot express a setting exactly
(``RequireAnyClientCert``, several ``curve_preferences``) the file is refused rather
than served with a weaker meaning; README "Security" lists every such case.
``WebConfigFile`` re-reads the file (and the files it names) when they change.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter import yamlfile
from exporter.config import ConfigError

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
"""The file and the certificates it names are looked at no more often than this."""

# Go's crypto/tls names -> OpenSSL's, for every suite tls.CipherSuites() offers up to TLS 1.2.
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are valid names, but neither Go nor Python's ssl lets them be chosen.
_TLS13_CIPHERS = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
# Go's default TLS 1.0-1.2 suites, in its order: used when TLS10/TLS11 is allowed and no
# suites are listed (Python's default list has no SHA-1 suites, which TLS 1.0/1.1 need).
_GO_DEFAULT_CIPHERS = tuple(
    f"TLS_ECDHE_{sign}_WITH_{cipher}"
    for cipher in (
        "AES_128_GCM_SHA256",
        "AES_256_GCM_SHA384",
        "CHACHA20_POLY1305_SHA256",
        "AES_128_CBC_SHA",
        "AES_256_CBC_SHA",
    )
    for sign in ("ECDSA", "RSA")
)
# net/http refuses HTTP/2 over TLS 1.2 without one of these (http2.ConfigureServer).
_HTTP2_REQUIRED = frozenset(
    {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}
)
_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# "RequireClientCert" is upstream's old spelling of RequireAnyClientCert.
_CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_VERIFY_MODES = {
    # Go requests a certificate but never checks it, so it cannot keep anyone out: Python
    # cannot request one without verifying it, so it does not ask (same access decision).
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
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
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS |= {"m": 60.0, "h": 3600.0}


_TLS_FILES = ("cert_file", "key_file", "client_ca_file")
_TLS_STRINGS = ("cert", "key", "client_ca", *_TLS_FILES, "client_auth_type")
KEYS: dict[str, tuple[str, ...]] = {
    "": ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
    "tls_server_config": (
        *_TLS_STRINGS,
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    ),
    "http_server_config": ("http2", "headers"),
    "rate_limit": ("interval", "burst"),
}
"""Every key of the format, per section (README "Security" lists them all)."""


@dataclass(frozen=True)
class TLSConfig:
    """``tls_server_config``, checked, with the server-side context built from it."""

    context: ssl.SSLContext = field(repr=False, compare=False)
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] | None = None
    """When set, a client certificate must carry one of these SANs (checked after the handshake)."""
    files: tuple[str, ...] = ()
    """The files the context was built from (absolute), watched for changes."""


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


# --- reading values the way yaml.v2 fills Go types ------------------------------------------


def _mapping(path: str, raw: object, known: tuple[str, ...] | None) -> dict[Any, Any]:
    """``raw`` as a mapping (null is empty); with ``known``, any other key is an error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path or "(top level)", f"must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if known is not None and key not in known:
            raise ConfigError(f"{path}.{key}" if path else str(key), "unknown key")
    return raw


def _string(path: str, raw: object) -> str:
    """A Go ``string`` field: any scalar as written, null as empty."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    raise ConfigError(path, f"must be a string, got {type(raw).__name__}")


def _strings(path: str, raw: object) -> tuple[str, ...] | None:
    """A Go ``[]string``; None when absent (an empty list is not absent)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError(path, f"must be a list, got {type(raw).__name__}")
    return tuple(_string(f"{path}[{i}]", item) for i, item in enumerate(raw))


def _bool(path: str, raw: object) -> bool:
    """A Go ``bool``: true or false (YAML 1.1 spellings too); null is false."""
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise ConfigError(path, f"must be true or false, got {raw!r}")
    return raw


def _int(path: str, raw: object) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(path, f"must be a whole number, got {raw!r}")
    return raw


def parse_duration(path: str, raw: object) -> float:
    """A Go ``time.Duration`` in seconds: ``"1m30s"``, ``"250ms"``, ``0``; a bare integer is ns."""
    if raw is None:
        return 0.0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw * 1e-9
    text = raw if isinstance(raw, str) else ""
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
    if body == "0":
        return 0.0
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ConfigError(path, f'must be a duration such as "1s" or "250ms", got {raw!r}')
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


# --- the sections ----------------------------------------------------------------------------


def _users(raw: object) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for name, hashed in _mapping("basic_auth_users", raw, None).items():
        user = _string("basic_auth_users", name)
        path = f"basic_auth_users.{user}"
        if not _BCRYPT_HASH.match(_string(path, hashed)):
            # Upstream refuses these at start too (bcrypt.Cost); never echo the value.
            raise ConfigError(
                path, "bad password hash: must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)"
            )
        users[user] = str(hashed).encode()
    return users


def _headers(raw: object) -> dict[str, str]:
    path = "http_server_config.headers"
    headers: dict[str, str] = {}
    for name, value in _mapping(path, raw, None).items():
        key = _string(path, name)
        text = _string(f"{path}.{key}", value)
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
    data = _mapping("rate_limit", raw, KEYS["rate_limit"])
    interval = parse_duration("rate_limit.interval", data.get("interval"))
    burst = _int("rate_limit.burst", data.get("burst"))
    # Upstream: interval 0 disables the limiter; a negative one means "no limit" (rate.Inf).
    return RateLimit(interval, burst) if interval > 0 else None


def _version(path: str, raw: object, default: str) -> ssl.TLSVersion:
    name = default if raw is None else _string(path, raw)
    if name not in _TLS_VERSIONS:
        raise ConfigError(path, f"unknown TLS version: {name} (one of {', '.join(_TLS_VERSIONS)})")
    return _TLS_VERSIONS[name]


def _names(path: str, raw: object, known: Collection[str], what: str) -> tuple[str, ...]:
    names = _strings(path, raw) or ()
    for i, name in enumerate(names):
        if name not in known:
            raise ConfigError(f"{path}[{i}]", f"unknown {what}: {name}")
    return names


@dataclass(frozen=True)
class _TLSFields:
    """``tls_server_config`` as typed values, before any file is looked at."""

    text: Mapping[str, str]
    allowed_sans: tuple[str, ...] | None
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion
    ciphers: tuple[str, ...]
    prefer_server: bool
    curves: tuple[str, ...]

    @classmethod
    def parse(cls, raw: object) -> _TLSFields:
        p = "tls_server_config"
        data = _mapping(p, raw, KEYS[p])
        prefer = data.get("prefer_server_cipher_suites")
        return cls(
            text={k: _string(f"{p}.{k}", data.get(k)) for k in _TLS_STRINGS},
            allowed_sans=_strings(f"{p}.client_allowed_sans", data.get("client_allowed_sans")),
            min_version=_version(f"{p}.min_version", data.get("min_version"), "TLS12"),
            max_version=_version(f"{p}.max_version", data.get("max_version"), "TLS13"),
            ciphers=_names(
                f"{p}.cipher_suites",
                data.get("cipher_suites"),
                {*_CIPHERS, *_TLS13_CIPHERS},
                "cipher",
            ),
            prefer_server=_bool(f"{p}.prefer_server_cipher_suites", prefer)
            if "prefer_server_cipher_suites" in data
            else True,
            curves=_names(
                f"{p}.curve_preferences", data.get("curve_preferences"), _CURVES, "curve"
            ),
        )


def _local_file(path: str, raw: str, folder: Path) -> str:
    """A file named in the config, relative to the config's folder; it must be readable."""
    name = raw if os.path.isabs(raw) else str(folder / raw)
    try:
        with open(name, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(path, f"no such file: {name}") from None
    except OSError as err:
        raise ConfigError(path, f"cannot read {name}: {err.strerror or err}") from None
    return name


@contextmanager
def _pem_file(inline: str, from_file: str | None) -> Iterator[str]:
    """A path holding ``inline`` PEM (``load_cert_chain`` reads only files), gone after.

    On Linux an anonymous in-memory file, so an inline key never touches a disk (and a
    read-only root filesystem does not matter); elsewhere a private (0600) temp file.
    """
    if from_file is not None:
        yield from_file
        return
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("cec-phone-exporter-pem")
        try:
            with open(fd, "w", encoding="utf-8", closefd=False) as out:
                out.write(inline)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(inline)
        yield name
    finally:
        os.unlink(name)


def _client_auth(p: str, tls: _TLSFields, has_ca: bool) -> str:
    """The checked ``client_auth_type``, refusing what Python cannot do as Go does."""
    auth = tls.text["client_auth_type"] or "NoClientCert"
    if auth not in _CLIENT_AUTH_TYPES:
        raise ConfigError(
            f"{p}.client_auth_type",
            f"invalid ClientAuth: {auth} (one of {', '.join(_CLIENT_AUTH_TYPES)})",
        )
    if auth in ("RequireAnyClientCert", "RequireClientCert"):
        raise ConfigError(
            f"{p}.client_auth_type",
            f"{auth} (require a certificate but never verify it) cannot be expressed with "
            "Python's ssl, which verifies every certificate it requires; use "
            "RequireAndVerifyClientCert with client_ca_file",
        )
    if has_ca and auth == "NoClientCert":
        raise ConfigError(
            f"{p}.client_auth_type",
            "client CA's have been configured without a Client Auth Policy: set "
            "client_auth_type (RequireAndVerifyClientCert to check client certificates)",
        )
    if tls.allowed_sans is not None and auth != "RequireAndVerifyClientCert":
        raise ConfigError(
            f"{p}.client_allowed_sans",
            "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert "
            f"(with {auth} a client need not present a certificate to check)",
        )
    return auth


def _protocol(ctx: ssl.SSLContext, p: str, tls: _TLSFields, http2: bool) -> None:
    """Versions, cipher suites, their order and the curve, as Go would negotiate them."""
    if len(tls.curves) > 1:
        raise ConfigError(
            f"{p}.curve_preferences",
            "Python's ssl can restrict key exchange to one curve only; list a single curve "
            "(or none, for the defaults)",
        )
    old_tls = tls.min_version < ssl.TLSVersion.TLSv1_3
    if http2 and tls.ciphers and old_tls and not _HTTP2_REQUIRED & set(tls.ciphers):
        raise ConfigError(
            f"{p}.cipher_suites",
            "TLSConfig.CipherSuites is missing an HTTP/2-required AES_128_GCM_SHA256 cipher "
            "(need TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or "
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, or set http_server_config.http2: false)",
        )
    min_version = tls.min_version
    legacy = min_version < ssl.TLSVersion.TLSv1_2
    suites = [_CIPHERS[c] for c in tls.ciphers if c in _CIPHERS]
    if tls.ciphers and not suites:
        # Only TLS 1.3 suites listed: like Go, nothing is left for TLS 1.2 and below.
        min_version = max(min_version, ssl.TLSVersion.TLSv1_3)
    elif suites or legacy:
        chosen = suites or [_CIPHERS[c] for c in _GO_DEFAULT_CIPHERS]
        # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) above security level 0.
        ctx.set_ciphers(":".join(chosen) + (":@SECLEVEL=0" if legacy else ""))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated
        ctx.minimum_version = min_version
        ctx.maximum_version = tls.max_version
    if tls.prefer_server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curves:
        ctx.set_ecdh_curve(_CURVES[tls.curves[0]])
    # HTTP/2 is offered by ALPN only when http2 is on (upstream's default), as Go does.
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])


def _tls(tls: _TLSFields, folder: Path, http2: bool) -> TLSConfig | None:
    p = "tls_server_config"
    text = tls.text
    if not any(text.values()):
        return None  # upstream: no certificate, key, CA or auth type means plain HTTP
    # Upstream's order of checks, so a file with several faults gets upstream's error.
    for what in ("cert", "key"):
        if text[f"{what}_file"] and text[what]:
            raise ConfigError(f"{p}.{what}", f"give {what} or {what}_file, not both")
        if not text[f"{what}_file"] and not text[what]:
            raise ConfigError(f"{p}.{what}_file", f"missing one of {what} or {what}_file")
    files = {k: _local_file(f"{p}.{k}", text[k], folder) for k in _TLS_FILES if text[k]}
    if "client_ca_file" in files and text["client_ca"]:
        raise ConfigError(f"{p}.client_ca", "give client_ca or client_ca_file, not both")
    auth = _client_auth(p, tls, "client_ca_file" in files or bool(text["client_ca"]))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _protocol(ctx, p, tls, http2)
    try:
        with (
            _pem_file(text["cert"], files.get("cert_file")) as cert,
            _pem_file(text["key"], files.get("key_file")) as key,
        ):
            ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(p, f"failed to load the certificate and key: {err}") from None
    ctx.verify_mode = _VERIFY_MODES[auth]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            if "client_ca_file" in files:
                ctx.load_verify_locations(cafile=files["client_ca_file"])
            elif text["client_ca"]:
                ctx.load_verify_locations(cadata=text["client_ca"])
            else:
                # Go verifies against the system's roots when no client CA is given.
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, OSError) as err:
            where = f"{p}.client_ca_file" if "client_ca_file" in files else f"{p}.client_ca"
            raise ConfigError(where, f"no usable CA certificate: {err}") from None
    return TLSConfig(ctx, auth, tls.allowed_sans, tuple(files.values()))


def parse_web_config(raw: object, folder: Path) -> WebConfig:
    """Validate already-parsed YAML; relative file names are taken from ``folder``.

    The checks run in upstream's order (YAML types, headers, users, then TLS files),
    so a file with several faults is refused for the reason upstream gives.
    """
    data = _mapping("", raw, KEYS[""])
    server = _mapping(
        "http_server_config", data.get("http_server_config"), KEYS["http_server_config"]
    )
    http2 = _bool("http_server_config.http2", server["http2"]) if "http2" in server else True
    tls = _TLSFields.parse(data.get("tls_server_config"))
    rate_limit = _rate_limit(data.get("rate_limit"))
    headers = _headers(server.get("headers"))
    users = _users(data.get("basic_auth_users"))
    return WebConfig(_tls(tls, folder, http2), users, headers, http2, rate_limit)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(path, f"cannot read web config: {err.strerror or err}") from None


def load_web_config(path: str) -> WebConfig:
    """Read and check an exporter-toolkit web config file; raises ``ConfigError``."""
    try:
        raw = yamlfile.load(_read(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "web config is not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            path, f"{where}{getattr(err, 'problem', None) or 'invalid YAML'}"
        ) from None
    except RecursionError:
        raise ConfigError(path, "nested too deeply or refers to itself") from None
    return parse_web_config(raw, Path(path).resolve().parent)


def client_sans(peer: Mapping[str, Any]) -> set[str]:
    """The DNS, e-mail, IP and URI SANs of ``ssl.getpeercert()``, spelled as Go spells them."""
    values: set[str] = set()
    for kind, value in peer.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            values.add(value)
        elif kind == "IP Address":  # OpenSSL writes IPv6 in full, Go compressed
            with suppress(ValueError):
                values.add(str(ipaddress.ip_address(value.strip())))
    return values


# --- the live file ------------------------------------------------------------------------------


class WebConfigFile:
    """The web config as last loaded, re-read when the file or a file it names changes.

    Upstream re-reads the file on every request and connection; here a change is
    looked for at most once per ``RELOAD_CHECK_SECONDS`` (a content hash of every
    file involved). A file that fails to load (broken, missing, or turning TLS on
    or off, which needs a restart) makes ``ok`` False until it is fixed: the web
    layer then fails closed, as upstream does, and one error line says why.
    """

    def __init__(self, path: str | None, config: WebConfig | None = None) -> None:
        self.path = path
        self._config = config if config is not None else WebConfig()
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._fingerprint = self._hash(self._config)
        self._bad_fingerprint: bytes | None = None

    @property
    def ok(self) -> bool:
        """False while the file on disk cannot be loaded (as of the last look)."""
        self.current()
        return self._bad_fingerprint is None

    def _hash(self, config: WebConfig) -> bytes:
        if self.path is None:
            return b""
        digest = hashlib.sha256()
        for name in (self.path, *(config.tls.files if config.tls else ())):
            try:
                digest.update(Path(name).read_bytes())
            except OSError as err:
                digest.update(f"\0unreadable {err.errno}\0".encode())
            digest.update(b"\0" + name.encode() + b"\0")
        return digest.digest()

    def current(self) -> WebConfig:
        """The last config that loaded, after looking for a change if one is due."""
        if self.path is None:
            return self._config
        with self._lock:
            now = time.monotonic()
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return self._config
            self._checked = now
            old = self._config
            fingerprint = self._hash(old)
            if fingerprint == self._bad_fingerprint:
                return old
            if fingerprint == self._fingerprint:
                if self._bad_fingerprint is not None:
                    log.info("web config %s is back as it was; serving again", self.path)
                self._bad_fingerprint = None
                return old
            try:
                new = load_web_config(self.path)
                if (new.tls is None) != (old.tls is None):
                    raise ConfigError(self.path, "turning TLS on or off needs a restart")
            except ConfigError as err:
                # One line, no traceback: the message names the key path.
                log.error(  # noqa: TRY400
                    "web config cannot be loaded; answering 500 on every path but "
                    "/-/healthy and /-/ready until it is fixed: %s",
                    err,
                )
                self._bad_fingerprint = fingerprint
                return old
            # Hashed before loading, so a change made meanwhile is seen next time; the
            # files named may differ now, and then the hash must cover the new ones.
            same_files = (new.tls.files if new.tls else ()) == (old.tls.files if old.tls else ())
            self._fingerprint = fingerprint if same_files else self._hash(new)
            self._bad_fingerprint = None
            self._config = new
            log.info("web config %s reloaded", self.path)
            return new
