"""The scripted Messages API stand-in, exercised over real HTTP (httpx against a started server)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hotsession.sse import decode_text
from hotsession.testing.model_server import ModelServer, parse_directives

MODEL = "claude-test-model"
TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
REMINDER = "<system-reminder>\nsome reminder [[marker:in-reminder]] text\n</system-reminder>\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


@pytest.fixture(autouse=True)
def _clean_log(server: ModelServer) -> None:
    server.clear()


@pytest.fixture
def client(server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def body(
    prompt: str | list[dict[str, Any]] = "hi",
    *,
    stream: bool = True,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    system: Any = None,
    max_tokens: int = 1024,
) -> dict[str, Any]:
    msgs = messages if messages is not None else [{"role": "user", "content": prompt}]
    out: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": msgs,
        "stream": stream,
    }
    if tools is not None:
        out["tools"] = tools
    if system is not None:
        out["system"] = system
    return out


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in decode_text(raw):
        data = frame.json()
        assert data["type"] == frame.event
        events.append((frame.event, data))
    return events


def stream_events(
    client: httpx.Client, payload: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    r = client.post("/v1/messages", json=payload)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.text)


def assemble(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rebuild content blocks from SSE events, checking index discipline on the way."""
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            block = dict(data["content_block"])
            block["_json"] = ""
            blocks.append(block)
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block = blocks[data["index"]]
            delta = data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                block["_json"] += delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] += delta["signature"]
            else:
                raise AssertionError(delta)
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    for block in blocks:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw)
    return blocks


def stop_reason(events: list[tuple[str, dict[str, Any]]]) -> str:
    deltas = [d for n, d in events if n == "message_delta"]
    assert len(deltas) == 1
    return str(deltas[0]["delta"]["stop_reason"])


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(b["text"] for b in assemble(events) if b["type"] == "text")


# -- parsing ---------------------------------------------------------------------------------


def test_parse_directives_grammar() -> None:
    ds = parse_directives(
        'a [[say:hello: world]] b [[hang]] [[tool:Write:{"file_path": "/x:y", "content": "]] [["}]]'
        " [[bash:[[ -f x ]] && echo y]] [[marker:m1]] [[not closed"
    )
    assert [d.name for d in ds] == ["say", "hang", "tool", "bash", "marker"]
    assert ds[0].arg == "hello: world"
    assert ds[2].tool_name == "Write"
    assert ds[2].tool_input == {"file_path": "/x:y", "content": "]] [["}
    assert ds[3].tool_input == {"command": "[[ -f x ]] && echo y", "description": "scripted"}
    assert ds[4].arg == "m1"


def test_parse_directives_skips_malformed_tool() -> None:
    assert parse_directives("[[tool:Bash:{not json}]] [[say:x]]")[-1].arg == "x"
    assert [d.name for d in parse_directives("[[tool:Bash:[1]]] [[tool:X:{}]]")] == ["tool"]


# -- streaming / non-streaming shape -----------------------------------------------------------


def test_stream_event_sequence_default_ok(client: httpx.Client) -> None:
    events = stream_events(client, body("hello there"))
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert start["model"] == MODEL
    assert start["role"] == "assistant" and start["content"] == []
    assert start["usage"]["input_tokens"] > 0
    assert {"cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"} <= set(
        start["usage"]
    )
    assert events[-2][1]["usage"]["output_tokens"] > 0
    assert stop_reason(events) == "end_turn"
    assert text_of(events) == "ok"


def test_stream_text_is_split_into_chunks_and_reassembles(client: httpx.Client) -> None:
    text = "The answer, delivered in several pieces: forty-two."
    events = stream_events(client, body(f"q [[say:{text}]]"))
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) >= 2
    assert all(d["delta"]["type"] == "text_delta" for d in deltas)
    assert text_of(events) == text


