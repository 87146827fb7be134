"""Hostile input against the live daemon: schema fuzzing, parser properties, auth, paths, prompts.

Schemathesis generates requests for every operation of ``/openapi.json`` (bounded examples per
operation) and sends them with a valid token; hypothesis drives the parsers (``Last-Event-ID``,
the settings file, ``cwd``). The invariants: never a 500, never a hang, no session lost, every
refusal a JSON error with a machine-readable code, and every answer as the document says (its
status documented for the operation, its content type, its body's schema).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import string
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.api.conftest import (  # noqa: F401 - fixtures
    ALICE_TOKEN,
    BOB_TOKEN,
    Running,
    new_session,
    start_daemon,
    stream_post,
)

from hotsession.api.auth import Authenticator
from hotsession.settings import Settings, SettingsError, load_settings

FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


# The answer is what /openapi.json says it is.
DOCUMENT_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _no_500(r: httpx.Response | Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    ctype = r.headers.get("content-type") or ""
    if isinstance(ctype, list):  # schemathesis' response keeps every value
        ctype = ctype[0] if ctype else ""
    if r.status_code >= 400 and ctype.startswith("application/json"):
        assert "code" in r.json()["error"], r.text[:500]


async def _still_fine(d: Running, sid: str) -> None:
    c = d.alice
    assert (await c.get("/healthz")).status_code == 200
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:alive]]"})
    assert events[-1].type == "result" and events[-1].data["result"] == "alive"


@pytest.mark.timeout(300)
async def test_schema_fuzz_never_500(start_daemon, caplog: pytest.LogCaptureFixture):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    d: Running = await start_daemon()
    keep = (await new_session(d.alice))["id"]
    doc = (await d.alice.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(doc)
    auth = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    calls: list[int] = []

    def fuzz() -> None:
        for result in schema.get_all_operations():
            op = result.ok()
            if op.path == "/v1/stream":  # an endless live stream by design: nothing to end it
                continue

            @settings(FUZZ, max_examples=10)
            @given(case=op.as_strategy())
            def check(case: Any) -> None:
                # the long-running routes get a prompt that ends at once
                if isinstance(case.body, dict) and "prompt" in case.body:
                    case.body["prompt"] = "[[say:fuzz]]"
                r = case.call(base_url=d.url, headers=auth, timeout=60)
                calls.append(r.status_code)
                _no_500(r)
                case.validate_response(r, checks=DOCUMENT_CHECKS, headers=auth)

            check()

    await asyncio.wait_for(asyncio.to_thread(fuzz), 240)
    assert len(calls) > 100
    await _still_fine(d, keep)
    assert ALICE_TOKEN not in caplog.text and BOB_TOKEN not in caplog.text


async def test_last_event_id_parser(start_daemon):  # noqa: F811
    d: Running = await start_daemon()
    sid = (await new_session(d.alice))["id"]
    await stream_post(d.alice, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:x]]"})
    url = f"{d.url}/v1/sessions/{sid}/events"
    header_text = st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
    )
    values = st.one_of(header_text, st.integers(-(2**70), 2**70).map(str))

    def run() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=30) as c:

            @FUZZ
            @given(value=values)
            def check(value: str) -> None:
                r = c.get(url, params={"follow": "false"}, headers={"Last-Event-ID": value})
                _no_500(r)
                assert r.status_code in (200, 422), r.text
                if r.status_code == 422:
                    assert r.json()["error"]["code"] == "invalid_request"

            check()

    await asyncio.wait_for(asyncio.to_thread(run), 120)
    await _still_fine(d, sid)


toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)
setting_names = st.sampled_from(
    [
        "host",
        "port",
        "watchdog_s",
        "queue_max",
        "prompt_limit_bytes",
        "pool_max",
        "log_level",
        "body_limit_bytes",
        "nonsense",
    ]
)


@settings(max_examples=200, deadline=None, database=None)
@given(values=st.dictionaries(setting_names, toml_scalars, max_size=4))
def test_settings_parser_raises_only_settings_error(values: dict[str, Any], tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "hotsession.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    try:
        loaded = load_settings(path, environ={})
    except SettingsError:
        return
    assert isinstance(loaded, Settings)


@settings(max_examples=200, deadline=None, database=None)
@given(raw=st.text(max_size=300))
def test_settings_file_garbage(raw: str, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "hotsession.toml"
    path.write_text(raw, errors="surrogatepass")
    try:
        load_settings(path, environ={})
    except SettingsError:
        pass


async def test_cwd_fuzz_never_escapes(start_daemon, tmp_path: Path):  # noqa: F811
    d: Running = await start_daemon()
    root = d.alice_root.resolve()
    (root / "sub").mkdir()
    (root / "out").symlink_to(tmp_path)
    segments = st.lists(st.sampled_from(["..", ".", "sub", "out", "x", "", "//"]), max_size=6)
    created: list[str] = []

    def run() -> None:
        with httpx.Client(
            base_url=d.url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=60
        ) as c:

            @FUZZ
            @given(parts=segments, absolute=st.booleans())
            def check(parts: list[str], absolute: bool) -> None:
                base = "/" if absolute else str(root)
                cwd = os.path.join(base, *parts) if parts else base
                r = c.post("/v1/sessions", json={"cwd": cwd})
                _no_500(r)
                if r.status_code == 201:
                    real = r.json()["cwd"]
                    assert real == str(root) or real.startswith(str(root) + os.sep), real
                    created.append(r.json()["id"])
                    c.delete(f"/v1/sessions/{r.json()['id']}")
                else:
                    assert r.json()["error"]["code"] in ("forbidden", "invalid_request"), r.text

            check()

    await asyncio.wait_for(asyncio.to_thread(run), 180)
    assert created, "no example reached an allowed directory"


async def test_prompts_huge_empty_binary_control(start_daemon):  # noqa: F811
    d: Running = await start_daemon(prompt_limit_bytes=100_000)
    c = d.alice
    sid = (await new_session(c))["id"]
    url = f"/v1/sessions/{sid}/turns"
    cases: list[tuple[bytes, set[int]]] = [
        (json.dumps({"prompt": "x" * 100_001}).encode(), {413}),  # over the prompt limit
        (json.dumps({"prompt": ""}).encode(), {422}),
        (json.dumps({"prompt": "   \n\t"}).encode(), {422}),
        (b'{"prompt": "\xff\xfe\x00 invalid utf-8"}', {400, 422}),
        (b'{"prompt": "\\ud800 lone surrogate"}', {422}),
        (bytes(range(256)), {400, 422}),
        (b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", {400, 422}),
        (json.dumps({"prompt": 12345}).encode(), {422}),
        (b"x" * (d.settings.max_body_bytes + 1), {413}),  # over the body cap
    ]
    for body, allowed in cases:
        r = await c.post(url, content=body, headers={"content-type": "application/json"})
        _no_500(r)
        assert r.status_code in allowed, (body[:40], r.status_code, r.text[:200])
    # control characters and NUL are a prompt like any other: the turn runs
    control = "".join(chr(i) for i in range(32)) + "\x7f [[say:ctl]]"
    events = await stream_post(c, url, {"prompt": control})
    assert events[-1].type == "result" and events[-1].data["result"] == "ctl"
    # huge headers: refused by the HTTP layer, the daemon serves on
    for size in (70_000, 1_000_000):
        with MaybeRaises():  # a refused request or a connection closed by the HTTP layer
            r = await c.get("/v1/sessions", headers={"X-Big": "a" * size})
            _no_500(r)
    await _still_fine(d, sid)


class MaybeRaises:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, httpx.HTTPError)


async def test_auth_tokens_and_tenants(start_daemon, caplog: pytest.LogCaptureFixture):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    d: Running = await start_daemon(log_level="debug")
    sid = (await new_session(d.alice))["id"]
    paths = [
        ("GET", "/v1/sessions"),
        ("GET", f"/v1/sessions/{sid}"),
        ("POST", f"/v1/sessions/{sid}/turns"),
        ("GET", f"/v1/sessions/{sid}/events"),
        ("DELETE", f"/v1/sessions/{sid}"),
        ("POST", f"/v1/sessions/{sid}/interrupt"),
    ]
    bad_headers: list[dict[str, Any]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {ALICE_TOKEN}"},
        {"Authorization": f"Bearer {ALICE_TOKEN[:-1]}"},  # a prefix of the right token
        {"Authorization": f"Bearer {ALICE_TOKEN}x"},
        {"Authorization": f"Bearer {ALICE_TOKEN.upper()}"},
        {"Authorization": "Bearer \u00e9\u00e9".encode()},  # non-ASCII bytes
        {"Authorization": "Bearer " + "a" * 10_000},
    ]
    async with httpx.AsyncClient(base_url=d.url, timeout=30) as raw:
        for method, path in paths:
            for headers in bad_headers:
                r = await raw.request(method, path, headers=headers, json={"prompt": "x"})
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"]["code"] == "unauthorized"
            # the other tenant's token: exactly like an unknown id (no enumeration)
            if "{" not in path and sid in path:
                other = await d.bob.request(method, path, json={"prompt": "x"})
                unknown = await d.bob.request(
                    method, path.replace(sid, "hs_" + "A" * 16), json={"prompt": "x"}
                )
                assert other.status_code == unknown.status_code == 404, (path, other.text)
                assert other.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert sid not in {s["id"] for s in (await d.bob.get("/v1/sessions")).json()["sessions"]}
    # session ids are random (about 96 bits): no two alike, no shared prefix to walk
    ids = [(await new_session(d.alice))["id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) >= 19 for i in ids)
    assert os.path.commonprefix(ids) == "hs_" or len(os.path.commonprefix(ids)) <= 5
    # timing-safe comparison of digests
    source = inspect.getsource(Authenticator)
    assert "hmac.compare_digest" in source and "sha256" in source
    # tokens are never logged, whatever happened above
    for token in (ALICE_TOKEN, BOB_TOKEN):
        assert token not in caplog.text
        assert token[:12] not in caplog.text


def test_loopback_by_default_and_warned_beyond(caplog: pytest.LogCaptureFixture):
    from hotsession.daemon import is_loopback

    assert Settings().host == "127.0.0.1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.org"))
    source = inspect.getsource(__import__("hotsession.daemon", fromlist=["Daemon"]).Daemon.run)
    assert "if not is_loopback(host):" in source and "log.warning" in source


async def test_idle_connections_do_not_block_service(start_daemon):  # noqa: F811
    d: Running = await start_daemon()
    sid = (await new_session(d.alice))["id"]
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        for i in range(1000):
            s = socket.create_connection((host, int(port)))
            if i % 2:  # half send a partial request line and stop
                s.sendall(b"GET /v1/sess")
            idle.append(s)
        await asyncio.sleep(0)
        await _still_fine(d, sid)
        r = await d.alice.get("/v1/sessions")
        assert r.status_code == 200
    finally:
        for s in idle:
            s.close()
    await _still_fine(d, sid)


def test_ascii_only_token_alphabet_does_not_matter():
    """Tokens with any characters hash the same way (no crash on odd bytes)."""
    auth = Authenticator([])
    for tok in ("\x00", "é", string.printable):
        with pytest.raises(Exception) as info:
            auth.authenticate(f"Bearer {tok}")
        assert getattr(info.value, "code", None) == "unauthorized"
