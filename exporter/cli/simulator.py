"""``demo`` and ``simulate``: the built-in CEC simulator, with the exporter against it or alone."""

from __future__ import annotations

import json

import click

from exporter.cli.options import fail, listen_option, logging_options, phones_option
from exporter.cli.serve import run_server
from exporter.http import App
from exporter.http.app import DEFAULT_TELEMETRY_PATH
from exporter.http.listener import parse_listen
from exporter.logs import setup_logging
from exporter.runtime import on_signals
from exporter.scrape import Exporter
from exporter.settings import Config, Secret, TargetConfig
from exporter.simulator import SimConfig, Simulator, parse_faults

DEFAULT_DEMO_LISTEN = "127.0.0.1:9877"
DEFAULT_SIMULATOR_LISTEN = "127.0.0.1:9878"


@click.command()
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
        run_server(App(exporter), listen, on_listening=banner)
    finally:
        simulator.stop()


@click.command()
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
        fail(f"cannot listen on {listen}: {err.strerror or err}", 1)
    simulator.set_faults(faults)
    click.echo(f"CEC simulator listening on {simulator.url} ({phones} phones, {mode} mode)")

    on_signals(stop=simulator.stop)
    simulator.serve_forever()
