"""Fencing: one conversation is driven by one node, whatever races or partitions happen."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from hotsession.agent import AgentProcess
from hotsession.cluster.hub import ClusterHub
from hotsession.cluster.node import NodeHost, NodeSpec
from hotsession.errors import StaleEpoch
from hotsession.testing.model_server import ModelServer


async def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.1)
    return False


async def _spied_node(
    written: list[str],
    store_factory: Any,
    node_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> NodeHost:
    """A started node in this process (no pool), every prompt written to a CLI's stdin
    appended to ``written``."""
    send_user = AgentProcess.send_user

    async def spy(self: AgentProcess, prompt: str, **kw: Any) -> None:
        written.append(prompt)
        await send_user(self, prompt, **kw)

    monkeypatch.setattr(AgentProcess, "send_user", spy)
    env = {**node_env, "CLAUDE_CONFIG_DIR": str(tmp_path / "claude-config")}
    for key, value in env.items():  # the node sets its environment; put it back afterwards
        monkeypatch.setenv(key, value)
    node = NodeHost(
        NodeSpec(
            name="in-process-node",
            state_root=str(tmp_path / "node"),
            store=store_factory,
            config={"allow_root_bypass": True, "pool_enabled": False, "memory_budget_mb": 2000},
            env=env,
        )
    )
    await node.start()
    return node


async def test_two_nodes_race_for_one_session(chub: ClusterHub, workdir: Path) -> None:
    x, y, z = (n.name for n in chub.live_nodes())
    session = await chub.open(workdir, tenant="t1", node=x)
    assert (await (await session.send("[[say:one]]")).wait()).type == "result"

    claims = await asyncio.gather(
        chub.registry.claim(session.id, y, expect_epoch=1),
        chub.registry.claim(session.id, z, expect_epoch=1),
        return_exceptions=True,
    )
    won = [c for c in claims if not isinstance(c, BaseException)]
    assert len(won) == 1 and won[0].epoch == 2
    assert sum(isinstance(c, StaleEpoch) for c in claims) == 1
    winner, loser = (y, z) if won[0].node == y else (z, y)

    # Both nodes try to drive epoch 2: only the one the store names adopts the session.
    replies = await asyncio.gather(
        chub.actor(winner).adopt.remote(session.id, 2, 0),
        chub.actor(loser).adopt.remote(session.id, 2, 0),
    )
    assert "session" in replies[0]
    assert replies[1]["error"]["code"] == "stale_epoch"

    # The old owner still holds epoch 1 in memory; a prompt sent to it directly is refused
    # (it checks with the store first) and it lets the session go.
    gen = chub.actor(x).send.remote(session.id, 1, "[[say:stale]]")
    first = await (await gen.__anext__())
    assert first["error"]["code"] == "stale_epoch"
    assert session.id not in [v["id"] for v in await chub.actor(x).views.remote()]

    # Through any daemon the conversation goes on where the store says: a resume-ahead (warm)
    # reaches the winner, whose next turn then finds the process it started.
    assert await session.warm() is True
    end = await (await session.send("[[say:two]]")).wait()
    assert end.data["result"] == "two"
    assert end.data["timing"]["source"] in ("warm", "hot")
    assert (await chub.owner(session.id)).node == winner


@pytest.mark.timeout(300)  # a node spawn or a daemon start on a loaded CI machine
async def test_stale_node_drops_moved_sessions(
    chub: ClusterHub, workdir: Path, model_server: ModelServer
) -> None:
    """A node that kept running while its session was moved (a partition, as the others saw
    it) ends that session's process by itself, and a stream of its running turn continues
    from the new owner, which ends the turn with a retryable node_lost error."""
    x, y, _ = (n.name for n in chub.live_nodes())
    session = await chub.open(workdir, tenant="t1", node=x)
    await (await session.send("[[say:one]]")).wait()
    pid = (await session.snapshot())["pid"]
    assert pid

    running = await session.send("[[marker:stale-node]][[hang]]")
    await asyncio.to_thread(
        model_server.wait_for,
        lambda log: any("stale-node" in (e.get("markers") or []) for e in log),
        30,
    )
    # The others decide x is gone and re-home the session on y (x is not told).
    await chub.registry.claim(session.id, y, expect_epoch=1)
    assert "session" in await chub.actor(y).adopt.remote(session.id, 2, 0)

    end = await running.wait()
    assert end.type == "error"
    assert end.data["code"] == "node_lost" and end.data["retryable"] is True
    assert await _gone(pid), "the stale node kept the moved session's process"
    assert session.id not in [v["id"] for v in await chub.actor(x).views.remote()]
    after = await (await session.send("[[say:after]]")).wait()
    assert after.data["result"] == "after"


async def test_stale_node_never_writes_the_prompt_to_its_cli(
    store_factory: Any,
    node_env: dict[str, str],
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node whose epoch moved refuses a prompt before its CLI sees it: the prompt's fenced
    record is the node's check, and the session's runner waits for it (a runner that wrote the
    prompt while the record was being written fails this). The node runs in this process, so
    every write to a CLI's stdin is seen."""
    written: list[str] = []
    node = await _spied_node(written, store_factory, node_env, tmp_path, monkeypatch)
    try:
        opened = await node.open(tenant="t1", cwd=str(workdir), options={})
        session_id, epoch = opened["session"]["id"], opened["epoch"]
        events = [
            event
            async for item in node.send(session_id, epoch, "[[say:one]]")
            for event in (item.get("events", []) if isinstance(item, dict) else item)
        ]
        assert events[-1][3] == "result"  # (session, seq, turn, type, data, t)
        pid = (await node.view(session_id, epoch))["session"]["pid"]
        assert written == ["[[say:one]]"] and pid

        # Another node takes the session over (once this one wrote the turn's end, which the
        # store would refuse); this one still holds the old epoch in memory.
        assert node.store is not None
        for _ in range(200):
            if (await node.store.list_turns(session_id))[-1].status == "done":
                break
            await asyncio.sleep(0.05)
        await node.store.claim(session_id, "another-node", expect_epoch=epoch)
        items = [item async for item in node.send(session_id, epoch, "[[say:stale]]")]
        assert await _gone(pid), "the stale node kept the moved session's process"
        assert written == ["[[say:one]]"], "the stale node wrote the prompt to its CLI"
        assert items == [{"error": items[0]["error"]}]
        assert items[0]["error"]["code"] == "stale_epoch"
        assert session_id not in node.epochs
    finally:
        await node.stop()


