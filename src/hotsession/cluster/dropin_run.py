"""A drop-in run on a node: ``hotsession-claude`` served where its session lives.

Design
======
The run is :class:`hotsession.dropin.bridge.DropinRun`, unchanged, on the host actor: it needs
the node's engine (the hub, its pool and sessions, a session's control delegate and its process
between turns), which only the node has. The API daemon keeps the WebSocket
(:mod:`hotsession.cluster.dropin`) and relays both ways; the run's :class:`Peer` is the seam:

* shim → run: the daemon calls :meth:`NodeDropins.dropin_input` with each stdin chunk or message
  (``{"eof": true}``), one call at a time, in order; ``None`` says the shim went away;
* run → shim: :meth:`NodeDropins.dropin` is an async generator (a Ray streaming generator, or
  pulled through ``hotsession.cluster.streams`` for a ``ray://`` daemon) that yields lists of
  ``(kind, payload)``: ``("b", bytes)`` a binary message (its first byte the channel), ``("j",
  dict)`` a text message (``ready``, ``exit``, ``exec``, ``error``); what is ready together goes
  as one item.

An input may reach the node before the run's ``dropin`` call does (two calls of one caller are
not ordered across methods): the run's inbox is made by whichever comes first.

Transcripts. A ``--resume ID`` (or a fork of ID) not hot on this node first writes ID's
transcript from the store into the node's config dir, as a re-homed session's is: the
conversation may have run on another node, or in a session closed since.

Ownership. A session the run opens here (a new conversation, or a ``--resume`` of one hot on no
node) is claimed in the store for this node (epoch 1), as :meth:`NodeHost.open` does, before any
turn of the run, so every daemon sees it and a node loss re-homes it like any session; a
``--resume`` of a conversation hot here takes the session this node already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from hotsession.dropin.bridge import Client, DropinRun, Peer
from hotsession.errors import HotsessionError
from hotsession.session import Session
from hotsession.transcripts.resume import materialize_transcript

if TYPE_CHECKING:
    from hotsession.cluster.node import NodeHost

log = logging.getLogger(__name__)

INBOX_IDLE_S = 60.0
"""An inbox whose run never started (its ``dropin`` call was lost) is dropped after this."""

Item = tuple[str, Any]


@dataclass
class _Inbox:
    """One run's stdin on the node, fed by ``dropin_input``."""

    queue: asyncio.Queue[bytes | dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    made: float = field(default_factory=time.monotonic)
    running: bool = False


class _NodeRun(DropinRun):
    """A :class:`DropinRun` whose new sessions are claimed for this node in the store, and
    whose prompts reach the CLI only once their fenced record is written (the node's check that
    it still owns the session, as for ``NodeHost.send``)."""

    gated = True

    def __init__(self, host: NodeHost, *args: Any) -> None:
        super().__init__(*args)
        self.host = host

    async def _open(self, options: Any) -> Session:
        resume = self.inv.resume
        hot = self._hot(resume) if resume is not None else None
        if resume is not None and hot is None:
            await self.host._fetch_transcript(self.client.tenant, str(options.cwd), resume)
        session = await super()._open(options)
        if hot is not None and hot is not session and hot.closed:
            # Its process was of another profile and ended (``DropinRun._open``): closed for
            # good, as ``NodeHost.close`` does, so this node no longer holds it.
            self.host.epochs.pop(hot.id, None)
        await self.host._own(session)
        return session


class NodeDropins:
    """The host actor's drop-in calls (a mixin of :class:`hotsession.cluster.node.NodeHost`)."""

    dropins_total: int = 0
    _dropin_inboxes: dict[str, _Inbox]

    def _inboxes(self) -> dict[str, _Inbox]:
        table: dict[str, _Inbox] | None = getattr(self, "_dropin_inboxes", None)
        if table is None:
            table = self._dropin_inboxes = {}
        now = time.monotonic()
        for run_id, box in list(table.items()):
            if not box.running and now - box.made > INBOX_IDLE_S:
                del table[run_id]
        return table

    def _inbox(self, run_id: str) -> _Inbox:
        table = self._inboxes()
        box = table.get(run_id)
        if box is None:
            box = table[run_id] = _Inbox()
        return box

    async def dropin_input(self, run_id: str, item: bytes | dict[str, Any] | None) -> bool:
        """Stdin of run ``run_id`` (bytes, or a message such as ``{"eof": true}``); ``None``:
        the shim went away. False when the run is over."""
        box = self._inboxes().get(run_id)
        if box is None:
            box = self._inbox(run_id)  # the run's own call has not come yet
        box.queue.put_nowait(item)
        return True

    async def dropin(
        self, run_id: str, client: dict[str, Any], hello: dict[str, Any]
    ) -> AsyncIterator[list[Item]]:
        """Serve one drop-in run here (see the module docstring); ``client``: the tenant, its
        reserved variables, and the run's cwd as the daemon resolved it (or why it could not)."""
        box = self._inbox(run_id)
        box.running = True
        out: asyncio.Queue[Item | None] = asyncio.Queue()

        async def receive() -> bytes | dict[str, Any] | None:
            return await box.queue.get()

        async def send_bytes(data: bytes) -> None:
            out.put_nowait(("b", data))

        async def send_json(obj: dict[str, Any]) -> None:
            out.put_nowait(("j", obj))

        cwd = client.get("cwd")
        refused = str(client.get("cwd_error") or "the run's cwd is not known")

        def resolve_cwd(_cwd: str) -> str:
            if not cwd:
                raise HotsessionError(refused)
            return str(cwd)

        who = Client(
            tenant=str(client["tenant"]),
            resolve_cwd=resolve_cwd,
            reserved=frozenset(client.get("reserved") or ()),
        )
        host = cast("NodeHost", self)  # this mixin's only class
        run = _NodeRun(host, host._hub(), who, Peer(receive, send_bytes, send_json), hello)
        self.dropins_total += 1

        async def serve() -> None:
            try:
                await run.serve()
            except Exception:
                log.exception("drop-in run failed")
                await send_json(
                    {
                        "error": {
                            "code": "internal",
                            "message": "internal error (a bug; see the node's log)",
                        }
                    }
                )
            finally:
                out.put_nowait(None)

        task = asyncio.create_task(serve(), name=f"dropin-{run_id}")
        try:
            while True:
                first = await out.get()
                if first is None:
                    return
                items = [first]
                ended = False
                while not out.empty():
                    nxt = out.get_nowait()
                    if nxt is None:
                        ended = True
                        break
                    items.append(nxt)
                yield items
                if ended:
                    return
        finally:
            self._inboxes().pop(run_id, None)
            if not task.done():
                # The daemon stopped reading (its shim left, or the daemon died): the run sees
                # its client gone; the session finishes the turn it runs.
                box.queue.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 30)

    async def _fetch_transcript(self, tenant: str, cwd: str, cli_session_id: str) -> bool:
        """Write conversation ``cli_session_id``'s transcript from the store into this node's
        config dir (the tenant's) before a ``--resume`` of it that is not hot here: it may have
        run on another node, or in a session closed since; whether the store held it."""
        host = cast("NodeHost", self)  # this mixin's only class
        if host.transcripts is None:
            return False
        with contextlib.suppress(Exception):
            await host.flush_transcripts()  # frames of this node not in the store yet
        try:
            path = await materialize_transcript(
                host.transcripts,
                cwd=cwd,
                session_id=cli_session_id,
                config_dir=host.tenants.config_dir(tenant) or host._config_dir(),
                write=host.tenants.writer(tenant),  # as the tenant's user, in its config dir
            )
        except ValueError:  # not a conversation id: the CLI answers it
            return False
        except HotsessionError as exc:  # the store: the CLI's own local transcript, if any
            log.warning("drop-in: transcript of %s not fetched (%s)", cli_session_id, exc)
            return False
        return path is not None

    async def _own(self, session: Session) -> None:
        """Claim a session a run opened here in the store (one this node holds: nothing)."""
        host = cast("NodeHost", self)  # this mixin's only class
        if session.id in host.epochs:
            return
        assert host.store is not None
        try:
            owner = await host.store.claim(session.id, host.name, expect_epoch=0)
        except HotsessionError:  # a fresh id cannot be claimed already; never drive it
            await host._drop(session.id)
            raise
        host.epochs[session.id] = owner.epoch
