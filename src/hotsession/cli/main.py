"""Entry point of the ``hotsession`` command; each family of subcommands lives in its own module.

``serve`` (cli/serve.py) runs the daemon; ``ask``, ``chat``, ``sessions``, ``pool``, ``warm``
(cli/commands.py) talk to it over the public HTTP API; ``bench`` (bench/) measures it. Only the
documented ``HOTSESSION_*`` variables are read (no automatic prefix: click's would make ``serve``
read ``HOTSESSION_SERVE_PORT`` too).
"""

from __future__ import annotations

import click

from hotsession import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hotsession")
def main() -> None:
    """hotsession: Claude Code sessions that answer instantly."""


# The subcommand modules register themselves on ``main`` when imported, so after it exists.
from hotsession.bench import command as _bench_command  # noqa: E402, F401
from hotsession.cli import commands as _commands  # noqa: E402, F401
from hotsession.cli import serve as _serve  # noqa: E402, F401
