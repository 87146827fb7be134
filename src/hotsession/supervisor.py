"""The supervisor: the one owner of every Claude Code child process.

Design
======
Only this module spawns, signals and reaps agent processes; the pool and the sessions ask it to.
All live children are in one dict (``children``), so shutdown and the stats see every one.

Dying with the daemon. Each child is started in its own session (so it leads a process group
that contains the tools it runs) with ``PR_SET_PDEATHSIG = SIGKILL``: if the daemon dies, even by
``kill -9``, the kernel kills the CLI at once instead of letting it finish its turn (measured:
~10 ms instead of the rest of the turn). An ``atexit`` hook kills the groups of children still
alive at a normal interpreter exit (uvicorn's forced exit skips lifespan teardown). Last resort,
every child is recorded in the registry with its start time; a restarted daemon kills recorded
processes that are still alive (``sweep_orphans``) — the start time guards against pid reuse.

Tools outlive a crashed CLI. The CLI runs each Bash command in a session of its own, so ending the
CLI's process group does not reach them; when a CLI dies by ``kill -9`` its running tools are
re-parented to init and go on (writing in the cwd). Every child therefore gets a unique tag in its
environment (``HOTSESSION_AGENT=<daemon pid>:<random>``), which its tools inherit; when a child
exits, the processes carrying its tag are killed, and at start-up ``sweep_orphans`` kills tagged
processes whose daemon is gone.

Another user. A child may run as another OS user (``RunAs``: a tenant's account, see
hotsession.isolation). The switch happens in the child between fork and exec, in this order:
join the tenant's cgroups (as root), set groups, gid, uid, then lower the rlimits and set the
parent-death signal (the kernel clears it on a uid change, so it must come after). Process
groups, signals and the orphan sweep work unchanged: the daemon is root, and root may signal
and read the environment of any process.

Only the standard streams. A child gets stdin, stdout and stderr of its own and no other
descriptor of the daemon: between fork and exec every descriptor above 2 is marked close-on-exec.
asyncio's spawn closes them anyway (``close_fds``), uvloop's (libuv's) passes every inheritable
one on, and the daemon's API socket is inheritable (``hotsession.daemon.bind``): each CLI held
the daemon's listening socket, which a process of a tenant's user could take connections from
(found measuring idle CLIs, docs/benchmarks.md "Idle CLIs"; test in tests/unit/test_spawn_fds.py).

Exit hooks. ``spawn(on_exit=…)`` runs a clean-up once the process has exited and been reaped
(or at once when it could not be started): the host uses it to remove the files its argv names
(hotsession.isolation.argfiles), so nothing of a tenant outlives its process.

Spawn readiness. ``spawn`` returns only after the control protocol's ``initialize`` is answered,
and raises ``AgentStartError`` (with the stderr tail) if the process dies or does not answer in
time; a half-started process is always killed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import logging
import os
import resource
import secrets
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from hotsession.agent import AgentProcess, MirrorSink
from hotsession.errors import AgentError, AgentStartError
from hotsession.registry import ProcessRecord, Registry

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
AGENT_TAG_ENV = "HOTSESSION_AGENT"
_ALL_CHILDREN: set[int] = set()  # pids, for the atexit reaper (all supervisors of the process)


@dataclass(frozen=True)
class RunAs:
    """The OS identity a child runs as, and the limits it starts under (the daemon is root)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    # (resource, limit) pairs set as soft and hard limit after the switch, e.g. RLIMIT_NPROC.
    rlimits: tuple[tuple[int, int], ...] = ()
    # ``cgroup.procs`` files the child writes itself into before it drops root.
    cgroups: tuple[str, ...] = ()


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    _close_daemon_fds_at_exec()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # pragma: no cover - non-Linux: the atexit reaper and sweep remain
        pass


def _close_daemon_fds_at_exec() -> None:  # runs in the child between fork and exec
    """Mark every descriptor above the standard streams close-on-exec (see the docstring)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # pragma: no cover - no /proc: asyncio's own spawn closes them (close_fds)
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            # Not closed here: the loop's own pipes (uvloop's error pipe, libuv's exec-status
            # pipe) must live until the exec, which then closes them with the rest.
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)


def _become(run_as: RunAs) -> Callable[[], None]:
    """The child's set-up for ``run_as`` (runs between fork and exec; see the docstring)."""

    def setup() -> None:
        for procs in run_as.cgroups:
            with open(procs, "w") as f:
                f.write("0")
        os.setgroups(list(run_as.groups))
        os.setresgid(run_as.gid, run_as.gid, run_as.gid)
        os.setresuid(run_as.uid, run_as.uid, run_as.uid)
        for res, limit in run_as.rlimits:
            resource.setrlimit(res, (limit, limit))
        _set_pdeathsig()

    return setup


