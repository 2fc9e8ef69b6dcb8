"""The ``cec-phone-exporter`` command line: click commands only (options, wiring, exit codes).

One module per job: ``serve`` (and the serving process ``demo`` shares), ``simulator``
(``demo``, ``simulate``), ``oneshot`` (``check-config``, ``scrape``), and ``options``
(what they share, and the rule that names every option's environment variable).
"""

from __future__ import annotations

import click

from exporter import __version__
from exporter.cli.oneshot import check_config, scrape
from exporter.cli.options import apply_envvar_rule, envvar_rule
from exporter.cli.serve import serve_command
from exporter.cli.simulator import demo, simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="cec-phone-exporter")
def cli() -> None:
    """Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)."""


for _command in (serve_command, demo, simulate, check_config, scrape):
    cli.add_command(_command)
apply_envvar_rule(cli)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="cec-phone-exporter")


__all__ = ["cli", "envvar_rule", "main"]
