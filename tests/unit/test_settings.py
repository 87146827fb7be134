"""Daemon settings: precedence, types, tenants, the local token."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from hotsession.api.auth import Authenticator, resolve_cwd, within
from hotsession.errors import Forbidden, InvalidRequest, Unauthorized
from hotsession.settings import (
    Settings,
    SettingsError,
    Tenant,
    ensure_local_tenant,
    hash_token,
    load_settings,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hs.toml"
    path.write_text(text)
    return path


def test_defaults():
    s = load_settings(None, {}, environ={})
    assert (s.host, s.port, s.log_level) == ("127.0.0.1", 8765, "info")
    assert s.config.pool_max == 2 and s.tenants == ()
    assert s.max_body_bytes == 6 * s.config.prompt_limit_bytes + 1024 * 1024


def test_flags_beat_env_beat_file(tmp_path: Path):
    path = write(tmp_path, 'port = 1000\npool_max = 3\nkeep-alive-s = 5\nhost = "0.0.0.0"\n')
    env = {"HOTSESSION_PORT": "2000", "HOTSESSION_POOL_MAX": "4"}
    s = load_settings(path, {"port": 3000, "pool_max": None}, environ=env)
    assert s.port == 3000  # flag
    assert s.config.pool_max == 4  # env (the flag was not given)
    assert s.config.keep_alive_s == 5.0 and s.host == "0.0.0.0"  # file
    assert s.config.pool_min == 0  # default


def test_env_types_and_optionals(tmp_path: Path):
    env = {
        "HOTSESSION_ALLOW_ROOT_BYPASS": "yes",
        "HOTSESSION_MEMORY_BUDGET_MB": "2048",
        "HOTSESSION_AGENT_MAX_TURNS": "none",
        "HOTSESSION_STATE_DIR": str(tmp_path / "st"),
        "HOTSESSION_CONFIG": str(write(tmp_path, "agent_max_turns = 9\n")),
    }
    s = load_settings(None, {}, environ=env)
    assert s.config.allow_root_bypass is True
    assert s.config.memory_budget_mb == 2048.0
    assert s.config.agent_max_turns is None  # env "none" clears the file's 9
    assert s.config.state_dir == tmp_path / "st"


@pytest.mark.parametrize(
    ("text", "env", "flags", "needle"),
    [
        ("bogus = 1\n", {}, {}, "unknown setting"),
        ("port = 'x'\n", {}, {}, "port: input should be a valid integer"),
        ("port = true\n", {}, {}, "expected int"),
        ("", {"HOTSESSION_PORT": "eighty"}, {}, "HOTSESSION_PORT"),
        ("", {"HOTSESSION_ALLOW_ROOT_BYPASS": "maybe"}, {}, "HOTSESSION_ALLOW_ROOT_BYPASS: .*bool"),
        ("", {}, {"port": 70000}, "--port: input should be less than or equal to 65535"),
        ("", {}, {"pool_max": -1}, "--pool-max: input should be greater than or equal to 0"),
        ("", {}, {"prompt_limit_bytes": 0}, "--prompt-limit-bytes"),
        ("", {}, {"log_level": "loud"}, "--log-level: input should be 'debug'"),
        ("port = [\n", {}, {}, "invalid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text, env, flags, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(write(tmp_path, text), flags, environ=env)


def test_missing_file(tmp_path: Path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", {}, environ={})


def test_tenants(tmp_path: Path):
    root = tmp_path / "r"
    root.mkdir()
    (tmp_path / "link").symlink_to(root)
    digest = hash_token("bob-secret-token-123")
    path = write(
        tmp_path,
        f"""
[[tenants]]
name = "alice"
token = "alice-secret-token-123"
roots = ["{tmp_path / "link"}"]
claude_config_dir = "/srv/alice/.claude"

