"""The bench's daemon harness: ``hotsession serve`` as a subprocess, and a client for it.

The bench starts ``hotsession serve`` (own state dir, own port, the CLI env of the run) and reads
its token from ``<state-dir>/token``. Timed streams are read with the bench's lean client
(:mod:`hotsession.bench.wire`: httpx alone adds ~0.5 ms a request in this process, more under
load); other calls use httpx. The HTTP modes (:mod:`hotsession.bench.http_modes`), the
concurrency and load runs and ``--cpu`` share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from hotsession.bench.environment import BenchEnv, BenchError, is_root
from hotsession.bench.memory import cli_children
from hotsession.bench.stats import Sample
from hotsession.bench.wire import WireClient
from hotsession.sse import SSEDecoder

QUIET_TIMEOUT_S = 30.0
SPARE_TIMEOUT_S = 30.0


def free_port() -> int:
    """A free TCP port on loopback (the daemon binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sum_key(obj: Any, key: str) -> int:
    """Sum of every integer ``key`` anywhere in a JSON document."""
    if isinstance(obj, dict):
        total = 0
        for k, v in obj.items():
            if k == key and isinstance(v, int) and not isinstance(v, bool):
                total += v
            else:
                total += _sum_key(v, key)
        return total
    if isinstance(obj, list):
        return sum(_sum_key(v, key) for v in obj)
    return 0


def settled(stats: dict[str, Any]) -> bool:
    """No profile spawns a spare or has fewer than its target (a ``GET /v1/pool`` document)."""
    for prof in stats.get("profiles") or []:
        if not isinstance(prof, dict):
            continue
        if prof.get("spawning") or (prof.get("ready") or 0) < (prof.get("target") or 0):
            return False
    return pool_counts(stats)[1] == 0


def pool_counts(stats: dict[str, Any]) -> tuple[int, int]:
    """``(ready, spawning)`` spares over every profile of a ``GET /v1/pool`` document."""
    ready = _sum_key(stats.get("profiles", stats), "ready")
    spawning = _sum_key(stats.get("profiles", stats), "spawning")
    return ready, spawning


class Daemon:
    """``hotsession serve`` as a subprocess, and an HTTP client for it."""

    def __init__(self, env: BenchEnv, *, extra_args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.state_dir = env.root / "daemon-state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: httpx.AsyncClient | None = None
        self.wire: WireClient | None = None
        self.users = 0
        self.token = ""

    @property
    def http(self) -> httpx.AsyncClient:
        """The authenticated client."""
        assert self.client is not None, "the daemon is not started"
        return self.client

    async def start(self) -> None:
        """Start the daemon and wait until it answers with its token."""
        argv = [
            sys.executable,
            "-c",
            "from hotsession.cli.main import main; main()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--cli-path",
            self.env.cli_path,
            *self.extra_args,
        ]
        if self.env.permission_mode == "bypassPermissions" and is_root():
            argv.append("--allow-root-bypass")
        env = self.env.agent_env()
        env = {k: v for k, v in env.items() if not k.startswith("HOTSESSION_")}
        log = (self.env.root / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=self.env.root, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        token_file = self.state_dir / "token"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"hotsession serve exited: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get("/healthz")).status_code == 200 and token_file.exists():
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"hotsession serve did not start: {self.log_tail()}")
                await asyncio.sleep(0.1)
        token = self.token = token_file.read_text().strip()
        self.client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(180.0, connect=10.0),
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
        )
        self.wire = WireClient("127.0.0.1", self.port, token)

    def log_tail(self, n: int = 2000) -> str:
        """The end of the daemon's output."""
        try:
            return (self.env.root / "daemon.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it lingers."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.wire is not None:
            await self.wire.aclose()
            self.wire = None
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    # -- API helpers -----------------------------------------------------------------------------

    async def json(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, client: str = "httpx"
    ) -> Any:
        """One JSON call; a non-2xx answer raises ``BenchError`` with the body.

        ``client="wire"`` sends it with the bench's lean client (for a timed call, as
        ``stream`` does); the default is ``httpx`` (setup and untimed calls)."""
        if client == "wire":
            assert self.wire is not None, "the daemon is not started"
            return await self.wire.call(method, path, body)
        resp = await self.http.request(method, path, json=body)
        if resp.status_code >= 400:
            raise BenchError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    async def stream(
        self,
        path: str,
        body: dict[str, Any],
        s: Sample,
        *,
        client: str = "wire",
        to_end: bool = False,
    ) -> dict[str, Any]:
        """POST an SSE endpoint and read it to the turn's end; stamps ``s`` (t_send included).

        ``client="wire"`` (the default) times with the bench's lean client
        (:mod:`hotsession.bench.wire`, the daemon as any lean client sees it), ``"httpx"`` with
        ``httpx.AsyncClient``. Returns the ``session`` event's data (``/v1/ask``) or ``{}``.

        ``to_end``: after the turn's last event, read on to the end of the response (untimed),
        so the lean client's socket is kept alive for the next request, as a client that
        keeps its connection reads it. Without it the stream is left at the turn's last event
        and its socket closed: the next request connects anew.
        """
        if client == "httpx":
            return await self._stream_httpx(path, body, s)
        assert self.wire is not None, "the daemon is not started"
        request = self.wire.request_bytes(path, body)
        first: dict[str, Any] = {}
        s.t_send = time.monotonic()
        events = self.wire.events(request)
        async for kind, data in events:
            if self._stamp(s, kind, data, first):
                if to_end:
                    async for _ in events:
                        pass
                return first
        raise BenchError(f"POST {path}: the stream ended before the turn did")

    async def _stream_httpx(self, path: str, body: dict[str, Any], s: Sample) -> dict[str, Any]:
        first: dict[str, Any] = {}
        decoder = SSEDecoder()
        s.t_send = time.monotonic()
        async with self.http.stream("POST", path, json=body) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise BenchError(f"POST {path}: {resp.status_code} {resp.text[:300]}")
            async for line in resp.aiter_lines():
                event = decoder.feed(line)
                if event is not None and self._stamp(s, event[0], event[1].encode(), first):
                    return first
        raise BenchError(f"POST {path}: the stream ended before the turn did")

    @staticmethod
    def _stamp(s: Sample, kind: str, data: bytes, first: dict[str, Any]) -> bool:
        """Stamp ``s`` with one event; True when the turn ended (``first`` gets ``session``)."""
        if kind == "message":
            if s.t_first is None:
                s.t_first = time.monotonic()
        elif kind == "result":
            s.t_result = time.monotonic()
            payload = json.loads(data)
            timing = payload.get("timing") or {}
            s.extra["source"] = timing.get("source")
            s.extra["timing"] = timing
            if payload.get("is_error"):
                s.error = f"result is_error: {str(payload.get('result'))[:200]}"
            return True
        elif kind == "error":
            payload = json.loads(data)
            s.error = f"{payload.get('code')}: {payload.get('message')}"
            return True
        elif kind == "session":
            first.update(json.loads(data))
        return False

    async def pool(self) -> dict[str, Any]:
        """``GET /v1/pool``."""
        out = await self.json("GET", "/v1/pool")
        return out if isinstance(out, dict) else {}

    async def wait_quiet(self, timeout: float = QUIET_TIMEOUT_S) -> None:
        """Until no spare is being spawned and none is due (a replacement the pool holds back
        until a claimed session's turn ended starts a moment later: that is not quiet yet).
        Bounded: a busy pool must not stall the run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if settled(await self.pool()):
                return
            await asyncio.sleep(0.05)

    async def wait_spare(self, timeout: float = SPARE_TIMEOUT_S) -> bool:
        """Until a spare is ready and nothing spawns; False when none came in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = await self.pool()
            if stats.get("enabled") is False:
                return False
            ready, _ = pool_counts(stats)
            if ready > 0 and settled(stats):
                return True
            await asyncio.sleep(0.05)
        return False

    async def session(self, session_id: str) -> dict[str, Any]:
        """``GET /v1/sessions/{id}``."""
        out = await self.json("GET", f"/v1/sessions/{session_id}")
        return out if isinstance(out, dict) else {}

    async def close_session(self, session_id: str) -> None:
        """``DELETE /v1/sessions/{id}`` (errors ignored: the run goes on)."""
        with contextlib.suppress(httpx.HTTPError):
            await self.http.delete(f"/v1/sessions/{session_id}")

    async def evict(self, session_id: str) -> int | None:
        """End a session's process (session kept: its next turn resumes); returns the old pid.

        The API has no evict call, so the bench ends the process the way the pool's eviction
        does — a graceful end of the CLI — and waits until the daemon has reaped it.
        """
        pid = (await self.session(session_id)).get("pid")
        if not isinstance(pid, int):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not psutil.pid_exists(pid):
                return pid
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    await asyncio.sleep(0.01)
                    continue
            await asyncio.sleep(0.02)
        raise BenchError(f"the process {pid} of {session_id} did not end")

    def cli_pids(self) -> list[int]:
        """The daemon's CLI child processes."""
        return cli_children(self.proc.pid, self.env.cli_path) if self.proc else []

    async def wait_resume_ready(self, cli_session_id: str, timeout: float = 30.0) -> None:
        """Until a ``--resume`` process of that conversation exists and has gone idle."""
        deadline = time.monotonic() + timeout
        target: psutil.Process | None = None
        while target is None:
            for pid in self.cli_pids():
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    if any(cli_session_id in arg for arg in p.cmdline()):
                        target = p
                        break
            if time.monotonic() > deadline:
                raise BenchError("the warmed process did not appear")
            if target is None:
                await asyncio.sleep(0.02)
        # Idle = no CPU used over 200 ms: initialize answered, start-up work done.
        last = -1.0
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                t = sum(target.cpu_times()[:2])
                if t == last:
                    return
                last = t
            await asyncio.sleep(0.2)

    async def memory_roles(self) -> dict[str, list[int]]:
        """CLI pids of the daemon by role: live session processes and idle spares."""
        sessions = await self.json("GET", "/v1/sessions")
        items = sessions.get("sessions", sessions) if isinstance(sessions, dict) else sessions
        live = {s.get("pid") for s in items or [] if isinstance(s, dict)}
        roles: dict[str, list[int]] = {"hs live session": [], "hs idle spare": []}
        for pid in self.cli_pids():
            roles["hs live session" if pid in live else "hs idle spare"].append(pid)
        return roles


def daemon_log_path(env: BenchEnv) -> Path:
    """Where the daemon's output goes (kept with --keep-dir)."""
    return env.root / "daemon.log"
