"""Tenant A's agent attacks tenant B and the daemon with Bash under bypassPermissions.

Real daemon (root, in this process), real CLI, real Bash tool, two tenants with their own OS
users. Every attack writes its own output file (its output and ``rc=N``), so the test can tell
an attack that failed from one that never ran; for each, the test also checks as root that the
target exists and holds what the attack was after.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import psutil
import pytest
from tests.security.conftest import (
    TOKEN_A,
    TOKEN_B,
    Lab,
    Running,
    tenant_toml,
    turn,
    write_config,
)

pytestmark = pytest.mark.integration


ATTACKS = {
    # name: (command, the error the kernel must answer)
    "read_b_file": ('cat "$B_ROOT/secret.txt"', "Permission denied"),
    "list_b_root": ('ls -la "$B_ROOT"', "Permission denied"),
    "read_b_transcripts": ('ls -la "$B_HOME/.claude/projects"', "Permission denied"),
    "read_registry": ('grep -r -a -l "$B_PROMPT" "$STATE"', "Permission denied"),
    "read_db": ('cat "$STATE/hotsession.db"', "Permission denied"),
    "read_config": ('cat "$CONFIG"', "Permission denied"),
    "read_token": ('cat "$STATE/token"', "Permission denied"),
    "read_b_environ": ('cat "/proc/$B_PID/environ"', "Permission denied"),
    "read_b_mem": ("python3 -c \"open('/proc/$B_PID/mem', 'rb')\"", "Permission denied"),
    "signal_b": ('kill -TERM "$B_PID"', "Operation not permitted"),
    "ptrace_b": (
        'python3 -c "import ctypes,os,sys; libc=ctypes.CDLL(None, use_errno=True); '
        "r=libc.ptrace(16, $B_PID, 0, 0); e=ctypes.get_errno(); "
        "print('ptrace:', r, os.strerror(e)); sys.exit(r != 0)\"",
        "Operation not permitted",
    ),
    "write_b_root": ('echo pwned > "$B_ROOT/pwned"', "Permission denied"),
    "write_state": ('echo pwned > "$STATE/pwned"', "Permission denied"),
}


def attack_script(out: Path, env: dict[str, str]) -> str:
    lines = [f"export {k}='{v}'" for k, v in env.items()]
    lines += [
        f"OUT='{out}'",
        'mkdir -p "$OUT"',
        'attempt() { name=$1; shift; { eval "$1"; echo "rc=$?"; } > "$OUT/$name.out" 2>&1; }',
    ]
    for name, (command, _) in ATTACKS.items():
        lines.append(f"attempt {name} {_sh_quote(command)}")
    lines.append('env > "$OUT/env.out"')
    lines.append('echo finished > "$OUT/finished"')
    return "\n".join(lines) + "\n"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


async def test_tenant_a_cannot_reach_tenant_b_or_the_daemon(
    lab: Lab, start_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_DAEMON_SECRET", "daemon-secret-" + secrets.token_hex(4))
    secret_file = "b-file-secret-" + secrets.token_hex(4)
    (lab.root_b / "secret.txt").write_text(secret_file + "\n")
    os.chown(lab.root_b / "secret.txt", lab.b.uid, lab.b.gid)
    config = write_config(
        lab.base / "hotsession.toml",
        tenant_toml(
            "a",
            TOKEN_A,
            lab.root_a,
            user=lab.a.name,
            sandbox=False,
            env={"ANTHROPIC_API_KEY": "key-a"},
        ),
        tenant_toml(
            "b",
            TOKEN_B,
            lab.root_b,
            user=lab.b.name,
            sandbox=False,
            env={"ANTHROPIC_API_KEY": "key-b"},
        ),
        state_dir=str(lab.state),
        cli_path=lab.cli_path,
    )
    d: Running = await start_daemon(config)
    # the daemon's files are the daemon's
    assert stat.S_IMODE(lab.state.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE((lab.state / "hotsession.db").stat().st_mode) == 0o600
    a, b = d.client(TOKEN_A), d.client(TOKEN_B)

    rb = await b.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})
    assert rb.status_code == 201, rb.text
    sb = rb.json()
    b_prompt = "B-PROMPT-SECRET-" + secrets.token_hex(4)
    assert (await turn(b, sb["id"], f"[[say:hi]] {b_prompt}"))["result"] == "hi"
    b_pid = sb["pid"]
    b_proc = psutil.Process(b_pid)
    assert b_proc.uids().real == lab.b.uid and b_proc.gids().real == lab.b.gid
    b_env = b_proc.environ()  # root can read it; tenant A must not
    assert b_env["ANTHROPIC_API_KEY"] == "key-b" and "HS_DAEMON_SECRET" not in b_env
    assert b_env["HOME"] == str(lab.home(lab.b))
    for user in (lab.a, lab.b):  # HOME and CLAUDE_CONFIG_DIR: the user's, closed to others
        for path in (lab.home(user), lab.home(user) / ".claude"):
            st = path.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o700), path
    await d.daemon.hub.registry.flush()  # B's prompt is on disk now

    ra = await a.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})
    assert ra.status_code == 201, ra.text
    sa = ra.json()
    assert psutil.Process(sa["pid"]).uids().real == lab.a.uid
    out = lab.root_a / "out"
    script = lab.root_a / "attack.sh"
    script.write_text(
        attack_script(
            out,
            {
                "B_ROOT": str(lab.root_b),
                "B_HOME": str(lab.home(lab.b)),
                "B_PID": str(b_pid),
                "B_PROMPT": b_prompt,
                "STATE": str(lab.state),
                "CONFIG": str(config),
            },
        )
    )
    os.chown(script, lab.a.uid, lab.a.gid)
    result = await turn(a, sa["id"], f"[[bash:bash {script}]]")
    assert result["result"] == "done", result
    assert (out / "finished").exists(), "the attack script did not run to its end"

    # The targets exist and hold what the attacks were after (seen as root).
    assert secret_file in (lab.root_b / "secret.txt").read_text()
    assert any(b_prompt.encode() in p.read_bytes() for p in lab.state.iterdir() if p.is_file()), (
        "B's prompt is not in the state dir: the registry attack would prove nothing"
    )
    assert list((lab.home(lab.b) / ".claude" / "projects").rglob("*.jsonl"))
    assert TOKEN_A in config.read_text()
    # Every attack ran, and failed with the kernel's answer.
    for name, (_, error) in ATTACKS.items():
        path = out / f"{name}.out"
        assert path.exists(), f"{name} did not run"
        text = path.read_text()
        rc = text.strip().splitlines()[-1]
        assert rc.startswith("rc=") and rc != "rc=0", f"{name} succeeded: {text}"
        if name != "read_token":  # there is no token file with configured tenants
            assert error in text, f"{name}: {text}"
        for leaked in (secret_file, b_prompt, TOKEN_B, TOKEN_A, "key-b"):
            assert leaked not in text, f"{name} leaked {leaked!r}: {text}"
    assert not (lab.root_b / "pwned").exists() and not (lab.state / "pwned").exists()
    assert b_proc.is_running() and b_proc.status() != psutil.STATUS_STOPPED
    # A's own environment: its secret, not B's, not the daemon's.
    env = dict(
        line.split("=", 1) for line in (out / "env.out").read_text().splitlines() if "=" in line
    )
    assert env["ANTHROPIC_API_KEY"] == "key-a"
    assert env["USER"] == lab.a.name and env["HOME"] == str(lab.home(lab.a))
    assert "HS_DAEMON_SECRET" not in env and "key-b" not in (out / "env.out").read_text()
    if os.environ.get("HS_SHOW_ATTACKS"):
        for path in sorted(out.iterdir()):
            print(f"== {path.name}\n{path.read_text()[:400]}")
    # B's session goes on untouched.
    assert (await turn(b, sb["id"], "[[say:still here]]"))["result"] == "still here"
    # A cannot take over B's conversation by its id either: A's CLI (as A, in A's config dir)
    # has no such transcript.
    assert (await b.delete(f"/v1/sessions/{sb['id']}")).status_code in (200, 204)
    r = await a.post(
        "/v1/sessions",
        json={"permission_mode": "bypassPermissions", "resume": sb["cli_session_id"]},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found", r.text


def test_attack_script_quoting(tmp_path: Path) -> None:
    """The harness itself: an attack that succeeds is recorded as rc=0 with its output."""
    import subprocess

    (tmp_path / "f").write_text("visible\n")
    script = attack_script(tmp_path / "out", {"B_ROOT": str(tmp_path)})
    (tmp_path / "s.sh").write_text(script.replace("secret.txt", "f"))
    subprocess.run(["bash", str(tmp_path / "s.sh")], check=False, capture_output=True)
    text = (tmp_path / "out" / "read_b_file.out").read_text()
    assert text.splitlines() == ["visible", "rc=0"]
