"""The fault loop every fault test runs: inject N times, check recovery, count losses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from hotsession import Hotsession
from hotsession.testing.faults import Conversation, Ledger, Tally
from hotsession.testing.model_server import ModelServer

Inject = Callable[[Conversation], Awaitable[str]]


async def fault_loop(
    hub: Hotsession,
    server: ModelServer,
    ledger: Ledger,
    workdir: Path,
    *,
    fault: str,
    how: str,
    n: int,
    inject: Inject,
    expect: Collection[str],
    options: dict[str, Any] | None = None,
) -> Tally:
    """Inject ``fault`` ``n`` times into one session while a bystander session works.

    Per injection: the bystander runs a turn at the same time (it must end with a result, on the
    same process); the client's outcome of the faulted turn must be in ``expect``; the next turn
    of the faulted session must succeed and reach the model with more messages than before the
    fault (full context). At the end, every event both clients received must replay identically,
    from this engine and from a fresh engine opened on the same state directory.
    """
    opts = {"permission_mode": "bypassPermissions", **(options or {})}
    conv = Conversation(await hub.open(workdir, **opts), server)
    bystander = Conversation(await hub.open(workdir, permission_mode="bypassPermissions"), server)
    tally = ledger.tally(fault, how)
    before = await conv.probe("first")
    assert before > 0, "the session did not work before any fault"
    failures: list[str] = []
    for i in range(n):
        by_proc = bystander.session.process
        by_turn = bystander.session.send("[[delay:100]] [[say:bystander]]")
        seen = await inject(conv)
        tally.injected += 1
        tally.client_saw[seen] += 1
        by_events = await bystander.collect(by_turn)
        by_ok = (
            by_events[-1].type == "result"
            and not by_events[-1].data.get("is_error")
            and bystander.session.process is by_proc
        )
        after = await conv.probe(f"after-{i}")
        if seen in expect and after > before and by_ok:
            tally.recovered += 1
        else:
            failures.append(f"#{i}: saw {seen}, context {before}->{after}, bystander ok={by_ok}")
        before = max(before, after)
    lost = await conv.lost() + await bystander.lost()
    await hub.stop()
    async with Hotsession(hub.config) as again:
        lost += await conv.lost(again.get(conv.session.id))
        lost += await bystander.lost(again.get(bystander.session.id))
    tally.lost += lost
    assert failures == [], failures
    assert tally.lost == 0
    return tally
