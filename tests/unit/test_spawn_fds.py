"""An agent gets its three standard streams from the daemon and nothing else.

Found measuring idle CLIs (docs/benchmarks.md, "Idle CLIs"): the daemon's API socket is
inheritable (``hotsession.daemon.bind``, as uvicorn's own), and on uvloop, whose spawn (libuv's)
passes every inheritable descriptor on, each CLI held the daemon's listening socket: a process
running as a tenant's user could take the daemon's connections. The supervisor marks every
descriptor above the standard streams close-on-exec in the child, whatever the loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import uvloop

from hotsession.daemon import bind
from hotsession.supervisor import Supervisor
from hotsession.testing import fake_agent


def _inodes(pid: int) -> set[str]:
    out = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out


async def _child_holds_listener(cwd: Path) -> bool:
    listener = bind("127.0.0.1", 0)  # the daemon's API socket, inheritable as the daemon's
    plain = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(plain, True)  # any other inheritable descriptor of the daemon
    sup = Supervisor(spawn_timeout=10)
    try:
        agent = await sup.spawn(
            [sys.executable, "-S", fake_agent.__file__],
            cwd=str(cwd),
            env=dict(os.environ),
            label="fds",
        )
        try:
            held = _inodes(agent.pid)
            ours = {os.readlink(f"/proc/self/fd/{listener.fileno()}")}
            # /dev/null is also what a child's own streams may be: compare by descriptor number
            leaked_plain = os.path.exists(f"/proc/{agent.pid}/fd/{plain}") and os.readlink(
                f"/proc/{agent.pid}/fd/{plain}"
            ) == os.readlink(f"/proc/self/fd/{plain}")
            return bool(held & ours) or leaked_plain
        finally:
            await agent.close()
    finally:
        listener.close()
        os.close(plain)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_agent_holds_no_descriptor_of_the_daemon(tmp_path: Path, loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert not runner.run(_child_holds_listener(tmp_path))
