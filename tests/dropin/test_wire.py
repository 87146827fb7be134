"""The shim's wire to the daemon (``/v1/dropin``), spoken by the shim's own WebSocket client
(``hotsession.dropin.wire``): the hello in the upgrade request with what stdin held then, the
hello as a message (older shims, hellos too big for a header field), a bad hello, and
``wss://`` to a daemon behind TLS."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import wait_until
from tests.dropin.conftest import Dropin, run

from hotsession.daemon import bind
from hotsession.dropin import wire
from hotsession.dropin.shim import HELLO_HEADER, HELLO_HEADER_MAX, decode, encode
from hotsession.testing.model_server import ModelServer

pytestmark = pytest.mark.integration


def _talk(url: str, headers: dict[str, str], send: list[Any]) -> tuple[dict[str, str], list[Any]]:
    """Connect, send ``send`` (str: text, bytes: binary), read to the end: (101 fields, messages:
    JSON objects and (channel, bytes) pairs)."""
    ws = wire.WebSocket.connect(url.rstrip("/") + "/v1/dropin", headers=headers, timeout=30)
    for item in send:
        if isinstance(item, str):
            ws.send_text(item)
        else:
            ws.send_binary(item)
    got: list[Any] = []
    try:
        while True:
            kind, payload = ws.recv()
            if kind == wire.BINARY:
                got.append((payload[0], payload[1:]))
                continue
            msg = decode(payload)
            got.append(msg)
            if "exit" in msg or "error" in msg:
                break
    except wire.Closed:
        pass
    ws.close()
    return ws.headers, got


def _hello(workdir: Path, *argv: str, **extra: Any) -> dict[str, Any]:
    return {"argv": list(argv), "cwd": str(workdir), "env": {}, "stdin_tty": False, **extra}


async def test_hello_and_stdin_in_the_upgrade(dropin: Dropin, workdir: Path) -> None:
    """The daemon takes the hello and the stdin bytes it carries from the upgrade request: no
    hello message follows, and the prompt read from that stdin is answered."""
    stdin = wire.b64(b"[[say:carried]]").decode()
    hello = _hello(workdir, "-p", "--output-format", "json", stdin=stdin)
    headers = {"Authorization": f"Bearer {dropin.token}", HELLO_HEADER: encode(hello)}
    fields, got = await asyncio.to_thread(_talk, dropin.url, headers, ['{"eof":true}'])
    assert fields.get(HELLO_HEADER.lower()) == "taken"
    assert got[-1] == {"exit": 0}, got
    out = b"".join(data for item in got if isinstance(item, tuple) for data in [item[1]])
    assert json.loads(out)["result"] == "carried"


async def test_a_proxy_that_drops_the_confirmation_duplicates_nothing(
    dropin: Dropin, workdir: Path, model_server: ModelServer
) -> None:
    """The shim did not see ``taken`` in the 101 (a proxy dropped the field), so it sends the
    hello as a message and the stdin bytes again: the daemon, which had them, skips them."""
    prompt = b"once only [[say:ok]]"
    hello = _hello(workdir, "-p", "--output-format", "json")
    headers = {
        "Authorization": f"Bearer {dropin.token}",
        HELLO_HEADER: encode({**hello, "stdin": wire.b64(prompt).decode()}),
    }
    again = encode({"hello": {**hello, "stdin_sent": len(prompt)}})
    _, got = await asyncio.to_thread(
        _talk, dropin.url, headers, [again, prompt, b" and more", '{"eof":true}']
    )
    assert got[-1] == {"exit": 0}, got
    assert model_server.main_requests()[-1]["last_user_text"] == "once only [[say:ok]] and more"


async def test_hello_as_a_message_still_served(dropin: Dropin, workdir: Path) -> None:
    """What older shims send: the hello as the first message, stdin as binary messages."""
    headers = {"Authorization": f"Bearer {dropin.token}"}
    hello = encode({"hello": _hello(workdir, "-p", "--output-format", "json")})
    fields, got = await asyncio.to_thread(
        _talk, dropin.url, headers, [hello, b"[[say:as a message]]", '{"eof":true}']
    )
    assert HELLO_HEADER.lower() not in fields
    assert got[-1] == {"exit": 0}, got
    out = b"".join(item[1] for item in got if isinstance(item, tuple))
    assert json.loads(out)["result"] == "as a message"


async def test_a_hello_too_big_for_a_header_goes_as_a_message(
    dropin: Dropin, shim: str, workdir: Path
) -> None:
    padding = "x" * (HELLO_HEADER_MAX + 1000)
    code, out, err = await run(
        shim, "-p", f"{padding} [[say:big hello]]", "--output-format", "json", cwd=workdir
    )
    assert code == 0, err
    assert json.loads(out)["result"] == "big hello"


async def test_a_bad_hello_in_the_upgrade_is_refused(dropin: Dropin, workdir: Path) -> None:
    headers = {"Authorization": f"Bearer {dropin.token}", HELLO_HEADER: '{"argv": ['}
    _, got = await asyncio.to_thread(_talk, dropin.url, headers, [])
    assert "error" in got[-1] and got[-1]["error"]["message"].startswith("bad hello"), got
    headers[HELLO_HEADER] = encode(_hello(workdir, "-p", "x", stdin="not base64!"))
    _, got = await asyncio.to_thread(_talk, dropin.url, headers, [])
    assert "error" in got[-1] and got[-1]["error"]["message"].startswith("bad hello"), got


def test_hello_header_is_one_ascii_line() -> None:
    """What the shim puts in the header field: ASCII, no line breaks, whatever the argv holds."""
    text = encode(_hello(Path(os.getcwd()), "-p", "é\r\nX-Evil: 1\x00", stdin="AA=="))
    assert text.isascii() and "\r" not in text and "\n" not in text
    assert json.loads(text)["argv"][1] == "é\r\nX-Evil: 1\x00"


@pytest.fixture
async def tls_url(dropin: Dropin, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The daemon's app served over TLS by a second uvicorn (as a remote daemon behind TLS):
    (``https://127.0.0.1:PORT``, the PEM of the CA that signed its certificate)."""
    import trustme
    import uvicorn

    ca = trustme.CA()
    served = tmp_path / "served.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(served))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    assert dropin.daemon.server is not None
    config = uvicorn.Config(
        dropin.daemon.server.config.app,
        lifespan="off",
        log_config=None,
        ssl_certfile=str(served),
    )
    server = uvicorn.Server(config)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started, timeout=10)
    yield f"https://127.0.0.1:{port}", ca_pem
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


