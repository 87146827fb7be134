"""A tenant's agents in practice: the Bash sandbox, limits, spares and resume as its own user."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import psutil
import pytest
from tests.security.conftest import TOKEN_A, TOKEN_B, Lab, Running, tenant_toml, turn, write_config

from hotsession.isolation import limits, sandbox
from hotsession.isolation.accounts import lookup

pytestmark = pytest.mark.integration


def _config(lab: Lab, name: str, *tables: str, **top: object) -> Path:
    return write_config(
        lab.base / f"{name}.toml",
        *tables,
        state_dir=str(lab.base / f"{name}-state"),
        cli_path=lab.cli_path,
        # The daemon's (test) API key, shared by the tenants: named, or they would not get it.
        pass_env=["ANTHROPIC_API_KEY"],
        **top,
    )


async def _open(client, **body: object) -> dict:
    body.setdefault("permission_mode", "bypassPermissions")
    r = await client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    out: dict = r.json()
    return out


def _results(out: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in out.glob("*.out")}


async def test_bash_sandbox_limits_writes_to_the_roots(lab: Lab, start_daemon) -> None:
    """sandbox = "auto": on where bubblewrap works; then the agent's own user cannot write
    outside the tenant's roots (its home, /tmp), sees no other process, cannot reach loopback."""
    why = sandbox.unavailable(lookup(lab.a.name, tenant="a"))
    if why is not None:
        pytest.skip(f"Claude Code's Bash sandbox cannot run here: {why}")
    config = _config(
        lab,
        "sandbox",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name, sandbox=False),
    )
    d: Running = await start_daemon(config)
    iso = d.daemon.hub.spawn_policy
    assert iso.sandboxed == {"a": True, "b": False}
    a = d.client(TOKEN_A)
    s = await _open(a)
    out = lab.root_a / "sbx"
    home = lab.home(lab.a)
    url = d.url
    script = lab.root_a / "sandbox.sh"
    script.write_text(
        f"""OUT={out}
mkdir -p $OUT
attempt() {{ name=$1; shift; {{ eval "$1"; echo "rc=$?"; }} > "$OUT/$name.out" 2>&1; }}
attempt write_root 'echo ok > {lab.root_a}/inside.txt'
attempt write_home 'echo pwned > {home}/outside.txt'
attempt write_tmp 'echo pwned > /tmp/hs-sbx-{secrets.token_hex(3)}'
attempt see_daemon 'kill -0 {os.getpid()}'
attempt count_processes 'ps -e --no-headers | wc -l'
attempt loopback 'python3 -c "import urllib.request as u; u.urlopen(\\"{url}/healthz\\")"'
"""
    )
    os.chown(script, lab.a.uid, lab.a.gid)
    assert (await turn(a, s["id"], f"[[bash:bash {script}]]"))["result"] == "done"
    got = _results(out)
    assert set(got) == {
        "write_root",
        "write_home",
        "write_tmp",
        "see_daemon",
        "count_processes",
        "loopback",
    }
    assert got["write_root"].splitlines()[-1] == "rc=0"
    assert (lab.root_a / "inside.txt").read_text() == "ok\n"
    # The account itself may write its home; the sandbox does not let the agent's Bash.
    assert "Read-only file system" in got["write_home"] and not (home / "outside.txt").exists()
    assert "Read-only file system" in got["write_tmp"]
    assert "No such process" in got["see_daemon"]
    assert int(got["count_processes"].splitlines()[0]) < 10  # its own PID namespace
    assert got["loopback"].splitlines()[-1] != "rc=0"


