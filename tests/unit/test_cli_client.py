"""The client commands against a small fake daemon that speaks the API's shapes over real HTTP.

The fake is a Starlette app on uvicorn in a thread (in-process transports do not stream SSE).
Its turns are canned and chosen by the prompt: plain prompts echo; ``perm`` asks a permission
and waits for the answer; ``hang`` stops mid-turn and SIGINTs the test's main thread (what
Ctrl-C does) then waits for the interrupt; ``drop`` ends the stream before the result, which
the client must recover through ``/events`` with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hotsession.cli.api import iter_sse
from hotsession.cli.main import main
from hotsession.cli.render import format_duration, format_timing, summarize_tool

TOKEN = "test-token"
TIMING = {
    "queued_ms": 0.0,
    "claim_ms": 0.0,
    "ttfe_ms": 48.0,
    "thinking_ms": 1080.0,
    "tools_ms": 72.0,
    "tool_calls": 1,
    "total_ms": 1200.0,
    "source": "spare",
}
POOL = {
    "profiles": [
        {
            "profile": "p1",
            "tenant": "local",
            "cwd": "/srv/work",
            "model": None,
            "permission_mode": "acceptEdits",
            "ready": 2,
            "spawning": 1,
            "live_sessions": 3,
            "hits": 9,
            "misses": 1,
            "hit_rate": 0.9,
            "lambda_per_s": 0.25,
            "tau_s": 12.0,
            "target": 3,
            "min": 1,
            "max": 8,
            "memory_mb": 612.0,
            "failing": False,
        }
    ],
    "memory": {"used_mb": 1024.0, "budget_mb": 4096.0, "spares_mb": 400.0, "sessions_mb": 624.0},
    "evictions": {"keep_alive": 2, "memory": 0},  # the API's shape: counts by reason
    "recycles": {"max_turns": 1},
    "spawned_total": 14,
}


def _assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}}


def _result(text: str, turn: int, timing: dict[str, Any] = TIMING) -> dict[str, Any]:
    return {
        "turn": turn,
        "subtype": "success",
        "is_error": False,
        "result": text,
        "cli_session_id": "cli-1",
        "usage": {},
        "total_cost_usd": 0.0,
        "num_turns": 1,
        "timing": timing,
    }


class FakeDaemon:
    """The API's shapes with canned turns; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.fail: dict[str, tuple[int, str, str]] = {}  # path → (status, code, message)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.log: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.interrupted: set[str] = set()
        self.ask_source, self.turn_source = "spare", "spare"
        self.warming = True
        self.main_thread = threading.main_thread().ident
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/v1/ask", self.ask, methods=["POST"]),
                Route("/v1/pool", self.pool),
                Route("/v1/sessions", self.list_sessions, methods=["GET"]),
                Route("/v1/sessions", self.create, methods=["POST"]),
                Route("/v1/sessions/{sid}", self.get, methods=["GET"]),
                Route("/v1/sessions/{sid}", self.delete, methods=["DELETE"]),
                Route("/v1/sessions/{sid}/turns", self.turns, methods=["POST"]),
                Route("/v1/sessions/{sid}/events", self.events),
                Route("/v1/sessions/{sid}/interrupt", self.interrupt, methods=["POST"]),
                Route("/v1/sessions/{sid}/warm", self.warm, methods=["POST"]),
                Route("/v1/sessions/{sid}/permissions/{rid}", self.permission, methods=["POST"]),
            ]
        )

    def reset(self) -> None:
        self.requests.clear()
        self.fail.clear()
        self.sessions.clear()
        self.log.clear()
        self.answers.clear()
        self.interrupted.clear()
        self.ask_source, self.turn_source = "spare", "spare"
        self.warming = True

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]

    # -- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    async def _enter(self, request: Request) -> Response | None:
        body = await request.json() if await request.body() else None
        self.requests.append((request.method, request.url.path, body))
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.error(401, "unauthorized", "no or bad token")
        if request.url.path in self.fail:
            return self.error(*self.fail[request.url.path])
        sid = request.path_params.get("sid")
        if sid is not None and sid not in self.sessions:
            return self.error(404, "not_found", f"no session {sid}")
        return None

    def _new_session(self) -> dict[str, Any]:
        sid = f"s{len(self.sessions) + 1}"
        info = {
            "id": sid,
            "source": self.ask_source,
            "cli_session_id": f"cli-{sid}",
            "state": "idle",
            "cwd": "/srv/work",
            "model": None,
            "pid": 4242,
            "turns": 0,
            "last_timing": None,
            "last_active_at": time.time() - 5,
        }
        self.sessions[sid] = info
        self.log[sid] = []
        return info

    def _emit(self, sid: str, kind: str, data: dict[str, Any]) -> str:
        seq = len(self.log[sid]) + 1
        self.log[sid].append((seq, kind, data))
        return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"

    async def _wait(self, condition: Any) -> bool:
        deadline = time.monotonic() + 10
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _turn(self, sid: str, prompt: str) -> AsyncIterator[str]:
        info = self.sessions[sid]
        info["turns"] += 1
        turn = info["turns"]
        if prompt.startswith("hang"):
            yield self._emit(sid, "message", _assistant({"type": "text", "text": "working on"}))
            signal.pthread_kill(self.main_thread, signal.SIGINT)  # the user's Ctrl-C
            await self._wait(lambda: sid in self.interrupted)
            self._emit(sid, "error", {"turn": turn, "code": "interrupted", "message": "stop"})
            return
        if prompt.startswith("perm"):
            request = {"request_id": "r1", "tool_name": "Bash", "input": {"command": "rm -rf x"}}
            if prompt.startswith("permwrite"):
                content = "\n".join(f"line {i}" for i in range(1, 31))
                tool_input = {"file_path": "/tmp/w.txt", "content": content}
                request = {"request_id": "r1", "tool_name": "Write", "input": tool_input}
            yield self._emit(sid, "permission_request", request)
            await self._wait(lambda: "r1" in self.answers)
            behavior = self.answers["r1"]["behavior"]
            yield self._emit(sid, "permission_resolved", {"request_id": "r1", "outcome": behavior})
            yield self._emit(sid, "result", _result(f"permission {behavior}", turn))
            return
        if prompt.startswith("fail"):
            yield self._emit(
                sid, "error", {"turn": turn, "code": "agent_died", "message": "the agent exited"}
            )
            return
        yield self._emit(
            sid,
            "message",
            _assistant(
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": f"echo: {prompt}"},
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls -la"}},
            ),
        )
        rest = [
            (
                "message",
                {
                    "type": "user",
                    "message": {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a"}],
                    },
                },
            ),
            ("message", _assistant({"type": "text", "text": "done."})),
            (
                "result",
                _result(f"echo: {prompt}\n\ndone.", turn, {**TIMING, "source": self.turn_source}),
            ),
        ]
        for kind, data in rest:
            chunk = self._emit(sid, kind, data)
            if not prompt.startswith("drop"):
                yield chunk
        # "drop": the stream ends here, without its result; /events still has it all.

    @staticmethod
    def sse(gen: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(gen, media_type="text/event-stream")

    # -- endpoints -----------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ask(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        body = await request.json()
        info = self._new_session()

        async def gen() -> AsyncIterator[str]:
            data = {
                "id": info["id"],
                "cli_session_id": info["cli_session_id"],
                "source": self.ask_source,
            }
            yield f"event: session\ndata: {json.dumps(data)}\n\n"
            async for chunk in self._turn(info["id"], body["prompt"]):
                yield chunk

        return self.sse(gen())

    async def pool(self, request: Request) -> Response:
        return await self._enter(request) or JSONResponse(POOL)

    async def list_sessions(self, request: Request) -> Response:
        return await self._enter(request) or JSONResponse(
            {"sessions": list(self.sessions.values())}
        )

    async def create(self, request: Request) -> Response:
        return await self._enter(request) or JSONResponse(self._new_session(), status_code=201)

    async def get(self, request: Request) -> Response:
        failed = await self._enter(request)
        return failed or JSONResponse(self.sessions[request.path_params["sid"]])

    async def delete(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        self.sessions[request.path_params["sid"]]["state"] = "closed"
        return JSONResponse({"id": request.path_params["sid"], "state": "closed"})

    async def turns(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        body = await request.json()
        return self.sse(self._turn(request.path_params["sid"], body["prompt"]))

    async def events(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        sid = request.path_params["sid"]
        after = int(request.headers.get("last-event-id", "0"))

        async def gen() -> AsyncIterator[str]:
            for seq, kind, data in list(self.log[sid]):
                if seq > after:
                    yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"

        return self.sse(gen())

    async def interrupt(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        self.interrupted.add(request.path_params["sid"])
        return JSONResponse({"interrupted": True})

    async def warm(self, request: Request) -> Response:
        failed = await self._enter(request)
        return failed or JSONResponse({"id": request.path_params["sid"], "warming": self.warming})

    async def permission(self, request: Request) -> Response:
        if failed := await self._enter(request):
            return failed
        self.answers[request.path_params["rid"]] = await request.json()
        return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
def daemon_server() -> Iterator[tuple[FakeDaemon, str]]:
    fake = FakeDaemon()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(fake.app, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake daemon did not start"
        time.sleep(0.01)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def daemon(daemon_server: tuple[FakeDaemon, str]) -> FakeDaemon:
    daemon_server[0].reset()
    return daemon_server[0]


@pytest.fixture
def hs(
    daemon_server: tuple[FakeDaemon, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Run ``hotsession ARGS`` against the fake daemon, from a directory of its own
    (``hs.cwd``: new sessions start there)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    def run(*args: str, input: str | None = None, token: str | None = TOKEN) -> Result:
        extra = ["--url", daemon_server[1]]
        if token is not None:
            extra += ["--token", token]
        env = {"HOTSESSION_TOKEN": None, "HOTSESSION_URL": None}
        return CliRunner().invoke(main, [*args, *extra], input=input, env=env)

    run.cwd = str(here.resolve())  # type: ignore[attr-defined]
    return run


def _one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- rendering ---------------------------------------------------------------------------------


def test_timing_line_matches_the_documented_format() -> None:
    assert format_timing(TIMING) == "⏱ 1.2s · TTFE 4% · Thinking 90% · Tools 6% · pool hit"


def test_timing_line_shows_start_and_queue_time_and_cold_starts() -> None:
    timing = {
        "queued_ms": 100,
        "claim_ms": 800,
        "ttfe_ms": 100,
        "thinking_ms": 1000,
        "tools_ms": 0,
        "total_ms": 2000,
        "source": "spawn",
    }
    line = format_timing(timing)
    assert line == "⏱ 2.0s · Queued 5% · Start 40% · TTFE 5% · Thinking 50% · Tools 0% · cold start"
    assert format_timing({**timing, "source": "resume"}).endswith("cold start")
    assert format_timing({**timing, "source": "warm"}).endswith("pool hit")
    assert format_timing({**timing, "source": "hot"}).endswith("pool hit")
    # A human answering a permission question: the engine's waiting_ms, shown from 1%.
    waited = {**timing, "thinking_ms": 500, "waiting_ms": 500}
    assert format_timing(waited) == (
        "⏱ 2.0s · Queued 5% · Start 40% · TTFE 5% · Thinking 25% · Tools 0% · Waiting 25%"
        " · cold start"
    )
    assert "Waiting" not in format_timing({**timing, "waiting_ms": 19})


def test_timing_line_survives_missing_fields() -> None:
    assert format_timing({}) == "⏱ 0ms · unknown source"
    assert format_timing({"total_ms": 1000, "ttfe_ms": 2}) == (
        "⏱ 1.0s · TTFE <1% · Thinking 0% · Tools 0% · unknown source"
    )


def test_durations_and_tool_summaries() -> None:
    assert [format_duration(ms) for ms in (12.4, 999, 1234, 59_940, 125_000)] == [
        "12ms",
        "999ms",
        "1.2s",
        "59.9s",
        "2m05s",
    ]
    assert summarize_tool("Bash", {"command": "ls\n -la", "description": "list"}) == "Bash(ls -la)"
    assert summarize_tool("Edit", {"old": 1}) == 'Edit({"old":1})'
    assert len(summarize_tool("Bash", {"command": "x" * 500}, width=40)) == 40


def test_sse_parser_handles_comments_multiline_data_and_ids() -> None:
    lines = [": keep-alive", "id: 7", "event: message", 'data: {"a":', "data: 1}", ""]
    lines += ["event: result", 'data: {"b": 2}', "", ""]
    events = list(iter_sse(lines))
    assert [(e.id, e.event, e.data) for e in events] == [
        ("7", "message", {"a": 1}),
        (None, "result", {"b": 2}),
    ]


# -- ask ---------------------------------------------------------------------------------------


def test_ask_streams_text_tools_and_the_timing_line(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("ask", "hello there")
    assert result.exit_code == 0, result.output
    assert result.stdout == "echo: hello there\n\ndone.\n"  # only the answer on stdout
    err = result.stderr.splitlines()
    assert err[0] == "session s1"
    assert "  ⚙ Bash(ls -la)" in err
    assert err[-1] == "⏱ 1.2s · TTFE 4% · Thinking 90% · Tools 6% · pool hit"
    assert daemon.requests[0] == ("POST", "/v1/ask", {"prompt": "hello there", "cwd": hs.cwd})


def test_ask_names_a_spawned_session_a_cold_start(hs: Any, daemon: FakeDaemon) -> None:
    # /v1/ask opened the session by spawning; its first turn then found the process "hot".
    daemon.ask_source, daemon.turn_source = "spawn", "hot"
    result = hs("ask", "hello there")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].endswith("· cold start")


def test_ask_sends_session_options(hs: Any, daemon: FakeDaemon, tmp_path: Path) -> None:
    result = hs(
        "ask", "x", "--cwd", str(tmp_path), "--model", "sonnet", "--permission-mode", "plan"
    )
    assert result.exit_code == 0, result.output
    assert daemon.requests[0][2] == {
        "prompt": "x",
        "cwd": str(tmp_path.resolve()),
        "model": "sonnet",
        "permission_mode": "plan",
    }


def test_ask_json_prints_raw_events_as_ndjson(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("ask", "hi", "--json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["session", "message", "message", "message", "result"]
    assert events[0] == {
        "id": None,
        "event": "session",
        "data": {"id": "s1", "cli_session_id": "cli-s1", "source": "spare"},
    }
    assert [e["id"] for e in events[1:]] == [1, 2, 3, 4]
    assert events[-1]["data"]["timing"]["source"] == "spare"
    assert "⏱" not in result.output


def test_ask_on_an_existing_session(hs: Any, daemon: FakeDaemon) -> None:
    assert hs("ask", "first").exit_code == 0
    result = hs("ask", "again", "--session", "s1")
    assert result.exit_code == 0, result.output
    assert "echo: again" in result.stdout
    assert daemon.requests[-1] == ("POST", "/v1/sessions/s1/turns", {"prompt": "again"})
    refused = hs("ask", "x", "--session", "s1", "--model", "opus")
    assert refused.exit_code == 2
    assert "new sessions only" in refused.output


def test_ask_recovers_a_dropped_stream_with_last_event_id(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("ask", "drop me")
    assert result.exit_code == 0, result.output
    # Every event exactly once: the first text from the turn's stream, the rest from the replay.
    assert result.stdout == "echo: drop me\n\ndone.\n"
    assert result.stderr.splitlines()[-1].startswith("⏱ 1.2s")
    assert daemon.paths()[-1] == "/v1/sessions/s1/events"


def test_ask_denies_permissions_without_a_terminal(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("ask", "perm")
    assert result.exit_code == 0, result.output
    assert daemon.answers["r1"]["behavior"] == "deny"
    assert "permission deny" in result.stdout


def test_ask_error_event_is_one_line_and_exit_1(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("ask", "fail")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "hotsession: agent_died: the agent exited"


# -- errors ------------------------------------------------------------------------------------


def test_unreachable_daemon_exits_2() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        result = CliRunner().invoke(main, ["ask", "hi", "--url", url, "--token", "t"])
    assert result.exit_code == 2
    assert _one_error_line(result) == (
        f"hotsession: cannot reach the daemon at {url} — start it with `hotsession serve`"
    )


def test_bad_token_is_401_with_a_hint(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("sessions", token="wrong")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith("hotsession: unauthorized: no or bad token — check --token")


def test_token_is_read_from_the_state_dir(hs: Any, daemon: FakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    result = hs("sessions", "--state-dir", str(tmp_path), token=None)
    assert result.exit_code == 0, result.output
    missing = hs("sessions", "--state-dir", str(tmp_path / "nowhere"), token=None)
    assert missing.exit_code == 1
    assert f"none in {tmp_path / 'nowhere' / 'token'}" in _one_error_line(missing)


def test_url_is_read_from_the_state_dirs_daemon_json(
    daemon_server: tuple[FakeDaemon, str], tmp_path: Path
) -> None:
    """A daemon started with ``serve --port N`` is found without ``--url``: its daemon.json
    names its address (as hotsession-claude finds it)."""
    daemon_server[0].reset()
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "daemon.json").write_text(json.dumps({"pid": 1, "url": daemon_server[1]}))
    env = {"HOTSESSION_TOKEN": None, "HOTSESSION_URL": None}
    result = CliRunner().invoke(main, ["sessions", "--state-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert daemon_server[0].paths("GET") == ["/v1/sessions"]


def test_unknown_session_is_404(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("warm", "nope")
    assert result.exit_code == 1
    assert _one_error_line(result) == "hotsession: not_found: no session nope"


def test_api_error_codes_are_shown(hs: Any, daemon: FakeDaemon) -> None:
    daemon.fail["/v1/ask"] = (429, "queue_full", "the turn queue is full")
    result = hs("ask", "hi")
    assert result.exit_code == 1
    assert _one_error_line(result) == "hotsession: queue_full: the turn queue is full"


# -- sessions, pool, warm, close ---------------------------------------------------------------


def test_sessions_table(hs: Any, daemon: FakeDaemon) -> None:
    empty = hs("sessions")
    assert empty.exit_code == 0 and "no sessions" in empty.output
    assert hs("ask", "one").exit_code == 0
    daemon.sessions["s1"]["last_timing"] = TIMING
    daemon.sessions["s1"]["last_active_at"] = time.time() - 2 * 3600 - 30
    result = hs("sessions")  # stdout is not a terminal here: one plain line per session
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split("\t") == [
        "ID",
        "State",
        "Turns",
        "Model",
        "Cwd",
        "PID",
        "Last turn",
        "Active",
    ]
    assert row.split("\t") == [
        "s1",
        "idle",
        "1",
        "default",
        "/srv/work",
        "4242",
        "1.2s spare",
        "2h ago",
    ]
    raw = hs("sessions", "--json")
    assert json.loads(raw.stdout)[0]["id"] == "s1"


def test_pool_table_and_memory_line(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("pool")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].split() == ["Profile", "Ready", "Target", "Live", "Hit", "rate", "λ/s"] + [
        "τ",
        "s",
        "Mem",
        "MB",
    ]
    assert lines[1].split() == ["/srv/work", "2", "+1", "3", "[1–8]", "3", "90%", "9/1"] + [
        "0.25",
        "12",
        "612",
    ]
    assert lines[2].strip() == "local · default · acceptEdits"
    assert out.splitlines()[-1] == (
        "memory 1,024 MB of 4,096 MB budget · spares 400 MB · sessions 624 MB · "
        "evictions 2 (keep_alive 2) · recycles 1 (max_turns 1) · spawned 14"
    )


def test_pool_rows_of_drop_in_profiles_differ(
    hs: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drop-in clients' profiles (same cwd, tenant, model, mode) were identical rows: each now
    names its client, its distinguishing flags and a short profile key."""
    base = POOL["profiles"][0]
    rows = [
        {**base, "profile": "a1b2c3d4e5f60718", "client": "hotsession-claude", "flags": ["-p"]},
        {
            **base,
            "profile": "0f1e2d3c4b5a6978",
            "client": "hotsession-claude",
            "flags": ["--setting-sources ''", "initialize agents"],
        },
    ]
    monkeypatch.setitem(POOL, "profiles", [base, *rows])
    result = hs("pool")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[2] == "local · default · acceptEdits"  # an API profile: as before
    assert lines[3].startswith("/srv/work ")
    assert lines[4:7] == [
        "local · default · acceptEdits",
        "hotsession-claude · a1b2c3d4",
        "-p",
    ]
    assert lines[7].startswith("/srv/work ")
    assert lines[8:12] == [
        "local · default · acceptEdits",
        "hotsession-claude · 0f1e2d3c",
        "--setting-sources ''",
        "initialize agents",
    ]


def test_warm_and_close(hs: Any, daemon: FakeDaemon) -> None:
    assert hs("ask", "one").exit_code == 0
    warmed = hs("warm", "s1")
    assert (warmed.exit_code, warmed.stdout) == (0, "warming s1\n")
    daemon.warming = False  # the API's answer when it had nothing to do: say so
    hot = hs("warm", "s1")
    assert (hot.exit_code, hot.stdout) == (
        0,
        "s1 needs no warming: its process is running (idle)\n",
    )
    closed = hs("close", "s1")
    assert (closed.exit_code, closed.stdout) == (0, "closed s1\n")
    assert daemon.requests[-2:] == [
        ("GET", "/v1/sessions/s1", None),
        ("DELETE", "/v1/sessions/s1", None),
    ]


# -- chat --------------------------------------------------------------------------------------


def test_chat_two_prompts_then_eof(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("chat", input="hello\n\nperm please\ny\n")
    assert result.exit_code == 0, result.output
    assert daemon.requests[0] == ("POST", "/v1/sessions", {"cwd": hs.cwd})
    turns = [(p, b) for m, p, b in daemon.requests if p.endswith("/turns")]
    assert turns == [
        ("/v1/sessions/s1/turns", {"prompt": "hello"}),
        ("/v1/sessions/s1/turns", {"prompt": "perm please"}),
    ]
    assert daemon.answers["r1"] == {"behavior": "allow"}
    assert "echo: hello" in result.stdout and "permission allow" in result.stdout
    assert "allow Bash(rm -rf x)?" in result.stderr
    assert "    $ rm -rf x" in result.stderr  # what would run, not only its name
    assert result.stderr.count("⏱ 1.2s") == 2
    assert "stays open" in result.stderr


def test_chat_names_a_spawned_session_a_cold_start_on_its_first_turn(
    hs: Any, daemon: FakeDaemon
) -> None:
    daemon.ask_source, daemon.turn_source = "spawn", "hot"
    result = hs("chat", input="one\ntwo\n")
    assert result.exit_code == 0, result.output
    timing_lines = [line for line in result.stderr.splitlines() if line.startswith("⏱")]
    assert [line.rsplit(" · ", 1)[1] for line in timing_lines] == ["cold start", "pool hit"]


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this process, however the test run was started: a
    shell starts a background job with SIGINT ignored, and Python then leaves it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_chat_ctrl_c_interrupts_the_turn_and_returns_to_the_prompt(
    hs: Any, daemon: FakeDaemon, ctrl_c: None
) -> None:
    assert hs("ask", "make a session").exit_code == 0
    result = hs("chat", "s1", input="hang on\nafter\n")
    assert result.exit_code == 0, result.output
    assert "/v1/sessions/s1/interrupt" in daemon.paths("POST")
    assert "⏹ interrupted" in result.stderr
    assert "echo: after" in result.stdout  # the loop went on with the next prompt
    assert daemon.requests[-1][2] == {"prompt": "after"}


def test_chat_unknown_session_is_404(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("chat", "nope", input="hi\n")
    assert result.exit_code == 1
    assert _one_error_line(result) == "hotsession: not_found: no session nope"


# -- the first hour (issue 12): defaults, input, permissions, chat commands --------------------


def test_a_new_session_starts_in_the_callers_directory(hs: Any, daemon: FakeDaemon) -> None:
    assert hs("ask", "hi").exit_code == 0
    assert daemon.requests[-1][2]["cwd"] == hs.cwd


def test_the_filesystem_root_must_be_asked_for(
    hs: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    for command in (["ask", "hi"], ["chat"]):
        refused = hs(*command, input="")
        assert refused.exit_code == 2, refused.output
        assert "pass --cwd /" in refused.output
    assert daemon.requests == []
    assert hs("ask", "hi", "--cwd", "/").exit_code == 0
    assert daemon.requests[-1][2]["cwd"] == "/"


def test_ask_reads_the_prompt_from_stdin_or_a_file(
    hs: Any, daemon: FakeDaemon, tmp_path: Path
) -> None:
    big = "x" * 300_000 + "\nend"  # over what an argument may hold
    assert hs("ask", "-", input=big).exit_code == 0
    assert daemon.requests[-1][2]["prompt"] == big
    path = tmp_path / "prompt.txt"
    path.write_text("from a file\n")
    assert hs("ask", "--file", str(path)).exit_code == 0
    assert daemon.requests[-1][2]["prompt"] == "from a file\n"
    assert hs("ask", "--file", "-", input="piped").exit_code == 0
    assert daemon.requests[-1][2]["prompt"] == "piped"
    n = len(daemon.requests)
    for args, needle in [
        (("ask",), "no prompt"),
        (("ask", "-"), "the prompt is empty"),
        (("ask", "hi", "--file", str(path)), "not both"),
        (("ask", "--file", str(tmp_path / "missing")), "No such file"),
    ]:
        refused = hs(*args, input="")
        assert refused.exit_code == 2 and needle in refused.output, refused.output
    assert len(daemon.requests) == n


def test_permission_mode_choices_are_every_mode_and_a_bad_one_exits_2(
    hs: Any, daemon: FakeDaemon
) -> None:
    from hotsession.options import PERMISSION_MODES

    help_text = " ".join(hs("ask", "--help").output.split())
    assert "dontAsk" in help_text and "auto" in help_text and "bypassPermissions" in help_text
    assert hs("ask", "x", "--permission-mode", "dontAsk").exit_code == 0
    bad = hs("ask", "x", "--permission-mode", "yolo")
    assert bad.exit_code == 2 and "yolo" in bad.output
    assert len(PERMISSION_MODES) == 6


def test_permission_prompt_shows_the_input_cut_and_all_on_request(
    hs: Any, daemon: FakeDaemon
) -> None:
    result = hs("chat", input="permwrite\nv\ny\n")
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "allow Write(/tmp/w.txt)?" in err
    first = err.index("    line 1\n")
    more = err.index("19 more line(s): v shows all")  # the path and 11 lines were shown
    assert first < more and "    line 11\n" in err[first:more] and "line 12" not in err[:more]
    assert "    line 30\n" in err[more:]  # "v" showed all of it, then asked again
    assert daemon.answers["r1"] == {"behavior": "allow"}


def test_chat_commands_stay_local(hs: Any, daemon: FakeDaemon) -> None:
    result = hs("chat", input="/help\n/session\nhello\n/quit\nnever sent\n")
    assert result.exit_code == 0, result.output
    turns = [b["prompt"] for m, p, b in daemon.requests if p.endswith("/turns")]
    assert turns == ["hello"]  # /help, /session and /quit never reached the model
    assert "/help" in result.stderr and "/session" in result.stderr and "/exit" in result.stderr
    assert "s1 · idle · /srv/work" in result.stderr
    assert "/help lists commands" in result.stderr


def test_sessions_table_on_a_terminal(
    hs: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotsession.cli import commands

    assert hs("ask", "one").exit_code == 0
    monkeypatch.setattr(commands, "_stdout_is_terminal", lambda: True)
    result = hs("sessions")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()[:2]
    assert "\t" not in header and header.split()[:3] == ["ID", "State", "Turns"]
    assert row.split()[:6] == ["s1", "idle", "1", "default", "/srv/work", "4242"]


def test_stream_asks_for_partial_messages(
    hs: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotsession.cli import commands

    assert hs("ask", "x", "--stream").exit_code == 0
    assert daemon.requests[-1][2]["include_partial_messages"] is True
    assert hs("ask", "x").exit_code == 0  # stdout is no terminal here: off by default
    assert "include_partial_messages" not in daemon.requests[-1][2]
    monkeypatch.setattr(commands, "_stdout_is_terminal", lambda: True)
    assert hs("ask", "x").exit_code == 0  # on by default for a terminal
    assert daemon.requests[-1][2]["include_partial_messages"] is True
    assert hs("ask", "x", "--no-stream").exit_code == 0
    assert "include_partial_messages" not in daemon.requests[-1][2]
    monkeypatch.setattr(commands, "_stdout_is_terminal", lambda: False)
    assert hs("chat", "--stream", input="").exit_code == 0
    assert daemon.requests[-1] == (
        "POST",
        "/v1/sessions",
        {"cwd": hs.cwd, "include_partial_messages": True},
    )


def _delta(text: str) -> dict[str, Any]:
    event = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}
    return {"type": "stream_event", "event": event}


def test_streamed_text_is_printed_as_it_comes_and_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The streaming contract: deltas print at once; the full message does not repeat them."""
    from io import StringIO

    from rich.console import Console

    from hotsession.cli.render import TurnPrinter

    err = StringIO()
    p = TurnPrinter(Console(file=err, width=200))
    p.handle("message", {"type": "system", "subtype": "init"})
    p.handle("message", _delta("Hel"))
    assert capsys.readouterr().out == "Hel"  # no waiting for the whole message
    p.handle("message", _delta("lo."))
    p.handle("message", _assistant({"type": "text", "text": "Hello."}))
    p.handle(
        "message", _assistant({"type": "tool_use", "name": "Bash", "input": {"command": "ls"}})
    )
    p.handle("message", _delta("Done"))
    p.handle("message", _delta("!"))
    p.handle("message", _assistant({"type": "text", "text": "Done!"}))
    p.handle("result", _result("Hello.\n\nDone!", 1))
    assert capsys.readouterr().out == "lo.\nDone!\n"
    assert "⚙ Bash(ls)" in err.getvalue() and "⏱" in err.getvalue()


def test_bench_help_explains_warmup() -> None:
    out = " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())
    assert "--warmup INTEGER RANGE Untimed rounds" in out
