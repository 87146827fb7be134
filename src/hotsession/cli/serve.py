"""``hotsession serve``: run the daemon (HTTP + SSE API, warm pool, dashboard).

Flags override ``HOTSESSION_*`` environment variables, which override the ``--config`` TOML
file (see hotsession.settings and docs/api.md).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from hotsession.cli.main import main
from hotsession.errors import HotsessionError
from hotsession.settings import SettingsError, load_settings


@main.command()
@click.option("--host", default=None, help="Address to bind [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to bind; 0 picks one [8765].")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Registry, token and logs [~/.local/state/hotsession].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="HOTSESSION_CONFIG",
    help="TOML file: tenants, pool and memory settings.",
)
@click.option("--cli-path", default=None, help="Claude Code binary [the bundled one].")
@click.option("--memory-budget-mb", type=float, default=None, help="Memory for all agents.")
@click.option("--agent-memory-cap-mb", type=float, default=None, help="Recycle an agent above.")
@click.option("--agent-max-turns", type=int, default=None, help="Recycle an agent after N turns.")
@click.option("--agent-max-age-s", type=float, default=None, help="Recycle an agent this old.")
@click.option("--keep-alive-s", type=float, default=None, help="Idle time before eviction.")
@click.option("--pool-max", type=int, default=None, help="Most spares per profile.")
@click.option("--prompt-limit-bytes", type=int, default=None, help="Largest prompt accepted.")
@click.option(
    "--allow-root-bypass/--no-allow-root-bypass",
    default=None,
    help="Allow bypassPermissions when running as root (sets IS_SANDBOX=1 for agents).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log verbosity [info].",
)
def serve(config_file: str | None, **flags: Any) -> None:
    """Run the hotsession daemon."""
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
