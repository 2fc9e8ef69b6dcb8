"""The ``cec-phone-exporter`` command line: it parses options and wires parts together.

Every option may also come from the environment, by one rule (``envvar_rule``):
the options that mean the same wherever they appear have one shared name
(``SHARED_ENVVARS``), every other one is ``CEC_EXPORTER_<COMMAND>_<OPTION>``.
Config errors exit 2 with the key path; nothing here prints a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
from prometheus_client.exposition import generate_latest

from exporter import __version__
from exporter.cli.options import (
    config_option,
    listen_option,
    logging_options,
    phones_option,
    web_options,
)
from exporter.http import App, serve
from exporter.http.app import DEFAULT_TELEMETRY_PATH
from exporter.http.debug import debug_report_blocking
from exporter.http.limits import Limits
from exporter.http.listener import parse_listen
from exporter.logs import setup_logging
from exporter.runtime import on_signals, raise_open_files_limit
from exporter.scrape import Exporter
from exporter.settings import (
    Config,
    ConfigError,
    Secret,
    TargetConfig,
    WebConfigFile,
    load_config,
    load_web_config,
    summary,
)
from exporter.simulator import SimConfig, Simulator, parse_faults

log = logging.getLogger("exporter")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LISTEN = "0.0.0.0:9877"
DEFAULT_DEMO_LISTEN = "127.0.0.1:9877"
DEFAULT_SIMULATOR_LISTEN = "127.0.0.1:9878"
ENVVAR_PREFIX = "CEC_EXPORTER"
# Options that mean the same in every command that has them: one variable for all.
# ``--listen`` is the exporter's address, so it is shared by serve and demo only;
# simulate's ``--listen`` is the simulator's and follows the per-command rule.
SHARED_ENVVARS = {
    "config": f"{ENVVAR_PREFIX}_CONFIG",
    "web-config": f"{ENVVAR_PREFIX}_WEB_CONFIG",
    "log-level": f"{ENVVAR_PREFIX}_LOG_LEVEL",
    "log-format": f"{ENVVAR_PREFIX}_LOG_FORMAT",
}
SHARED_LISTEN_COMMANDS = ("serve", "demo")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"cec-phone-exporter: {message}", err=True)
    sys.exit(code)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        _fail(str(err))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="cec-phone-exporter")
def cli() -> None:
    """Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)."""


def run_server(
    exporter: Exporter,
    listen: Sequence[str],
    web_config: WebConfigFile | None,
    limits: Limits | None = None,
    telemetry_path: str = DEFAULT_TELEMETRY_PATH,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the config.

    ``on_listening`` gets the first URL once every address listens.
    """
    raise_open_files_limit()
    app = App(exporter, web_config, telemetry_path=telemetry_path)
    try:
        server = serve(app, listen, limits)
    except OSError as err:
        exporter.close()
        _fail(f"cannot listen on {' '.join(listen)}: {err.strerror or err}", 1)
    except ValueError as err:
        exporter.close()
        _fail(str(err))

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


@cli.command()
@config_option
@listen_option(DEFAULT_LISTEN, several=True)
@click.option(
    "--web-config",
    "--web.config.file",
    "web_config_path",
    metavar="FILE",
    help="TLS and basic auth, exporter-toolkit format.",
)
@web_options
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
    log_level: str,
    log_format: str,
) -> None:
    """Run the exporter."""
    limits = Limits(max_connections, max_per_client, head_timeout, idle_timeout)
    setup_logging(log_level, log_format)
    config = _load(config_path)
    web_config = None
    if web_config_path:
        try:
            web_config = WebConfigFile(web_config_path, load_web_config(web_config_path))
        except ConfigError as err:
            _fail(f"web config: {err}")
    log.info("cec-phone-exporter %s, %d target(s)", __version__, len(config.targets))
    exporter = Exporter(config, config_path)
    run_server(exporter, listen, web_config, limits, telemetry_path)


serve_command.name = "serve"


