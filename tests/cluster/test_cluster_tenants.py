"""Tenants with their own OS ``user``, ``env`` and config dir in cluster mode.

A real ``hotsession serve --cluster … --config FILE`` process on the tier's cluster; each node
reads the tenants from FILE (the same path on every machine; here one machine) and sets them up
itself (``hotsession.cluster.tenants``). Users come from the security tier's fixture
(``useradd --system``, removed after), so these tests need root as that tier does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import serve_process
from tests.security.conftest import (
    TOKEN_A,
    TOKEN_B,
    Lab,
    make_lab,
    tenant_toml,
    turn,
    write_config,
)

from hotsession.cluster.actors import NAMESPACE, PREFIX
from hotsession.testing.model_server import ModelServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates OS users)"),
]


@pytest.fixture(scope="module")
def users(ray_cluster: Any) -> Iterator[Lab]:
    """Two users; after the module, their sessions' and spares' processes are gone before the
    users are removed (the nodes forget the tenants: their spares are retired)."""
    with make_lab() as lab:
        try:
            yield lab
        finally:
            _forget_tenants(ray_cluster, lab)


def _forget_tenants(ray_cluster: Any, lab: Lab) -> None:
    import ray

    empty = write_config(lab.base / "no-tenants.toml")
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        try:
            actor = ray.get_actor(PREFIX + node["NodeID"], namespace=NAMESPACE)
        except ValueError:
            continue
        ray.get(actor.start.remote(str(empty)), timeout=60)
    uids = {lab.a.uid, lab.b.uid}
    deadline = time.monotonic() + 30
    while True:
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real in uids]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for proc in left:  # (a failed test's sessions): ours, so the users can be removed
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, [p.pid for p in left]


def _client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


async def _open(
    client: httpx.AsyncClient, cwd: Path, mode: str = "bypassPermissions"
) -> dict[str, Any]:
    body = {"cwd": str(cwd), "permission_mode": mode}
    r = await client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.mark.timeout(300)  # node spawns and a re-home on a loaded CI machine
async def test_a_tenants_agents_run_as_its_user_on_any_node(
    users: Lab,
    ray_cluster: Any,
    cluster_pg: Any,
    tmp_path: Path,
    model_server: ModelServer,
) -> None:
    """Tenant A's agent runs as A's user with A's ``env`` on a node; B's agent cannot read A's
    files, transcripts or agent environment; A's node is lost (its host actor killed) and the
    session goes on on another node, as A's user, with its conversation materialized from the
    store into A's config dir by A's user (A's local copy was removed first)."""
    import ray

    lab = users
    secret = "sk-tenant-a-" + secrets.token_hex(8)
    config = write_config(
        lab.base / "cluster.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name, env={"HS_SECRET": secret}),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
        pass_env=["ANTHROPIC_API_KEY"],
        database_url=cluster_pg.url,  # (tenants with users: only in the root-only file)
    )
    async with serve_process(ray_cluster.address, None, config, tmp_path / "state") as url:
        async with _client(url, TOKEN_A) as a, _client(url, TOKEN_B) as b:
            sa = await _open(a, lab.root_a)
            node = sa["node"]
            first = f"[[bash:id -un > {lab.root_a}/who.txt; printf %s $HS_SECRET > env.txt]]"
            assert (await turn(a, sa["id"], first + " remember kumquat"))["result"] == "done"
            assert (lab.root_a / "who.txt").read_text().strip() == lab.a.name
            assert (lab.root_a / "env.txt").read_text() == secret
            view = (await a.get(f"/v1/sessions/{sa['id']}")).json()
            agent = psutil.Process(view["pid"])
            assert agent.uids().real == lab.a.uid

            # B's agent attacks A: A's root, A's transcripts, A's agent's environment.
            home_a = lab.home(lab.a)
            out = lab.root_b / "attacks"
            script = lab.root_b / "attack.sh"
            script.write_text(
                f"""OUT={out}
mkdir -p $OUT
attempt() {{ name=$1; shift; {{ eval "$1"; echo "rc=$?"; }} > "$OUT/$name.out" 2>&1; }}
attempt root 'cat {lab.root_a}/env.txt'
attempt transcripts 'grep -r kumquat {home_a}'
attempt environ 'cat /proc/{view["pid"]}/environ'
"""
            )
            os.chown(script, lab.b.uid, lab.b.gid)
            sb = await _open(b, lab.root_b)
            assert (await turn(b, sb["id"], f"[[bash:bash {script}]]"))["result"] == "done"
            got = {p.stem: p.read_text() for p in out.glob("*.out")}
            assert set(got) == {"root", "transcripts", "environ"}  # every attack ran
            for name, text in got.items():
                assert secret not in text and "kumquat" not in text, name
                assert text.splitlines()[-1] != "rc=0", (name, text)

            # A's node is lost; A's local transcripts go too (as on another machine).
            ray.kill(ray.get_actor(PREFIX + node, namespace=NAMESPACE), no_restart=True)
            shutil.rmtree(home_a / ".claude" / "projects")
            model_server.clear()
            model_server.record_bodies = True
            try:
                again = f"[[bash:id -un > {lab.root_a}/who2.txt]]"
                assert (await turn(a, sa["id"], again))["result"] == "done"
            finally:
                model_server.record_bodies = False
            assert "kumquat" in json.dumps(model_server.main_requests()[-1]["body"])
            assert (lab.root_a / "who2.txt").read_text().strip() == lab.a.name
            moved = (await a.get(f"/v1/sessions/{sa['id']}")).json()
            assert moved["node"] != node
            assert psutil.Process(moved["pid"]).uids().real == lab.a.uid
            (transcript,) = (home_a / ".claude" / "projects").glob(
                f"*/{moved['cli_session_id']}.jsonl"
            )
            assert transcript.stat().st_uid == lab.a.uid  # written as A's user

            for client, sid in ((a, sa["id"]), (b, sb["id"])):
                assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 200


@pytest.mark.timeout(300)
async def test_a_tenants_own_config_dir_travels_with_its_session(
    users: Lab,
    ray_cluster: Any,
    cluster_pg: Any,
    tmp_path: Path,
    model_server: ModelServer,
) -> None:
    """``claude_config_dir`` without a user: the node's mirror maps the tenant's transcripts
    (not under the node's own config dir) into the store, and a moved session is materialized
    into that dir again."""
    import ray

    root = tmp_path / "root-c"
    root.mkdir()
    config_dir = users.base / "c-config"
    config = write_config(
        users.base / "c.toml",
        tenant_toml("c", TOKEN_A, root, claude_config_dir=str(config_dir)),
    )
    async with serve_process(
        ray_cluster.address, cluster_pg.url, config, tmp_path / "state"
    ) as url:
        async with _client(url, TOKEN_A) as c:
            s = await _open(c, root, "default")  # (runs as root: no tool needed)
            assert (await turn(c, s["id"], "[[say:noted]] remember quince"))["result"] == "noted"
            assert list((config_dir / "projects").glob(f"*/{s['cli_session_id']}.jsonl"))
            ray.kill(ray.get_actor(PREFIX + s["node"], namespace=NAMESPACE), no_restart=True)
            shutil.rmtree(config_dir / "projects")
            model_server.clear()
            model_server.record_bodies = True
            try:
                assert (await turn(c, s["id"], "[[say:again]]"))["result"] == "again"
            finally:
                model_server.record_bodies = False
            assert "quince" in json.dumps(model_server.main_requests()[-1]["body"])
            moved = (await c.get(f"/v1/sessions/{s['id']}")).json()
            assert moved["node"] != s["node"]
            assert list((config_dir / "projects").glob(f"*/{s['cli_session_id']}.jsonl"))
            assert (await c.delete(f"/v1/sessions/{s['id']}")).status_code == 200


@pytest.mark.timeout(300)
async def test_a_node_that_cannot_set_up_a_tenant_refuses_the_start(
    users: Lab, ray_cluster: Any, cluster_pg: Any, tmp_path: Path
) -> None:
    """A tenant's user missing on a node: the daemon does not start, and says which node and
    what to do in one line (the nodes, not the daemon, look the accounts up)."""
    config = write_config(
        users.base / "missing.toml",
        tenant_toml("a", TOKEN_A, users.root_a, user="hs-no-such-user"),
        tenant_toml("b", TOKEN_B, users.root_b, user=users.b.name),
        database_url=cluster_pg.url,
    )
    with pytest.raises(AssertionError, match="did not start") as failed:
        async with serve_process(ray_cluster.address, None, config, tmp_path / "s"):
            pass
    lines = [line for line in str(failed.value).splitlines() if "hs-no-such-user" in line]
    assert lines and "node " in lines[-1] and "useradd --system hs-no-such-user" in lines[-1]
