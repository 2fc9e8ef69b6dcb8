"""What the commands share: their common options, how they fail, and each option's variable.

Every option may also come from the environment, by one rule (``envvar_rule``): the
options that mean the same wherever they appear have one shared name
(``SHARED_ENVVARS``), every other one is ``CEC_EXPORTER_<COMMAND>_<OPTION>``. Config
errors exit 2 with the key path; nothing here prints a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from exporter.http.listener import parse_listen
from exporter.logs import FORMAT_ALIASES, FORMATS, LEVEL_ALIASES, LEVELS
from exporter.settings import Config, ConfigError, load_config
from exporter.settings.readers import parse_duration

_F = TypeVar("_F", bound=Callable[..., Any])

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


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as the command's one error line and exit with ``code``."""
    click.echo(f"cec-phone-exporter: {message}", err=True)
    sys.exit(code)


def load(path: str) -> Config:
    """The config file at ``path``, or exit 2 with the error's key path."""
    try:
        return load_config(path)
    except ConfigError as err:
        fail(str(err))


def duration_seconds(value: str) -> float:
    """A Go duration (``10s``, ``5m``, ``1m30s``, ``0``) in seconds, or click's BadParameter."""
    try:
        return parse_duration("", value.strip())
    except ConfigError as err:
        raise click.BadParameter(err.message) from None


def _listen(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _listens(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    return tuple(_listen(ctx, param, one) for one in value)


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
        callback=_listens if several else _listen,
        metavar="HOST:PORT",
        help="Address to listen on; repeat it to listen on several. :PORT is every address family."
        if several
        else "Address to listen on.",
    )


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


def envvar_rule(command: str, option: str) -> str:
    """The environment variable of ``--option`` of ``command`` (the documented rule)."""
    if option == "listen" and command in SHARED_LISTEN_COMMANDS:
        return f"{ENVVAR_PREFIX}_LISTEN"
    name = SHARED_ENVVARS.get(option)
    if name is None:
        name = f"{ENVVAR_PREFIX}_{command}_{option}".upper().replace("-", "_").replace(".", "_")
    return name


def apply_envvar_rule(group: click.Group) -> None:
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
