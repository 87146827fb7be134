"""The Python Agent SDK (claude-agent-sdk, unchanged) with ``cli_path=hotsession-claude``.

Every test runs the SDK's own code against the shim; the daemon drives the real CLI, which asks
the scripted model server. What a test asserts is what the SDK user sees, plus where it matters
what the daemon did (no spawn for a follow-up, the turn recorded).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    SystemMessage,
    UserMessage,
    create_sdk_mcp_server,
    query,
    tool,
)
from tests.dropin.conftest import Dropin

from hotsession.testing.model_server import ModelServer

pytestmark = pytest.mark.integration


def options(shim: str, cwd: Path, **kw: Any) -> ClaudeAgentOptions:
    return ClaudeAgentOptions(cli_path=shim, cwd=str(cwd), **kw)


async def collect(it: Any) -> list[Any]:
    return [m async for m in it]


def result_of(messages: list[Any]) -> ResultMessage:
    results = [m for m in messages if isinstance(m, ResultMessage)]
    assert results, messages
    return results[-1]


def tool_results(messages: list[Any]) -> list[str]:
    out = []
    for m in messages:
        if isinstance(m, UserMessage) and isinstance(m.content, list):
            for block in m.content:
                content = getattr(block, "content", None)
                if content is not None:
                    out.append(str(content))
    return out


async def test_query_then_resume_is_a_hot_follow_up_that_sees_the_history(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    first = await collect(
        query(prompt="the word is PINEAPPLE [[say:noted]]", options=options(shim, workdir))
    )
    r1 = result_of(first)
    assert r1.result == "noted" and not r1.is_error
    inits = [m for m in first if isinstance(m, SystemMessage) and m.subtype == "init"]
    assert inits and inits[0].data["session_id"] == r1.session_id
    spawned = dropin.hub.supervisor.spawned_total
    model_server.clear()

    second = await collect(
        query(
            prompt="which word? [[say:PINEAPPLE]]",
            options=options(shim, workdir, resume=r1.session_id),
        )
    )
    r2 = result_of(second)
    assert r2.result == "PINEAPPLE" and r2.session_id == r1.session_id
    # The model got the first exchange with the second prompt.
    request = model_server.main_requests()[-1]
    assert request["n_messages"] >= 3, request
    # Served by the process the first query left hot: no spawn, no --resume.
    assert dropin.hub.supervisor.spawned_total == spawned
    # The daemon recorded both turns of the conversation.
    sessions = [s for s in dropin.hub.list() if s.cli_session_id == r1.session_id]
    assert len(sessions) == 1 and sessions[0].record.turns == 2


async def test_client_can_use_tool_allow_deny_and_edited_input(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def decide(name: str, tool_input: dict[str, Any], ctx: Any) -> Any:
        asked.append((name, tool_input))
        command = tool_input.get("command", "")
        if "deny-me" in command:
            return PermissionResultDeny(message="not this one")
        if "edit-me" in command:
            edited = command.replace("edit-me", "EDITED")
            return PermissionResultAllow(updated_input={**tool_input, "command": edited})
        return PermissionResultAllow()

    opts = options(shim, workdir, can_use_tool=decide, permission_mode="default")
    async with ClaudeSDKClient(opts) as client:
        await client.query(f"[[bash:touch {workdir}/allowed]][[say:one]]")
        turn1 = await collect(client.receive_response())
        await client.query(f"[[bash:touch {workdir}/deny-me]][[say:two]]")
        turn2 = await collect(client.receive_response())
        await client.query(f"[[bash:touch {workdir}/edit-me]][[say:three]]")
        turn3 = await collect(client.receive_response())
    assert [a[0] for a in asked] == ["Bash", "Bash", "Bash"]
    assert result_of(turn1).result == "one" and (workdir / "allowed").exists()
    r2 = result_of(turn2)
    assert r2.permission_denials and r2.permission_denials[0]["tool_name"] == "Bash"
    assert any("not this one" in t for t in tool_results(turn2))
    assert not (workdir / "deny-me").exists()
    assert result_of(turn3).result == "three"
    assert (workdir / "EDITED").exists() and not (workdir / "edit-me").exists()


async def test_pre_tool_use_hook_denies(dropin: Dropin, shim: str, workdir: Path) -> None:
    seen: list[str] = []

    async def guard(hook_input: Any, tool_use_id: str | None, ctx: Any) -> dict[str, Any]:
        seen.append(hook_input["tool_name"])
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "blocked by the test hook",
            }
        }

    marker = workdir / "should-not-exist"
    opts = options(
        shim,
        workdir,
        permission_mode="bypassPermissions",
        hooks={"PreToolUse": [HookMatcher(matcher="Bash", hooks=[guard])]},
    )
    async with ClaudeSDKClient(opts) as client:
        await client.query(f"[[bash:touch {marker}]][[say:after]]")
        messages = await collect(client.receive_response())
    assert seen == ["Bash"]
    assert not marker.exists()
    assert any("blocked by the test hook" in t for t in tool_results(messages))
    assert result_of(messages).result == "after"


async def test_sdk_mcp_server_tool_is_called(dropin: Dropin, shim: str, workdir: Path) -> None:
    calls: list[dict[str, Any]] = []

    @tool("add", "Add two numbers", {"a": int, "b": int})
    async def add(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"content": [{"type": "text", "text": f"sum={args['a'] + args['b']}"}]}

    server = create_sdk_mcp_server("calc", tools=[add])
    opts = options(
        shim,
        workdir,
        mcp_servers={"calc": server},
        allowed_tools=["mcp__calc__add"],
    )
    async with ClaudeSDKClient(opts) as client:
        await client.query('[[tool:mcp__calc__add:{"a": 2, "b": 40}]][[say:done]]')
        messages = await collect(client.receive_response())
    assert calls == [{"a": 2, "b": 40}]
    assert any("sum=42" in t for t in tool_results(messages))
    assert result_of(messages).result == "done"


async def test_interrupt_set_model_set_permission_mode(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    opts = options(shim, workdir, permission_mode="default")
    async with ClaudeSDKClient(opts) as client:
        await client.query("[[hang]]")

        async def interrupt_when_asked() -> None:
            await asyncio.to_thread(
                model_server.wait_for,
                lambda log: any("hang" in e.get("directives", []) for e in log),
                30,
            )
            await client.interrupt()

        task = asyncio.create_task(interrupt_when_asked())
        messages = await collect(client.receive_response())
        await task
        assert result_of(messages).subtype == "error_during_execution"

        await client.set_model("claude-haiku-4-5")
        await client.set_permission_mode("acceptEdits")
        await client.query("[[say:after]]")
        after = await collect(client.receive_response())
        assert result_of(after).result == "after"
        assert model_server.main_requests()[-1]["model"] == "claude-haiku-4-5"
        await client.query(
            f'[[tool:Write:{{"file_path": "{workdir}/x.txt", "content": "hi"}}]][[say:w]]'
        )
        wrote = await collect(client.receive_response())
        # acceptEdits: the write needed no permission answer (the client has no can_use_tool).
        assert result_of(wrote).result == "w" and (workdir / "x.txt").read_text() == "hi"


async def test_fork_session(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    r1 = result_of(
        await collect(query(prompt="remember KIWI [[say:ok1]]", options=options(shim, workdir)))
    )
    forked = result_of(
        await collect(
            query(
                prompt="fork turn [[say:ok2]]",
                options=options(shim, workdir, resume=r1.session_id, fork_session=True),
            )
        )
    )
    assert forked.session_id != r1.session_id and forked.result == "ok2"
    fork_request = model_server.main_requests()[-1]
    assert fork_request["n_messages"] >= 3  # the first exchange, then the fork's prompt
    # The original goes on from its own history, without the fork's turn.
    model_server.clear()
    again = result_of(
        await collect(
            query(
                prompt="original [[say:ok3]]", options=options(shim, workdir, resume=r1.session_id)
            )
        )
    )
    assert again.session_id == r1.session_id
    assert model_server.main_requests()[-1]["n_messages"] == fork_request["n_messages"]


async def test_chosen_session_id_gets_its_initialize_answer_before_its_process(
    dropin: Dropin, shim: str, workdir: Path, agent_env: dict[str, str]
) -> None:
    """``--session-id`` cannot take a spare; the second conversation of a profile is answered
    at once and its process starts meanwhile. Its hooks are still bound, its id is the chosen
    one, in the CLI's transcript too."""
    import uuid

    from claude_agent_sdk import project_key_for_directory

    from hotsession.dropin import bridge

    blocked: list[str] = []

    async def guard(hook_input: Any, tool_use_id: str | None, ctx: Any) -> dict[str, Any]:
        blocked.append(hook_input["session_id"])
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "no tools today",
            }
        }

    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    early = bridge.EARLY_ANSWERS["initialize"]
    for sid in ids:
        opts = options(
            shim,
            workdir,
            session_id=sid,
            permission_mode="bypassPermissions",
            hooks={"PreToolUse": [HookMatcher(matcher="Bash", hooks=[guard])]},
        )
        async with ClaudeSDKClient(opts) as client:
            await client.query(f"[[bash:touch {workdir}/{sid}]][[say:fine]]")
            messages = await collect(client.receive_response())
        assert result_of(messages).session_id == sid
        assert any("no tools today" in t for t in tool_results(messages))
        assert not (workdir / sid).exists()
    assert bridge.EARLY_ANSWERS["initialize"] == early + 1  # the second one
    assert blocked == ids
    projects = Path(agent_env["CLAUDE_CONFIG_DIR"]) / "projects"
    transcripts = {p.stem for p in (projects / project_key_for_directory(workdir)).glob("*.jsonl")}
    assert set(ids) <= transcripts
