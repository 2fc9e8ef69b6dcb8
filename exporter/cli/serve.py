"""``serve``, and the serving process it shares with ``demo``: listener, signals, reload.

SIGHUP and ``POST /-/reload`` reload the config file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from exporter import __version__
from exporter.cli.options import config_option, fail, listen_option, load, logging_options
from exporter.http import App, serve
from exporter.http.app import DEFAULT_TELEMETRY_PATH
from exporter.http.listener import DEFAULT_MAX_CONNECTIONS
from exporter.logs import setup_logging
from exporter.runtime import on_signals, raise_open_files_limit
from exporter.scrape import Exporter
from exporter.settings import ConfigError, WebConfigFile, load_web_config

log = logging.getLogger("exporter")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LISTEN = "0.0.0.0:9877"


def _web_options(func: _F) -> _F:
    func = click.option(
        "--web.telemetry-path",
        "telemetry_path",
        default=DEFAULT_TELEMETRY_PATH,
        show_default=True,
        metavar="PATH",
        help="Path of the exposition of every target.",
    )(func)
    return click.option(
        "--web.max-connections",
        "max_connections",
        type=click.IntRange(1),
        default=DEFAULT_MAX_CONNECTIONS,
        show_default=True,
        help="Open connections served at once; past it new ones are closed unanswered.",
    )(func)


def run_server(
    exporter: Exporter,
    listen: Sequence[str],
    web_config: WebConfigFile | None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    telemetry_path: str = DEFAULT_TELEMETRY_PATH,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the config.

    ``on_listening`` gets the first URL once every address listens.
    """
    raise_open_files_limit()
    app = App(exporter, web_config, telemetry_path=telemetry_path)
    try:
        server = serve(app, listen, max_connections)
    except OSError as err:
        exporter.close()
        fail(f"cannot listen on {' '.join(listen)}: {err.strerror or err}", 1)
    except ValueError as err:
        exporter.close()
        fail(str(err))

    on_signals(stop=server.shutdown, reload=exporter.reload)
    urls = server.urls(telemetry_path)
    for url in urls:
        log.info("listening on %s", url)
    if on_listening is not None:
        on_listening(urls[0])
    try:
        server.serve_forever()
    finally:
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
@logging_options
def serve_command(
    config_path: str,
    listen: tuple[str, ...],
    web_config_path: str | None,
    telemetry_path: str,
    max_connections: int,
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
    log.info("cec-phone-exporter %s, %d target(s)", __version__, len(config.targets))
    exporter = Exporter(config, config_path)
    run_server(exporter, listen, web_config, max_connections, telemetry_path)
