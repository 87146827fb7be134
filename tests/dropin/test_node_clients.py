"""Clients written in TypeScript: the Agent SDK with ``pathToClaudeCodeExecutable``, and the ACP
adapter (``@zed-industries/claude-agent-acp``, which runs the SDK) with ``CLAUDE_CODE_EXECUTABLE``,
driven by the Python ``agent-client-protocol`` client. Both come from npm, pinned by this
directory's package-lock.json (``make test`` runs ``npm ci`` here); without Node they are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.dropin.conftest import Dropin, node, run

from hotsession.testing.model_server import ModelServer

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
MODULES = HERE / "node_modules"
ACP_ADAPTER = MODULES / "@zed-industries" / "claude-agent-acp" / "dist" / "index.js"

# Skipped only outside CI: in CI (CI=true) a missing Node or npm install is a failure, not a skip.
needs_node = pytest.mark.skipif(
    (node() is None or not MODULES.is_dir()) and not os.environ.get("CI"),
    reason="Node.js or tests/dropin/node_modules missing (make test runs npm ci there)",
)


@needs_node
async def test_ts_sdk_streaming_input_can_use_tool_two_turns_and_resume(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    node_bin = node()
    assert node_bin is not None
    code, out, err = await run(
        node_bin, str(HERE / "ts_sdk_client.mjs"), shim, str(workdir), cwd=HERE
    )
    assert code == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["asked"] == ["Bash"] and (workdir / "ts-allowed").exists()
    assert [r["result"] for r in report["results"]] == ["one", "two"]
    sid = report["results"][0]["session_id"]
    assert report["results"][1]["session_id"] == sid
    assert report["resume"] == {"result": "TANGERINE", "session_id": sid}
    assert model_server.main_requests()[-1]["n_messages"] >= 5  # both turns came with it
    # The resuming query() has no canUseTool, so another profile (no --permission-prompt-tool):
    # the daemon resumed the conversation in a process of that profile; all turns are recorded.
    records = await dropin.hub.registry.list_sessions(include_closed=True)
    assert sum(r.turns for r in records if r.cli_session_id == sid) == 3


class Recorder:
    """An ACP client (the editor's side): records updates, answers permission requests."""

    def __init__(self, allow: bool = True) -> None:
        self.updates: list[Any] = []
        self.permissions: list[Any] = []
        self.allow = allow

    async def request_permission(
        self, session_id: str, tool_call: Any, options: Any, **kw: Any
    ) -> Any:
        from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

        self.permissions.append((tool_call, options))
        if not self.allow:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        once = next(o for o in options if o.kind == "allow_once")
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=once.option_id)
        )

    async def session_update(self, session_id: str, update: Any, **kw: Any) -> None:
        self.updates.append(update)

    def text(self) -> str:
        return "".join(
            u.content.text
            for u in self.updates
            if getattr(u, "session_update", None) == "agent_message_chunk"
            and getattr(u.content, "text", None)
        )

    def kinds(self) -> set[str]:
        return {str(getattr(u, "session_update", "")) for u in self.updates}

    def __getattr__(self, name: str) -> Any:  # the optional client methods (files, terminals)
        raise AttributeError(name)


@needs_node
async def test_acp_adapter_new_prompt_permission_and_load(
    dropin: Dropin, shim: str, workdir: Path, model_server: ModelServer
) -> None:
    from acp import PROTOCOL_VERSION, spawn_agent_process, text_block

    node_bin = node()
    assert node_bin is not None
    env = {**os.environ, "CLAUDE_CODE_EXECUTABLE": shim}
    client = Recorder()
    async with spawn_agent_process(client, node_bin, str(ACP_ADAPTER), env=env, cwd=workdir) as (
        conn,
        _proc,
    ):
        init = await conn.initialize(protocol_version=PROTOCOL_VERSION)
        assert init.agent_capabilities is not None and init.agent_capabilities.load_session
        session = await conn.new_session(cwd=str(workdir), mcp_servers=[])
        answer = await conn.prompt(
            session_id=session.session_id,
            prompt=[text_block(f"remember PLUM [[bash:touch {workdir}/acp-made]][[say:acp done]]")],
        )
        assert answer.stop_reason == "end_turn"
        assert client.permissions, "the adapter asked the editor for permission"
        assert (workdir / "acp-made").exists()
        assert "acp done" in client.text()
        assert {"tool_call", "agent_message_chunk"} <= client.kinds()
    sid = session.session_id
    hot = [s for s in dropin.hub.list() if s.cli_session_id == sid]
    assert hot, "the conversation is known by the id the adapter chose"

    # A new editor process loads the earlier session: its history is replayed, the next prompt
    # goes to the conversation (still hot in the daemon).
    spawned = dropin.hub.supervisor.spawned_total
    again = Recorder()
    async with spawn_agent_process(again, node_bin, str(ACP_ADAPTER), env=env, cwd=workdir) as (
        conn,
        _proc,
    ):
        await conn.initialize(protocol_version=PROTOCOL_VERSION)
        await conn.load_session(cwd=str(workdir), session_id=sid, mcp_servers=[])
        assert "acp done" in again.text()  # the replayed history
        again.updates.clear()
        answer = await conn.prompt(
            session_id=sid, prompt=[text_block("which fruit? [[say:PLUM again]]")]
        )
        assert answer.stop_reason == "end_turn" and "PLUM again" in again.text()
    assert dropin.hub.supervisor.spawned_total == spawned
    assert model_server.main_requests()[-1]["n_messages"] >= 5