async def test_wss_to_a_tls_daemon(
    dropin: Dropin, shim: str, workdir: Path, tls_url: tuple[str, Path]
) -> None:
    """Over TLS: trusted through HOTSESSION_CA_FILE or SSL_CERT_FILE, a conversation and its hot
    ``--resume``; an untrusted certificate is one line and exit 1, never the local CLI."""
    url, ca_pem = tls_url
    env = {"HOTSESSION_URL": url, "HOTSESSION_TOKEN": dropin.token, "HOTSESSION_FALLBACK": "1"}
    json_out = ("--output-format", "json")
    code, out, err = await run(shim, "-p", "[[say:untrusted]]", *json_out, cwd=workdir, env=env)
    assert (code, out) == (1, "") and len(err.splitlines()) == 1, err
    assert "failed TLS verification" in err and "HOTSESSION_CA_FILE" in err
    code, out, err = await run(
        shim, "-p", "[[say:over tls]]", *json_out,
        cwd=workdir, env={**env, "HOTSESSION_CA_FILE": str(ca_pem)},
    )  # fmt: skip
    assert code == 0, err
    first = json.loads(out)
    assert first["result"] == "over tls"
    spawned = dropin.hub.supervisor.spawned_total
    code, out, err = await run(
        shim, "-p", "[[say:again]]", "--resume", first["session_id"], *json_out,
        cwd=workdir, env={**env, "SSL_CERT_FILE": str(ca_pem)},
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["session_id"] == first["session_id"]
    assert dropin.hub.supervisor.spawned_total == spawned  # the hot process answered
