"""The config file: YAML into a frozen ``Config`` of ``TargetConfig`` records.

Every error names its key path (``targets[1].page_size: must be 1..100, got 500``)
so an operator can fix the file without reading code. Secrets are kept in a
``Secret`` whose ``repr`` never shows the value, and an error never echoes a
value that may be one (see ``_shown``).
"""

from __future__ import annotations

import errno
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from exporter.cec.redact import REDACTED
from exporter.cec.target import Secret, TargetConfig
from exporter.cec.upstream import DEFAULT_MAX_INFLIGHT_REQUESTS
from exporter.settings.readers import ConfigError, join, load_yaml_file, mapping, why_unreadable

_T = TypeVar("_T")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TARGET_NAME = re.compile(r"^[a-zA-Z0-9_.-]+$")
# Everything from after a scheme-ish prefix ("http://", "http:/", "http//") up to
# the last "@": the userinfo of a URL, however mistyped the rest is.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:?/+)?.*@", re.DOTALL)


class _FromEnv(str):
    """A string that ``${VAR}`` expansion produced: errors name the variables, not the value."""

    variables: tuple[str, ...] = ()


def _shown(raw: object) -> str:
    """How an error shows a rejected value without leaking a secret.

    A value from the environment may be a secret (``${CEC_APP_SECRET}`` in the wrong
    key), so only its variables are named; URL credentials are always cut out.
    """
    if isinstance(raw, _FromEnv):
        return (
            "the value from " + ", ".join(f"${{{name}}}" for name in raw.variables) + " (not shown)"
        )
    if isinstance(raw, str):
        return repr(_USERINFO.sub(r"\g<1>***@", raw))
    return repr(raw)


@dataclass(frozen=True)
class Config:
    """The whole validated config: the targets, in file order, and exporter-wide limits."""

    targets: tuple[TargetConfig, ...]
    source: str = ""
    max_inflight_requests: int = DEFAULT_MAX_INFLIGHT_REQUESTS
    """Requests in flight at once across every target (bounds sockets and vendor load)."""

    def target(self, name: str) -> TargetConfig | None:
        """The target called ``name``, or None."""
        return next((t for t in self.targets if t.name == name), None)

    @property
    def target_names(self) -> list[str]:
        """Names of the configured targets, in file order."""
        return [t.name for t in self.targets]

    @property
    def files(self) -> tuple[str, ...]:
        """The config file and every file it names (secret files, CA files), each once:
        what a reload reads, so what ``--config.auto-reload-interval`` watches."""
        named = [self.source] if self.source else []
        for target in self.targets:
            named += [f for f in (target.app_secret.file, target.ca_file) if f is not None]
        return tuple(dict.fromkeys(named))


# --- scalar checkers: each takes (path, raw value) and returns the typed value ---


def _number(path: str, raw: object, kind: Callable[[str], _T]) -> _T:
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        try:
            return kind(str(raw).strip())
        except ValueError:
            pass
    raise ConfigError(path, f"must be a number, got {_shown(raw)}")


def _number_shown(raw: object, value: float) -> str:
    """A rejected number as an error shows it: from ``${VAR}``, the variable, not the value."""
    if isinstance(raw, _FromEnv):
        return _shown(raw)
    return str(value) if isinstance(value, int) else f"{value:g}"


def _int_in(low: int, high: int) -> Callable[[str, object], int]:
    def check(path: str, raw: object) -> int:
        number = _number(path, raw, float)
        if not number.is_integer():
            raise ConfigError(path, f"must be a whole number, got {_shown(raw)}")
        value = int(number)
        if not low <= value <= high:
            raise ConfigError(path, f"must be {low}..{high}, got {_number_shown(raw, value)}")
        return value

    return check


def _float_in(low: float, high: float) -> Callable[[str, object], float]:
    def check(path: str, raw: object) -> float:
        value = _number(path, raw, float)
        if not low <= value <= high:  # also rejects NaN
            raise ConfigError(path, f"must be {low:g}..{high:g}, got {_number_shown(raw, value)}")
        return value

    return check


def _timeout(path: str, raw: object) -> float:
    value = _number(path, raw, float)
    if not 0 < value <= 600:
        raise ConfigError(
            path, f"must be more than 0 and at most 600, got {_number_shown(raw, value)}"
        )
    return value


