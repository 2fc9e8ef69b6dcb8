"""The ``cec-phone-exporter`` command line: it parses options and wires parts together.

Every option may also come from the environment (``CEC_EXPORTER_<NAME>``).
Config errors exit 2 with the key path; nothing here prints a traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from prometheus_client.exposition import generate_latest

from exporter import __version__
from exporter.collect import Exporter
from exporter.config import Config, ConfigError, Secret, TargetConfig, load_config, summary
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.simulator import SimConfig, Simulator, parse_faults
from exporter.web import App, parse_listen, serve
from exporter.webconfig import WebConfigFile, load_web_config

log = logging.getLogger("exporter")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LISTEN = "0.0.0.0:9877"
DEFAULT_SIMULATOR_LISTEN = "127.0.0.1:9878"


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"cec-phone-exporter: {message}", err=True)
    sys.exit(code)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        _fail(str(err))


def _listen(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _config_option(func: _F) -> _F:
    return click.option(
        "--config",
        "--config.file",
        "config_path",
        envvar="CEC_EXPORTER_CONFIG",
        required=True,
        metavar="FILE",
        help="YAML config file (env CEC_EXPORTER_CONFIG).",
    )(func)


def _listen_option(default: str) -> Callable[[_F], _F]:
    return click.option(
        "--listen",
        "--web.listen-address",
        "listen",
        envvar="CEC_EXPORTER_LISTEN",
        default=default,
        show_default=True,
        callback=_listen,
        metavar="HOST:PORT",
        help="Address to listen on (env CEC_EXPORTER_LISTEN).",
    )


def _logging_options(func: _F) -> _F:
    func = click.option(
        "--log-level",
        envvar="CEC_EXPORTER_LOG_LEVEL",
        type=click.Choice(LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
    )(func)
    return click.option(
        "--log-format",
        envvar="CEC_EXPORTER_LOG_FORMAT",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
    )(func)


def _phones_option(func: _F) -> _F:
    return click.option(
        "--phones",
        envvar="CEC_EXPORTER_PHONES",
        type=click.IntRange(0, 10_000_000),
        default=1000,
        show_default=True,
        help="Softphones the simulator allocates.",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="cec-phone-exporter")
def cli() -> None:
    """Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)."""


def run_server(exporter: Exporter, listen: str, web_config: WebConfigFile | None) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the config."""
    app = App(exporter, web_config)
    try:
        server = serve(app, listen)
    except OSError as err:
        _fail(f"cannot listen on {listen}: {err.strerror or err}", 1)
    except ValueError as err:
        _fail(str(err))

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reload(_signum: int, _frame: object) -> None:
        threading.Thread(target=exporter.reload, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload)
    scheme = "https" if app.web_config.tls else "http"
    host, port = str(server.server_address[0]), int(server.server_address[1])
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # the real port for :0
    log.info("listening on %s://%s/metrics", scheme, bound)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        exporter.close()
        log.info("stopped")


@cli.command()
@_config_option
@_listen_option(DEFAULT_LISTEN)
@click.option(
    "--web-config",
    "--web.config.file",
    "web_config_path",
    envvar="CEC_EXPORTER_WEB_CONFIG",
    metavar="FILE",
    help="TLS and basic auth, exporter-toolkit format (env CEC_EXPORTER_WEB_CONFIG).",
)
@_logging_options
def serve_command(
    config_path: str, listen: str, web_config_path: str | None, log_level: str, log_format: str
) -> None:
    """Run the exporter."""
    setup_logging(log_level, log_format)
    config = _load(config_path)
    web_config = None
    if web_config_path:
        try:
            web_config = WebConfigFile(web_config_path, load_web_config(web_config_path))
        except ConfigError as err:
            _fail(f"web config: {err}")
    log.info("cec-phone-exporter %s, %d target(s)", __version__, len(config.targets))
    run_server(Exporter(config, config_path), listen, web_config)


serve_command.name = "serve"


