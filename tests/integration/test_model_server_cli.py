"""The real Claude Code CLI (bundled in claude-agent-sdk) against the scripted model server.

These tests pin down what the CLI actually sends, which docs/model-server.md documents.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import claude_agent_sdk
import pytest

from hotsession.testing.model_server import ModelServer

CLI = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CLI.is_file(), reason=f"bundled Claude Code CLI missing at {CLI}"),
]


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_log(model_server: ModelServer) -> None:
    model_server.clear()


@pytest.fixture
def cli_env(tmp_path: Path, model_server: ModelServer) -> dict[str, str]:
    """The environment a CLI needs to talk to the model server with a private config and home."""
    (tmp_path / "config").mkdir()
    (tmp_path / "home").mkdir()
    env = dict(os.environ)
    env.pop("CLAUDECODE", None)
    env.update(
        ANTHROPIC_BASE_URL=model_server.url,
        ANTHROPIC_API_KEY="test-key",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CONFIG_DIR=str(tmp_path / "config"),
        HOME=str(tmp_path / "home"),
        IS_SANDBOX="1",
    )
    return env


@pytest.fixture
def cwd(workdir: Path) -> Path:
    return workdir  # the shared empty working directory (tests/conftest.py)


BASE_ARGS = [
    "--output-format",
    "stream-json",
    "--verbose",
    "--permission-mode",
    "bypassPermissions",
]


def run_cli(
    prompt: str, env: dict[str, str], cwd: Path, timeout: float = 60.0
) -> tuple[list[dict[str, Any]], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(CLI), "-p", prompt, *BASE_ARGS],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - t0
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return lines, elapsed


def results(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in lines if m["type"] == "result"]


def test_plain_text_reply_is_the_result_and_one_request(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    lines, _ = run_cli("hello [[say:hi from the scripted model]] [[marker:plain]]", cli_env, cwd)
    (result,) = results(lines)
    assert result["is_error"] is False
    assert result["result"] == "hi from the scripted model"
    # One -p turn = exactly one HTTP request: no title / quota / haiku / count_tokens side calls.
    log = model_server.log()
    assert len(log) == 1
    (entry,) = model_server.main_requests()
    assert entry["kind"] == "messages" and entry["status"] == 200
    assert entry["stream"] is True
    assert entry["n_tools"] > 0 and entry["system_bytes"] > 0
    assert entry["markers"] == ["plain"]
    assert entry["last_user_text"].startswith("hello [[say:")
    assert entry["reply"] == "text"
    assert entry["subagent"] is False


def test_bash_directive_creates_file_through_real_bash_tool(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    lines, _ = run_cli("make it [[bash:echo made > x.txt]] [[marker:bash1]]", cli_env, cwd)
    assert (cwd / "x.txt").read_text() == "made\n"
    (result,) = results(lines)
    assert result["is_error"] is False and result["result"] == "done"
    tool_results = [
        block
        for m in lines
        if m["type"] == "user"
        for block in m["message"]["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(tool_results) == 1 and tool_results[0]["is_error"] is False
    mains = model_server.main_requests()
    assert [(e["step"], e["reply"]) for e in mains] == [(0, "tool_use:Bash"), (1, "text")]
    assert all(e["markers"] == ["bash1"] for e in mains)
    assert len(model_server.log()) == 2


def test_tool_sequence_then_final_text(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    prompt = (
        "go [[bash:echo a > a.txt]]"
        '[[tool:Write:{"file_path": "' + str(cwd / "w.txt") + '", "content": "x: [[y]]"}]]'
        "[[say:fin]]"
    )
    lines, _ = run_cli(prompt, cli_env, cwd)
    assert results(lines)[-1]["result"] == "fin"
    assert (cwd / "a.txt").read_text() == "a\n"
    assert (cwd / "w.txt").read_text() == "x: [[y]]"
    mains = model_server.main_requests()
    assert [e["reply"] for e in mains] == ["tool_use:Bash", "tool_use:Write", "text"]
    assert [e["n_messages"] for e in mains] == [2, 4, 6]


def test_thinking_block_is_accepted(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    lines, _ = run_cli("[[think:let me see]][[say:thought through]]", cli_env, cwd)
    (result,) = results(lines)
    assert result["is_error"] is False and result["result"] == "thought through"
    blocks = [b for m in lines if m["type"] == "assistant" for b in m["message"]["content"]]
    assert blocks[0]["type"] == "thinking" and blocks[0]["thinking"] == "let me see"


def test_error_400_fails_fast_after_fallback_variants(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    lines, elapsed = run_cli("[[error:400]] [[marker:e400]]", cli_env, cwd)
    (result,) = results(lines)
    assert result["is_error"] is True
    assert result["api_error_status"] == 400
    assert elapsed < 15
    log = model_server.log()
    # Not retried, but re-sent in 6 fallback variants (observed with CLI 2.1.330).
    assert len(log) == 6
    assert all(e["status"] == 400 and e["markers"] == ["e400"] for e in log)


def test_cut_with_retries_disabled(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    cli_env["CLAUDE_CODE_MAX_RETRIES"] = "0"
    lines, elapsed = run_cli("[[cut]]", cli_env, cwd)
    (result,) = results(lines)
    assert result["is_error"] is True
    assert "Connection" in result["result"]
    assert elapsed < 15
    # The streaming attempt is cut, then the CLI falls back once to a non-streaming request.
    log = model_server.log()
    assert [(e["stream"], e["reply"]) for e in log] == [(True, "cut"), (False, "cut")]


def test_hang_keeps_the_cli_waiting(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    proc = subprocess.Popen(
        [str(CLI), "-p", "[[hang]] [[marker:hang1]]", *BASE_ARGS],
        env=cli_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        model_server.wait_for(lambda log: any(e["reply"] == "hang" for e in log), timeout=30)
        time.sleep(2.0)
        assert proc.poll() is None, "the CLI gave up on a hanging stream"
        (entry,) = model_server.log()
        assert entry["markers"] == ["hang1"] and entry["t_end_mono"] is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_stream_json_input_one_main_request_per_turn(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    proc = subprocess.Popen(
        [str(CLI), "--input-format", "stream-json", *BASE_ARGS],
        env=cli_env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers = []
    try:
        for i, say in enumerate(["one", "two"]):
            msg = {"role": "user", "content": f"turn {i} [[marker:t{i}]] [[say:{say}]]"}
            proc.stdin.write(json.dumps({"type": "user", "message": msg}) + "\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                assert line, "CLI exited early"
                out = json.loads(line)
                if out["type"] == "result":
                    answers.append(out["result"])
                    break
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    assert answers == ["one", "two"]
    log = model_server.log()
    assert [(e["main"], e["markers"], e["step"]) for e in log] == [
        (True, ["t0"], 0),
        (True, ["t1"], 0),
    ]
    assert log[1]["n_messages"] > log[0]["n_messages"]


def test_subagent_requests_are_not_main(
    model_server: ModelServer, cli_env: dict[str, str], cwd: Path
) -> None:
    agent_input = {
        "description": "sub task",
        "prompt": "sub [[marker:sub1]] [[say:subresult]]",
        "subagent_type": "general-purpose",
    }
    prompt = f"[[tool:Agent:{json.dumps(agent_input)}]][[say:parent done]][[marker:parent]]"
    lines, _ = run_cli(prompt, cli_env, cwd)
    assert results(lines)[0]["result"] == "parent done"
    log = model_server.log()
    subs = [e for e in log if e["subagent"]]
    assert [(e["markers"], e["main"], e["reply"]) for e in subs] == [(["sub1"], False, "text")]
    assert all("sub1" not in e["markers"] for e in model_server.main_requests())
    assert model_server.main_requests()[0]["reply"] == "tool_use:Agent"
