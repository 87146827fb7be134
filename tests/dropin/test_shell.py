"""``hotsession-claude`` run from a shell the way bots and scripts run ``claude -p``; bad input and
faults (the real CLI's answer where it would refuse, the fallback, a wrong token, clients killed
mid-turn and mid-permission)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import wait_until
from tests.dropin.conftest import Dropin, run

from hotsession.cli_binary import bundled_cli_path
from hotsession.testing.model_server import ModelServer

pytestmark = pytest.mark.integration
CLI = str(bundled_cli_path())


async def test_bot_json_then_resume(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    code, out, err = await run(
        shim, "-p", "my name is ADA [[say:hello ADA]]", "--output-format", "json", cwd=workdir
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["type"] == "result" and first["result"] == "hello ADA"
    spawned = dropin.hub.supervisor.spawned_total
    code, out, err = await run(
        shim, "-p", "my name? [[say:ADA]]", "--resume", first["session_id"],
        "--output-format", "json", cwd=workdir,
    )  # fmt: skip
    assert code == 0, err
    second = json.loads(out)
    assert second["result"] == "ADA" and second["session_id"] == first["session_id"]
    assert model_server.main_requests()[-1]["n_messages"] >= 3
    assert dropin.hub.supervisor.spawned_total == spawned  # the hot process answered
    # The HTTP API (and so the dashboard and `hotsession sessions`) shows the conversation.
    async with httpx.AsyncClient(
        base_url=dropin.url, headers={"Authorization": f"Bearer {dropin.token}"}
    ) as api:
        listed = (await api.get("/v1/sessions")).json()
        items = listed["sessions"] if isinstance(listed, dict) else listed
        mine = [s for s in items if s["cli_session_id"] == first["session_id"]]
        assert len(mine) == 1 and mine[0]["metadata"]["client"] == "hotsession-claude"
        assert mine[0]["turns"] == 2


async def test_text_to_a_pipe_is_what_the_cli_prints(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    for argv in (["-p", "[[say:two words]]"], ["-p", "[[error:400]]"]):
        ours = await run(shim, *argv, cwd=workdir)
        theirs = await run(CLI, *argv, cwd=workdir)
        assert ours == theirs, (ours, theirs)
    # The prompt on stdin, as `echo … | claude -p`.
    code, out, _ = await run(shim, "-p", input=b"from stdin [[say:piped]]", cwd=workdir)
    assert (code, out) == (0, "piped\n")


async def test_prompt_argument_with_an_open_silent_stdin_waits_and_warns_like_the_cli(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    async def silent_stdin(*argv: str) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=workdir,
        )  # fmt: skip
        out, err = await proc.stdout.read(), await proc.stderr.read()  # type: ignore[union-attr]
        await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out, err

    ours = await silent_stdin(shim, "-p", "[[say:waited]]")
    theirs = await silent_stdin(CLI, "-p", "[[say:waited]]")
    assert ours == theirs and ours[1] == b"waited\n" and b"no stdin data received" in ours[2]


async def test_stream_json_print_mode(dropin: Dropin, shim: str, workdir: Path) -> None:
    code, out, err = await run(
        shim, "-p", "[[say:streamed]]", "--output-format", "stream-json", "--verbose", cwd=workdir
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [(m["type"], m.get("subtype")) for m in lines]
    assert ("system", "init") in kinds and kinds[-1] == ("result", "success")
    assert lines[-1]["result"] == "streamed"


async def test_partial_messages_only_when_asked(dropin: Dropin, shim: str, workdir: Path) -> None:
    base = ["-p", "[[say:one two three]]", "--output-format", "stream-json", "--verbose"]
    for extra, expected in (([], False), (["--include-partial-messages"], True)):
        code, out, err = await run(shim, *base, *extra, cwd=workdir)
        assert code == 0, err
        kinds = [json.loads(line)["type"] for line in out.splitlines()]
        assert ("stream_event" in kinds) is expected, kinds
        assert kinds[-1] == "result"


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "hi", "--bogus-flag"],
        ["-p", "hi", "--output-format", "stream-json"],  # needs --verbose
        ["-p", "hi", "--resume", "0f0e0d0c-0000-4000-8000-000000000000"],
        ["-p", "hi", "--output-format", "yaml"],
        ["--version"],
    ],
)
async def test_what_the_cli_answers_is_answered_by_the_cli(
    dropin: Dropin, shim: str, workdir: Path, argv: list[str]
) -> None:
    ours = await run(shim, *argv, cwd=workdir)
    theirs = await run(CLI, *argv, cwd=workdir)
    assert ours == theirs


async def test_no_daemon_falls_back_to_the_cli(
    shim: str, workdir: Path, agent_env: dict[str, str]
) -> None:
    env = {"HOTSESSION_URL": "http://127.0.0.1:9", "IS_SANDBOX": "1"}
    code, out, err = await run(shim, "-p", "[[say:direct]]", cwd=workdir, env=env)
    assert (code, out) == (0, "direct\n")
    assert len(err.splitlines()) == 1 and "running the Claude Code CLI directly" in err
    code, out, err = await run(
        shim, "-p", "[[say:direct]]", cwd=workdir, env={**env, "HOTSESSION_FALLBACK": "0"}
    )
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and "HOTSESSION_FALLBACK=0" in err


async def test_wrong_token_is_one_line_and_no_fallback(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    code, out, err = await run(
        shim, "-p", "[[say:x]]", cwd=workdir, env={"HOTSESSION_TOKEN": "not-the-token"}
    )
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and "token" in err
    # docs/drop-in.md: the line names the daemon and the refusal
    assert err.strip() == (
        f"hotsession-claude: the hotsession daemon at {dropin.url} refused the token "
        "(unauthorized: invalid token)"
    )


async def test_client_killed_mid_turn_the_turn_completes_and_resume_sees_it(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    code, out, _ = await run(shim, "-p", "[[say:first]]", "--output-format", "json", cwd=workdir)
    sid = json.loads(out)["session_id"]
    proc = await asyncio.create_subprocess_exec(
        shim, "-p", "slow one [[delay:1500]][[say:late answer]]", "--resume", sid,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, cwd=workdir,
    )  # fmt: skip
    await asyncio.to_thread(
        model_server.wait_for, lambda log: any("delay" in e.get("directives", []) for e in log), 30
    )
    proc.kill()
    await proc.wait()
    session = next(s for s in dropin.hub.list() if s.cli_session_id == sid)
    await wait_until(lambda: session.record.turns == 2 and session.current is None, timeout=30)
    code, out, _ = await run(
        shim, "-p", "and now [[say:third]]", "--resume", sid, "--output-format", "json", cwd=workdir
    )
    assert code == 0 and json.loads(out)["result"] == "third"
    # first prompt + answer, the killed turn's prompt + answer, then this prompt
    assert model_server.main_requests()[-1]["n_messages"] >= 5
    # Every turn recorded as done (turn 3's record is written just after its result went out).
    statuses: list[str] = []
    for _ in range(200):
        statuses = [t.status for t in await dropin.hub.registry.list_turns(session.id, limit=10)]
        if statuses == ["done", "done", "done"]:
            break
        await asyncio.sleep(0.05)
    assert statuses == ["done", "done", "done"]


async def test_shim_killed_while_a_permission_waits(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        shim, "--output-format", "stream-json", "--verbose", "--input-format", "stream-json",
        "--permission-prompt-tool", "stdio", "--permission-mode", "default",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=workdir,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    init = {"type": "control_request", "request_id": "i1", "request": {"subtype": "initialize"}}
    user = {
        "type": "user",
        "message": {"role": "user", "content": f"[[bash:touch {workdir}/nope]][[say:x]]"},
        "parent_tool_use_id": None,
    }
    proc.stdin.write((json.dumps(init) + "\n" + json.dumps(user) + "\n").encode())
    await proc.stdin.drain()
    sid = None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, "the shim ended before asking for permission"
        msg = json.loads(line)
        sid = msg.get("session_id") or sid
        if msg.get("type") == "control_request":
            assert msg["request"]["subtype"] == "can_use_tool"
            break
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    session = next(s for s in dropin.hub.list() if s.cli_session_id == sid)
    await wait_until(lambda: session.current is None and session.record.turns == 1, timeout=30)
    assert not (workdir / "nope").exists()
    code, out, err = await run(shim, "-p", "[[say:still here]]", "--resume", str(sid), cwd=workdir)
    assert (code, out) == (0, "still here\n"), err


async def test_continue_picks_the_newest_conversation_of_the_cwd(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    code, out, _ = await run(shim, "-p", "[[say:first]]", "--output-format", "json", cwd=workdir)
    sid = json.loads(out)["session_id"]
    code, out, err = await run(
        shim, "-p", "[[say:second]]", "--continue", "--output-format", "json", cwd=workdir
    )
    assert code == 0, err
    again = json.loads(out)
    assert again["session_id"] == sid and again["result"] == "second"
    assert model_server.main_requests()[-1]["n_messages"] >= 3
    # Nothing to continue in another directory: a new conversation, as with the CLI.
    other = workdir / "empty"
    other.mkdir()
    spawned = dropin.hub.supervisor.spawned_total
    ours = await run(shim, "-p", "[[say:fresh]]", "--continue", cwd=other)
    theirs = await run(CLI, "-p", "[[say:fresh]]", "--continue", cwd=other)
    assert ours == theirs == (0, "fresh\n", "")
    assert dropin.hub.supervisor.spawned_total == spawned + 1  # served by the daemon


async def test_pool_rows_tell_drop_in_profiles_apart(
    start_dropin: Any, shim: str, workdir: Path
) -> None:
    """Two clients in one cwd with other flags are two profiles; ``/v1/pool`` says whose (the
    ``client``) and how they differ (``flags``): the rows were identical before."""
    dropin: Dropin = await start_dropin(pool_enabled=True)
    for argv in (["-p", "[[say:a]]"], ["-p", "[[say:b]]", "--append-system-prompt", "be brief"]):
        code, _, err = await run(shim, *argv, cwd=workdir)
        assert code == 0, err
    async with httpx.AsyncClient(
        base_url=dropin.url, headers={"Authorization": f"Bearer {dropin.token}"}
    ) as api:
        pool = (await api.get("/v1/pool")).json()
    rows = [p for p in pool["profiles"] if p["cwd"] == str(workdir)]
    assert len(rows) == 2, rows
    assert {p["client"] for p in rows} == {"hotsession-claude"}
    flags = sorted((p["flags"] for p in rows), key=len)
    assert flags[0] != flags[1]
    assert "--append-system-prompt 'be brief'" in " ".join(flags[1])


async def test_resume_with_another_model_and_mode_switches_the_hot_process(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    """``--resume`` of a hot conversation with another model and permission mode: the process is
    switched in place (``set_permission_mode`` / ``set_model``), not ended and resumed; the next
    request goes out with the new model and the new mode governs its tools."""
    target = workdir / "made.txt"
    write = json.dumps({"file_path": str(target), "content": "switched"})
    code, out, err = await run(
        shim, "-p", f"[[tool:Write:{write}]][[say:tried]]", "--output-format", "json",
        "--model", "sonnet", "--permission-mode", "default", cwd=workdir,
    )  # fmt: skip
    assert code == 0, err
    first = json.loads(out)
    assert not target.exists()  # default mode, no one to ask: the write is refused
    assert "sonnet" in model_server.main_requests()[-1]["model"]
    spawned = dropin.hub.supervisor.spawned_total
    code, out, err = await run(
        shim, "-p", f"again [[tool:Write:{write}]][[say:written]]", "--output-format", "json",
        "--resume", first["session_id"], "--model", "opus",
        "--permission-mode", "acceptEdits", cwd=workdir,
    )  # fmt: skip
    assert code == 0, err
    second = json.loads(out)
    assert second["session_id"] == first["session_id"] and second["result"] == "written"
    assert dropin.hub.supervisor.spawned_total == spawned  # switched, not resumed
    assert target.read_text() == "switched"
    assert "opus" in model_server.main_requests()[-1]["model"]  # the alias, as the CLI maps it
    (session,) = [s for s in dropin.hub.list() if s.cli_session_id == first["session_id"]]
    assert (session.options.model, session.options.permission_mode) == ("opus", "acceptEdits")
    # bypassPermissions is granted at launch only: that one is a resume in a new process.
    code, out, err = await run(
        shim, "-p", "[[say:bypassing]]", "--output-format", "json", "--resume",
        first["session_id"], "--model", "opus",
        "--permission-mode", "bypassPermissions", cwd=workdir,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"] == "bypassing"
    assert dropin.hub.supervisor.spawned_total == spawned + 1


async def _prompts_mid_turn(argv: list[str], cwd: Path, tag: str) -> tuple[list[str], list[str]]:
    """Three prompts on stream-json stdin, the last two while the first turn runs (its model
    answer is late): the results in order, and the user messages replayed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, "-p", "--input-format", "stream-json", "--output-format", "stream-json",
        "--verbose", "--replay-user-messages",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=cwd,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    def user(text: str) -> bytes:
        msg = {"type": "user", "message": {"role": "user", "content": text}}
        return (json.dumps({**msg, "parent_tool_use_id": None, "session_id": ""}) + "\n").encode()

    proc.stdin.write(user(f"first {tag} [[delay:1500]][[say:one]]"))
    await proc.stdin.drain()
    results: list[str] = []
    replayed: list[str] = []
    while True:
        msg = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        if msg["type"] == "system" and msg.get("subtype") == "init" and not results:
            # The first turn runs (the model is slow to answer): two more prompts now.
            proc.stdin.write(user(f"second {tag} [[say:two]]") + user(f"third {tag} [[say:3]]"))
            await proc.stdin.drain()
        if msg["type"] == "user" and msg.get("isReplay"):
            replayed.append(msg["message"]["content"])
        if msg["type"] == "result":
            results.append(msg["result"])
            if results[-1] != "one":  # the turn of the later prompts
                break
    proc.stdin.close()
    await asyncio.wait_for(proc.wait(), 60)
    return results, replayed


