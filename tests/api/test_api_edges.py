"""The edge of the API: auth, errors, limits, cwd checks, health, docs, metrics, dashboard."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.api.conftest import ALICE_TOKEN, Running, new_session


def err(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


async def test_healthz_needs_no_token(start_daemon):
    d: Running = await start_daemon()
    r = await d.client(None).get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["version"]
    assert os.path.isfile(body["cli"]["path"]) and body["cli"]["version"] not in ("", None)


async def test_auth_is_required_everywhere_but_health(start_daemon):
    d: Running = await start_daemon()
    anon, wrong = d.client(None), d.client("not-a-real-token-at-all")
    for method, path in [
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/hs_x"),
        ("DELETE", "/v1/sessions/hs_x"),
        ("POST", "/v1/sessions/hs_x/turns"),
        ("GET", "/v1/sessions/hs_x/events"),
        ("POST", "/v1/sessions/hs_x/interrupt"),
        ("POST", "/v1/sessions/hs_x/warm"),
        ("POST", "/v1/sessions/hs_x/permissions/r1"),
        ("POST", "/v1/ask"),
        ("GET", "/v1/pool"),
        ("GET", "/v1/unknown"),
        ("GET", "/metrics"),
    ]:
        for client in (anon, wrong):
            # a malformed body must not be reported before the missing token
            r = await client.request(method, path, content=b"{not json")
            err(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    r = await d.client(None).get("/v1/pool", headers={"Authorization": f"Basic {ALICE_TOKEN}"})
    err(r, 401, "unauthorized")


async def test_error_statuses_without_agents(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    err(await c.get("/v1/nowhere"), 404, "not_found")
    err(await c.get("/no/such/page"), 404, "not_found")
    err(await c.put("/v1/sessions"), 405, "method_not_allowed")
    err(await c.get("/v1/sessions/hs_unknown"), 404, "not_found")
    err(await c.delete("/v1/sessions/hs_unknown"), 404, "not_found")
    err(await c.post("/v1/sessions/hs_unknown/turns", json={"prompt": "x"}), 404, "not_found")
    err(await c.get("/v1/sessions/hs_unknown/events"), 404, "not_found")
    err(await c.post("/v1/sessions/hs_unknown/interrupt"), 404, "not_found")
    err(await c.post("/v1/sessions/hs_unknown/warm"), 404, "not_found")
    r = await c.post("/v1/sessions/hs_unknown/permissions/r", json={"behavior": "allow"})
    err(r, 404, "not_found")
    # malformed JSON: 400, whatever the content type says
    for headers in ({"content-type": "application/json"}, {"content-type": "text/plain"}, {}):
        r = await c.post("/v1/sessions", content=b'{"cwd": ', headers=headers)
        err(r, 400, "malformed")
    err(await c.post("/v1/ask", content=b"\xff\xfe"), 400, "malformed")
    # invalid fields: 422 with the field named
    bad_bodies = [
        {"permission_mode": "yolo"},
        {"allowed_tools": "Bash"},
        {"allowed_tools": ["Bash,Read"]},
        {"model": "--dangerous"},
        {"unknown_option": 1},
        {"metadata": [1, 2]},
        {"fork": True},  # fork without resume
        {"resume": "not-a-uuid"},
        {"cwd": "relative/path"},
        [1, 2, 3],
        "just a string",
    ]
    for body in bad_bodies:
        r = await c.post("/v1/sessions", json=body)
        e = err(r, 422, "invalid_request")
        assert body != {"permission_mode": "yolo"} or "permission_mode" in str(e["message"])
    err(await c.post("/v1/ask", json={}), 422, "invalid_request")  # prompt missing
    err(await c.post("/v1/ask", json={"prompt": "   "}), 422, "invalid_request")
    err(await c.get("/v1/sessions/hs_x/events?after=-1"), 422, "invalid_request")
    err(await c.get(f"/v1/sessions/hs_x/events?after={2**64}"), 422, "invalid_request")
    for bad in ("x", "-1", str(2**64)):
        r = await c.get("/v1/sessions/hs_x/events", headers={"Last-Event-ID": bad})
        err(r, 422, "invalid_request")
    r = await c.post("/v1/sessions/x/permissions/r", json={"behavior": "maybe"})
    err(r, 422, "invalid_request")


async def test_turn_bodies_get_the_same_answers_on_the_fast_path(start_daemon):
    # POST …/turns is answered at the edge when its body is well-formed (api/fastpath.py);
    # every other body must get the route's own answer, checked before the session lookup.
    d: Running = await start_daemon()
    c = d.alice
    turns = "/v1/sessions/hs_unknown/turns"
    err(await c.post(turns, content=b'{"prompt": '), 400, "malformed")
    err(await c.post(turns, content=b"\xff\xfe"), 400, "malformed")
    for body in ({}, {"prompt": 1}, {"prompt": None}, {"prompt": "x", "extra": 1}, ["x"], "x"):
        e = err(await c.post(turns, json=body), 422, "invalid_request")
        assert e.get("errors"), e  # the route's field list

    async def chunked():
        yield b'{"prompt": '
        yield b"1}"

    err(await c.post(turns, content=chunked()), 422, "invalid_request")
    # well-formed: the session is looked up (the same 404 as the route's)
    err(await c.post(turns, json={"prompt": "x"}), 404, "not_found")
    err(await c.post(turns, json={"prompt": "   "}), 404, "not_found")
    assert (await c.get("/v1/sessions")).json()["sessions"] == []


async def test_session_bodies_get_the_same_answers_on_the_fast_path(start_daemon):
    # POST /v1/sessions is answered at the edge when the route's model accepts its body
    # (api/fastpath.py); every other body must still get the route's own answer.
    d: Running = await start_daemon()
    c = d.alice
    err(await c.post("/v1/sessions", content=b'{"cwd": '), 400, "malformed")
    for body in ({"nope": 1}, {"model": ""}, {"cwd": str(d.alice_root), "permission_mode": 3}):
        e = err(await c.post("/v1/sessions", json=body), 422, "invalid_request")
        assert e.get("errors"), e  # the route's field list
    # a valid body outside the tenant's roots: the open's own error, as on the route
    outside = err(await c.post("/v1/sessions", json={"cwd": "/"}), 403, "forbidden")
    assert outside["message"]
    # valid: opened at the edge, with the route's shape (201, source, memory)
    r = await c.post("/v1/sessions", json={"cwd": str(d.alice_root)})
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["source"] in ("spare", "spawn") and view["pid"] and view["state"] == "idle"
    assert view["memory"] is not None and view["closed_at"] is None
    assert [s["id"] for s in (await c.get("/v1/sessions")).json()["sessions"]] == [view["id"]]
    # an empty body takes every default (the tenant's first root)
    r = await c.post("/v1/sessions", content=b"")
    assert r.status_code == 201, r.text


async def test_invalid_unicode_is_refused(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    lone = b'"x\\ud800"'  # JSON for a lone surrogate: Python keeps it, UTF-8 cannot
    for path, body in [
        ("/v1/sessions", b'{"system_prompt": %s}' % lone),
        ("/v1/sessions", b'{"allowed_tools": [%s]}' % lone),
        ("/v1/sessions", b'{"metadata": {"k": [%s]}}' % lone),
        ("/v1/sessions", b'{"metadata": {%s: 1}}' % lone),
        ("/v1/ask", b'{"prompt": %s}' % lone),
        ("/v1/sessions/hs_x/turns", b'{"prompt": %s}' % lone),
        ("/v1/sessions/hs_x/permissions/r", b'{"behavior": "deny", "message": %s}' % lone),
    ]:
        err(await c.post(path, content=body), 422, "invalid_request")
    assert (await c.get("/v1/sessions")).json()["sessions"] == []


async def test_size_limits(start_daemon):
    d: Running = await start_daemon(prompt_limit_bytes=1000, body_limit_bytes=50_000)
    c = d.alice
    # the prompt limit is checked before any agent starts
    r = await c.post("/v1/ask", json={"prompt": "é" * 600, "cwd": str(d.alice_root)})
    over_limit = err(r, 413, "prompt_too_large")
    assert over_limit["limit"] == 1000
    # a follow-up's prompt over the limit says the same (the fast path and the route)
    sid = (await c.post("/v1/sessions", json={"cwd": str(d.alice_root)})).json()["id"]
    turns = f"/v1/sessions/{sid}/turns"
    for body in ({"prompt": "é" * 600}, {"prompt": "é" * 600, "extra": 1}):
        r = await c.post(turns, json=body)
        if "extra" in body:
            err(r, 422, "invalid_request")
            continue
        assert err(r, 413, "prompt_too_large")["limit"] == 1000
    # bodies over the cap are refused before parsing, by length or counted when chunked; where
    # the body is a prompt, the answer is the prompt's, word for word
    for path in ("/v1/ask", turns):
        assert err(await c.post(path, content=b"x" * 60_000), 413, "prompt_too_large") == over_limit

    async def chunks():
        for _ in range(70):
            yield b"x" * 1000

    assert err(await c.post("/v1/sessions", content=chunks()), 413, "body_too_large")["limit"]
    e = err(await c.post(turns, content=chunks()), 413, "prompt_too_large")
    assert e["limit"] == 1000

    async def small():
        yield b'{"prompt": "'
        yield b'"}'

    err(await c.post("/v1/ask", content=small()), 422, "invalid_request")  # empty prompt


async def test_cwd_must_stay_inside_the_roots(start_daemon, tmp_path: Path):
    d: Running = await start_daemon()
    c = d.alice
    outside = tmp_path / "outside"
    outside.mkdir()
    (d.alice_root / "link-out").symlink_to(outside)
    (d.alice_root / "sub").mkdir()
    escapes = [
        str(d.alice_root / ".." / "outside"),
        str(d.alice_root / "link-out"),
        str(d.alice_root / "link-out" / ".."),
        str(outside),
        "/",
        "/etc",
        str(d.bob_root),  # another tenant's root
        str(tmp_path / "does-not-exist"),  # outside and missing: still 403 (no probing)
        str(d.alice_root) + "-sibling",  # a prefix of the root is not inside it
    ]
    for cwd in escapes:
        for path in ("/v1/sessions", "/v1/ask"):
            r = await c.post(
                path, json={"cwd": cwd, "prompt": "hi"} if "ask" in path else {"cwd": cwd}
            )
            err(r, 403, "forbidden")
    r = await c.post("/v1/sessions", json={"cwd": str(d.alice_root / "missing")})
    err(r, 422, "invalid_request")
    (d.alice_root / "file").write_text("x")
    r = await c.post("/v1/sessions", json={"cwd": str(d.alice_root / "file")})
    err(r, 422, "invalid_request")
    # allowed: a subdirectory, reached through ".." that stays inside
    s = await new_session(c, cwd=str(d.alice_root / "sub" / ".." / "sub"))
    assert s["cwd"] == str((d.alice_root / "sub").resolve())
    assert s["tenant"] == "alice"
    default = await new_session(c)  # no cwd: the tenant's first root
    assert default["cwd"] == str(d.alice_root.resolve())


async def test_docs_metrics_pool_dashboard(start_daemon):
    d: Running = await start_daemon()
    anon = d.client(None)
    spec = (await anon.get("/openapi.json")).json()
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/turns",
        "/v1/sessions/{session_id}/events",
        "/v1/sessions/{session_id}/interrupt",
        "/v1/sessions/{session_id}/warm",
        "/v1/sessions/{session_id}/permissions/{request_id}",
        "/v1/ask",
        "/v1/pool",
        "/healthz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await anon.get("/docs")).status_code == 200
    page = await anon.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    r = await d.alice.get("/metrics")
    assert r.status_code == 200
    assert "hotsession_agent_processes" in r.text
    pool = (await d.alice.get("/v1/pool")).json()
    assert pool["enabled"] is False and pool["profiles"] == []
    assert "spawned_total" in pool


async def test_requests_during_shutdown_get_503(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    assert (await c.get("/v1/sessions")).status_code == 200
    state = d.daemon._state
    assert state is not None
    state.begin_shutdown()  # the gate alone; the server itself keeps running for this check
    err(await c.get("/v1/sessions"), 503, "shutting_down")
    err(await c.post("/v1/ask", json={"prompt": "x"}), 503, "shutting_down")


async def test_resume_of_an_unknown_conversation_is_404(start_daemon):
    """The CLI has no such conversation: the caller's error, not a failed start (was 502)."""
    d: Running = await start_daemon()
    unknown = str(uuid.uuid4())
    body = {"cwd": str(d.alice_root), "resume": unknown}
    e = err(await d.alice.post("/v1/sessions", json=body), 404, "conversation_not_found")
    assert e["cli_session_id"] == unknown
    r = await d.alice.post("/v1/ask", json={**body, "prompt": "hi"})
    err(r, 404, "conversation_not_found")
    assert (await d.alice.get("/v1/sessions")).json()["sessions"] == []
    # the lease went with the failed start: a real session may take the id later
    assert d.daemon.hub is not None and d.daemon.hub.host.lease_holder(unknown) is None


def _counter(text: str, name: str) -> float:
    """The value of counter ``name`` (its ``_total`` sample) in Prometheus text."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == f"{name}_total")
    raise AssertionError(f"no metric {name} in /metrics")


async def test_resume_of_an_unknown_conversation_is_no_spawn_failure(start_daemon):
    """A client's typo in a resume id counts as a refusal, not a spawn failure (an alert on
    hotsession_spawn_failures_total fired on it)."""
    d: Running = await start_daemon()
    before = (await d.alice.get("/metrics")).text
    body = {"cwd": str(d.alice_root), "resume": str(uuid.uuid4())}
    err(await d.alice.post("/v1/sessions", json=body), 404, "conversation_not_found")
    err(await d.alice.post("/v1/ask", json={**body, "prompt": "hi"}), 404, "conversation_not_found")
    after = (await d.alice.get("/metrics")).text
    failures = "hotsession_spawn_failures"
    refusals = "hotsession_spawn_refusals"
    assert _counter(after, failures) == _counter(before, failures)
    assert _counter(after, refusals) == _counter(before, refusals) + 2
