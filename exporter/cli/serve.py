"""``serve``, and the serving process it shares with ``demo``: listener, signals, reloads.

SIGHUP and ``POST /-/reload`` reload the config file; with
``--config.auto-reload-interval`` the config file, the files it names and the web
config are also looked at on that interval, and a change reloads exactly as SIGHUP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from exporter import __version__
from exporter.build import running_build
from exporter.cec.text import fields
from exporter.cli.options import (
    config_option,
    duration_seconds,
    fail,
    listen_option,
    load,
    logging_options,
)
from exporter.http import App, serve
from exporter.http.app import DEFAULT_TELEMETRY_PATH
from exporter.http.limits import Limits
from exporter.http.prefix import external_url, route_prefix
from exporter.logs import setup_logging
from exporter.runtime import every, on_signals, raise_open_files_limit
from exporter.scrape import Exporter
from exporter.settings import ConfigError, WebConfigFile, load_web_config

log = logging.getLogger("exporter")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LISTEN = "0.0.0.0:9877"
MIN_AUTO_RELOAD_SECONDS = 1.0
"""A shorter interval would only re-read unchanged files: refused, not rounded."""


def _reload_interval(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """A Prometheus-style duration (``30s``, ``1m``); 0 turns the watch off."""
    seconds = duration_seconds(value)
    if seconds != 0 and seconds < MIN_AUTO_RELOAD_SECONDS:
        raise click.BadParameter(f"must be 0 (off) or at least 1s, got {value!r}")
    return seconds


def _timeout(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """A duration above zero (``10s``, ``5m``)."""
    seconds = duration_seconds(value)
    if seconds <= 0:
        raise click.BadParameter(f'must be a duration above zero such as "10s" or "5m": {value!r}')
    return seconds


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


def _external_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else external_url(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _web_options(func: _F) -> _F:
    func = _prefix_options(func)
    func = click.option(
        "--web.telemetry-path",
        "telemetry_path",
        default=DEFAULT_TELEMETRY_PATH,
        show_default=True,
        metavar="PATH",
        help="Path of the exposition of every target (under the route prefix).",
    )(func)
    for flag, name, kind, text in reversed(WEB_LIMITS):
        default = getattr(Limits, name)
        extra: dict[str, Any]
        if kind is None:  # a duration, shown as it is written
            shown, extra = _shown(default), {"metavar": "DURATION", "callback": _timeout}
        else:
            shown, extra = default, {"type": kind}
        func = click.option(flag, name, default=shown, show_default=True, help=text, **extra)(func)
    return func


def _prefix_options(func: _F) -> _F:
    """``--web.route-prefix`` and ``--web.external-url``, as Prometheus and blackbox spell them."""
    func = click.option(
        "--web.external-url",
        "url",
        metavar="URL",
        callback=_external_url,
        help="URL the exporter is reached at, e.g. through a reverse proxy; its path is "
        "the default --web.route-prefix.",
    )(func)
    return click.option(
        "--web.route-prefix",
        "prefix",
        metavar="PATH",
        help="Path every endpoint lives under (default: the path of --web.external-url, "
        "else /); the landing page's links are relative to it.",
    )(func)


def run_server(
    app: App,
    listen: Sequence[str],
    limits: Limits | None = None,
    auto_reload: float = 0.0,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the config, and so does a change found
    every ``auto_reload`` seconds (0: never looked for).

    ``on_listening`` gets the first URL once every address listens.
    """
    exporter = app.exporter
    raise_open_files_limit()
    try:
        server = serve(app, listen, limits)
    except OSError as err:
        exporter.close()
        fail(f"cannot listen on {' '.join(listen)}: {err.strerror or err}", 1)
    except ValueError as err:
        exporter.close()
        fail(str(err))

    on_signals(stop=server.shutdown, reload=exporter.reload)
    stop_watching = (
        every(auto_reload, app.reload_if_changed, "config-watch") if auto_reload else None
    )
    urls = server.urls(app.prefix + app.telemetry_path)
    for url in urls:
        log.info("listening", extra=fields(url=url))
    if on_listening is not None:
        on_listening(urls[0])
    try:
        server.serve_forever()
    finally:
        if stop_watching is not None:
            stop_watching()
        server.server_close()
        exporter.close()
        log.info("stopped")


@click.command("serve")
@config_option
@listen_option(DEFAULT_LISTEN, several=True)
@click.option(
    "--web-config",
    "--web.config.file",
    "web_config_path",
    metavar="FILE",
    help="TLS and basic auth, exporter-toolkit format.",
)
@_web_options
@click.option(
    "--config.auto-reload-interval",
    "auto_reload",
    default="0",
    show_default=True,
    metavar="DURATION",
    callback=_reload_interval,
    help="Look at the config file, the files it names and the web config this often (30s, "
    "1m) and reload as SIGHUP does when one changed; 0 never looks.",
)
@logging_options
def serve_command(
    config_path: str,
    listen: tuple[str, ...],
    web_config_path: str | None,
    telemetry_path: str,
    max_connections: int,
    max_per_client: int,
    head_timeout: float,
    idle_timeout: float,
    prefix: str | None,
    url: str | None,
    auto_reload: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the exporter."""
    setup_logging(log_level, log_format)
    config = load(config_path)
    web_config = None
    if web_config_path:
        try:
            web_config = WebConfigFile(web_config_path, load_web_config(web_config_path))
        except ConfigError as err:
            fail(f"web config: {err}")
    running = running_build()
    log.info(
        "starting cec-phone-exporter",
        extra=fields(
            version=__version__,
            revision=running.revision,
            branch=running.branch,
            targets=len(config.targets),
        ),
    )
    exporter = Exporter(config, config_path)
    app = App(
        exporter,
        web_config,
        telemetry_path=telemetry_path,
        prefix=route_prefix(prefix, url),
    )
    limits = Limits(max_connections, max_per_client, head_timeout, idle_timeout)
    run_server(app, listen, limits, auto_reload)