def _bool(path: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ConfigError(path, f"must be true or false, got {_shown(raw)}")


def _string(path: str, raw: object) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ConfigError(path, f"must be a string, got {type(raw).__name__}")
    value = str(raw).strip()
    if not value:
        raise ConfigError(path, "must not be empty")
    return value


def _optional(check: Callable[[str, object], _T]) -> Callable[[str, object], _T | None]:
    def optional(path: str, raw: object) -> _T | None:
        return None if raw is None else check(path, raw)

    return optional


def _http_url(path: str, raw: object) -> str:
    value = _string(path, raw)
    try:
        parts = urlsplit(value)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(path, f"is not a valid URL: {err}") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(path, "must not carry credentials")  # and never echo them
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            path, f"must be an http:// or https:// URL with a host, got {_shown(raw)}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(path, "must not carry a query or fragment")
    try:
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as err:
        raise ConfigError(path, f"has a bad port: {err}") from None
    # One spelling per URL: scheme and host compared case-insensitively, a trailing "/"
    # ignored, so ``HTTP://Host/`` shares pools, budgets and tokens with ``http://host``.
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _readable_file(path: str, raw: object) -> str:
    value = _string(path, raw)
    try:
        with open(value, "rb"):
            pass
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):  # it exists: a path, not a pasted secret
            raise ConfigError(path, f"cannot read {value}: {why_unreadable(err)}") from None
        # Not the name: what fails to open may be the secret itself, pasted as a path.
        reason = why_unreadable(err)
        raise ConfigError(path, f"cannot read the file named there: {reason}") from None
    return value


def _ca_file(path: str, raw: object) -> str:
    value = _readable_file(path, raw)
    try:
        ssl.create_default_context(cafile=value)
    except (ssl.SSLError, OSError, ValueError) as err:
        raise ConfigError(path, f"{value} holds no usable CA certificate: {err}") from None
    return value


def _target_name(path: str, raw: object) -> str:
    value = _string(path, raw)
    if not _TARGET_NAME.match(value):
        raise ConfigError(path, f"must match [a-zA-Z0-9_.-]+, got {_shown(raw)}")
    return value


# Settings that may appear under ``defaults`` and be overridden per target.
_SETTINGS: dict[str, Callable[[str, object], Any]] = {
    "timeout_seconds": _timeout,
    "page_size": _int_in(1, 100),
    "max_concurrency": _int_in(1, 64),
    "max_pages": _int_in(1, 100_000),
    "token_lifetime_seconds": _int_in(60, 3600),
    "cache_ttl_seconds": _float_in(0, 86_400),
    "verify_tls": _bool,
    "ca_file": _optional(_ca_file),
    "proxy": _optional(_http_url),
    "pagination_as_strings": _bool,
    "per_phone_metrics": _bool,
    "max_response_bytes": _int_in(1024, 1024**3),
    "requests_per_second": _float_in(0, 100_000),
}
_IDENTITY = ("name", "base_url", "app_key", "app_secret", "app_secret_file", "tenant_space_id")
_TOP_LEVEL = ("defaults", "targets", "max_inflight_requests")


def expand_env(
    node: object,
    path: str,
    environ: Mapping[str, str],
    _done: dict[int, object] | None = None,
) -> object:
    """Replace ``${VAR}`` in every string scalar; an unset variable is an error.

    A node shared through YAML aliases is expanded once, so an alias bomb
    (``&a [x, x], &b [*a, *a], ...``) costs its size in the file, not its expansion.
    """
    done = {} if _done is None else _done
    if isinstance(node, (dict, list)) and id(node) in done:
        return done[id(node)]
    expanded: object
    if isinstance(node, dict):
        expanded = {k: expand_env(v, join(path, str(k)), environ, done) for k, v in node.items()}
    elif isinstance(node, list):
        expanded = [expand_env(v, f"{path}[{i}]", environ, done) for i, v in enumerate(node)]
    if isinstance(node, (dict, list)):
        done[id(node)] = expanded
        return expanded
    if isinstance(node, str):
        variables = _ENV_REF.findall(node)
        for name in variables:
            if name not in environ:
                raise ConfigError(path, f"environment variable {name} is not set")
        if not variables:
            return node
        value = _FromEnv(_ENV_REF.sub(lambda match: environ[match.group(1)], node))
        value.variables = tuple(variables)
        return value
    return node


def _settings(path: str, raw: Mapping[str, object]) -> dict[str, Any]:
    return {key: _SETTINGS[key](join(path, key), raw[key]) for key in _SETTINGS if key in raw}


