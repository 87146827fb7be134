"""A tenant's agent against the cluster's own machinery: Ray and Postgres on its node.

A node runs Ray (the GCS and raylet ports, the runtime env agent's HTTP port, its session dir with
logs, sockets and ``ray_current_cluster``) and its host actor holds the database URL, where every
tenant's events and transcripts are. The tier's cluster is set up as docs/cluster.md asks for
tenants with their own users (``tests/cluster/conftest.py``: Ray's token auth with the token in
a root-only file, Ray's temp dir under a root-only directory, a Postgres with a password, the URL
only in the root-only config file). Tenant B attacks as its own user, two ways: a program of its
own (B brings a Ray client: the installed ``ray`` package under a Python B can run, as a Bash
without the sandbox or a downloaded tool would), and through its agent's Bash tool. Each attack
must be shown to have run (the port answered, the path exists) and to fail for the right reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from tests.cluster.conftest import serve_process
from tests.cluster.test_cluster_client import ray_client_address  # noqa: F401 (a fixture)
from tests.cluster.test_cluster_tenants import _client, _forget_tenants, _open
from tests.security.conftest import TOKEN_A, TOKEN_B, Lab, make_lab, tenant_toml, turn, write_config

from hotsession.isolation import sandbox
from hotsession.isolation.accounts import lookup

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates OS users)"),
]


@pytest.fixture(scope="module")
def users(ray_cluster: Any) -> Any:
    with make_lab() as lab:
        try:
            yield lab
        finally:
            _forget_tenants(ray_cluster, lab)


# B's own program: each attack's outcome as JSON (what it reached, or the error it got).
ATTACK = r"""
import asyncio, glob, json, os, socket, sys, urllib.request
args = json.loads(sys.stdin.read())  # (not argv: /proc shows it to B itself)
out = {}

def attempt(name, fn):
    try:
        out[name] = {"ok": True, "got": fn()}
    except BaseException as exc:
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}

def port_open(hostport):
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        return True

def gcs():
    from ray._raylet import GcsClient
    client = GcsClient(address=args["gcs"])
    async def actors():
        return await client.async_get_all_actor_info(timeout=15)
    infos = asyncio.run(actors())
    keys = client.internal_kv_keys(b"", None, timeout=15)
    return {"actors": repr(infos)[:2000], "kv": repr(keys)[:2000]}

def ray_client():
    import grpc
    from ray.core.generated import ray_client_pb2 as pb, ray_client_pb2_grpc as rpc
    with grpc.insecure_channel(args["ray_client"]) as channel:
        request = pb.ClusterInfoRequest(type=pb.ClusterInfoType.NODES)
        meta = [("client_id", "b-attacker")]
        reply = rpc.RayletDriverStub(channel).ClusterInfo(request, timeout=30, metadata=meta)
        return reply.json[:500]

def raylet():
    import grpc
    from ray.core.generated import node_manager_pb2 as pb, node_manager_pb2_grpc as rpc
    with grpc.insecure_channel(args["raylet"]) as channel:
        stub = rpc.NodeManagerServiceStub(channel)
        return str(stub.GetNodeStats(pb.GetNodeStatsRequest(), timeout=30))[:500]

def host_actor():
    import grpc
    from ray.core.generated import core_worker_pb2 as pb, core_worker_pb2_grpc as rpc
    errors = []
    for address in args["host_actor"]:
        with grpc.insecure_channel(address) as channel:
            stub = rpc.CoreWorkerServiceStub(channel)
            try:
                stub.GetCoreWorkerStats(pb.GetCoreWorkerStatsRequest(), timeout=30)
                return f"answered at {address}"
            except grpc.RpcError as exc:
                errors.append(str(exc.code()))
    raise RuntimeError(" ".join(errors))

def read(path):
    with open(path, "rb") as f:
        return f.read(4096).decode(errors="replace")

def listdir(path):
    return os.listdir(path)

