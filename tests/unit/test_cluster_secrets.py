"""What a cluster daemon puts in Ray's hands, and what a node refuses to expose to tenants.

Ray keeps a host actor's creation arguments in its GCS (readable by anyone who can talk to it),
so the database URL must not be among them; a node with tenants that have their own user
refuses to set them up on a Ray without token auth (``hotsession.cluster.tenants``). The attacks
themselves, on a real cluster as a tenant's user: ``tests/cluster/test_cluster_ray_walls.py``.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

from hotsession.cluster import tenants
from hotsession.cluster.service import NodeDatabase, check, cluster_config
from hotsession.cluster.tenants import ray_exposure
from hotsession.errors import InvalidRequest
from hotsession.host import SpawnPlan
from hotsession.isolation import TenantIsolation
from hotsession.registry.postgres import PostgresRegistry
from hotsession.settings import load_settings
from hotsession.supervisor import RunAs
from hotsession.transcripts.postgres import PostgresSessionStore

PASSWORD = "s3cret-pw-0123456789"
URL = f"postgresql://hs:{PASSWORD}@db.example:5432/hs"


def _config(tmp_path: Path, *, url_in_file: bool = True, user: bool = True) -> Path:
    path = tmp_path / "hotsession.toml"
    top = f'database_url = "{URL}"\n' if url_in_file else ""
    tenants = "".join(
        f'[[tenants]]\nname = "{n}"\ntoken = "{n}-token-0123456789"\nroots = ["{tmp_path}"]\n'
        + (f'user = "hs-{n}"\n' if user else "")
        for n in ("a", "b")
    )
    path.write_text(top + ("shared_user = true\n" if not user else "") + tenants)
    return path


def _settings(path: Path, **flags: str) -> object:
    return load_settings(
        path, {"state_dir": str(path.parent / "s"), "cluster": "auto", **flags}, environ={}
    )


def test_no_database_url_in_what_ray_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine settings a node gets leave the URL out, and the store factories (pickled into
    the host actor's arguments) carry only the config file's path; called on the node, they
    read the URL from the file there."""
    monkeypatch.setattr(sys, "argv", ["hotsession", "serve"])
    settings = _settings(_config(tmp_path))
    conf = cluster_config(settings)  # type: ignore[arg-type]
    assert "database_url" not in conf.node_config
    sent = pickle.dumps((conf.store, conf.transcripts, conf.node_config))
    assert PASSWORD.encode() not in sent and b"db.example" not in sent
    assert isinstance(conf.store, NodeDatabase) and isinstance(conf.transcripts, NodeDatabase)
    registry = conf.store()
    assert isinstance(registry, PostgresRegistry)
    assert isinstance(conf.transcripts(), PostgresSessionStore)


def test_a_node_without_the_url_in_its_file_says_so(tmp_path: Path) -> None:
    path = _config(tmp_path, url_in_file=False)
    with pytest.raises(InvalidRequest, match="has no database_url"):
        NodeDatabase(str(path), "hotsession", 5.0)()
    with pytest.raises(InvalidRequest, match="same path on every node"):
        NodeDatabase(str(tmp_path / "missing.toml"), "hotsession", 5.0)()


def test_tenants_with_users_need_the_url_in_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["hotsession", "serve"])
    path = _config(tmp_path, url_in_file=False)
    with pytest.raises(InvalidRequest, match="put database_url in the config file"):
        check(_settings(path, database_url=URL))  # type: ignore[arg-type]
    # Without users (agents run as Ray's user) the flag is fine, and still not sent to nodes.
    shared = _config(tmp_path, url_in_file=False, user=False)
    conf = cluster_config(_settings(shared, database_url=URL))  # type: ignore[arg-type]
    assert "database_url" not in conf.node_config


def test_the_password_on_the_command_line_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ps`` shows every process's argv to every user, tenants' agents included."""
    monkeypatch.setattr(sys, "argv", ["hotsession", "serve", "--database-url", URL])
    with pytest.raises(InvalidRequest, match="on this daemon's command line"):
        check(_settings(_config(tmp_path), database_url=URL))  # type: ignore[arg-type]


def _isolation(env: dict[str, str] | None = None) -> TenantIsolation:
    plan = SpawnPlan(env=env or {}, run_as=RunAs(uid=65534, gid=65534))
    return TenantIsolation(plans={"a": plan})


def test_a_node_refuses_tenants_with_users_on_ray_without_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(Ray's own auth mode is not switched here: this process may be a driver of the cluster
    tier's token-authenticated Ray, which must keep its token.)"""
    monkeypatch.setattr(tenants, "_token_auth", lambda: False)
    why = ray_exposure(_isolation())
    assert why is not None and "RAY_AUTH_MODE=token" in why
    assert ray_exposure(TenantIsolation(plans={"a": SpawnPlan()})) is None  # no user: no wall


@pytest.mark.skipif(os.geteuid() != 0, reason="probes as another user")
def test_a_node_refuses_a_token_a_tenant_can_read_or_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("ray")  # (the session dir of this process's Ray, if it is a driver)
    monkeypatch.setattr(tenants, "_token_auth", lambda: True)
    open_dir = Path("/tmp") / f"hs-token-{os.getpid()}"
    open_dir.mkdir(mode=0o755, exist_ok=True)
    try:
        token = open_dir / "auth_token"
        token.write_text("0123456789abcdef" * 4)
        os.chmod(token, 0o644)
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))  # (read by the check only)
        why = ray_exposure(_isolation())
        assert why is not None and f"{token} is readable by tenant a's user" in why
        os.chmod(token, 0o600)
        assert ray_exposure(_isolation()) is None
        why = ray_exposure(_isolation({"RAY_AUTH_TOKEN": "x"}))
        assert why is not None and "RAY_AUTH_TOKEN" in why
    finally:
        token.unlink(missing_ok=True)
        open_dir.rmdir()