def _target(path: str, raw: object, defaults: Mapping[str, Any]) -> TargetConfig:
    entry = mapping(path, raw, _IDENTITY + tuple(_SETTINGS), string_keys=True)
    for key in ("name", "base_url", "app_key"):
        if entry.get(key) is None:
            raise ConfigError(join(path, key), "is required")
    has_inline = entry.get("app_secret") is not None
    has_file = entry.get("app_secret_file") is not None
    if has_inline == has_file:
        raise ConfigError(
            join(path, "app_secret"), "set exactly one of app_secret, app_secret_file"
        )
    if has_file:
        secret = Secret(
            file=_readable_file(join(path, "app_secret_file"), entry["app_secret_file"])
        )
        try:
            empty = not secret.read()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                join(path, "app_secret_file"), f"cannot read {secret.file} as UTF-8 text"
            ) from None
        if empty:
            raise ConfigError(join(path, "app_secret_file"), f"{secret.file} is empty")
    else:
        secret = Secret(value=_string(join(path, "app_secret"), entry["app_secret"]))
    tenant = entry.get("tenant_space_id")
    return TargetConfig(
        name=_target_name(join(path, "name"), entry["name"]),
        base_url=_http_url(join(path, "base_url"), entry["base_url"]),
        app_key=_string(join(path, "app_key"), entry["app_key"]),
        app_secret=secret,
        tenant_space_id=None if tenant is None else _string(join(path, "tenant_space_id"), tenant),
        **{**defaults, **_settings(path, entry)},
    )


def parse_config(raw: object, source: str = "", environ: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML into a ``Config``; raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    data = mapping("", expand_env(raw, "", environ), _TOP_LEVEL, string_keys=True)
    defaults_raw = mapping("defaults", data.get("defaults"), tuple(_SETTINGS), string_keys=True)
    defaults = _settings("defaults", defaults_raw)
    targets_raw = data.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ConfigError("targets", "must be a non-empty list of targets")
    targets = tuple(_target(f"targets[{i}]", t, defaults) for i, t in enumerate(targets_raw))
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if target.name in seen:
            raise ConfigError(f"targets[{i}].name", f"duplicate target name {target.name!r}")
        seen.add(target.name)
    inflight = data.get("max_inflight_requests")
    return Config(
        targets=targets,
        source=source,
        max_inflight_requests=DEFAULT_MAX_INFLIGHT_REQUESTS
        if inflight is None
        else _int_in(1, 10_000)("max_inflight_requests", inflight),
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``; raises ``ConfigError``."""
    name = os.fspath(path)
    raw = load_yaml_file(name, "config file")
    if raw is None:
        raise ConfigError(name, "config file is empty")
    try:
        return parse_config(raw, source=name, environ=environ)
    except RecursionError:  # a self-referencing alias (&a [*a])
        raise ConfigError(name, "nested too deeply or refers to itself") from None


def summary(config: Config) -> str:
    """A human summary for ``check-config``: settings and secret sources, never values."""
    lines = [
        f"config {config.source or '(inline)'}: OK, {len(config.targets)} target(s)",
        f"max_inflight_requests: {config.max_inflight_requests}",
    ]
    names = [f.name for f in fields(TargetConfig) if f.name not in _IDENTITY]
    for t in config.targets:
        lines.append(f"- {t.name}: {t.base_url}")
        lines.append(f"    app_secret: {t.app_secret.describe()}")
        if t.tenant_space_id:
            lines.append(f"    tenant_space_id: {t.tenant_space_id}")
        lines.extend(f"    {n}: {getattr(t, n)}" for n in names)
    return "\n".join(lines)


def redacted_target(target: TargetConfig) -> dict[str, Any]:
    """A target's settings in force, keyed as the config file keys them; the app key and
    an inline secret redacted (a secret file is named, never read)."""
    shown: dict[str, Any] = {"name": target.name, "base_url": target.base_url}
    shown["app_key"] = REDACTED
    if target.app_secret.file is not None:
        shown["app_secret_file"] = target.app_secret.file
    else:
        shown["app_secret"] = REDACTED
    shown["tenant_space_id"] = target.tenant_space_id
    shown.update((key, getattr(target, key)) for key in _SETTINGS)
    return shown


def redacted_config(config: Config) -> dict[str, Any]:
    """The config in force as the file would say it, every default filled in and every
    secret redacted (``/config``, as blackbox_exporter's)."""
    return {
        "max_inflight_requests": config.max_inflight_requests,
        "targets": [redacted_target(target) for target in config.targets],
    }