def test_non_streaming_message(client: httpx.Client) -> None:
    r = client.post("/v1/messages", json=body("x [[say:plain]]", stream=False))
    assert r.status_code == 200
    msg = r.json()
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["id"].startswith("msg_")
    assert msg["model"] == MODEL
    assert msg["content"] == [{"type": "text", "text": "plain"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0


def test_directives_read_from_the_prompt_not_reminders_and_not_echoed(
    client: httpx.Client, server: ModelServer
) -> None:
    content = [
        {"type": "text", "text": REMINDER},
        {"type": "text", "text": "please [[say:exactly this]] [[marker:m]] thanks"},
    ]
    events = stream_events(client, body(content))
    assert text_of(events) == "exactly this"
    (entry,) = server.log()
    assert entry["directives"] == ["say", "marker"]
    assert entry["markers"] == ["m"]
    assert entry["last_user_text"] == "please [[say:exactly this]] [[marker:m]] thanks"


def test_merged_prompts_after_interrupt_use_only_the_newest(
    client: httpx.Client, server: ModelServer
) -> None:
    # After an interrupted turn the CLI merges the consecutive user messages into one.
    content = [
        {"type": "text", "text": "[[hang]] [[marker:old]]"},
        {"type": "text", "text": "[Request interrupted by user]"},
        {"type": "text", "text": REMINDER},
        {"type": "text", "text": "[[say:fresh]] [[marker:new]]"},
    ]
    events = stream_events(client, body(content))
    assert text_of(events) == "fresh"
    assert server.log()[-1]["markers"] == ["new"]


def test_default_reply_does_not_echo_prompt(client: httpx.Client) -> None:
    events = stream_events(client, body("[[marker:abc]] [[delay:1]] tell me something"))
    assert text_of(events) == "ok"


# -- tool sequences ----------------------------------------------------------------------------


def _tool_use(name: str, inp: dict[str, Any], tid: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": name, "input": inp}


def _tool_result(tid: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": "fine"}


def test_tool_sequence_over_several_requests(client: httpx.Client, server: ModelServer) -> None:
    prompt = [
        {"type": "text", "text": REMINDER},
        {
            "type": "text",
            "text": 'go [[bash:echo a]][[tool:Read:{"file_path": "/a:b"}]][[say:fin]]',
        },
    ]
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "an older turn [[bash:never]]"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": prompt},
        {"role": "system", "content": "environment"},
    ]
    ev1 = stream_events(client, body(messages=msgs, tools=TOOLS))
    (b1,) = assemble(ev1)
    assert stop_reason(ev1) == "tool_use"
    assert b1["type"] == "tool_use" and b1["name"] == "Bash" and b1["id"].startswith("toolu_")
    assert b1["input"] == {"command": "echo a", "description": "scripted"}

    msgs += [
        {"role": "assistant", "content": [_tool_use("Bash", b1["input"], b1["id"])]},
        {"role": "user", "content": [_tool_result(b1["id"])]},
    ]
    ev2 = stream_events(client, body(messages=msgs, tools=TOOLS))
    (b2,) = assemble(ev2)
    assert stop_reason(ev2) == "tool_use"
    assert (b2["name"], b2["input"]) == ("Read", {"file_path": "/a:b"})

    msgs += [
        {"role": "assistant", "content": [_tool_use("Read", b2["input"], b2["id"])]},
        {"role": "user", "content": [_tool_result(b2["id"])]},
    ]
    ev3 = stream_events(client, body(messages=msgs, tools=TOOLS))
    assert stop_reason(ev3) == "end_turn"
    assert text_of(ev3) == "fin"
    assert [e["step"] for e in server.log()] == [0, 1, 2]
    assert [e["reply"] for e in server.log()] == ["tool_use:Bash", "tool_use:Read", "text"]


def test_tool_sequence_final_text_defaults_to_done(client: httpx.Client) -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "[[bash:true]]"},
        {"role": "assistant", "content": [_tool_use("Bash", {}, "toolu_1")]},
        {"role": "user", "content": [_tool_result("toolu_1")]},
    ]
    r = client.post("/v1/messages", json=body(messages=msgs, stream=False))
    assert r.json()["content"] == [{"type": "text", "text": "done"}]


def test_tool_use_non_streaming(client: httpx.Client) -> None:
    r = client.post("/v1/messages", json=body("[[bash:ls -l]]", stream=False))
    msg = r.json()
    assert msg["stop_reason"] == "tool_use"
    (block,) = msg["content"]
    assert block["type"] == "tool_use" and block["name"] == "Bash"
    assert block["input"] == {"command": "ls -l", "description": "scripted"}


# -- timing directives ---------------------------------------------------------------------------


def test_delay_before_first_byte(server: ModelServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/v1/messages", json=body("[[delay:600]]")) as r:
            t_headers = time.monotonic() - t0
            assert r.status_code == 200
            r.read()
    assert t_headers >= 0.55
    r2_t0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        c.post("/v1/messages", json=body("no delay"))
    assert time.monotonic() - r2_t0 < 0.5


def test_stall_after_message_start(server: ModelServer) -> None:
    arrivals: list[tuple[str, float]] = []
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/v1/messages", json=body("[[stall:700]][[say:late]]")) as r:
            buf = ""
            for chunk in r.iter_text():
                buf += chunk
                while "\n\n" in buf:
                    frame, buf = buf.split("\n\n", 1)
                    arrivals.append((frame.split("\n")[0][len("event: ") :], time.monotonic() - t0))
    names = [n for n, _ in arrivals]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert arrivals[0][1] < 0.4
    assert arrivals[1][1] - arrivals[0][1] >= 0.65


def _frame_arrivals(server: ModelServer, prompt: str) -> list[tuple[str, dict[str, Any], float]]:
    out: list[tuple[str, dict[str, Any], float]] = []
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/v1/messages", json=body(prompt)) as r:
            buf = ""
            for chunk in r.iter_text():
                buf += chunk
                while "\n\n" in buf:
                    frame, buf = buf.split("\n\n", 1)
                    lines = dict(line.split(": ", 1) for line in frame.split("\n"))
                    out.append((lines["event"], json.loads(lines["data"]), time.monotonic() - t0))
    return out


def test_stream_directive_sends_n_word_deltas_with_gaps(server: ModelServer) -> None:
    frames = _frame_arrivals(server, "go [[stream:5:120]]")
    deltas = [(d, t) for n, d, t in frames if n == "content_block_delta"]
    assert [d["delta"]["text"] for d, _ in deltas] == ["w1 ", "w2 ", "w3 ", "w4 ", "w5"]
    # The server cannot send the last delta before its 4 gaps of 120 ms have passed (a bound no
    # load can break), and the deltas arrive spread out, not in one piece at the end (the slack
    # leaves room for the client being descheduled; per-gap minimums failed under load).
    assert deltas[-1][1] >= 4 * 0.12
    assert deltas[-1][1] - deltas[0][1] >= 0.2
    assert frames[-1][0] == "message_stop"


def test_stream_directive_cuts_the_say_text_into_n_pieces(client: httpx.Client) -> None:
    events = stream_events(client, body("[[say:abcdefghij]][[stream:4]]"))
    deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert deltas == ["abc", "def", "gh", "ij"]
    short = stream_events(client, body("[[say:ab]][[stream:500]]"))
    assert [d["delta"]["text"] for n, d in short if n == "content_block_delta"] == ["a", "b"]
    many = stream_events(client, body("[[stream:500]]"))
    assert len([n for n, _ in many if n == "content_block_delta"]) == 500
    assert text_of(many) == " ".join(f"w{i}" for i in range(1, 501))
    plain = client.post("/v1/messages", json=body("[[stream:3:50]]", stream=False)).json()
    assert plain["content"] == [{"type": "text", "text": "w1 w2 w3"}]


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_error_status(
    client: httpx.Client, server: ModelServer, status: int, etype: str, stream: bool
) -> None:
    r = client.post("/v1/messages", json=body(f"x [[error:{status}]]", stream=stream))
    assert r.status_code == status
    payload = r.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == etype
    assert payload["error"]["message"]
    (entry,) = server.log()
    assert entry["status"] == status and entry["reply"] == f"error:{status}"


# -- big / think / markers -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 200_000])
def test_big_reply_exact_size_and_deterministic(client: httpx.Client, size: int) -> None:
    events = stream_events(client, body(f"[[big:{size}]]"))
    text = text_of(events)
    assert len(text.encode("ascii")) == size
    again = client.post("/v1/messages", json=body(f"[[big:{size}]]", stream=False)).json()
    assert again["content"][0]["text"] == text
    if size >= 1000:
        assert len([n for n, _ in events if n == "content_block_delta"]) >= 3


def test_think_block_precedes_reply(client: httpx.Client) -> None:
    events = stream_events(client, body("[[think:pondering deeply]][[say:answer]]"))
    thinking, text = assemble(events)
    assert thinking["type"] == "thinking"
    assert thinking["thinking"] == "pondering deeply"
    assert thinking["signature"]
    delta_types = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert "thinking_delta" in delta_types and "signature_delta" in delta_types
    assert text == {"type": "text", "text": "answer"}
    assert [n for n, _ in events].count("ping") == 1


def test_markers_are_logged(client: httpx.Client, server: ModelServer) -> None:
    client.post("/v1/messages", json=body("[[marker:one]] text [[marker:two-2]]"))
    (entry,) = server.log()
    assert entry["markers"] == ["one", "two-2"]
    assert entry["directives"] == ["marker", "marker"]


# -- cut / hang ---------------------------------------------------------------------------------


def test_cut_drops_connection_mid_stream(server: ModelServer) -> None:
    received = b""
    with httpx.Client(base_url=server.url, timeout=5.0) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            with c.stream("POST", "/v1/messages", json=body("[[cut]]")) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    received += chunk
    assert b"message_start" in received
    assert b"text_delta" in received
    assert b"message_stop" not in received
    (entry,) = server.log()
    assert entry["reply"] == "cut" and entry["t_end_mono"] is None


def test_cut_non_streaming(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/messages", json=body("[[cut]]", stream=False))


def test_hang_sends_message_start_then_nothing(server: ModelServer) -> None:
    received = b""
    timeout = httpx.Timeout(5.0, read=0.8)
    t0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=timeout) as c:
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", "/v1/messages", json=body("[[hang]]")) as r:
                for chunk in r.iter_raw():
                    received += chunk
    assert time.monotonic() - t0 >= 0.75
    assert b"message_start" in received
    assert b"content_block" not in received
    (entry,) = server.log()
    assert entry["reply"] == "hang" and entry["status"] == 200


def test_hang_non_streaming_never_answers(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/messages",
            json=body("[[hang]]", stream=False),
            timeout=httpx.Timeout(5.0, read=0.5),
        )


def test_stop_ends_hanging_stream() -> None:
    ms = ModelServer().start()
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            with httpx.Client(base_url=ms.url, timeout=30.0) as c:
                c.post("/v1/messages", json=body("[[hang]]"))
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=hang)
    t.start()
    ms.wait_for(lambda log: any(e["reply"] == "hang" for e in log), timeout=5)
    t0 = time.monotonic()
    ms.stop()
    assert time.monotonic() - t0 < 5
    t.join(timeout=5)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{ms.url}/v1/messages", json=body("x"), timeout=2)


# -- other endpoints ------------------------------------------------------------------------------


def test_count_tokens(client: httpx.Client, server: ModelServer) -> None:
    payload = body("count me " * 100, stream=False)
    raw = json.dumps(payload).encode()
    r = client.post(
        "/v1/messages/count_tokens", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert r.json() == {"input_tokens": len(raw) // 4}
    (entry,) = server.log()
    assert entry["kind"] == "count_tokens" and entry["bytes"] == len(raw)
    assert entry["main"] is False


def test_unknown_path_is_logged_and_404(client: httpx.Client, server: ModelServer) -> None:
    r = client.get("/v1/models?limit=3")
    assert r.status_code == 404
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"
    r2 = client.post("/api/whatever", content=b"abc")
    assert r2.status_code == 404
    log = server.log()
    assert [(e["kind"], e["path"], e["method"], e["status"]) for e in log] == [
        ("other", "/v1/models", "GET", 404),
        ("other", "/api/whatever", "POST", 404),
    ]
    assert log[1]["bytes"] == 3


def test_log_entry_fields(client: httpx.Client, server: ModelServer) -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"},
        {"type": "text", "text": "You are a test."},
    ]
    payload = body(
        "hi [[marker:f1]] [[say:yo]]", tools=TOOLS + TOOLS, system=system, max_tokens=777
    )
    raw = json.dumps(payload).encode()
    t_wall0, t_mono0 = time.time(), time.monotonic()
    client.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
    t_mono1 = time.monotonic()
    (e,) = server.log()
    assert t_wall0 <= e["t_wall"] <= time.time()
    assert t_mono0 <= e["t_mono"] <= e["t_end_mono"] <= t_mono1
    assert e["path"] == "/v1/messages" and e["method"] == "POST"
    assert e["kind"] == "messages" and e["status"] == 200
    assert e["model"] == MODEL and e["stream"] is True and e["max_tokens"] == 777
    assert e["n_messages"] == 1 and e["n_tools"] == 2
    assert e["bytes"] == len(raw)
    assert e["system_bytes"] == len("x-anthropic-billing-header: cc_version=1;\nYou are a test.")
    assert e["markers"] == ["f1"] and e["directives"] == ["marker", "say"]
    assert e["last_user_text"] == "hi [[marker:f1]] [[say:yo]]"
    assert e["main"] is True and e["subagent"] is False
    assert e["reply"] == "text" and e["step"] == 0
    assert "body" not in e


def test_last_user_text_is_truncated(client: httpx.Client, server: ModelServer) -> None:
    client.post("/v1/messages", json=body("y" * 500))
    assert server.log()[0]["last_user_text"] == "y" * 200


def test_main_classification(client: httpx.Client, server: ModelServer) -> None:
    sub_system = "x-anthropic-billing-header: cc_version=1; cc_is_subagent=true;"
    client.post("/v1/messages", json=body("side call"))  # no tools
    client.post("/v1/messages", json=body("main", tools=TOOLS, system="You are Claude."))
    client.post("/v1/messages", json=body("sub", tools=TOOLS, system=sub_system))
    log = server.log()
    assert [(e["main"], e["subagent"]) for e in log] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    assert [e["last_user_text"] for e in server.main_requests()] == ["main"]


def test_log_endpoint_and_clear(client: httpx.Client, server: ModelServer) -> None:
    client.post("/v1/messages", json=body("[[marker:via-http]]"))
    r = client.get("/_log")
    assert r.status_code == 200
    entries = r.json()
    assert [e["markers"] for e in entries] == [["via-http"]]
    assert client.delete("/_log").status_code == 200
    assert server.log() == []
    assert client.get("/_log").json() == []
    client.post("/v1/messages", json=body("again"))
    assert len(server.log()) == 1
    server.clear()
    assert server.log() == []


def test_log_returns_a_copy(client: httpx.Client, server: ModelServer) -> None:
    client.post("/v1/messages", json=body("[[marker:a]]"))
    copy1 = server.log()
    copy1[0]["markers"].append("mutated")
    copy1.clear()
    assert server.log()[0]["markers"] == ["a"]


def test_record_bodies() -> None:
    with ModelServer(record_bodies=True) as ms:
        httpx.post(f"{ms.url}/v1/messages", json=body("keep me"), timeout=5)
        (entry,) = ms.log()
    assert entry["body"]["messages"] == [{"role": "user", "content": "keep me"}]


def test_wait_for(client: httpx.Client, server: ModelServer) -> None:
    def later() -> None:
        time.sleep(0.3)
        with httpx.Client(base_url=server.url) as c:
            c.post("/v1/messages", json=body("[[marker:late]]"))

    t = threading.Thread(target=later)
    t.start()
    log = server.wait_for(lambda log: any("late" in e["markers"] for e in log), timeout=5)
    t.join()
    assert log[-1]["markers"] == ["late"]
    with pytest.raises(TimeoutError):
        server.wait_for(lambda log: len(log) > 5, timeout=0.2)


def test_concurrent_requests_are_all_logged(server: ModelServer) -> None:
    def worker(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            c.post("/v1/messages", json=body(f"[[marker:w{i}]][[delay:50]]"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    markers = sorted(m for e in server.log() for m in e["markers"])
    assert markers == sorted(f"w{i}" for i in range(20))


def test_url_and_port_selection(server: ModelServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0
    with ModelServer() as other:
        assert other.port != server.port


def test_command_line_entry_point() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotsession.testing.model_server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        r = httpx.post(f"{url}/v1/messages", json=body("[[say:from cli]]", stream=False))
        assert r.json()["content"][0]["text"] == "from cli"
        assert httpx.get(f"{url}/_log").json()[0]["reply"] == "text"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_listening_socket_is_tcp_so_streams_get_nodelay() -> None:
    # asyncio sets TCP_NODELAY only on connections whose socket proto is IPPROTO_TCP; with
    # proto 0 Nagle delayed the streamed chunks the CLI reads (found by the benchmark).
    sock = ModelServer()._bind()
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