[[tenants]]
name = "bob"
token_sha256 = "{digest.upper()}"
roots = ["{root}", "/tmp"]
""",
    )
    s = load_settings(path, {}, environ={})
    alice, bob = s.tenants
    assert alice == Tenant(
        name="alice",
        token_sha256=hash_token("alice-secret-token-123"),
        roots=(str(root),),
        claude_config_dir="/srv/alice/.claude",
    )
    assert alice.claude_config_dir == "/srv/alice/.claude" and alice.user is None
    assert bob.token_sha256 == digest and bob.env == {} and bob.sandbox == "auto"
    assert bob.roots == (str(root), os.path.realpath("/tmp"))
    assert ensure_local_tenant(s) == (s, None) and s.token_file is None  # tenants configured


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('name = "a"\nroots = ["/x"]', "exactly one of"),
        ('name = "a"\ntoken = "t-1234567890abcdef"\ntoken_sha256 = "00"\nroots = ["/x"]', "one"),
        ('name = "a"\ntoken = "short"\nroots = ["/x"]', "16\\+ characters"),
        ('name = "a"\ntoken_sha256 = "xyz"\nroots = ["/x"]', "64 hex"),
        ('name = "a"\ntoken = "t-1234567890abcdef"\nroots = []', "roots"),
        ('name = "a"\ntoken = "t-1234567890abcdef"\nroots = ["rel"]', "roots"),
        ('name = "a b"\ntoken = "t-1234567890abcdef"\nroots = ["/x"]', "name"),
        ('name = "a"\ntoken = "t-1234567890abcdef"\nroots = ["/x"]\ncolour = 1', "unknown"),
    ],
)
def test_bad_tenants(tmp_path: Path, table: str, needle: str):
    with pytest.raises(SettingsError, match=needle):
        load_settings(write(tmp_path, "[[tenants]]\n" + table + "\n"), {}, environ={})


def test_duplicate_tenants(tmp_path: Path):
    one = '[[tenants]]\nname = "a"\ntoken = "t-1234567890abcdef"\nroots = ["/x"]\n'
    with pytest.raises(SettingsError, match="unique"):
        load_settings(write(tmp_path, one + one), {}, environ={})
    two = one + one.replace('name = "a"', 'name = "b"')
    with pytest.raises(SettingsError, match="share a token"):
        load_settings(write(tmp_path, two), {}, environ={})


def test_local_token_created_once_with_mode_0600(tmp_path: Path):
    s = load_settings(None, {"state_dir": str(tmp_path / "state")}, environ={})
    s, token = ensure_local_tenant(s)
    assert token and s.token_file == tmp_path / "state" / "token"
    assert stat.S_IMODE(s.token_file.stat().st_mode) == 0o600
    assert s.token_file.read_text().strip() == token
    (tenant,) = s.tenants
    assert tenant.name == "local" and tenant.roots == ("/",)
    assert Authenticator(s.tenants).authenticate(f"Bearer {token}") is tenant
    # the next start reuses it (and tightens a loosened mode)
    os.chmod(s.token_file, 0o644)
    again = load_settings(None, {"state_dir": str(tmp_path / "state")}, environ={})
    again, created = ensure_local_tenant(again)
    assert created is None
    assert again.tenants[0].token_sha256 == tenant.token_sha256
    assert stat.S_IMODE(s.token_file.stat().st_mode) == 0o600


def test_authenticator():
    a = Tenant(name="a", token_sha256=hash_token("token-a-0123456789"), roots=("/",))
    b = Tenant(name="b", token_sha256=hash_token("token-b-0123456789"), roots=("/",))
    auth = Authenticator([a, b])
    assert auth.authenticate("Bearer token-b-0123456789") is b
    assert auth.authenticate("bearer   token-a-0123456789 ") is a
    for header in (
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic token-a-0123456789",
        "token-a-0123456789",
        "Bearer token-a-012345678",
        "Bearer \udcff",
    ):
        with pytest.raises(Unauthorized):
            auth.authenticate(header)


def test_the_authenticator_remembers_only_tokens_that_matched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Tenant(name="a", token_sha256=hash_token("token-a-0123456789"), roots=("/",))
    b = Tenant(name="b", token_sha256=hash_token("token-b-0123456789"), roots=("/",))
    auth = Authenticator([a, b])
    hashed: list[bytes] = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data: hashed.append(data) or real(data))
    for _ in range(3):
        assert auth.authenticate("Bearer token-a-0123456789") is a
    assert auth.authenticate(" bearer token-a-0123456789") is a  # the token, not the header
    assert len(hashed) == 1  # hashed and compared once, then remembered
    for _ in range(2):  # a wrong token is checked in full every time, and never remembered
        with pytest.raises(Unauthorized):
            auth.authenticate("Bearer token-a-012345678")
    assert len(hashed) == 3
    assert auth.authenticate("Bearer token-b-0123456789") is b
    assert auth.authenticate("Bearer token-b-0123456789") is b
    assert len(hashed) == 4
    assert len(auth._known) == 2  # at most one token per tenant


def test_roots(tmp_path: Path):
    assert within("/a/b", "/a") and within("/a", "/a") and not within("/ab", "/a")
    assert within("/anything", "/")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    t = Tenant(name="t", token_sha256="0" * 64, roots=(str(root.resolve()),))
    assert resolve_cwd(t, None) == str(root.resolve())
    # the local tenant's root is /: it must be asked for, never a default (issue 12 item 2)
    local = Tenant(name="local", token_sha256="0" * 64, roots=("/",))
    with pytest.raises(InvalidRequest, match="cwd is required"):
        resolve_cwd(local, None)
    assert resolve_cwd(local, "/") == "/"
    assert resolve_cwd(t, str(root / "sub" / "..")) == str(root.resolve())
    for bad in (str(root / ".."), str(tmp_path), str(root) + "x"):
        with pytest.raises(Forbidden):
            resolve_cwd(t, bad)
    for bad in ("relative", str(root / "missing"), "/x\x00y"):
        with pytest.raises(InvalidRequest):
            resolve_cwd(t, bad)


def test_settings_body_cap():
    s = Settings(body_limit_bytes=123)
    assert s.max_body_bytes == 123
