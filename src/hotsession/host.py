"""Where a session's process lives: the ``ProcessHost`` interface and its local implementation.

A session asks its host for a process (new conversation, or ``--resume`` of an existing one) and
gives it back when done. The local host spawns through the supervisor and, when a pool is
attached, hands out warm spares first. Cluster mode (:mod:`hotsession.cluster`) does not
implement this interface: each Ray node runs the whole engine, with its own local host, and
sessions are routed to a node above the hub; a host whose processes live on other machines would
implement this interface instead.

Leases. A CLI session id belongs to at most one session at a time, and that session drives at most
one process for it (two processes resuming one id would both append to the transcript and fork the
conversation). ``acquire`` takes the lease for a session; another session asking for the same id
gets ``LeaseConflict`` until it is released.

Spawn policy. Who a process runs as, its base environment and extra CLI flags may depend on the
session's tenant (hotsession.isolation: an OS user per tenant, per-tenant secrets, the Bash
sandbox). The host asks an optional ``SpawnPolicy`` for a ``SpawnPlan`` per tenant; without one
a process gets the daemon's own environment and user, as a single-user install always has.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hotsession.agent import AgentProcess
from hotsession.errors import (
    AgentStartError,
    ConversationNotFound,
    HotsessionError,
    LeaseConflict,
)
from hotsession.options import SessionOptions, build_argv, build_env

if TYPE_CHECKING:
    from hotsession.supervisor import RunAs, Supervisor

log = logging.getLogger(__name__)

# "spare-switched": a spare of a sibling profile, switched to this model / mode at claim time.
Source = Literal["spare", "spare-switched", "spawn", "resume", "warm"]


@dataclass
class Placement:
    """A process serving one session, and how it was obtained."""

    process: AgentProcess
    cli_session_id: str
    source: Source


@dataclass(frozen=True)
class SpawnPlan:
    """How a tenant's processes are started: environment base, extra argv, OS identity."""

    env: Mapping[str, str] | None = None  # None: the daemon's own environment
    extra_argv: tuple[str, ...] = ()
    run_as: RunAs | None = None  # None: the daemon's own user
    # Moves tenant-private flag values (system prompt, MCP config, settings, …) off the
    # command line, which every user can read, into files only the tenant's user can.
    flag_files: FlagFiles | None = None


class FlagFiles(Protocol):
    """Flag values in files (implemented by hotsession.isolation.argfiles)."""

    def externalize(self, argv: Sequence[str]) -> tuple[list[str], Callable[[], None]]:
        """``argv`` with values moved to files; the release to call once the process exited."""


class SpawnPolicy(Protocol):
    """Per-tenant spawn plans (implemented by hotsession.isolation)."""

    def plan(self, tenant: str) -> SpawnPlan:
        """The plan for processes of ``tenant``."""

    def config_dir(self, tenant: str) -> str | None:
        """The tenant's ``CLAUDE_CONFIG_DIR`` (its transcripts), None for the daemon's default."""


class SpareProvider(Protocol):
    """What the local host needs of a warm pool."""

    async def claim(self, options: SessionOptions) -> Placement | None:
        """A ready spare of this profile, or None (a miss)."""

    def note_spawn(self, options: SessionOptions, seconds: float) -> None:
        """A direct spawn of this profile took ``seconds`` (cold-start estimate)."""


class ProcessHost(Protocol):
    """Gives sessions their processes."""

    async def start_new(
        self, options: SessionOptions, *, session_id: str, cli_session_id: str | None = None
    ) -> Placement:
        """A process for a new conversation (a spare when one is ready)."""

    async def start_resume(
        self,
        options: SessionOptions,
        *,
        session_id: str,
        cli_session_id: str,
        fork_to: str | None = None,
    ) -> Placement:
        """A process continuing ``cli_session_id`` (copied to ``fork_to`` when forking)."""

    async def retire(self, placement: Placement, *, busy: bool = False) -> None:
        """End the process."""

    def release(self, session_id: str, cli_session_id: str) -> None:
        """The session no longer holds the CLI session id."""