def runtime_env_agent():
    req = urllib.request.Request(args["runtime_env_agent"] + "/get_or_create_runtime_env",
                                 data=b"x", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status

def postgres():
    import psycopg
    with psycopg.connect(args["postgres"], connect_timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM hotsession.events").fetchone()[0]

def proc_scan():
    found, environ_denied = [], 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                text = read(f"/proc/{pid}/{part}") if part == "cmdline" else open(
                    f"/proc/{pid}/{part}", "rb").read().decode(errors="replace")
            except PermissionError:
                environ_denied += part == "environ"
                continue
            except OSError:
                continue
            for secret in args["secrets"]:
                if secret in text:
                    found.append((pid, part, secret[:6]))
    return {"found": found, "environ_denied": environ_denied}

def shm_scan():
    readable, found = [], []
    for path in glob.glob("/dev/shm/**", recursive=True):
        if not os.path.isfile(path):
            continue
        try:
            data = open(path, "rb").read(64 << 20).decode(errors="replace")
        except OSError:
            continue
        readable.append(path)
        found += [path for s in args["secrets"] if s in data]
    return {"readable": readable, "found": found}

attempt("gcs_port", lambda: port_open(args["gcs"]))
attempt("gcs", gcs)
attempt("ray_client_port", lambda: port_open(args["ray_client"]))
attempt("ray_client", ray_client)
attempt("raylet_port", lambda: port_open(args["raylet"]))
attempt("raylet", raylet)
attempt("host_actor", host_actor)
attempt("session_dir", lambda: listdir(args["session_dir"]))
attempt("session_logs", lambda: listdir(args["session_dir"] + "/logs"))
attempt("current_cluster", lambda: read(args["current_cluster"]))
attempt("token", lambda: read(args["token"]))
attempt("config", lambda: read(args["config"]))
attempt("runtime_env_agent_port", lambda: port_open(args["runtime_env_agent"].split("//")[-1]))
attempt("runtime_env_agent", runtime_env_agent)
attempt("postgres_port", lambda: port_open(args["postgres_hostport"]))
attempt("postgres", postgres)
attempt("proc", proc_scan)
attempt("shm", shm_scan)
print(json.dumps(out))
"""


def _python_for(uid: int, gid: int) -> list[str] | None:
    """A Python of this one's version that ``uid`` can run, with the installed packages (Ray,
    psycopg) on its path: the tests' own, or the system's of the same minor version."""
    site = sysconfig.get_paths()["purelib"]
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, f"/usr/bin/{minor}"):
        try:
            probe = subprocess.run(
                [exe, "-c", "import ray, psycopg"],
                user=uid,
                group=gid,
                env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin", "HOME": "/"},
                cwd="/",
                capture_output=True,
            )
        except OSError:  # (not executable by that user)
            continue
        if probe.returncode == 0:
            return [exe]
    return None


def _attack_as(user: Any, args: dict[str, Any], home: Path) -> dict[str, Any]:
    python = _python_for(user.uid, user.gid)
    if python is None:
        pytest.skip("no Python of this version that a tenant's user can run")
    env = {
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        # B's own Ray client need not match the cluster's Python patch release.
        "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor",
    }
    proc = subprocess.run(
        [*python, "-c", ATTACK],
        input=json.dumps(args),
        user=user.uid,
        group=user.gid,
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _host_actor_pids(session_dir: str) -> list[int]:
    """The host actors of this cluster (their raylet names its session dir; other Ray
    clusters may run on this machine)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        if any("NodeHost" in part for part in p.info["cmdline"] or []):
            try:
                raylet = " ".join(p.parent().cmdline()) if p.parent() else ""
            except psutil.Error:
                continue
            if session_dir in raylet:
                pids.append(p.pid)
    return pids


def _listening(pids: list[int]) -> list[str]:
    """The TCP addresses the processes ``pids`` listen on (a Ray worker's gRPC server)."""
    out = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN:
                host = conn.laddr.ip.removeprefix("::ffff:")
                out.append(
                    f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{conn.laddr.port}"
                )
    return out


@pytest.mark.timeout(300)
async def test_another_tenants_agent_cannot_reach_ray_or_postgres(
    users: Lab,
    ray_cluster: Any,
    cluster_pg: Any,
    tmp_path: Path,
    ray_private: dict[str, str],
    ray_client_address: str,  # noqa: F811
) -> None:
    """B, as its own user on a node, attacks Ray and Postgres while A has a conversation: the
    GCS and Ray Client ports answer but refuse B (no token), Ray's session dir, logs, token and
    ``ray_current_cluster`` exist and are closed to B, the runtime env agent answers 401, the
    Postgres port answers and asks for the password B cannot find (not in any process's command
    line or readable environment, not in /dev/shm, not in the config file it cannot read), and
    nothing of A's conversation is anywhere B can read."""
    import ray

    lab = users
    password = urlsplit(cluster_pg.url).password
    assert password
    config = write_config(
        lab.base / "walls.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
        pass_env=["ANTHROPIC_API_KEY"],
        database_url=cluster_pg.url,
    )
    word = "kumquat" + secrets.token_hex(4)
    token = Path(ray_private["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    node = ray._private.worker.global_worker.node
    session_dir = node.get_session_dir_path()
    current_cluster = os.path.join(node.get_temp_dir_path(), "ray_current_cluster")
    head = ray_cluster.head_node
    async with serve_process(ray_cluster.address, None, config, tmp_path / "state") as url:
        async with _client(url, TOKEN_A) as a, _client(url, TOKEN_B) as b:
            sa = await _open(a, lab.root_a)
            assert (await turn(a, sa["id"], f"[[say:noted]] remember {word}"))["result"] == "noted"
            pids = _host_actor_pids(session_dir)  # the processes that hold the URL
            assert pids and _listening(pids)
            head_info = next(n for n in ray.nodes() if n["Alive"] and n["NodeID"] == head.node_id)

            args = {
                "gcs": ray_cluster.address,
                "ray_client": ray_client_address.removeprefix("ray://"),
                "raylet": f"{head_info['NodeManagerAddress']}:{head_info['NodeManagerPort']}",
                "host_actor": _listening(pids),
                "session_dir": session_dir,
                "current_cluster": current_cluster,
                "token": ray_private["RAY_AUTH_TOKEN_PATH"],
                "config": str(config),
                "runtime_env_agent": head.runtime_env_agent_address,
                "postgres": cluster_pg.url.replace(f":{password}@", "@"),
                "postgres_hostport": urlsplit(cluster_pg.url).netloc.split("@")[-1],
                "secrets": [password, token, word],
            }
            for path in (session_dir, current_cluster, args["token"], args["config"]):
                assert os.path.exists(path), path  # each target is there (for root)
            got = _attack_as(lab.b, args, lab.home(lab.b))

            # Ray: the port answers, the GCS refuses B for want of the token.
            assert got["gcs_port"] == {"ok": True, "got": True}
            assert not got["gcs"]["ok"], got["gcs"]
            assert "InvalidAuthToken" in got["gcs"]["error"], got["gcs"]
            assert got["ray_client_port"] == {"ok": True, "got": True}
            assert not got["ray_client"]["ok"], got["ray_client"]
            assert "UNAUTHENTICATED" in got["ray_client"]["error"], got["ray_client"]
            assert got["raylet_port"] == {"ok": True, "got": True}
            for name in ("raylet", "host_actor"):  # Ray's own gRPC servers, one by one
                assert not got[name]["ok"], (name, got[name])
                assert "UNAUTHENTICATED" in got[name]["error"], (name, got[name])
            for name in ("session_dir", "session_logs", "current_cluster", "token", "config"):
                assert not got[name]["ok"] and "PermissionError" in got[name]["error"], (
                    name,
                    got[name],
                )
            assert got["runtime_env_agent_port"]["ok"], got["runtime_env_agent_port"]
            assert "401" in got["runtime_env_agent"].get("error", ""), got["runtime_env_agent"]

            # Postgres: the port answers, the server asks for a password B does not have.
            assert got["postgres_port"]["ok"], got["postgres_port"]
            assert not got["postgres"]["ok"], got["postgres"]
            assert "password" in got["postgres"]["error"], got["postgres"]

            # Nothing secret anywhere B can read: command lines, environments, shared memory.
            assert got["proc"]["ok"], got["proc"]
            assert got["proc"]["got"]["found"] == [], got["proc"]
            assert got["proc"]["got"]["environ_denied"] > 0  # root's (the host actors') closed
            assert got["shm"]["ok"] and got["shm"]["got"]["found"] == [], got["shm"]

            # The same through B's agent's Bash tool (sandboxed where the sandbox runs: then
            # even the GCS port is out of reach, a network namespace of its own).
            gcs_host, gcs_port = ray_cluster.address.rsplit(":", 1)
            out = lab.root_b / "bash-attacks"
            script = lab.root_b / "bash-attack.sh"
            script.write_text(
                f"""OUT={out}
mkdir -p $OUT
attempt() {{ name=$1; shift; {{ eval "$1"; echo "rc=$?"; }} > "$OUT/$name.out" 2>&1; }}
attempt gcs_port 'exec 3<>/dev/tcp/{gcs_host}/{gcs_port} && echo connected'
attempt logs 'ls {session_dir}/logs && grep -r {word} {session_dir}/logs'
attempt token 'cat {args["token"]}'
attempt config 'cat {config}'
attempt shm 'grep -rl {word} /dev/shm'
attempt env 'env | grep -E "^(RAY_|HOTSESSION_DATABASE|PG|DATABASE_URL)"'
"""
            )
            os.chown(script, lab.b.uid, lab.b.gid)
            sb = await _open(b, lab.root_b)
            assert (await turn(b, sb["id"], f"[[bash:bash {script}]]"))["result"] == "done"
            bash = {p.stem: p.read_text() for p in out.glob("*.out")}
            assert set(bash) == {"gcs_port", "logs", "token", "config", "shm", "env"}  # all ran
            assert bash["env"].strip() == "rc=1", bash["env"]  # no Ray or database variable
            for name, text in bash.items():
                assert text.splitlines()[-1] != "rc=0", (name, text)
                assert token not in text and password not in text and word not in text
            for name in ("logs", "token", "config"):
                assert "Permission denied" in bash[name], (name, bash[name])
            sandboxed = sandbox.unavailable(lookup(lab.b.name, tenant="b")) is None
            if sandboxed:  # its own network namespace: loopback is not the node's
                assert "connected" not in bash["gcs_port"], bash["gcs_port"]
            else:
                assert "connected" in bash["gcs_port"], bash["gcs_port"]

            for client, sid in ((a, sa["id"]), (b, sb["id"])):
                assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 200
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.timeout(300)
async def test_the_start_refuses_what_would_hand_a_tenant_the_database(
    users: Lab, ray_cluster: Any, cluster_pg: Any, tmp_path: Path
) -> None:
    """Through a real ``serve`` process, each refused in one line: the database password on the
    daemon's command line (``ps``), and a tenant's agents given a database variable (the node
    refuses, naming itself)."""
    lab = users
    config = write_config(
        lab.base / "argv.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
        database_url=cluster_pg.url,
    )
    with pytest.raises(AssertionError, match="did not start") as failed:
        async with serve_process(ray_cluster.address, cluster_pg.url, config, tmp_path / "s1"):
            pass
    assert "database password is on this daemon's command line" in str(failed.value)

    config = write_config(
        lab.base / "env.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name, env={"PGPASSWORD": "x"}),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
        database_url=cluster_pg.url,
    )
    with pytest.raises(AssertionError, match="did not start") as failed:
        async with serve_process(ray_cluster.address, None, config, tmp_path / "s2"):
            pass
    lines = [line for line in str(failed.value).splitlines() if "PGPASSWORD" in line]
    assert lines and "node " in lines[-1] and "tenant a's agents would get" in lines[-1]