@cli.command()
@_listen_option(DEFAULT_LISTEN)
@_phones_option
@_logging_options
def demo(listen: str, phones: int, log_level: str, log_format: str) -> None:
    """Run the built-in CEC simulator and the exporter against it: real metrics, no account."""
    setup_logging(log_level, log_format)
    sim_config = SimConfig(phones=phones, tenants=3, suspended_ratio=0.1, latency_ms=20)
    simulator = Simulator(sim_config, host="127.0.0.1", port=0).start()
    target = TargetConfig(
        name="demo",
        base_url=simulator.url,
        app_key=sim_config.app_key,
        app_secret=Secret(value=sim_config.app_secret),
    )
    host, port = parse_listen(listen)
    shown = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else listen
    click.echo(f"CEC simulator:  {simulator.url} ({phones} phones; state at /_sim/state)")
    click.echo(f"exporter:       http://{shown}/metrics")
    click.echo(f"one target:     http://{shown}/probe?target=demo")
    click.echo("Ctrl-C stops both.")
    try:
        run_server(Exporter(Config(targets=(target,), source="demo")), listen, None)
    finally:
        simulator.stop()


@cli.command()
@_listen_option(DEFAULT_SIMULATOR_LISTEN)
@_phones_option
@click.option("--tenants", type=click.IntRange(1, 100_000), default=3, show_default=True)
@click.option("--suspended-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option(
    "--mode", type=click.Choice(["single", "pool", "legacy"]), default="single", show_default=True
)
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--app-key", envvar="CEC_SIM_APP_KEY", default=SimConfig.app_key, show_default=True)
@click.option("--app-secret", envvar="CEC_SIM_APP_SECRET", default=SimConfig.app_secret)
@click.option(
    "--faults",
    "faults_json",
    metavar="JSON",
    help='Faults to inject from the start, e.g. \'[{"kind": "ret_code", "value": "2"}]\'.',
)
@_logging_options
def simulate(
    listen: str,
    phones: int,
    tenants: int,
    suspended_ratio: float,
    mode: str,
    latency_ms: float,
    app_key: str,
    app_secret: str,
    faults_json: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the CEC simulator alone (control endpoints under /_sim/)."""
    setup_logging(log_level, log_format)
    faults = []
    if faults_json:
        try:
            faults = parse_faults(json.loads(faults_json))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--faults") from None
    host, port = parse_listen(listen)
    sim_config = SimConfig(
        phones=phones,
        tenants=tenants,
        suspended_ratio=suspended_ratio,
        mode=mode,
        latency_ms=latency_ms,
        app_key=app_key,
        app_secret=app_secret,
    )
    try:
        simulator = Simulator(sim_config, host=host, port=port)
    except OSError as err:
        _fail(f"cannot listen on {listen}: {err.strerror or err}", 1)
    simulator.set_faults(faults)
    click.echo(f"CEC simulator listening on {simulator.url} ({phones} phones, {mode} mode)")

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=simulator.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    simulator.serve_forever()


@cli.command("check-config")
@_config_option
def check_config(config_path: str) -> None:
    """Validate the config file and print a summary (never secrets)."""
    click.echo(summary(_load(config_path)))


@cli.command()
@_config_option
@click.option("--target", help="Collect only this target (as /probe does).")
@_logging_options
def scrape(config_path: str, target: str | None, log_level: str, log_format: str) -> None:
    """Collect once and print the exposition; exit 1 unless every target is up."""
    setup_logging(log_level, log_format)
    config = _load(config_path)
    if target is not None and config.target(target) is None:
        _fail(f"--target: no target named {target!r} in {config_path}")
    exporter = Exporter(config, config_path)
    try:
        registry, collections = exporter.scrape(target)
        click.echo(generate_latest(registry).decode(), nl=False)
    finally:
        exporter.close()
    sys.exit(0 if collections and all(c.up for c in collections) else 1)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="cec-phone-exporter", auto_envvar_prefix="CEC_EXPORTER")


__all__ = ["cli", "main"]
