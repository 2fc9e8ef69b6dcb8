"""The options the commands share, as click declares them: config, listen, web, logging.

The front door's limits (``--web.*``) are declared once, from ``Limits``'s fields and
defaults, and reach the command as one ``limits`` value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from exporter.http.app import DEFAULT_TELEMETRY_PATH
from exporter.http.limits import Limits
from exporter.http.listener import parse_listen
from exporter.logs import FORMAT_ALIASES, FORMATS, LEVEL_ALIASES, LEVELS
from exporter.settings import ConfigError
from exporter.settings.readers import parse_duration

_F = TypeVar("_F", bound=Callable[..., Any])


def duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """A Go duration (``10s``, ``5m``, ``1m30s``) in seconds, more than zero."""
    try:
        seconds = parse_duration("", value)
    except ConfigError:
        seconds = -1.0
    if seconds <= 0:
        raise click.BadParameter(f'must be a duration above zero such as "10s" or "5m": {value!r}')
    return seconds


def listen(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


def listens(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    return tuple(listen(ctx, param, one) for one in value)


def config_option(func: _F) -> _F:
    return click.option(
        "--config",
        "--config.file",
        "config_path",
        required=True,
        metavar="FILE",
        help="YAML config file.",
    )(func)


def listen_option(default: str, several: bool = False) -> Callable[[_F], _F]:
    return click.option(
        "--listen",
        "--web.listen-address",
        "listen",
        default=(default,) if several else default,
        multiple=several,
        show_default=True,
        callback=listens if several else listen,
        metavar="HOST:PORT",
        help="Address to listen on; repeat it to listen on several. :PORT is every address family."
        if several
        else "Address to listen on.",
    )


WEB_LIMITS: tuple[tuple[str, str, click.IntRange | None, str], ...] = (
    # flag, Limits field, type (None: a duration), help
    (
        "--web.max-connections",
        "max_connections",
        click.IntRange(1),
        "Open connections served at once; at it the longest-idle kept-alive one is closed "
        "for a new one, which is refused when none is idle.",
    ),
    (
        "--web.max-per-client",
        "max_per_client",
        click.IntRange(1),
        "Open connections of one client address; at it, likewise within that address.",
    ),
    (
        "--web.read-header-timeout",
        "head_timeout",
        None,
        "A TLS handshake, and each request head from its first byte, must be done within it.",
    ),
    (
        "--web.idle-timeout",
        "idle_timeout",
        None,
        "How long a kept-alive connection may wait for its next request.",
    ),
)
"""The front door's ``Limits`` the command line sets, each defaulting to the field's."""


def _shown(seconds: float) -> str:
    """A default duration as the flag is written: ``10s``, ``5m``."""
    return f"{seconds / 60:g}m" if seconds >= 60 and not seconds % 60 else f"{seconds:g}s"


def web_options(func: _F) -> _F:
    """``--web.telemetry-path`` and the front door's limits (``WEB_LIMITS``)."""
    for flag, name, kind, text in reversed(WEB_LIMITS):
        default = getattr(Limits, name)
        extra: dict[str, Any]
        if kind is None:  # a duration, shown as it is written
            shown, extra = _shown(default), {"metavar": "DURATION", "callback": duration}
        else:
            shown, extra = default, {"type": kind}
        func = click.option(flag, name, default=shown, show_default=True, help=text, **extra)(func)
    return click.option(
        "--web.telemetry-path",
        "telemetry_path",
        default=DEFAULT_TELEMETRY_PATH,
        show_default=True,
        metavar="PATH",
        help="Path of the exposition of every target.",
    )(func)


def logging_options(func: _F) -> _F:
    """``--log-level`` / ``--log.level`` and ``--log-format`` / ``--log.format`` (promslog)."""
    func = click.option(
        "--log-level",
        "--log.level",
        "log_level",
        type=click.Choice((*LEVELS, *LEVEL_ALIASES), case_sensitive=False),
        default="info",
        show_default=True,
        metavar=f"[{'|'.join(LEVELS)}]",
        help="Lowest level logged (debug: one line per API request).",
    )(func)
    return click.option(
        "--log-format",
        "--log.format",
        "log_format",
        type=click.Choice((*FORMATS, *FORMAT_ALIASES), case_sensitive=False),
        default="logfmt",
        show_default=True,
        metavar=f"[{'|'.join(FORMATS)}]",
        help="Log lines as logfmt or JSON.",
    )(func)


def phones_option(func: _F) -> _F:
    return click.option(
        "--phones",
        type=click.IntRange(0, 10_000_000),
        default=1000,
        show_default=True,
        help="Softphones the simulator allocates.",
    )(func)


__all__ = [
    "WEB_LIMITS",
    "config_option",
    "duration",
    "listen",
    "listen_option",
    "listens",
    "logging_options",
    "phones_option",
    "web_options",
]
