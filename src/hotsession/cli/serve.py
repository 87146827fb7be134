"""``hotsession serve``: run the daemon (HTTP + SSE API, warm pool, dashboard).

Flags override ``HOTSESSION_*`` environment variables, which override the ``--config`` TOML
file (see hotsession.settings and docs/api.md). Every setting is a flag: they are made from the
settings models (``hotsession.config.Config`` and ``hotsession.settings.DaemonSettings``), so a
new setting gets its flag, its variable and its file key at once. Numbers are read as text and
checked by the models, so ``none`` clears an optional one (``--memory-budget-mb none``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from hotsession.cli.main import main
from hotsession.errors import HotsessionError
from hotsession.settings import (
    SettingsError,
    is_optional,
    load_settings,
    setting_fields,
    value_type,
)

_F = TypeVar("_F", bound=Callable[..., Any])
# Shown first in --help; the rest follow in the models' order.
_FIRST = ("host", "port", "state_dir", "cli_path", "log_level")


def flag_name(setting: str) -> str:
    """``pool_max`` -> ``--pool-max``."""
    return "--" + setting.replace("_", "-")


# Defaults that are not a plain value.
_DEFAULT_TEXT = {"state_dir": "~/.local/state/hotsession", "cli_path": "the bundled CLI"}


def _default_text(name: str, info: Any) -> str:
    if name in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[name]
    if info.default is None:
        return "none"
    if isinstance(info.default, bool):
        return str(info.default).lower()
    return str(info.default)


def setting_options(f: _F) -> _F:
    """One option per setting: ``--name VALUE`` (``--name/--no-name`` for a switch)."""
    fields = setting_fields()
    names = [*_FIRST, *(n for n in fields if n not in _FIRST)]
    for name in reversed(names):
        info = fields[name]
        kind = value_type(name)
        help_text = f"{info.description or ''}  [default: {_default_text(name, info)}]"
        if kind is bool:
            flag = f"{flag_name(name)}/--no-{flag_name(name)[2:]}"
            f = click.option(flag, name, default=None, help=help_text)(f)
            continue
        metavar = {int: "INT", float: "NUMBER"}.get(
            kind, "PATH" if name.endswith("dir") else "TEXT"
        )
        if is_optional(name) and kind in (int, float):
            metavar += "|none"
        f = click.option(flag_name(name), name, default=None, metavar=metavar, help=help_text)(f)
    return f


@main.command()
@setting_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="HOTSESSION_CONFIG",
    help="TOML file: tenants and any setting (env HOTSESSION_CONFIG).",
)
def serve(config_file: str | None, **flags: Any) -> None:
    """Run the hotsession daemon.

    Every setting is a flag here, a HOTSESSION_<SETTING> environment variable and a key of the
    --config file (flags > environment > file > defaults; docs/api.md, "Configuration").
    """
    from hotsession import daemon

    try:
        settings = load_settings(config_file, flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        code = daemon.run(settings)
    except HotsessionError as exc:
        click.echo(f"hotsession: {exc.message}", err=True)
        sys.exit(1)
    sys.exit(code)
