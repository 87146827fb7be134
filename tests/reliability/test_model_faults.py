"""Faults of the model API (the scripted model server fails, stalls, hangs or cuts the stream).

A model error is not an engine error: the CLI ends the turn with a ``result`` whose ``is_error``
is true, the process stays, and the next turn carries the whole conversation. A hang is caught by
the watchdog. 5xx/529 and cut streams are retried by the CLI with backoff (about 3 minutes in
all), so those sessions run with ``CLAUDE_CODE_MAX_RETRIES=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability.faultloop import fault_loop

from hotsession import Hotsession
from hotsession.testing.faults import Conversation, Ledger, outcome

ONE_RETRY = {"env": {"CLAUDE_CODE_MAX_RETRIES": "1"}}


@pytest.mark.parametrize(
    ("directive", "fault", "n", "expect", "options"),
    [
        ("[[error:400]]", "model API answers 400", 8, "result:is_error", None),
        (
            "[[error:529]]",
            "model API overloaded (529), retried once",
            3,
            "result:is_error",
            ONE_RETRY,
        ),
        ("[[cut]]", "model stream cut mid-response, retried once", 3, "result:is_error", ONE_RETRY),
        ("[[stall:1000]]", "model stream stalls 1 s mid-response", 5, "result", None),
        ("[[hang]]", "model stream hangs (watchdog_s=3)", 3, "error:agent_timeout", None),
    ],
    ids=["400", "529", "cut", "stall", "hang"],
)
async def test_model_fault(
    hub: Hotsession,
    model_server,
    ledger: Ledger,
    workdir: Path,
    directive: str,
    fault: str,
    n: int,
    expect: str,
    options: dict[str, object] | None,
):
    processes: set[int] = set()

    async def inject(conv: Conversation) -> str:
        proc = conv.session.process
        events = await conv.turn(f"{directive} [[say:unused]]")
        if expect.startswith("result") and proc is not None:
            processes.add(proc.pid)
            assert conv.session.process is proc  # a model error costs no process
        return outcome(events[-1])

    await fault_loop(
        hub,
        model_server,
        ledger,
        workdir,
        fault=fault,
        how=f"`{directive}` in the prompt",
        n=n,
        inject=inject,
        expect={expect},
        options=options,
    )
    if expect.startswith("result"):
        assert len(processes) == 1  # one process served every injection