class LocalHost:
    """Processes on this machine, spawned by the supervisor (or taken from the pool)."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        cli_path: str,
        allow_root_bypass: bool = False,
        policy: SpawnPolicy | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.cli_path = cli_path
        self.allow_root_bypass = allow_root_bypass
        self.policy = policy
        self.pool: SpareProvider | None = None
        self.session_mirror = False  # start CLIs with --session-mirror (cluster mode)
        self._leases: dict[str, str] = {}

    # -- leases --------------------------------------------------------------------------------

    def acquire(self, session_id: str, cli_session_id: str) -> None:
        """Take the lease of ``cli_session_id`` for ``session_id``."""
        holder = self._leases.get(cli_session_id)
        if holder is not None and holder != session_id:
            raise LeaseConflict(
                "that Claude Code session is in use by another hotsession session",
                cli_session_id=cli_session_id,
            )
        self._leases[cli_session_id] = session_id

    def release(self, session_id: str, cli_session_id: str) -> None:
        """Give the lease back (only its holder can)."""
        if self._leases.get(cli_session_id) == session_id:
            del self._leases[cli_session_id]

    def lease_holder(self, cli_session_id: str) -> str | None:
        """The session holding a CLI session id."""
        return self._leases.get(cli_session_id)

    # -- processes -----------------------------------------------------------------------------

    async def spawn(
        self,
        options: SessionOptions,
        *,
        role: str,
        session_id: str | None,
        cli_session_id: str,
        resume: bool = False,
        fork_from: str | None = None,
    ) -> AgentProcess:
        """Spawn a CLI process for these options (no lease handling).

        A resume the CLI refuses for want of the conversation counts as a refusal, not a spawn
        failure (``spawn_refusals_total``): an alert on spawn failures must not fire on a typo.
        """
        mirror = self.session_mirror
        if fork_from is not None:
            argv = build_argv(
                self.cli_path,
                options,
                resume=fork_from,
                fork=True,
                session_id=cli_session_id,
                session_mirror=mirror,
            )
        elif resume:
            argv = build_argv(self.cli_path, options, resume=cli_session_id, session_mirror=mirror)
        else:
            argv = build_argv(
                self.cli_path, options, session_id=cli_session_id, session_mirror=mirror
            )
        plan = self.policy.plan(options.tenant) if self.policy is not None else SpawnPlan()
        env = build_env(
            options,
            base=plan.env,
            allow_root_bypass=self.allow_root_bypass,
            as_root=None if plan.run_as is None else plan.run_as.uid == 0,
        )
        argv = [*argv, *plan.extra_argv]
        initialize = json.loads(options.initialize) if options.initialize else None
        release = None
        if plan.flag_files is not None:
            argv, release = plan.flag_files.externalize(argv)
        return await self.supervisor.spawn(
            argv,
            cwd=options.cwd,
            env=env,
            label=f"{role}:{session_id or cli_session_id[:8]}",
            role=role,
            session_id=session_id,
            cli_session_id=cli_session_id,
            run_as=plan.run_as,
            initialize=initialize,
            on_exit=release,
            refusal=is_unknown_conversation if resume or fork_from is not None else None,
        )

    async def start_new(
        self, options: SessionOptions, *, session_id: str, cli_session_id: str | None = None
    ) -> Placement:
        """A spare when one is ready (its pre-generated id is adopted), else a direct spawn."""
        if cli_session_id is None and self.pool is not None:
            placement = await self.pool.claim(options)
            if placement is not None:
                self.acquire(session_id, placement.cli_session_id)
                return placement
        cli_id = cli_session_id or str(uuid.uuid4())
        self.acquire(session_id, cli_id)
        began = time.monotonic()
        try:
            proc = await self.spawn(
                options, role="session", session_id=session_id, cli_session_id=cli_id
            )
        except BaseException:
            self.release(session_id, cli_id)
            raise
        if self.pool is not None:
            self.pool.note_spawn(options, time.monotonic() - began)
        return Placement(proc, cli_id, "spawn")

    async def start_resume(
        self,
        options: SessionOptions,
        *,
        session_id: str,
        cli_session_id: str,
        fork_to: str | None = None,
    ) -> Placement:
        """Spawn ``--resume`` (or a fork) in the session's original cwd."""
        target = fork_to or cli_session_id
        self.acquire(session_id, target)
        try:
            proc = await self.spawn(
                options,
                role="session",
                session_id=session_id,
                cli_session_id=target,
                resume=fork_to is None,
                fork_from=cli_session_id if fork_to else None,
            )
        except AgentStartError as exc:
            self.release(session_id, target)
            raise not_found_on_resume(exc, cli_session_id) from exc
        except BaseException:
            self.release(session_id, target)
            raise
        return Placement(proc, target, "resume")

    async def retire(self, placement: Placement, *, busy: bool = False) -> None:
        """End a session's process (the lease stays with the session)."""
        try:
            await placement.process.close(busy=busy)
        except Exception:  # close() is bounded and escalates to SIGKILL; a bug lands here
            log.exception("host: cannot end process %s", placement.process.pid)

    def child_pids(self) -> Collection[int]:
        """The pids of every live child process (sessions' and spares'), a live view."""
        return self.supervisor.children.keys()

    def stats(self) -> dict[str, Any]:
        """Counters of the host."""
        return {
            "children": len(self.supervisor.children),
            "spawned_total": self.supervisor.spawned_total,
            "spawn_failures_total": self.supervisor.spawn_failures_total,
            "spawn_refusals_total": self.supervisor.spawn_refusals_total,
            "leases": len(self._leases),
        }


# What the CLI says when ``--resume`` names a conversation it does not have.
_NO_CONVERSATION = "No conversation found with session ID"


def is_unknown_conversation(exc: AgentStartError) -> bool:
    """Whether the CLI refused a resume because it has no such conversation."""
    return _NO_CONVERSATION in f"{exc.message}\n{exc.stderr_tail or ''}"


def not_found_on_resume(exc: AgentStartError, cli_session_id: str) -> HotsessionError:
    """A resume the CLI refused because it has no such conversation is the caller's error
    (``ConversationNotFound``, 404), not a failed start (502); other failures stay as they are."""
    if is_unknown_conversation(exc):
        return ConversationNotFound(
            f"no Claude Code conversation {cli_session_id} to resume", cli_session_id=cli_session_id
        )
    return exc