async def test_stale_node_never_writes_a_dropin_prompt_to_its_cli(
    store_factory: Any,
    node_env: dict[str, str],
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drop-in run on a node is fenced as a node's ``send`` is: once another node owns its
    session, the run's next prompt never reaches this node's CLI (a run that sent ungated wrote
    it before the once-a-second fence check could notice), and the run ends with an error."""
    written: list[str] = []
    node = await _spied_node(written, store_factory, node_env, tmp_path, monkeypatch)
    argv = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
    hello = {"argv": argv, "cwd": str(workdir), "env": {}}
    client = {"tenant": "t1", "cwd": str(workdir), "reserved": []}

    def user(text: str) -> bytes:
        line = {"type": "user", "message": {"role": "user", "content": text}}
        return json.dumps(line).encode() + b"\n"

    out: list[tuple[str, Any]] = []
    try:
        run = node.dropin("run-1", client, hello)
        await node.dropin_input("run-1", user("[[say:one]]"))

        async def until(pred: Any) -> None:
            async with asyncio.timeout(60):
                async for items in run:
                    out.extend(items)
                    if pred():
                        return

        def saw_result() -> bool:
            return any(k == "b" and b'"type":"result"' in p for k, p in out)

        await until(saw_result)
        assert written == ["[[say:one]]"]
        ((session_id, epoch),) = node.epochs.items()
        assert node.store is not None
        for _ in range(200):  # the turn's end written (the store would refuse it afterwards)
            if (await node.store.list_turns(session_id))[-1].status == "done":
                break
            await asyncio.sleep(0.05)
        await node.store.claim(session_id, "another-node", expect_epoch=epoch)

        await node.dropin_input("run-1", user("[[say:stale]]"))
        await until(lambda: any(k == "j" and "exit" in p for k, p in out))
        assert written == ["[[say:one]]"], "the stale node wrote the drop-in's prompt to its CLI"
        errors = b"".join(p[1:] for k, p in out if k == "b" and p[:1] == b"\x02")
        assert b"moved to another node" in errors, errors
        assert [p["exit"] for k, p in out if k == "j" and "exit" in p] == [1]
    finally:
        await node.stop()
