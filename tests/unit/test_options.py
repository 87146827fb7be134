"""Session options: validation, profile keys, argv and environment."""

from __future__ import annotations

import os

import pytest

from hotsession.errors import InvalidRequest
from hotsession.events import TurnClock
from hotsession.options import SessionOptions, build_argv, build_env


def test_profile_key_is_stable_and_sensitive() -> None:
    a = SessionOptions.create("/w", model="sonnet", allowed_tools=["Read", "Bash"])
    b = SessionOptions.from_dict(a.to_dict())
    assert a == b and a.profile_key() == b.profile_key()
    assert a.profile_key() != a.replace(model="haiku").profile_key()
    assert a.profile_key() != a.replace(tenant="other").profile_key()
    assert a.profile_key() != SessionOptions.create("/w", env={"X": "1"}).profile_key()


def test_client_and_flags_name_what_sets_a_profile_apart() -> None:
    """Pool rows show these: a profile of the API is plain; a drop-in client's names its
    flags, its initialize fields (names only) and env names (no values, cut)."""
    plain = SessionOptions.create("/w", model="sonnet", permission_mode="plan")
    assert (plain.client(), plain.flags()) == (None, [])
    dropin = SessionOptions.create(
        "/w",
        extra_args=["--append-system-prompt", "be brief"],
        initialize='{"systemPrompt": "secret words", "agents": {}}',
        permission_prompt_tool=None,
        env={"ANTHROPIC_API_KEY": "sk-secret"},
        max_turns=3,
    )
    assert dropin.client() == "hotsession-claude"
    assert dropin.flags() == [
        "--append-system-prompt 'be brief'",
        "initialize agents,systemPrompt",
        "max_turns 3",
        "no permission prompt tool",
        "env ANTHROPIC_API_KEY",
    ]
    assert "secret" not in " ".join(dropin.flags())
    api = SessionOptions.create("/w", system_prompt="x" * 100, setting_sources=[])
    assert api.client() is None
    assert api.flags() == ["system_prompt " + "x" * 31 + "…", "setting_sources (none)"]


