"""``tls_server_config`` as Go's crypto/tls would serve it, in Python's ``ssl``.

Go's cipher-suite, curve and version names become OpenSSL's; where Python's ``ssl``
cannot express a setting exactly (``RequireAnyClientCert``, several
``curve_preferences``) the file is refused with the key path, rather than served
with a weaker meaning. Files named are read relative to the web config's folder.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.settings.readers import ConfigError, go_bool, go_string, go_strings, mapping

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
_TLS_FILES = ("cert_file", "key_file", "client_ca_file")
_TLS_STRINGS = ("cert", "key", "client_ca", *_TLS_FILES, "client_auth_type")
TLS_KEYS = (
    *_TLS_STRINGS,
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
"""Every key of ``tls_server_config``."""


@dataclass(frozen=True)
class TLSConfig:
    """``tls_server_config``, checked, with the server-side context built from it."""

    context: ssl.SSLContext = field(repr=False, compare=False)
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] | None = None
    """When set, a client certificate must carry one of these SANs (checked after the handshake)."""
    files: tuple[str, ...] = ()
    """The files the context was built from (absolute), watched for changes."""


def _version(path: str, raw: object, default: str) -> ssl.TLSVersion:
    name = default if raw is None else go_string(path, raw)
    if name not in _TLS_VERSIONS:
        raise ConfigError(path, f"unknown TLS version: {name} (one of {', '.join(_TLS_VERSIONS)})")
    return _TLS_VERSIONS[name]


def _names(path: str, raw: object, known: Collection[str], what: str) -> tuple[str, ...]:
    names = go_strings(path, raw) or ()
    for i, name in enumerate(names):
        if name not in known:
            raise ConfigError(f"{path}[{i}]", f"unknown {what}: {name}")
    return names


@dataclass(frozen=True)
class TLSFields:
    """``tls_server_config`` as typed values, before any file is looked at."""

    text: Mapping[str, str]
    allowed_sans: tuple[str, ...] | None
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion
    ciphers: tuple[str, ...]
    prefer_server: bool
    curves: tuple[str, ...]

    @classmethod
    def parse(cls, raw: object) -> TLSFields:
        p = "tls_server_config"
        data = mapping(p, raw, TLS_KEYS)
        prefer = data.get("prefer_server_cipher_suites")
        return cls(
            text={k: go_string(f"{p}.{k}", data.get(k)) for k in _TLS_STRINGS},
            allowed_sans=go_strings(f"{p}.client_allowed_sans", data.get("client_allowed_sans")),
            min_version=_version(f"{p}.min_version", data.get("min_version"), "TLS12"),
            max_version=_version(f"{p}.max_version", data.get("max_version"), "TLS13"),
            ciphers=_names(
                f"{p}.cipher_suites",
                data.get("cipher_suites"),
                {*_CIPHERS, *_TLS13_CIPHERS},
                "cipher",
            ),
            prefer_server=go_bool(f"{p}.prefer_server_cipher_suites", prefer)
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


def _client_auth(p: str, tls: TLSFields, has_ca: bool) -> str:
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


def _protocol(ctx: ssl.SSLContext, p: str, tls: TLSFields, http2: bool) -> None:
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


def build_tls(tls: TLSFields, folder: Path, http2: bool) -> TLSConfig | None:
    """The server's TLS settings and context, or None for plain HTTP (no key material given)."""
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
