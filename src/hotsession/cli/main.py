"""Entry point of the ``hotsession`` command; each family of subcommands lives in its own module.

``serve`` (cli/serve.py) runs the daemon; ``ask``, ``chat``, ``sessions``, ``pool``, ``warm``
(cli/commands.py) talk to it over the public HTTP API; ``bench`` (bench/) measures it. Only the
documented ``HOTSESSION_*`` variables are read (no automatic prefix: click's would make ``serve``
read ``HOTSESSION_SERVE_PORT`` too).
"""

from __future__ import annotations

import importlib

import click

from hotsession import __version__

# Subcommand modules register themselves on ``main``; a module that is missing (not built yet)
# simply contributes no commands.
_COMMAND_MODULES = ("hotsession.cli.serve", "hotsession.cli.commands", "hotsession.bench.command")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hotsession")
def main() -> None:
    """hotsession: Claude Code sessions that answer instantly."""


for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:
        if exc.name != _name and not _name.startswith(str(exc.name)):
            raise
