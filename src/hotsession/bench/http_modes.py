"""hotsession's modes, measured through its HTTP API exactly as a client sees it.

The daemon they talk to is the bench's harness (:mod:`hotsession.bench.daemon`). Every timed
call is one HTTP request whose SSE stream is read until the turn's ``result`` (or ``error``)
event; ``t_send`` is stamped just before the request is sent, ``t_first`` at the first
``message`` event (the first CLI output).

* ``hs new (spare)``     — ``POST /v1/sessions`` then its first turn, with a ready spare waiting
  (prepare waits until ``GET /v1/pool`` shows one);
* ``hs new (spare, httpx)`` — the same, the claim sent with ``httpx`` (the claim of every other
  mode is sent and timed with the lean client, :mod:`hotsession.bench.wire`);
* ``hs new (miss)``      — the same with a profile no spare has (a unique ``append_system_prompt``):
  a direct spawn;
* ``hs follow-up``       — the next turn of a live session;
* ``hs follow-up (httpx)`` — the same, read with ``httpx`` (what that client library adds);
* ``hs evicted``         — the next turn of a session whose process was ended (``--resume``);
* ``hs evicted+warm``    — the same after ``POST /v1/sessions/{id}/warm`` finished;
* ``hs ask``             — ``POST /v1/ask`` (a quick turn on a pooled session);
* ``hs follow-up after pause`` — ``hs follow-up`` sent a pause after the previous result
  (``bench --pause``: timed by :mod:`hotsession.bench.pause`, not in :data:`HTTP_MODES`).

Between samples ``prepare`` waits for the daemon to be quiet (no spare being spawned), so a
background spawn does not steal the CPU from the next measurement on a small machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, ClassVar

from hotsession.bench.daemon import Daemon, daemon_log_path, pool_counts
from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.modes import Mode
from hotsession.bench.stats import Sample

__all__ = ["HTTP_MODES", "Daemon", "HttpMode", "attach_daemon", "daemon_log_path", "pool_counts"]


# -- modes ------------------------------------------------------------------------------------


class HttpMode(Mode):
    """A mode that talks to the shared daemon."""

    group: ClassVar[str] = "hotsession"
    daemon: Daemon | None = None

    def attach(self, daemon: Daemon) -> None:
        """Share one daemon between all HTTP modes of a run."""
        self.daemon = daemon
        daemon.users += 1

    @property
    def d(self) -> Daemon:
        """The daemon."""
        assert self.daemon is not None, "attach() a daemon first"
        return self.daemon

    def profile(self) -> dict[str, Any]:
        """The session options every HTTP mode uses (one profile, so spares are shared)."""
        return {"cwd": str(self.env.workdir), "permission_mode": self.env.permission_mode}

    async def new_session(self, *, client: str = "httpx", **extra: Any) -> dict[str, Any]:
        """``POST /v1/sessions`` (``client``: see ``Daemon.json``)."""
        out = await self.d.json("POST", "/v1/sessions", {**self.profile(), **extra}, client=client)
        assert isinstance(out, dict)
        return out

    async def turn(self, session_id: str, s: Sample, prompt: str) -> None:
        """``POST /v1/sessions/{id}/turns`` to its end."""
        await self.d.stream(f"/v1/sessions/{session_id}/turns", {"prompt": prompt}, s)

    async def daemon_memory(self) -> dict[str, list[int]]:
        """Memory roles of the daemon's processes (the runner's memory probe calls this)."""
        return await self.d.memory_roles()


class _OneSession(HttpMode):
    """Modes that keep one session for the whole run."""

    session_id = ""
    cli_session_id = ""

    async def setup(self) -> None:
        """Open the session and run its first turn (untimed)."""
        created = await self.new_session()
        self.session_id = str(created["id"])
        self.cli_session_id = str(created.get("cli_session_id", ""))
        warm = Sample(self.name, -1, "setup", 0.0)
        await self.turn(self.session_id, warm, "[[say:setup]]")
        if warm.error:
            raise BenchError(f"{self.name}: setup turn failed: {warm.error}")

    async def sample(self, s: Sample, prompt: str) -> None:
        """The next turn."""
        await self.turn(self.session_id, s, prompt)


class HsFollowUp(_OneSession):
    """A follow-up on a live session."""

    name = "hs follow-up"
    description = "hotsession: next turn of a live session (HTTP + SSE)"

    async def prepare(self) -> None:
        """Quiet daemon."""
        await self.d.wait_quiet()


class HsFollowUpHttpx(HsFollowUp):
    """The same follow-up, timed through ``httpx`` instead of the lean client."""

    name = "hs follow-up (httpx)"
    description = "hotsession: next turn of a live session, read with httpx (client cost shown)"

    async def sample(self, s: Sample, prompt: str) -> None:
        """The next turn, through httpx."""
        await self.d.stream(
            f"/v1/sessions/{self.session_id}/turns", {"prompt": prompt}, s, client="httpx"
        )


class HsFollowUpAfterPause(HsFollowUp):
    """A follow-up on a live session after the user paused (``hotsession.bench.pause``)."""

    name = "hs follow-up after pause"
    description = "hotsession: next turn of a live session after a pause (HTTP + SSE)"
    paused = True
    back_to_back = HsFollowUp.name


class HsEvicted(_OneSession):
    """The next turn of an evicted session (``--resume`` on demand)."""

    name = "hs evicted"
    description = "hotsession: next turn of an evicted session (transparent --resume)"

    async def prepare(self) -> None:
        """End the session's process; quiet daemon."""
        await self.d.evict(self.session_id)
        await self.d.wait_quiet()


