"""``hotsession-claude`` (the drop-in executable) pointed at a cluster-mode daemon.

The shim is run as a real process (``HOTSESSION_URL`` names a cluster daemon of the tier); what
it prints and its exit code are what a drop-in client (an SDK app, a bot) sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import TOKEN, ApiDaemon, serve_process
from tests.cluster.test_cluster_client import ray_client_address  # noqa: F401  (a fixture)

from hotsession.testing.model_server import ModelServer

SHIM = str(Path(sys.executable).with_name("hotsession-claude"))


async def shim_run(
    *argv: str, url: str, cwd: Path, env: dict[str, str], token: str = TOKEN, stdin: bytes = b""
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SHIM,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")},
            **env,
            "HOTSESSION_URL": url,
            "HOTSESSION_TOKEN": token,
        },
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def owner_node(daemon: ApiDaemon, cli_session_id: str) -> tuple[str, str]:
    """The open session of conversation ``cli_session_id`` in the cluster's registry, and the
    node that owns it."""
    found = [
        rec
        for rec in await daemon.hub.registry.list_sessions("alice")
        if rec.cli_session_id == cli_session_id and rec.state != "closed"
    ]
    assert len(found) == 1, found
    owner = await daemon.hub.owner(found[0].id, fresh=True)
    return found[0].id, owner.node


async def turn_states(daemon: ApiDaemon, session_id: str, n: int) -> list[str]:
    """The session's turn states in the store once ``n`` turns ended (a turn's end is written
    in the background, after its result went out)."""
    for _ in range(200):
        turns = await daemon.hub.registry.list_turns(session_id)
        if len(turns) >= n and all(t.ended_at is not None for t in turns):
            break
        await asyncio.sleep(0.05)
    return [t.status for t in turns]


async def session_view(daemon: ApiDaemon, session_id: str) -> dict[str, Any]:
    """The session's view as its node has it (its live process's pid, its turns, its node)."""
    view: dict[str, Any] = (await daemon.hub.call(session_id, "view"))["session"]
    return view


async def test_a_dropin_run_on_a_cluster_daemon_is_served_on_a_node_and_resumed_hot(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    daemon = await api_daemons()
    code, out, err = await shim_run(
        "-p",
        "the word is MANGO [[say:noted]]",
        "--output-format",
        "json",
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0, err
    assert err == ""
    first = json.loads(out)
    assert first["result"] == "noted" and not first["is_error"]
    # A session of the cluster like any other: in the registry, owned by a node.
    session_id, node = await owner_node(daemon, first["session_id"])
    before = await session_view(daemon, session_id)
    assert before["node"] == node and before["pid"], before
    assert before["metadata"]["client"] == "hotsession-claude", before
    model_server.clear()

    # A second daemon (another API front of the cluster) finds the node through the registry.
    other = await api_daemons()
    code, out, err = await shim_run(
        "-p",
        "which word? [[say:MANGO]]",
        "--resume",
        first["session_id"],
        "--output-format",
        "json",
        url=other.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    second = json.loads(out)
    assert second["result"] == "MANGO" and second["session_id"] == first["session_id"]
    assert model_server.main_requests()[-1]["n_messages"] >= 3  # the history came along
    # Hot: the same session on the same node, answered by the process that answered first.
    assert await owner_node(daemon, first["session_id"]) == (session_id, node)
    after = await session_view(daemon, session_id)
    assert after["pid"] == before["pid"] and after["turns"] == 2, (before, after)
    assert await turn_states(daemon, session_id, 2) == ["done", "done"]

    # A wrong token is still a refused token (no fallback).
    code, out, err = await shim_run("-p", "hi", url=daemon.url, cwd=workdir, env={}, token="wrong")
    assert code == 1 and "refused the token" in err and out == ""


async def test_the_python_agent_sdk_through_the_dropin_on_a_cluster(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    """The Agent SDK (nobody here wrote it) with ``cli_path`` = ``hotsession-claude`` and
    ``HOTSESSION_URL`` a cluster daemon: ``query()`` then ``query(resume=…)``, the second hot."""
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, SystemMessage, query

    daemon = await api_daemons()

    def options(**kw: Any) -> ClaudeAgentOptions:
        env = {"HOTSESSION_URL": daemon.url, "HOTSESSION_TOKEN": TOKEN}
        return ClaudeAgentOptions(cli_path=SHIM, cwd=str(workdir), env=env, **kw)

    async def ask(prompt: str, **kw: Any) -> tuple[list[Any], ResultMessage]:
        messages = [m async for m in query(prompt=prompt, options=options(**kw))]
        results = [m for m in messages if isinstance(m, ResultMessage)]
        assert results, messages
        return messages, results[-1]

    first, r1 = await ask("the colour is TEAL [[say:noted]]")
    assert r1.result == "noted" and not r1.is_error
    inits = [m for m in first if isinstance(m, SystemMessage) and m.subtype == "init"]
    assert inits and inits[0].data["session_id"] == r1.session_id
    session_id, node = await owner_node(daemon, r1.session_id)
    before = await session_view(daemon, session_id)
    model_server.clear()

    _, r2 = await ask("which colour? [[say:TEAL]]", resume=r1.session_id)
    assert r2.result == "TEAL" and r2.session_id == r1.session_id and not r2.is_error
    assert model_server.main_requests()[-1]["n_messages"] >= 3  # the history came along
    # Hot on the node that held it: same session, the same process (no spawn, no --resume).
    assert await owner_node(daemon, r1.session_id) == (session_id, node)
    after = await session_view(daemon, session_id)
    assert after["pid"] == before["pid"] and after["turns"] == 2, (before, after)
    assert await turn_states(daemon, session_id, 2) == ["done", "done"]


async def test_sdk_client_permissions_cross_the_relay_both_ways(
    api_daemons: Callable[[], Awaitable[ApiDaemon]], workdir: Path, tmp_path: Path
) -> None:
    """``ClaudeSDKClient`` with ``can_use_tool`` through a cluster daemon: the CLI's permission
    requests (on a node) reach the client, its answers (allow, deny) go back, two turns on one
    run."""
    from claude_agent_sdk import (
        ClaudeAgentOptions,
        ClaudeSDKClient,
        PermissionResultAllow,
        PermissionResultDeny,
        ResultMessage,
    )

    daemon = await api_daemons()
    asked: list[str] = []

    async def decide(name: str, tool_input: dict[str, Any], ctx: Any) -> Any:
        asked.append(name)
        if "deny-me" in tool_input.get("command", ""):
            return PermissionResultDeny(message="not this one")
        return PermissionResultAllow()

    allowed, denied = tmp_path / "allowed", tmp_path / "deny-me"
    opts = ClaudeAgentOptions(
        cli_path=SHIM,
        cwd=str(workdir),
        env={"HOTSESSION_URL": daemon.url, "HOTSESSION_TOKEN": TOKEN},
        can_use_tool=decide,
        permission_mode="default",
    )
    async with ClaudeSDKClient(opts) as client:
        await client.query(f"[[bash:touch {allowed}]][[say:one]]")
        turn1 = [m async for m in client.receive_response()]
        await client.query(f"[[bash:touch {denied}]][[say:two]]")
        turn2 = [m async for m in client.receive_response()]
    r1, r2 = (next(m for m in t if isinstance(m, ResultMessage)) for t in (turn1, turn2))
    assert asked == ["Bash", "Bash"]
    assert r1.result == "one" and allowed.exists()
    assert r2.result == "two" and r2.permission_denials and not denied.exists()
    assert r1.session_id == r2.session_id
    await owner_node(daemon, r1.session_id)  # a session of the cluster's registry


@pytest.mark.timeout(300)  # a daemon start on a loaded CI machine
async def test_a_dropin_run_through_a_ray_client_daemon(
    ray_client_address: str,  # noqa: F811
    cluster_pg: Any,
    workdir: Path,
    tmp_path: Path,
    model_server: ModelServer,
) -> None:
    """``hotsession serve --cluster ray://…`` (a real process): the run's output is pulled
    (``hotsession.cluster.streams``); a ``--resume`` is a follow-up with the history."""
    conf = tmp_path / "hotsession.toml"
    conf.write_text(
        f'[[tenants]]\nname = "alice"\ntoken = "{TOKEN}"\nroots = [{json.dumps(str(workdir))}]\n'
    )
    async with serve_process(ray_client_address, cluster_pg.url, conf, tmp_path / "state") as url:
        code, out, err = await shim_run(
            "-p",
            "the fruit is KIWI [[say:noted]]",
            "--output-format",
            "json",
            url=url,
            cwd=workdir,
            env={},
        )
        assert code == 0 and err == "", err
        first = json.loads(out)
        assert first["result"] == "noted"
        model_server.clear()
        code, out, err = await shim_run(
            "-p",
            "which fruit? [[say:KIWI]]",
            "--resume",
            first["session_id"],
            url=url,
            cwd=workdir,
            env={},
        )
        assert code == 0 and err == "", err
        assert out.strip() == "KIWI"
        assert model_server.main_requests()[-1]["n_messages"] >= 3


async def test_a_dropin_resume_after_its_node_was_lost_continues_on_another_node(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    """The node holding a drop-in's conversation is lost (its host actor killed) while idle: the
    next ``--resume`` learns of it from its first call there, the session is re-homed, the run
    starts again on the new owner with the stdin it had, and is answered with the history."""
    import ray

    from hotsession.cluster.actors import NAMESPACE, PREFIX

    daemon = await api_daemons()
    code, out, err = await shim_run(
        "-p",
        "the word is PLUM [[say:noted]]",
        "--output-format",
        "json",
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    first = json.loads(out)
    session_id, node = await owner_node(daemon, first["session_id"])
    # The daemon must learn of the loss from the run's own call (as when the node dies just
    # before it): its background watch of the nodes is stopped first.
    assert daemon.hub._refresh is not None
    daemon.hub._refresh.cancel()
    for watched in daemon.hub.nodes.values():
        if watched.watcher is not None:
            watched.watcher.cancel()
    ray.kill(ray.get_actor(PREFIX + node, namespace=NAMESPACE), no_restart=True)

    model_server.clear()
    code, out, err = await shim_run(
        "-p",
        "which word? [[say:PLUM]]",
        "--resume",
        first["session_id"],
        "--output-format",
        "json",
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    second = json.loads(out)
    assert second["result"] == "PLUM" and second["session_id"] == first["session_id"]
    assert model_server.main_requests()[-1]["n_messages"] >= 3  # the history came along
    moved_id, moved_to = await owner_node(daemon, first["session_id"])
    assert moved_id == session_id and moved_to != node
    assert not daemon.hub.nodes[node].alive


async def test_a_dropin_resume_with_another_profile_moves_the_conversation_to_a_new_session(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    """``--resume ID`` with flags that make another profile: the hot process of ID ends, ID is
    resumed in a new session of that profile on the node, claimed there; the old session is
    closed, and the next ``--resume ID`` goes to the new one."""
    daemon = await api_daemons()
    base = ("--output-format", "json")
    code, out, err = await shim_run(
        "-p", "the word is FIG [[say:noted]]", *base, url=daemon.url, cwd=workdir, env={}
    )
    assert code == 0 and err == "", err
    cli_id = json.loads(out)["session_id"]
    old_id, node = await owner_node(daemon, cli_id)

    other = ("--disallowedTools", "WebFetch")
    code, out, err = await shim_run(
        "-p",
        "which word? [[say:FIG]]",
        "--resume",
        cli_id,
        *other,
        *base,
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    assert json.loads(out)["result"] == "FIG"
    new_id, new_node = await owner_node(daemon, cli_id)  # exactly one open session of ID
    assert new_id != old_id and new_node == node
    assert (await daemon.hub.registry.get_session(old_id)).state == "closed"
    view = await session_view(daemon, new_id)

    code, out, err = await shim_run(
        "-p",
        "again? [[say:FIG]]",
        "--resume",
        cli_id,
        *other,
        *base,
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    assert await owner_node(daemon, cli_id) == (new_id, node)
    assert (await session_view(daemon, new_id))["pid"] == view["pid"]  # hot


async def test_a_dropin_resume_of_a_closed_conversation_comes_from_the_store(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    cluster_root: Path,
    model_server: ModelServer,
) -> None:
    """``--resume ID`` of a conversation open on no node (its session closed) and whose
    transcript no node has on disk: the chosen node writes it from the store first, and the
    CLI resumes it with its history."""
    daemon = await api_daemons()
    code, out, err = await shim_run(
        "-p",
        "the word is LIME [[say:noted]]",
        "--output-format",
        "json",
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    cli_id = json.loads(out)["session_id"]
    session_id, _ = await owner_node(daemon, cli_id)
    async with daemon.client() as c:
        assert (await c.delete(f"/v1/sessions/{session_id}")).status_code == 200
    local = list(cluster_root.glob(f"nodes/*/claude-config/projects/*/{cli_id}.jsonl"))
    assert local  # the CLI's own transcript, on its node
    for path in local:
        path.unlink()

    model_server.clear()
    code, out, err = await shim_run(
        "-p",
        "which word? [[say:LIME]]",
        "--resume",
        cli_id,
        "--output-format",
        "json",
        url=daemon.url,
        cwd=workdir,
        env={},
    )
    assert code == 0 and err == "", err
    assert json.loads(out)["result"] == "LIME"
    assert model_server.main_requests()[-1]["n_messages"] >= 3  # the history came along
    new_id, _ = await owner_node(daemon, cli_id)  # a new session of the cluster resumed it
    assert new_id != session_id


async def test_a_dropin_client_killed_mid_turn_loses_nothing_on_a_cluster(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    """The shim killed mid-turn: the daemon tells the node the client is gone; the turn completes
    on the node and is recorded, and the next ``--resume`` (hot) sees it."""
    daemon = await api_daemons()
    json_out = ("--output-format", "json")
    code, out, err = await shim_run(
        "-p", "[[say:first]]", *json_out, url=daemon.url, cwd=workdir, env={}
    )
    assert code == 0 and err == "", err
    cli_id = json.loads(out)["session_id"]
    session_id, node = await owner_node(daemon, cli_id)
    pid = (await session_view(daemon, session_id))["pid"]
    model_server.clear()
    proc = await asyncio.create_subprocess_exec(
        SHIM, "-p", "slow one [[delay:1500]][[say:late answer]]", "--resume", cli_id,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, cwd=workdir,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")},
            "HOTSESSION_URL": daemon.url,
            "HOTSESSION_TOKEN": TOKEN,
        },
    )  # fmt: skip
    await asyncio.to_thread(
        model_server.wait_for, lambda log: any("delay" in e.get("directives", []) for e in log), 30
    )
    proc.kill()
    await proc.wait()
    assert await turn_states(daemon, session_id, 2) == ["done", "done"]

    code, out, err = await shim_run(
        "-p", "and now [[say:third]]", "--resume", cli_id, *json_out,
        url=daemon.url, cwd=workdir, env={},
    )  # fmt: skip
    assert code == 0 and err == "", err
    assert json.loads(out)["result"] == "third"
    # first prompt + answer, the killed turn's prompt + answer, then this prompt
    assert model_server.main_requests()[-1]["n_messages"] >= 5
    assert await turn_states(daemon, session_id, 3) == ["done", "done", "done"]
    assert await owner_node(daemon, cli_id) == (session_id, node)
    assert (await session_view(daemon, session_id))["pid"] == pid


async def test_a_new_dropin_run_goes_to_the_node_with_a_ready_spare_of_its_profile(
    api_daemons: Callable[[], Awaitable[ApiDaemon]], workdir: Path
) -> None:
    """Placement as for a new session: the daemon computes the run's profile (argv, env, the
    SDK's ``initialize`` sent with the hello) as the node will, so the second conversation of a
    profile goes to the node whose pool kept a spare of it after the first, and takes it."""
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

    daemon = await api_daemons()
    env = {"HOTSESSION_URL": daemon.url, "HOTSESSION_TOKEN": TOKEN}
    opts = ClaudeAgentOptions(  # a profile of this test alone (its system prompt)
        cli_path=SHIM, cwd=str(workdir), env=env, system_prompt="placement test 7f3a"
    )

    async def new_conversation() -> tuple[str, dict[str, Any]]:
        results = [
            m
            async for m in query(prompt="[[say:ok]]", options=opts)
            if isinstance(m, ResultMessage)
        ]
        assert results and results[-1].result == "ok"
        session_id, _ = await owner_node(daemon, results[-1].session_id)
        return session_id, await session_view(daemon, session_id)

    _, first = await new_conversation()
    node, profile = first["node"], first["profile"]
    # The node's pool keeps a spare of the profile for the client's next conversation.
    for _ in range(600):
        if daemon.hub.nodes[node].figures.spares.get(profile):
            break
        await asyncio.sleep(0.1)
    assert daemon.hub.nodes[node].figures.spares.get(profile), daemon.hub.nodes[node].figures
    others = [n for n in daemon.hub.live_nodes() if n.name != node]
    assert others and not any(n.figures.spares.get(profile) for n in others)

    async def hits() -> int:
        stats = await daemon.hub.actor(node).stats.remote()
        return sum(p["hits"] for p in stats["pool"]["profiles"] if p["profile"] == profile)

    before = await hits()
    _, second = await new_conversation()
    assert second["node"] == node and second["profile"] == profile
    assert await hits() == before + 1  # its spare served it
    assert (second["last_timing"] or {}).get("source") == "spare", second
