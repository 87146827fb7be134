"""``/v1/dropin`` on a cluster-mode daemon: ``hotsession-claude`` runs served on a node.

Design
======
Where the run is. A drop-in run (:class:`hotsession.dropin.bridge.DropinRun`) needs the engine
of the machine its session lives on, so it runs on that node's host actor
(:mod:`hotsession.cluster.dropin_run`); this daemon keeps the shim's WebSocket, authenticates it
as one machine does (:func:`hotsession.api.dropin.accept_run`: the same hello, token, roots) and
relays both ways: each stdin chunk or message is one actor call (``dropin_input``, one at a time,
in order), the run's messages come back as one streaming call (``dropin``: Ray's streaming
generator, pulled through :mod:`hotsession.cluster.streams` for a ``ray://`` daemon).

Which node. ``--resume ID`` (not ``--fork-session``): the node that owns the open session whose
conversation is ID, found in the store (the registry every daemon shares), so a follow-up goes
to the process that is hot there. Otherwise (a new conversation, a fork, a ``--resume`` of a
conversation open on no node, whose transcript the node then writes from the store,
``--continue``) placement as for a new session: a node with a ready spare of the run's profile,
else the most memory headroom. The profile is the one the node will make
(:func:`hotsession.dropin.bridge.run_options`: argv, environment, and the SDK's ``initialize``
when it came with the hello, as the shim sends what stdin held when it connected); a run whose
first line is not known yet is placed by headroom alone.
``--continue`` looks for the newest transcript of the cwd in that node's config dir, which holds
only what ran there.

Node loss. A node found lost before the run answered (this daemon still thought it alive: the
first call to it fails) is marked lost, its sessions re-homed, and the run starts again on the
node chosen then, with the stdin the shim had sent (kept until the run's first answer; nothing
ran before it). A node lost once the run answered: one stderr line, exit 1; its running turn
ends ``node_lost`` as any there, and the next ``--resume`` continues the conversation where it
was re-homed. No live node: the run is refused with ``node_lost`` (one stderr line, exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket

from hotsession.api.auth import resolve_cwd
from hotsession.api.dropin import accept_run, refuse, reserved_env
from hotsession.cluster.hub import LOST, ROUTE_TRIES, ClusterHub
from hotsession.cluster.placement import choose
from hotsession.cluster.streams import cancel_stream, remote_stream
from hotsession.cluster.wire import NodeLost
from hotsession.dropin import argv as cli_argv
from hotsession.dropin.bridge import Client, run_options
from hotsession.errors import HotsessionError
from hotsession.settings import Tenant

log = logging.getLogger(__name__)

router = APIRouter()


@router.websocket("/v1/dropin")
async def dropin(websocket: WebSocket) -> None:
    """One ``hotsession-claude`` run, served on a node (see the module docstring)."""
    api = websocket.app.state.api
    hub: ClusterHub = api.hub
    accepted = await accept_run(websocket, api.auth, closing=lambda: api.is_closing)
    if accepted is None:
        return
    tenant, hello, receive, early = accepted
    client: dict[str, Any] = {"tenant": tenant.name, "reserved": sorted(reserved_env(tenant))}
    client.update(_cwd(tenant, hello))
    profile = _profile(tenant.name, client, hello, early)
    try:
        node = await choose_node(hub, tenant.name, hello, profile)
    except HotsessionError as exc:
        await refuse(websocket, exc)
        return
    stdin = _Stdin(receive)
    reading = asyncio.create_task(stdin.read(), name="dropin-stdin")
    try:
        for attempt in range(ROUTE_TRIES):
            try:
                await _relay(websocket, hub, node, client, hello, stdin)
                break
            except LOST:
                await hub.node_lost(node)
                if stdin.started or attempt == ROUTE_TRIES - 1:
                    # The run had begun there: its turn ends ``node_lost`` as any on that node.
                    with contextlib.suppress(Exception):
                        await websocket.send_bytes(
                            b"\x02hotsession-claude: the node serving this run was lost; "
                            b"the conversation continues on another node at the next --resume\n"
                        )
                        await websocket.send_text(json.dumps({"exit": 1}))
                    break
                try:  # nothing ran yet: the run again, on another node, with the same stdin
                    node = await choose_node(hub, tenant.name, hello, profile)
                except HotsessionError as exc:
                    await refuse(websocket, exc)
                    return
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading
    with contextlib.suppress(Exception):  # the shim may be gone already
        await websocket.close()


class _Stdin:
    """The shim's stdin, read once, relayed to the run's node; kept until the run answers
    (``started``), so a run whose node was lost before then starts again elsewhere with it."""

    def __init__(self, receive: Any) -> None:
        self.receive = receive
        self.items: list[bytes | dict[str, Any] | None] = []
        self.base = 0  # the index in the whole stdin of ``items[0]``
        self.more = asyncio.Event()
        self.started = False

    async def read(self) -> None:
        while True:
            item = await self.receive()
            self.items.append(item)
            self.more.set()
            if item is None:
                return

    def begun(self) -> None:
        """The run answered: what it had is not needed again."""
        self.started = True

    async def forward(self, actor: Any, run_id: str) -> None:
        """Shim → node, in order, from the start; ``None`` (the shim went away) ends it."""
        sent = self.base
        while True:
            while sent - self.base >= len(self.items):
                self.more.clear()
                await self.more.wait()
            item = self.items[sent - self.base]
            sent += 1
            if self.started:  # nothing is replayed once the run answered: forget what went
                del self.items[: sent - self.base]
                self.base = sent
            await actor.dropin_input.remote(run_id, item)
            if item is None:
                return


async def _relay(
    websocket: WebSocket,
    hub: ClusterHub,
    node: str,
    client: dict[str, Any],
    hello: dict[str, Any],
    stdin: _Stdin,
) -> None:
    """One attempt at the run on ``node``: returns when it ended (or the shim left); raises
    one of ``LOST`` when the node was lost."""
    run_id = uuid.uuid4().hex
    actor = hub.actor(node)
    gen = remote_stream(actor, "dropin", run_id, client, hello)
    pump = asyncio.create_task(stdin.forward(actor, run_id), name="dropin-stdin-relay")
    done = False
    try:
        async for ref in gen:
            items = await ref
            stdin.begun()
            for kind, payload in items:
                if kind == "b":
                    await websocket.send_bytes(payload)
                else:
                    await websocket.send_text(json.dumps(payload))
        done = True
    except LOST:
        done = True  # nothing to cancel on a lost node
        raise
    except Exception:  # the shim went away (a send failed), or a bug
        log.debug("drop-in relay ended", exc_info=True)
    finally:
        if not done:
            cancel_stream(gen)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


def _cwd(tenant: Tenant, hello: dict[str, Any]) -> dict[str, str]:
    """The run's cwd resolved against the tenant's roots (or why not, said by the run on the
    node: a ``--version`` needs none)."""
    try:
        return {"cwd": resolve_cwd(tenant, str(hello.get("cwd") or ""))}
    except HotsessionError as exc:
        return {"cwd_error": exc.message}


def _profile(tenant: str, client: dict[str, Any], hello: dict[str, Any], early: bytes) -> str:
    """The run's profile key as its node will make it (``bridge.run_options``), from the argv,
    the environment and the first stdin line the shim sent with its hello (an SDK's
    ``initialize``); "" when it cannot tell (placement then goes by headroom alone)."""
    cwd = client.get("cwd")
    if not cwd:
        return ""
    inv = cli_argv.parse([str(a) for a in hello.get("argv") or []])
    first: dict[str, Any] | None = None
    if inv.streaming_input:
        line, newline, _ = early.partition(b"\n")
        if not newline:
            return ""  # its initialize is not known yet
        try:
            parsed = json.loads(line)
        except ValueError:
            return ""
        first = parsed if isinstance(parsed, dict) else None
    who = Client(tenant, lambda path: path, frozenset(client.get("reserved") or ()))
    try:
        options, _ = run_options(inv, hello, who, str(cwd), first, {})
    except (HotsessionError, ValueError, TypeError):
        return ""
    return options.profile_key()


async def choose_node(
    hub: ClusterHub, tenant: str, hello: dict[str, Any], profile: str = ""
) -> str:
    """The node that serves a run (see the module docstring); ``profile``: a new run's profile
    key (a node with a ready spare of it is chosen first, as for a new session)."""
    if hub.shutting_down:
        raise HotsessionError("the service is shutting down")
    inv = cli_argv.parse([str(a) for a in hello.get("argv") or []])
    if inv.resume is not None and not inv.fork:
        for rec in await hub.registry.list_sessions(tenant):
            if rec.cli_session_id != inv.resume or rec.state == "closed":
                continue
            with contextlib.suppress(HotsessionError):
                owner = await hub.owner(rec.id, fresh=True)
                node = hub.nodes.get(owner.node)
                if node is not None and node.alive:
                    return owner.node
                owner = await hub.rehome(rec.id, lost=owner.node or None)
                return owner.node
    target = choose((n.figures for n in hub.live_nodes()), profile)
    if target is None:
        raise NodeLost("no live node can serve the run")
    return target.node
