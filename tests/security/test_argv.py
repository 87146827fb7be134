"""A tenant's private flag values are off its agents' command lines (hotsession.isolation.argfiles).

Linux shows every process's argv to every user; tenant B's agent reads A's agent's
``/proc/<pid>/cmdline`` and ``ps -eo args`` and must find none of A's system prompt, appended
prompt, MCP config, agents JSON or sandbox settings, while A's agent still gets them all.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import wait_until
from tests.security.conftest import TOKEN_A, TOKEN_B, Lab, Running, tenant_toml, turn, write_config

from hotsession.isolation.argfiles import DIR_NAME
from hotsession.testing.model_server import ModelServer

pytestmark = pytest.mark.integration


async def _messages(client: httpx.AsyncClient, sid: str, prompt: str) -> list[dict[str, Any]]:
    """One turn over HTTP: the CLI messages it streamed (fails on an ``error``)."""
    out: list[dict[str, Any]] = []
    async with client.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": prompt}) as r:
        assert r.status_code == 200, await r.aread()
        kind = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                assert kind != "error", line
                if kind == "message":
                    out.append(json.loads(line[6:]))
                if kind == "result":
                    return out
    raise AssertionError("the turn ended without a result")


async def test_another_tenants_agent_reads_no_private_flag_on_the_command_line(
    lab: Lab, start_daemon: Any, model_server: ModelServer
) -> None:
    config = write_config(
        lab.base / "argv.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        # B without the Bash sandbox: inside it, B's Bash would see no other process at all.
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name, sandbox=False),
        state_dir=str(lab.base / "argv-state"),
        cli_path=lab.cli_path,
        pass_env=["ANTHROPIC_API_KEY"],
    )
    d: Running = await start_daemon(config)
    tag = secrets.token_hex(4)
    marks = {
        "system": f"SYSMARK{tag}",
        "append": f"APPENDMARK{tag}",
        "mcp": f"mcpmark{tag}",
        "agents": f"agentmark{tag}",
    }
    # A's session with every movable value: typed options and the drop-in's pass-through form.
    session = await d.daemon.hub.open(
        str(lab.root_a),
        tenant="a",
        system_prompt=f"You are {marks['system']}.",
        append_system_prompt=f"Also {marks['append']}.",
        mcp_config=json.dumps({"mcpServers": {marks["mcp"]: {"command": "/bin/true"}}}),
        extra_args=(
            "--agents",
            json.dumps({marks["agents"]: {"description": f"{marks['agents']} d", "prompt": "x"}}),
        ),
    )
    a, b = d.client(TOKEN_A), d.client(TOKEN_B)
    a_pid = (await a.get(f"/v1/sessions/{session.id}")).json()["pid"]
    assert a_pid

    # A's agent still gets every value: the prompts and agents reach the model, the MCP server
    # is the CLI's.
    model_server.record_bodies = True
    try:
        msgs = await _messages(a, session.id, f"[[say:hi]] [[marker:{tag}]]")
    finally:
        model_server.record_bodies = False
    (entry,) = [e for e in model_server.log() if tag in e.get("markers", [])]
    sent = json.dumps(entry["body"])
    for key in ("system", "append", "agents"):
        assert marks[key] in sent, key
    (init,) = [m for m in msgs if m.get("subtype") == "init"]
    assert marks["mcp"] in [s["name"] for s in init["mcp_servers"]]

    # B's agent reads A's agent's command line both ways.
    out = lab.root_b / "argv-out"
    script = lab.root_b / "look.sh"
    script.write_text(
        f"mkdir -p {out}\n"
        f"tr '\\0' ' ' < /proc/{a_pid}/cmdline > {out}/cmdline.txt\n"
        f"ps -eo args > {out}/ps.txt\n"
    )
    os.chown(script, lab.b.uid, lab.b.gid)
    sb = (await b.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})).json()
    assert (await turn(b, sb["id"], f"[[bash:bash {script}]]"))["result"] == "done"
    cmdline = (out / "cmdline.txt").read_text()
    ps = (out / "ps.txt").read_text()
    # The reads ran and saw A's agent.
    assert "--input-format stream-json" in cmdline
    assert cmdline.strip() in ps
    for seen in (cmdline, ps):
        for key, mark in marks.items():
            assert mark not in seen, key
        assert "allowWrite" not in seen  # the sandbox settings (with A's roots)
    # What it saw instead: paths.
    assert "--system-prompt-file" in cmdline and "--append-system-prompt-file" in cmdline

    # The files: the account's, 0600, in its private directory.
    args_dir = lab.home(lab.a) / DIR_NAME
    st = args_dir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (lab.a.uid, 0o700)
    files = list(args_dir.iterdir())
    assert len(files) >= 4  # system, append, mcp, agents (+ sandbox settings where it is on)
    for f in files:
        st = f.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (lab.a.uid, 0o600), f

    # The files go with the process.
    await d.daemon.hub.close_session(session.id, tenant="a")
    await wait_until(lambda: not any(Path(args_dir).iterdir()))
