"""A node's tenants (``hotsession.cluster.tenants``) and the cluster daemon's own check."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotsession.cluster.tenants import NodeTenants
from hotsession.errors import InvalidRequest
from hotsession.isolation import IsolationError, prepare
from hotsession.settings import load_settings


def _write(path: Path, *tenants: str, top: str = "") -> str:
    path.write_text(top + "".join(tenants))
    return str(path)


def _tenant(name: str, root: Path, extra: str = "") -> str:
    token = f"{name}-token-0123456789"
    return f'[[tenants]]\nname = "{name}"\ntoken = "{token}"\nroots = ["{root}"]\n{extra}'


def test_a_reload_names_the_tenants_whose_set_up_changed(tmp_path: Path) -> None:
    tenants = NodeTenants("n" * 56, tmp_path / "node")
    conf = tmp_path / "t.toml"
    cli = "/bin/true"
    assert tenants.load(_write(conf, _tenant("a", tmp_path)), cli_path=cli) == {"a"}
    assert tenants.load(str(conf), cli_path=cli) == set()  # the same file: nothing to do
    changed = _write(
        conf,
        _tenant("a", tmp_path, 'env = { K = "v2" }\n'),
        _tenant("b", tmp_path),
        top="shared_user = true\n",  # (no accounts in a unit test)
    )
    assert tenants.load(changed, cli_path=cli) == {"a", "b"}
    assert tenants.plan("a").env is not None and tenants.plan("a").env["K"] == "v2"
    assert tenants.load(_write(conf, _tenant("b", tmp_path)), cli_path=cli) == {"a"}
    assert tenants.plan("a").env is None  # gone: the node's own set-up


def test_a_missing_file_is_one_line_naming_the_node(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"node nnnnnnnnnnnn: cannot read .* every node"):
        NodeTenants("n" * 56, tmp_path).load(str(tmp_path / "none.toml"), cli_path="/bin/true")


def test_the_cluster_daemon_checks_the_tenant_set_but_no_account(tmp_path: Path) -> None:
    """``prepare(agents=False)``: the accounts are the nodes' business (no lookup here), but
    several tenants without a user each are refused as on one machine."""
    users = _write(
        tmp_path / "u.toml",
        _tenant("a", tmp_path, 'user = "hs-nobody-here-a"\n'),
        _tenant("b", tmp_path, 'user = "hs-nobody-here-b"\n'),
    )
    settings = load_settings(users, {"state_dir": str(tmp_path / "s")}, environ={})
    assert prepare(settings, cli_path="/bin/true", agents=False).plans == {}
    shared = _write(tmp_path / "v.toml", _tenant("a", tmp_path), _tenant("b", tmp_path))
    settings = load_settings(shared, {"state_dir": str(tmp_path / "s")}, environ={})
    with pytest.raises(IsolationError, match="have no 'user'"):
        prepare(settings, cli_path="/bin/true", agents=False)