async def test_prompts_written_mid_turn_run_after_it_merged_like_the_cli(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    """The CLI (2.1.330) runs prompts written while a text turn runs after it, as one turn of
    one user message (their texts joined by a line break); so does the drop-in (it ran one turn
    per prompt before)."""
    theirs = await _prompts_mid_turn([CLI], workdir, "cli")
    asked_cli = model_server.main_requests()[-1]["last_user_text"]
    ours = await _prompts_mid_turn([shim], workdir, "shim")
    asked_shim = model_server.main_requests()[-1]["last_user_text"]
    assert theirs[0] == ["one", "two"], theirs
    assert ours == (
        theirs[0],
        [t.replace("cli", "shim") for t in theirs[1]],
    ), (ours, theirs)
    assert asked_cli == "second cli [[say:two]]\nthird cli [[say:3]]"
    assert asked_shim == asked_cli.replace("cli", "shim")


def _kinds(out: str) -> list[str]:
    """Each stdout line's kind: its session state, subtype or type."""
    lines = [json.loads(line) for line in out.splitlines()]
    return [str(d.get("state") or d.get("subtype") or d["type"]) for d in lines]


async def test_session_state_lines_and_a_resume_print_what_the_cli_prints(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    """With the session-state events the SDKs ask for, a run's lines are the CLI's, the trailing
    ``idle`` included, for a new conversation and a hot ``--resume``; a ``-p`` json resume after
    it prints its one JSON object. Before: the ``idle`` was left for the next run of the
    conversation (first in its stream, before the result in its json), and a ``status`` line
    the client had not asked for (partial messages) came with every turn."""
    env = {"CLAUDE_CODE_EMIT_SESSION_STATE_EVENTS": "1"}
    argv = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]

    def user(text: str) -> bytes:
        msg = {"type": "user", "message": {"role": "user", "content": text}}
        return (json.dumps({**msg, "parent_tool_use_id": None}) + "\n").encode()

    seen = {}
    for name, exe in (("cli", CLI), ("shim", shim)):
        code, out, err = await run(exe, *argv, input=user("[[say:one]]"), cwd=workdir, env=env)
        assert code == 0, err
        sid = json.loads(out.splitlines()[-2])["session_id"]
        new = _kinds(out)
        code, out, err = await run(
            exe, *argv, "--resume", sid, input=user("[[say:two]]"), cwd=workdir, env=env
        )
        assert code == 0, err
        seen[name] = (new, _kinds(out))
        code, out, err = await run(
            exe, "-p", "[[say:three]]", "--resume", sid, "--output-format", "json",
            cwd=workdir, env=env,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["result"] == "three", out
    assert seen["cli"][0] == seen["cli"][1] == ["running", "init", "assistant", "success", "idle"]
    assert seen["shim"] == seen["cli"]