@pytest.mark.parametrize(
    "kw",
    [
        {"cwd": "relative/path"},
        {"cwd": "/w", "permission_mode": "yolo"},
        {"cwd": "/w", "max_turns": 0},
    ],
)
def test_invalid_options_are_typed(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        SessionOptions.create(**kw)  # type: ignore[arg-type]


def test_argv_new_resume_fork() -> None:
    opts = SessionOptions.create("/w", model="m", permission_mode="acceptEdits")
    new = build_argv("claude", opts, session_id="S")
    assert new[:3] == ["claude", "--output-format", "stream-json"]
    assert new[4:6] == ["--input-format", "stream-json"]
    assert "--session-id=S" in new and not any(a.startswith("--resume") for a in new)
    assert new[new.index("--model") + 1] == "m"
    assert new[new.index("--permission-prompt-tool") + 1] == "stdio"
    resume = build_argv("claude", opts, resume="R")
    assert "--resume=R" in resume and not any(a.startswith("--session-id") for a in resume)
    fork = build_argv("claude", opts, resume="R", fork=True, session_id="S")
    assert {"--resume=R", "--fork-session", "--session-id=S"} <= set(fork)


def test_system_prompt_default_keeps_claude_codes_own() -> None:
    assert "--system-prompt" not in build_argv("claude", SessionOptions.create("/w"))
    argv = build_argv("claude", SessionOptions.create("/w", system_prompt="be terse"))
    assert argv[argv.index("--system-prompt") + 1] == "be terse"


def test_env_profile_overrides_and_claudecode_removed() -> None:
    opts = SessionOptions.create("/w", env={"ANTHROPIC_BASE_URL": "http://x"})
    env = build_env(opts, base={"CLAUDECODE": "1", "ANTHROPIC_BASE_URL": "http://y"})
    assert env["ANTHROPIC_BASE_URL"] == "http://x" and "CLAUDECODE" not in env
    assert env["PWD"] == "/w"


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only rule")
def test_root_bypass_is_explicit() -> None:
    opts = SessionOptions.create("/w", permission_mode="bypassPermissions")
    with pytest.raises(InvalidRequest):
        build_env(opts, base={})
    assert build_env(opts, base={}, allow_root_bypass=True)["IS_SANDBOX"] == "1"
    assert "IS_SANDBOX" not in build_env(SessionOptions.create("/w"), base={})


def test_turn_clock_splits_ttfe_tools_thinking() -> None:
    clock = TurnClock(accepted=100.0)
    clock.started, clock.process_ready, clock.written = 100.5, 100.6, 100.6
    clock.observe({"type": "system"}, 100.7)
    tool = {"type": "tool_use", "id": "t1"}
    clock.observe({"type": "assistant", "message": {"content": [tool]}}, 101.0)
    res = {"type": "tool_result", "tool_use_id": "t1"}
    clock.observe({"type": "user", "message": {"content": [res]}}, 103.0)
    out = clock.breakdown(104.6, {"time_to_request_ms": 12})
    assert out["queued_ms"] == 500 and out["claim_ms"] == pytest.approx(100)
    assert out["ttfe_ms"] == pytest.approx(100)
    assert out["tools_ms"] == pytest.approx(2000) and out["tool_calls"] == 1
    assert out["thinking_ms"] == pytest.approx(1900)
    assert out["total_ms"] == pytest.approx(4600) and out["time_to_request_ms"] == 12


def test_turn_clock_counts_permission_waits_apart_from_tools() -> None:
    clock = TurnClock(accepted=0.0)
    clock.observe({"type": "system"}, 0.1)
    clock.observe(
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "a"}]}}, 1.0
    )
    clock.wait_began(1.1)  # two questions open at once count once
    clock.wait_began(1.5)
    clock.wait_ended(4.1)
    result = {"type": "tool_result", "tool_use_id": "a"}
    clock.observe({"type": "user", "message": {"content": [result]}}, 4.5)
    out = clock.breakdown(5.0)
    assert out["waiting_ms"] == pytest.approx(3000)
    assert out["tools_ms"] == pytest.approx(500)  # 3.5 s from tool_use to result, less the wait
    assert out["thinking_ms"] == pytest.approx(1400)
    total = out["ttfe_ms"] + out["thinking_ms"] + out["tools_ms"] + out["waiting_ms"]
    assert total == pytest.approx(out["total_ms"])
    # A turn that ends with a question open counts the wait up to its end.
    open_clock = TurnClock(accepted=0.0)
    open_clock.observe({"type": "system"}, 0.1)
    open_clock.wait_began(1.0)
    assert open_clock.breakdown(3.0)["waiting_ms"] == pytest.approx(2000)


def test_turn_clock_counts_an_open_as_claim_time() -> None:
    clock = TurnClock(accepted=10.0)  # the /v1/ask request arrived at 10.0
    clock.claim_offset = 0.4  # opening the session (spawn) took 400 ms of it
    clock.started, clock.process_ready, clock.written = 10.41, 10.41, 10.41
    out = clock.breakdown(11.0)
    assert out["claim_ms"] == pytest.approx(400) and out["queued_ms"] == pytest.approx(10)
    assert out["total_ms"] == pytest.approx(1000)


def test_the_api_takes_the_permission_modes_the_options_know() -> None:
    from hotsession.api.schemas import SessionOptionsIn
    from hotsession.options import PERMISSION_MODES

    schema = SessionOptionsIn.model_json_schema()["properties"]["permission_mode"]
    (enum,) = [alt["enum"] for alt in schema["anyOf"] if "enum" in alt]
    assert tuple(enum) == PERMISSION_MODES


def test_agents_run_without_buns_idle_collections_unless_the_operator_says() -> None:
    """docs/benchmarks.md "Idle CLIs": Bun's idle full collections cost a kept-hot CLI CPU at
    every pause and in every waiting spare; agents start with them off, an explicit value wins."""
    opts = SessionOptions.create("/w")
    assert build_env(opts, base={})["BUN_IDLE_GC_SECONDS"] == "0"
    assert build_env(opts, base={"BUN_IDLE_GC_SECONDS": "10"})["BUN_IDLE_GC_SECONDS"] == "10"
    tenant = SessionOptions.create("/w", env={"BUN_IDLE_GC_SECONDS": "30"})
    assert build_env(tenant, base={})["BUN_IDLE_GC_SECONDS"] == "30"