async def test_limits_memory_and_tasks(lab: Lab, start_daemon) -> None:
    """memory_max_mb: the tenant's agents share a memory cgroup and a tool over it is killed,
    not the CLI; processes_max: the user's tasks stop at the limit (EAGAIN)."""
    if limits.memory_base() is None:
        pytest.skip("no cgroup memory controller usable here (the refusal is tested instead)")
    config = _config(
        lab,
        "limits",
        tenant_toml(
            "a",
            TOKEN_A,
            lab.root_a,
            user=lab.a.name,
            sandbox=False,
            memory_max_mb=600,
            processes_max=96,
        ),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
    )
    d: Running = await start_daemon(config)
    (group,) = d.daemon.hub.spawn_policy.memory_groups
    a = d.client(TOKEN_A)
    s = await _open(a)
    cli = psutil.Process(s["pid"])
    assert os.path.basename(group.path) in Path(f"/proc/{cli.pid}/cgroup").read_text()
    limit_file = "memory.max" if group.version == 2 else "memory.limit_in_bytes"
    assert int(Path(group.path, limit_file).read_text()) == 600 * 1024 * 1024
    out = lab.root_a / "limits"
    script = lab.root_a / "limits.sh"
    script.write_text(
        f"""OUT={out}
mkdir -p $OUT
python3 -c "b = bytearray(1500 * 1024 * 1024); print('allocated')" > $OUT/memory.out 2>&1
echo "rc=$?" >> $OUT/memory.out
python3 - > $OUT/tasks.out 2>&1 <<'PY'
import os, time
children = []
try:
    for _ in range(500):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    print("forked", len(children))
except BlockingIOError as exc:
    print("stopped after", len(children), exc.strerror)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
PY
echo "rc=$?" >> $OUT/tasks.out
"""
    )
    os.chown(script, lab.a.uid, lab.a.gid)
    assert (await turn(a, s["id"], f"[[bash:bash {script}]]"))["result"] == "done"
    memory = (out / "memory.out").read_text()
    assert "allocated" not in memory and memory.splitlines()[-1] == "rc=137", memory
    tasks = (out / "tasks.out").read_text()
    first = tasks.splitlines()[0]
    assert first.startswith("stopped after ") and "Resource temporarily unavailable" in first
    assert int(first.split()[2]) < 96
    assert cli.is_running()  # the tool was killed, not the agent
    assert (await turn(a, s["id"], "[[say:alive]]"))["result"] == "alive"


async def test_spares_and_resume_run_as_the_tenant(lab: Lab, start_daemon, model_server) -> None:
    """The pool's spares are spawned as the tenant's user; a resumed session reads its
    transcript from the tenant's CLAUDE_CONFIG_DIR, as that user, with the whole context."""
    config = _config(
        lab,
        "pool",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name, sandbox=False),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name, sandbox=False),
    )
    # pool_min: a spare from the first session on (spares otherwise wait for repeated demand).
    d: Running = await start_daemon(config, pool_enabled=True, pool_min=1, pool_max=1)
    hub = d.daemon.hub
    a = d.client(TOKEN_A)
    s = await _open(a)
    marker = secrets.token_hex(5)
    assert (await turn(a, s["id"], f"[[marker:{marker}]] [[say:one]]"))["result"] == "one"
    deadline = asyncio.get_running_loop().time() + 60
    while len(hub.supervisor.children) < 2:  # the session's process and a spare
        assert asyncio.get_running_loop().time() < deadline, "no spare was spawned"
        await asyncio.sleep(0.1)
    for pid in list(hub.supervisor.children):
        assert psutil.Process(pid).uids().real == lab.a.uid
    transcripts = list(
        (lab.home(lab.a) / ".claude" / "projects").rglob(f"{s['cli_session_id']}.jsonl")
    )
    assert transcripts and transcripts[0].stat().st_uid == lab.a.uid
    # The process dies; the next turn resumes it (as tenant a, from a's config dir).
    old = psutil.Process(s["pid"])
    old.kill()
    old.wait(10)
    again = secrets.token_hex(5)
    result = await turn(a, s["id"], f"[[marker:{again}]] [[say:two]]")
    assert result["result"] == "two" and result["timing"]["source"] == "resume"
    view = (await a.get(f"/v1/sessions/{s['id']}")).json()
    assert psutil.Process(view["pid"]).uids().real == lab.a.uid
    sizes = {
        m: max(e["n_messages"] for e in model_server.log() if m in e.get("markers", []))
        for m in (marker, again)
    }
    assert sizes[again] > sizes[marker]  # the resumed conversation carries the first turn
