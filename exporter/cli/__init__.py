"""The ``cec-phone-exporter`` command line: click commands only (options, wiring, exit codes).

One module per job: ``serve`` (and the serving process ``demo`` shares), ``simulator``
(``demo``, ``simulate``), ``oneshot`` (``check-config``, ``scrape``), and ``options``
(what they share, and the rule that names every option's environment variable).
"""

from __future__ import annotations

import click

from exporter.build import version_text
from exporter.cli.oneshot import check_config, scrape
from exporter.cli.options import apply_envvar_rule, envvar_rule
from exporter.cli.serve import serve_command
from exporter.cli.simulator import demo, simulate

DEFAULT_COMMAND = "serve"


class _ServeByDefault(click.Group):
    """With no command and only options, runs ``serve`` with them, as the Go exporters do:
    ``cec-phone-exporter --config.file=x.yml``, ``docker run IMAGE --config.file=...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {flag for param in self.get_params(ctx) for flag in param.opts}
        if args and args[0].startswith("-") and args[0].partition("=")[0] not in own:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


@click.group(
    cls=_ServeByDefault,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, revision, branch, build date and Python, and exit.",
)
def cli() -> None:
    """Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone).

    With no command and only options, runs serve with them, as the Go exporters do:

    \b
      cec-phone-exporter --config.file=config.yml
    """


for _command in (serve_command, demo, simulate, check_config, scrape):
    cli.add_command(_command)
apply_envvar_rule(cli)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="cec-phone-exporter")


__all__ = ["cli", "envvar_rule", "main"]