class HsEvictedWarm(_OneSession):
    """The next turn of an evicted session after ``warm``."""

    name = "hs evicted+warm"
    description = "hotsession: next turn of an evicted session after POST …/warm"

    async def prepare(self) -> None:
        """End the process, ask for resume-ahead, wait until the new process is idle."""
        await self.d.evict(self.session_id)
        # ``warming: false`` right after the eviction means the daemon has not yet seen its
        # process die (nothing to warm yet): ask again until it starts one (bounded).
        deadline = time.monotonic() + 10
        while True:
            out = await self.d.json("POST", f"/v1/sessions/{self.session_id}/warm")
            if (isinstance(out, dict) and out.get("warming")) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await self.d.wait_resume_ready(self.cli_session_id)
        await self.d.wait_quiet()


class HsNewSpare(HttpMode):
    """A new session from a ready spare, and its first turn."""

    name = "hs new (spare)"
    description = "hotsession: POST /v1/sessions + first turn, a spare ready"
    claim_client: ClassVar[str] = "wire"  # the claim is timed with the lean client
    _last: str | None = None

    async def setup(self) -> None:
        """Two sessions of the profile (untimed): the pool keeps spares once demand repeats."""
        for _ in range(2):
            created = await self.new_session()
            await self.d.close_session(str(created["id"]))

    async def prepare(self) -> None:
        """Close the previous sample's session; wait for a ready spare."""
        if self._last:
            await self.d.close_session(self._last)
            self._last = None
        await self.d.wait_spare()

    async def sample(self, s: Sample, prompt: str) -> None:
        """Create + first turn, timed from the create request."""
        s.t_send = time.monotonic()
        t0 = s.t_send
        created = await self.new_session(client=self.claim_client)
        s.extra["claim_ms"] = round((time.monotonic() - t0) * 1000, 3)
        self._last = str(created["id"])
        s.extra["open_source"] = created.get("source") or created.get("open_source")
        await self.turn(self._last, s, prompt)
        s.t_send = t0  # the turn request re-stamped it; the clock starts at the create

    async def teardown(self) -> None:
        """Close the last session."""
        if self._last:
            await self.d.close_session(self._last)


class HsNewSpareHttpx(HsNewSpare):
    """The same, the claim sent with ``httpx`` (what that client library adds to it)."""

    name = "hs new (spare, httpx)"
    description = "hotsession: POST /v1/sessions (httpx) + first turn, a spare ready"
    claim_client: ClassVar[str] = "httpx"


class HsNewMiss(HsNewSpare):
    """A new session whose profile has no spare: a direct spawn."""

    name = "hs new (miss)"
    description = "hotsession: POST /v1/sessions + first turn, no spare (pool miss)"

    async def setup(self) -> None:
        """Nothing: every sample's profile is new."""

    async def prepare(self) -> None:
        """Close the previous sample's session; quiet daemon."""
        if self._last:
            await self.d.close_session(self._last)
            self._last = None
        await self.d.wait_quiet()

    def profile(self) -> dict[str, Any]:
        """A profile never seen before: no spare can match it."""
        return {**super().profile(), "append_system_prompt": f"bench {uuid.uuid4().hex[:8]}"}


class HsAsk(HttpMode):
    """``POST /v1/ask``: a quick turn on a pooled session."""

    name = "hs ask"
    description = "hotsession: POST /v1/ask (quick turn on a pooled session)"
    _last: str | None = None
    setup = HsNewSpare.setup

    async def prepare(self) -> None:
        """Close the previous sample's session; wait for a ready spare."""
        if self._last:
            await self.d.close_session(self._last)
            self._last = None
        await self.d.wait_spare()

    async def sample(self, s: Sample, prompt: str) -> None:
        """One quick turn."""
        first = await self.d.stream("/v1/ask", {**self.profile(), "prompt": prompt}, s)
        sid = first.get("id") or first.get("session_id")
        self._last = str(sid) if sid else None
        if not sid:
            s.error = s.error or "no session event"

    async def teardown(self) -> None:
        """Close the last session."""
        if self._last:
            await self.d.close_session(self._last)


HTTP_MODES: tuple[type[Mode], ...] = (
    HsNewSpare,
    HsNewSpareHttpx,
    HsNewMiss,
    HsFollowUp,
    HsFollowUpHttpx,
    HsEvicted,
    HsEvictedWarm,
    HsAsk,
)


async def attach_daemon(
    modes: list[Mode], env: BenchEnv, extra_args: tuple[str, ...] = ()
) -> Daemon | None:
    """Start one daemon for every HTTP mode of the run (none when there is none)."""
    http = [m for m in modes if isinstance(m, HttpMode)]
    if not http:
        return None
    daemon = Daemon(env, extra_args=extra_args)
    await daemon.start()
    for mode in http:
        mode.attach(daemon)
    return daemon