@atexit.register
def _kill_children_at_exit() -> None:
    for pid in list(_ALL_CHILDREN):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class Supervisor:
    """Spawns agent processes, keeps track of them, ends them."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        max_line_bytes: int = 64 * 1024 * 1024,
        spawn_timeout: float = 60.0,
    ) -> None:
        self.registry = registry
        self.max_line_bytes = max_line_bytes
        self.spawn_timeout = spawn_timeout
        self.children: dict[int, AgentProcess] = {}
        self.spawned_total = 0
        self.spawn_failures_total = 0
        # Starts the CLI refused because of what the caller asked (``spawn``'s ``refusal``): a
        # resume of a conversation it does not have is a client's typo, not a failed spawn.
        self.spawn_refusals_total = 0
        self._watchers: set[asyncio.Task[None]] = set()
        self._tags: dict[int, str] = {}  # pid -> the HOTSESSION_AGENT tag its tools inherit
        self._exit_hooks: dict[int, Callable[[], None]] = {}  # pid -> spawn's ``on_exit``
        self._oom_kills = oom_kill_count()  # evidence before a SIGKILL is blamed on memory
        # Where the transcript frames of CLIs started with ``--session-mirror`` go (cluster mode).
        self.mirror_sink: MirrorSink | None = None

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        label: str,
        role: str = "session",
        session_id: str | None = None,
        cli_session_id: str | None = None,
        run_as: RunAs | None = None,
        initialize: Mapping[str, Any] | None = None,
        on_exit: Callable[[], None] | None = None,
        refusal: Callable[[AgentStartError], bool] | None = None,
    ) -> AgentProcess:
        """Start a CLI process and complete ``initialize``; raise ``AgentStartError`` on failure.

        ``run_as``: start it as another OS user (the daemon must be root). ``initialize``: more
        fields of the ``initialize`` request (agents, system prompt, …; a drop-in client's).
        ``on_exit``: called once the process has exited and been reaped, or at once when it
        could not be started (it removes the files the argv names, hotsession.isolation.argfiles).
        ``refusal``: true of a failed start that is the caller's error (the CLI exited because of
        what was asked): counted in ``spawn_refusals_total``, not ``spawn_failures_total``.
        """
        try:
            if not os.path.isdir(cwd):
                raise AgentStartError(f"working directory does not exist: {cwd}")
            agent = await self._start(argv, cwd=cwd, env=env, label=label, run_as=run_as)
        except BaseException:
            if on_exit is not None:
                _call_exit_hook(on_exit, label)
            raise
        if on_exit is not None:
            self._exit_hooks[agent.pid] = on_exit
        await self._record(agent, role=role, session_id=session_id, cli_session_id=cli_session_id)
        try:
            await agent.initialize(timeout=self.spawn_timeout, fields=initialize)
        except AgentError as exc:
            error = await self._start_failed(agent, exc)
            if refusal is not None and refusal(error):
                self.spawn_refusals_total += 1
            else:
                self.spawn_failures_total += 1
            raise error from exc
        except BaseException:
            agent.kill()
            raise
        return agent

    async def _start(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        label: str,
        run_as: RunAs | None,
    ) -> AgentProcess:
        """Start the process (its own group, tagged, dying with the daemon) and adopt it."""
        tag = f"{os.getpid()}:{secrets.token_hex(8)}"
        loop = asyncio.get_running_loop()
        try:
            # The process object is the pipes' protocol: it reads stdout chunk by chunk.
            _, agent = await loop.subprocess_exec(
                functools.partial(AgentProcess, label=label, max_line_bytes=self.max_line_bytes),
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env={**env, AGENT_TAG_ENV: tag},
                start_new_session=True,
                preexec_fn=_set_pdeathsig if run_as is None else _become(run_as),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.spawn_failures_total += 1
            raise AgentStartError(f"cannot start the Claude Code CLI: {exc}") from exc
        agent.on_mirror = self.mirror_sink
        self._tags[agent.pid] = tag
        self._adopt(agent)
        self.spawned_total += 1
        return agent

    async def _record(
        self, agent: AgentProcess, *, role: str, session_id: str | None, cli_session_id: str | None
    ) -> None:
        """Record the process for a restarted daemon's orphan sweep (a failure is logged)."""
        if self.registry is None:
            return
        try:
            await self.registry.put_process(
                ProcessRecord(
                    pid=agent.pid,
                    create_time=_create_time(agent.pid),
                    role=role,
                    session_id=session_id,
                    cli_session_id=cli_session_id,
                )
            )
        except Exception:
            # The process runs regardless; only a restarted daemon's orphan sweep misses it
            # (the parent-death signal and the agent tag still end it).
            log.exception(
                "cannot record agent process %s (%s, session %s) in the registry",
                agent.pid,
                role,
                session_id,
            )

    async def _start_failed(self, agent: AgentProcess, exc: AgentError) -> AgentStartError:
        """Kill a process that did not complete ``initialize``; the error that says why."""
        agent.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(5):
                await agent.exited.wait()
        detail = agent.stderr_tail() or exc.stderr_tail
        reason = _first_line(detail) or exc.message
        return AgentStartError(
            f"the Claude Code CLI did not start: {reason}",
            exit_code=agent.returncode,
            stderr_tail=detail,
        )

    def _adopt(self, agent: AgentProcess) -> None:
        self.children[agent.pid] = agent
        _ALL_CHILDREN.add(agent.pid)
        task = asyncio.create_task(self._watch(agent), name=f"watch-{agent.pid}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, agent: AgentProcess) -> None:
        await agent.exited.wait()
        self.children.pop(agent.pid, None)
        _ALL_CHILDREN.discard(agent.pid)
        tag = self._tags.pop(agent.pid, None)
        if tag is not None:
            tools = await asyncio.to_thread(_kill_tagged, tag.__eq__)
            if tools:
                log.warning("agent %s left %d tool process(es) running: killed", agent.pid, tools)
        hook = self._exit_hooks.pop(agent.pid, None)
        if hook is not None:
            _call_exit_hook(hook, agent.label)
        if self.registry is not None:
            try:
                await self.registry.forget_process(agent.pid)
            except Exception:
                log.exception(
                    "cannot remove agent process %s (%s) from the registry", agent.pid, agent.label
                )
        if agent.returncode == -signal.SIGKILL and not agent.closing:
            oom_kills = await asyncio.to_thread(oom_kill_count)
            if oom_kills > self._oom_kills:
                self._oom_kills = oom_kills
                # The count is machine-wide (plus this daemon's cgroup): it shows an OOM kill
                # happened meanwhile, not that this process was the one chosen.
                cause = (
                    "not sent by hotsession; the kernel's out-of-memory killer ran meanwhile "
                    "(oom_kill count rose), so it may have been memory"
                )
            else:
                cause = "not sent by hotsession, and no out-of-memory kill is on record"
            log.warning("agent %s (%s) was SIGKILLed: %s", agent.pid, agent.label, cause)

    async def sweep_orphans(self) -> int:
        """Kill children a previous daemon left behind; returns how many were killed."""
        if self.registry is None:
            return 0
        killed = 0
        for rec in await self.registry.list_processes():
            if rec.pid in self.children:
                continue
            if _create_time(rec.pid) == rec.create_time and rec.create_time > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(rec.pid, signal.SIGKILL)
                    killed += 1
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(rec.pid, signal.SIGKILL)
            await self.registry.forget_process(rec.pid)
        killed += await asyncio.to_thread(_kill_tagged, _daemon_gone)
        if killed:
            log.warning("killed %d orphaned agent process(es) of a previous daemon", killed)
        return killed

    async def close_all(self, step_timeout: float = 3.0) -> None:
        """End every child (shutdown)."""
        agents = list(self.children.values())
        await asyncio.gather(
            *(a.close(busy=True, step_timeout=step_timeout) for a in agents),
            return_exceptions=True,
        )
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(step_timeout):
                    await task


def _call_exit_hook(hook: Callable[[], None], label: str) -> None:
    try:
        hook()
    except Exception:  # the process is gone either way; only its clean-up failed
        log.exception("clean-up after agent %s failed", label)


_TAG_KEY = b"\0" + AGENT_TAG_ENV.encode() + b"="


def _kill_tagged(match: Callable[[str], bool]) -> int:
    """SIGKILL every process whose ``HOTSESSION_AGENT`` tag matches; returns how many.

    Runs when an agent exits, over every process of the machine: ``/proc/PID/environ`` is read
    by hand (0.95 ms for 135 processes here; psutil's ``Process.environ`` for each, 2.6 ms)."""
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:  # not Linux: psutil knows how
        return _kill_tagged_psutil(match)
    killed = 0
    for pid in entries:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue  # gone, or not ours to read
        at = env.find(_TAG_KEY)
        if at < 0:
            continue
        start = at + len(_TAG_KEY)
        end = env.find(b"\0", start)
        if match(env[start : end if end >= 0 else len(env)].decode(errors="replace")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def _kill_tagged_psutil(match: Callable[[str], bool]) -> int:
    killed = 0
    for p in psutil.process_iter():
        try:
            tag = p.environ().get(AGENT_TAG_ENV)
            if tag is not None and match(tag):
                p.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


def oom_kill_count() -> int:
    """How many processes the kernel's OOM killer has killed: machine-wide (``/proc/vmstat``)
    plus this process's memory cgroup (v2 ``memory.events``, v1 ``memory.oom_control``); 0
    where none is readable."""
    paths = [Path("/proc/vmstat")]
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            group = group.lstrip("/")
            if controllers == "":
                paths.append(Path("/sys/fs/cgroup", group, "memory.events"))
            elif "memory" in controllers.split(","):
                paths.append(Path("/sys/fs/cgroup/memory", group, "memory.oom_control"))
    total = 0
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    total += int(value)
    return total


def _daemon_gone(tag: str) -> bool:
    daemon_pid = tag.partition(":")[0]
    return daemon_pid.isdigit() and not psutil.pid_exists(int(daemon_pid))


def _create_time(pid: int) -> float:
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""
