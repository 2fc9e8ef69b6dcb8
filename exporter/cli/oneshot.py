"""``check-config`` and ``scrape``: one look at a config file, or one collection, then exit."""

from __future__ import annotations

import sys

import click
from prometheus_client.exposition import generate_latest

from exporter.cli.options import config_option, fail, load, logging_options
from exporter.http.debug import debug_report_blocking
from exporter.logs import setup_logging
from exporter.scrape import Exporter
from exporter.settings import summary


@click.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Validate the config file and print a summary (never secrets); exit 0, or 2 if invalid."""
    click.echo(summary(load(config_path)))


@click.command()
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
    config = load(config_path)
    if target is not None and config.target(target) is None:
        fail(f"--target: no target named {target!r} in {config_path}")
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