@cli.command()
@listen_option(DEFAULT_DEMO_LISTEN, several=True)
@phones_option
@logging_options
def demo(listen: tuple[str, ...], phones: int, log_level: str, log_format: str) -> None:
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

    def banner(url: str) -> None:  # only once it listens: the URLs work when shown
        url = url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")
        base = url.removesuffix(DEFAULT_TELEMETRY_PATH)
        click.echo(f"CEC simulator:  {simulator.url} ({phones} phones; state at /_sim/state)")
        click.echo(f"exporter:       {url}")
        click.echo(f"one target:     {base}/probe?target=demo")
        click.echo("Ctrl-C stops both.")

    try:
        exporter = Exporter(Config(targets=(target,), source="demo"))
        run_server(exporter, listen, None, on_listening=banner)
    finally:
        simulator.stop()


@cli.command()
@listen_option(DEFAULT_SIMULATOR_LISTEN)
@phones_option
@click.option(
    "--tenants",
    type=click.IntRange(1, 100_000),
    default=3,
    show_default=True,
    help="Tenants the phones are spread over.",
)
@click.option(
    "--suspended-ratio",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of the phones that are suspended.",
)
@click.option(
    "--mode",
    type=click.Choice(["single", "pool", "legacy"]),
    default="single",
    show_default=True,
    help="Shape of the queryPhone answer.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Delay added to every request.",
)
@click.option(
    "--app-key", default=SimConfig.app_key, show_default=True, help="App key the simulator accepts."
)
@click.option(
    "--app-secret", default=SimConfig.app_secret, help="App secret the simulator accepts."
)
@click.option(
    "--faults",
    "faults_json",
    metavar="JSON",
    help='Faults to inject from the start, e.g. \'[{"kind": "ret_code", "value": "2"}]\'.',
)
@logging_options
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
    host = host or "0.0.0.0"
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

    on_signals(stop=simulator.stop)
    simulator.serve_forever()


@cli.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Validate the config file and print a summary (never secrets); exit 0, or 2 if invalid."""
    click.echo(summary(_load(config_path)))


@cli.command()
@config_option
@click.option("--target", help="Collect only this target (as /probe does).")
@click.option(
    "--debug",
    is_flag=True,
    help="Print the debug probe's report instead: the collection log, the metrics and the "
    "effective config with secrets redacted.",
)
@logging_options
def scrape(
    config_path: str, target: str | None, debug: bool, log_level: str, log_format: str
) -> None:
    """Collect once and print the exposition.

    Exit 0 if every target is up, 1 if any is down, 2 for a bad config or an unknown --target.
    """
    setup_logging(log_level, log_format)
    config = _load(config_path)
    if target is not None and config.target(target) is None:
        _fail(f"--target: no target named {target!r} in {config_path}")
    exporter = Exporter(config, config_path)
    try:
        if debug:
            names = [target] if target else config.target_names
            reports = [debug_report_blocking(exporter, n) for n in names]
            click.echo("\n".join(text for text, _ in reports), nl=False)
            sys.exit(0 if all(up for _, up in reports) else 1)
        scraped = exporter.scrape_from_thread(target)
        click.echo(generate_latest(scraped.registry).decode(), nl=False)
    finally:
        exporter.close()
    sys.exit(0 if scraped.collections and all(c.up for c in scraped.collections) else 1)


def envvar_rule(command: str, option: str) -> str:
    """The environment variable of ``--option`` of ``command`` (the documented rule)."""
    if option == "listen" and command in SHARED_LISTEN_COMMANDS:
        return f"{ENVVAR_PREFIX}_LISTEN"
    name = SHARED_ENVVARS.get(option)
    if name is None:
        name = f"{ENVVAR_PREFIX}_{command}_{option}".upper().replace("-", "_").replace(".", "_")
    return name


def _apply_envvar_rule(group: click.Group) -> None:
    """Give every option of every command its variable, and show it in ``--help``.

    Named from the option's first long flag, not its Python parameter name, so
    ``--faults`` is ``..._FAULTS`` (as documented) however the parameter is called.
    """
    for command in group.commands.values():
        assert command.name is not None
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                flag = next(o for o in param.opts if o.startswith("--"))
                param.envvar = envvar_rule(command.name, flag[2:])
                param.show_envvar = True


_apply_envvar_rule(cli)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="cec-phone-exporter")


__all__ = ["cli", "envvar_rule", "main"]
