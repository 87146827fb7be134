"""Scripted stand-in for the Anthropic Messages API (a test instrument, never a product dependency).

The real Claude Code CLI is pointed at it with ``ANTHROPIC_BASE_URL``; what the "model" answers is
scripted by directives written into the prompt.

HTTP surface
============
``POST /v1/messages``               streaming (``"stream": true`` -> SSE: message_start,
                                    content_block_start, ping, content_block_delta*,
                                    content_block_stop, message_delta, message_stop) or a full
                                    Message JSON.
``POST /v1/messages/count_tokens``  ``{"input_tokens": <request bytes / 4>}``.
``GET /_log`` / ``DELETE /_log``    the request log as JSON / clear it (the instrument's own).
anything else                       logged (kind ``"other"``), answered 404 with an Anthropic
                                    error body.

Directives
==========
Directives are read from the newest *user text message* of the request: the latest ``user``
message that holds at least one text block and no ``tool_result`` block (a plain string content
counts as one text block). All text blocks of that message are searched, because the CLI wraps the
prompt with ``<system-reminder>`` blocks. Syntax: ``[[name]]`` or ``[[name:arg]]``; the argument
ends at the matching ``]]`` (nested ``[[ ... ]]`` pairs inside it are kept, so
``[[bash:[[ -f x ]] && echo y]]`` works); for ``tool`` the JSON object is parsed exactly, so it may
contain colons and brackets. Directives are never echoed into reply text; unknown names are
ignored (but listed in the log).

=====================  ==========================================================================
``[[say:TEXT]]``       reply with TEXT (default reply: ``ok``; final text after tools: ``done``)
``[[tool:NAME:JSON]]`` a ``tool_use`` block calling NAME with the JSON object as input
``[[bash:COMMAND]]``   shorthand for tool ``Bash`` with
                       ``{"command": COMMAND, "description": "scripted"}``
``[[think:TEXT]]``     precede the reply (text or tool_use) with a ``thinking`` block
                       (thinking_delta + signature_delta); accepted by CLI 2.1.330
``[[delay:MS]]``       sleep MS milliseconds before the first byte of the response
``[[stall:MS]]``       stream ``message_start``, then pause MS before the rest (mid-stream stall;
                       non-streaming: same as delay)
``[[hang]]``           stream ``message_start`` and never finish (until the client disconnects or
                       the server stops); non-streaming: never answer
``[[cut]]``            stream ``message_start`` and part of a text block, then drop the connection
                       (no terminating chunk); non-streaming: 200 headers and part of the JSON
                       body, then the drop
``[[error:STATUS]]``   answer HTTP STATUS with ``{"type":"error","error":{"type":T,"message":M}}``,
                       T by status: 400 invalid_request_error, 401 authentication_error,
                       403 permission_error, 404 not_found_error, 413 request_too_large,
                       429 rate_limit_error, 500 api_error, 529 overloaded_error (other 4xx:
                       invalid_request_error, other 5xx: api_error)
``[[big:BYTES]]``      reply text of exactly BYTES ASCII bytes (deterministic)
``[[marker:ID]]``      copied into the log entry's ``markers`` (several allowed)
``[[stream:N]]``,      stream the final text as N ``text_delta`` events, GAP_MS milliseconds
``[[stream:N:GAP_MS]]`` apart (default 0). The text is the ``say``/``big`` text cut into N pieces
                       (fewer when it is shorter than N characters), else N words
                       ``w1 w2 … wN`` of one delta each. Non-streaming: the same text at once
=====================  ==========================================================================

Tool sequences: several ``tool``/``bash`` directives run one per request. ``step`` = number of
assistant messages after the newest user text message; if ``step`` < number of tool directives
that tool is emitted (stop_reason ``tool_use``), otherwise the final text (``say`` text, else
``done``; with no tool directives at all the default text is ``ok``). So
``[[bash:a]][[bash:b]][[say:fin]]`` gives tool a, then tool b, then the text ``fin``.

Note on errors: the CLI retries 401/429/5xx/529 and dropped connections 10 times with
exponential backoff (~3 minutes); tests wanting a fast failure should use ``[[error:400]]`` (or
set ``CLAUDE_CODE_MAX_RETRIES=0`` in the CLI's environment).

Directives apply to every ``/v1/messages`` request whose newest user text message holds them,
including the retries the CLI makes and the requests of a subagent (whose prompt is its own user
text message, so ``[[tool:Agent:{..., "prompt": "[[say:sub]]"}]]`` scripts the subagent too).

Log entries
===========
One dict per request, appended when the request arrives and completed when it is answered:

``t_wall``          time.time() at arrival
``t_mono``          time.monotonic() at arrival (CLOCK_MONOTONIC: comparable across processes)
``t_end_mono``      time.monotonic() when the response was fully sent (None: not (yet) finished,
                    e.g. hang/cut)
``path``, ``method``  HTTP path and method
``kind``            ``"messages"``, ``"count_tokens"`` or ``"other"``
``status``          HTTP status answered (None while not answered, e.g. non-streaming hang)
``model``           request ``model`` (None if absent)
``stream``          request ``stream`` flag (bool)
``max_tokens``      request ``max_tokens`` (None if absent)
``n_messages``      number of request messages
``n_tools``         number of tools offered
``system_bytes``    size of the system prompt (UTF-8 bytes of all its text)
``bytes``           request body size
``main``            True only for the conversation's main model requests (see below)
``subagent``        True for requests made by a subagent (Agent/Task tool)
``last_user_text``  first 200 chars of the newest user text message (directives included;
                    blocks starting with ``<system-reminder>`` are left out unless that is all)
``directives``      list of directive names found there (in order, repeats kept)
``markers``         list of ``[[marker:ID]]`` arguments
``step``            tool-sequence step (assistant messages after the newest user text message)
``reply``           what was answered: ``"text"``, ``"tool_use:NAME"``, ``"error:STATUS"``,
                    ``"hang"``, ``"cut"``, ``"count_tokens"``, ``"404"``
``body``            the parsed request JSON, only with ``ModelServer(record_bodies=True)``

What the CLI sends
==================
Observed with the bundled CLI 2.1.330 (``-p`` and ``--input-format stream-json`` modes, the
env from docs/model-server.md, i.e. with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``):

* One ``POST /v1/messages`` per model turn and nothing else: no title generation, no
  ``max_tokens: 1`` quota probe, no haiku side call, no ``count_tokens``. Every request is
  ``stream: true``, ``max_tokens: 128000``, offers tools (12 by default), has a list ``system``
  whose first block is an ``x-anthropic-billing-header: cc_version=...`` line, and ``messages``
  start with a user message [reminder text block, prompt text block] followed by a ``role:
  "system"`` message (environment). A tool round trip adds an assistant + a tool_result user
  message, so with N tool calls a turn is N+1 requests.
* Without ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` the CLI also sends ``HEAD /api/hello`` (a
  connectivity probe; answered 404, kind ``"other"``) at start-up; nothing else changes.
* Subagents (Agent tool): their requests carry ``cc_is_subagent=true`` in the billing header and
  a smaller tool set. A background subagent finishing later makes the parent run one more turn
  whose user text message is a ``<system-reminder>`` task notification (default answer ``ok``).
* ``[[error:400]]``: not retried, but the CLI re-sends the request in fallback variants (thinking
  ``display`` dropped; a larger tool set): 6 requests within ~0.3 s, then a result with
  ``is_error: true``, ``api_error_status: 400``.
* ``[[error:401/429/500/529]]`` and ``[[cut]]`` are retried 10 times with exponential backoff
  (~3 min in all; ``system/api_retry`` lines on stdout); a cut stream is finally retried once as a
  non-streaming request (``stream: false``, ``max_tokens: 64000``). ``CLAUDE_CODE_MAX_RETRIES=0``
  makes the CLI give up at once (cut: 2 requests, ~0.1 s).
* ``[[hang]]``: the CLI waits indefinitely (no retry within 115 s, even with ``API_TIMEOUT_MS``
  set); a stall of a few seconds is tolerated and the turn completes.
* ``[[think:...]]``: the thinking block is accepted, shown as an assistant message of its own
  (plus ``system/thinking_tokens`` lines) and sent back in later requests.

How ``main`` is decided: a ``POST /v1/messages`` that offers tools (``n_tools > 0``) and is not a
subagent's (no ``cc_is_subagent=true`` in the system prompt). Side calls of the CLI (none seen with
this version) are made without tools.

Python API: ``ModelServer(host, port).start()`` runs uvicorn in a daemon thread with its own event
loop (``port=0`` picks a free port); ``url``, ``log()``, ``main_requests()``, ``clear()``,
``wait_for(predicate, timeout)``, ``stop()``; usable as a context manager. Command line:
``hotsession-model-server --host 127.0.0.1 --port 8766`` or
``python -m hotsession.testing.model_server``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["Directive", "ModelServer", "Script", "main", "parse_directives"]

LogEntry = dict[str, Any]

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TOOL_DIRECTIVES = ("tool", "bash")
_SUBAGENT_MARK = "cc_is_subagent=true"
_CHUNK_MAX = 4096
_BIG_PATTERN = b"The quick brown fox jumps over the lazy dog 0123456789.\n"


# ---------------------------------------------------------------------------------------------
# Directive parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Directive:
    """One ``[[name]]`` / ``[[name:arg]]`` occurrence; ``tool_input`` is set for tool/bash."""

    name: str
    arg: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None


def _balanced_end(text: str, start: int) -> int:
    """Index of the ``]]`` closing a directive whose argument starts at ``start`` (-1: none)."""
    depth = 0
    i = start
    while i < len(text) - 1:
        pair = text[i : i + 2]
        if pair == "[[":
            depth += 1
            i += 2
        elif pair == "]]":
            if depth == 0:
                return i
            depth -= 1
            i += 2
        else:
            i += 1
    return -1


def parse_directives(text: str) -> list[Directive]:
    """All directives in ``text``, in order. Malformed ones (e.g. bad tool JSON) are skipped."""
    out: list[Directive] = []
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        start = text.find("[[", pos)
        if start < 0:
            return out
        m = _NAME_RE.match(text, start + 2)
        if m is None:
            pos = start + 2
            continue
        name = m.group(0).lower()
        after = m.end()
        if text.startswith("]]", after):
            out.append(Directive(name))
            pos = after + 2
            continue
        if not text.startswith(":", after):
            pos = start + 2
            continue
        arg_start = after + 1
        if name == "tool":
            colon = text.find(":", arg_start)
            tool_name = text[arg_start:colon].strip() if colon >= 0 else ""
            if colon < 0 or not tool_name or "]]" in tool_name:
                pos = start + 2
                continue
            json_start = colon + 1
            while json_start < len(text) and text[json_start].isspace():
                json_start += 1
            try:
                obj, json_end = decoder.raw_decode(text, json_start)
            except json.JSONDecodeError:
                pos = start + 2
                continue
            while json_end < len(text) and text[json_end].isspace():
                json_end += 1
            if not isinstance(obj, dict) or not text.startswith("]]", json_end):
                pos = start + 2
                continue
            out.append(
                Directive("tool", text[arg_start:json_end], tool_name=tool_name, tool_input=obj)
            )
            pos = json_end + 2
            continue
        end = _balanced_end(text, arg_start)
        if end < 0:
            pos = start + 2
            continue
        arg = text[arg_start:end]
        if name == "bash":
            out.append(
                Directive(
                    "bash",
                    arg,
                    tool_name="Bash",
                    tool_input={"command": arg, "description": "scripted"},
                )
            )
        else:
            out.append(Directive(name, arg))
        pos = end + 2


def _int_arg(d: Directive | None, default: int = 0) -> int:
    if d is None or d.arg is None:
        return default
    try:
        return max(0, int(d.arg.strip()))
    except ValueError:
        return default


@dataclass
class Script:
    """What one request should be answered with, derived from its directives and step."""

    directives: list[Directive] = field(default_factory=list)
    step: int = 0

    def first(self, name: str) -> Directive | None:
        return next((d for d in self.directives if d.name == name), None)

    def has(self, name: str) -> bool:
        return self.first(name) is not None

    @property
    def markers(self) -> list[str]:
        return [d.arg or "" for d in self.directives if d.name == "marker"]

    @property
    def tools(self) -> list[Directive]:
        return [d for d in self.directives if d.name in _TOOL_DIRECTIVES]

    @property
    def delay_s(self) -> float:
        return _int_arg(self.first("delay")) / 1000.0

    @property
    def stall_s(self) -> float:
        return _int_arg(self.first("stall")) / 1000.0

    @property
    def error_status(self) -> int | None:
        d = self.first("error")
        if d is None:
            return None
        status = _int_arg(d, 500)
        return status if 400 <= status <= 599 else 500

    @property
    def stream(self) -> tuple[int, float] | None:
        """``[[stream:N:GAP_MS]]`` as (N pieces, gap in seconds); None without it."""
        d = self.first("stream")
        if d is None or d.arg is None:
            return None
        count, _, gap = d.arg.partition(":")
        try:
            n = int(count.strip())
            gap_ms = float(gap.strip()) if gap.strip() else 0.0
        except ValueError:
            return None
        return (max(1, n), max(0.0, gap_ms) / 1000.0)

    @property
    def thinking(self) -> str | None:
        d = self.first("think")
        return None if d is None else (d.arg or "")

    def tool_call(self) -> Directive | None:
        tools = self.tools
        return tools[self.step] if self.step < len(tools) else None

    def final_text(self) -> str:
        big = self.first("big")
        if big is not None:
            return _big_text(_int_arg(big))
        say = self.first("say")
        if say is not None:
            return say.arg or ""
        stream = self.stream
        if stream is not None:
            return _words(stream[0])
        return "done" if self.tools else "ok"

    def text_pieces(self, text: str) -> list[str]:
        """How the final text is cut into ``text_delta`` events."""
        stream = self.stream
        if stream is None:
            return _chunks(text)
        if self.first("big") is None and self.first("say") is None:
            return [w + " " for w in text.split(" ")[:-1]] + [text.rsplit(" ", 1)[-1]]
        return _pieces(text, stream[0])


def _words(n: int) -> str:
    """``w1 w2 … wN``: the default text of ``[[stream:N]]`` (one word per delta)."""
    return " ".join(f"w{i}" for i in range(1, n + 1))


def _pieces(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` pieces as even as possible (fewer when shorter than ``n``)."""
    if not text:
        return [text]
    n = min(n, len(text))
    size, extra = divmod(len(text), n)
    out: list[str] = []
    pos = 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        out.append(text[pos:end])
        pos = end
    return out


def _big_text(n: int) -> str:
    reps = n // len(_BIG_PATTERN) + 1
    return (_BIG_PATTERN * reps)[:n].decode("ascii")


# ---------------------------------------------------------------------------------------------
# Request inspection
# ---------------------------------------------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _is_user_text_message(msg: Any) -> bool:
    if not isinstance(msg, dict) or msg.get("role") != "user":
        return False
    blocks = _blocks(msg.get("content"))
    if any(b.get("type") == "tool_result" for b in blocks):
        return False
    return any(b.get("type") == "text" for b in blocks)


def _user_text(messages: list[Any]) -> tuple[str, str, int]:
    """Newest user prompt: (its directive text, its text without reminder blocks, step).

    When no assistant reply came between two prompts (an interrupted turn), the CLI merges the
    consecutive user messages into one; only its last own text block is the newest prompt, so
    directives are read from that block alone (else ``[[hang]]`` would outlive its interrupt).
    """
    for idx in range(len(messages) - 1, -1, -1):
        msg = messages[idx]
        if _is_user_text_message(msg):
            texts = [
                str(b.get("text", "")) for b in _blocks(msg["content"]) if b.get("type") == "text"
            ]
            own = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
            step = sum(
                1
                for m in messages[idx + 1 :]
                if isinstance(m, dict) and m.get("role") == "assistant"
            )
            newest = own[-1] if own else "\n".join(texts)
            return newest, "\n".join(own or texts), step
    return "", "", 0


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return ""


def _estimate_tokens(n_bytes: int) -> int:
    return max(1, n_bytes // 4)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _chunks(text: str, n: int = 3) -> list[str]:
    """Split ``text`` into about ``n`` pieces of at most ``_CHUNK_MAX`` characters."""
    if len(text) <= 1:
        return [text]
    size = min(_CHUNK_MAX, max(1, -(-len(text) // n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    default_type = "invalid_request_error" if status < 500 else "api_error"
    etype = _ERROR_TYPES.get(status, default_type)
    return {
        "type": "error",
        "error": {"type": etype, "message": message or f"scripted error {status} ({etype})"},
    }


class _CutConnection(Exception):
    """Raised inside a response to make uvicorn drop the connection mid-body."""


def _contains_cut(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    stack: list[BaseException] = [exc] if exc is not None else []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _CutConnection):
            return True
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                stack.append(nxt)
    return False


class _CutLogFilter(logging.Filter):
    """Drops uvicorn's 'Exception in ASGI application' record caused by a scripted cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _contains_cut(exc)


_CUT_FILTER = _CutLogFilter()


def _install_cut_filter() -> None:
    lg = logging.getLogger("uvicorn.error")
    if _CUT_FILTER not in lg.filters:
        lg.addFilter(_CUT_FILTER)


# ---------------------------------------------------------------------------------------------
# Response building
# ---------------------------------------------------------------------------------------------


@dataclass
class _Reply:
    blocks: list[dict[str, Any]]
    stop_reason: str
    summary: str


def _build_reply(script: Script) -> _Reply:
    blocks: list[dict[str, Any]] = []
    thinking = script.thinking
    if thinking is not None:
        blocks.append(
            {"type": "thinking", "thinking": thinking, "signature": "sig_" + uuid.uuid4().hex}
        )
    call = script.tool_call()
    if call is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": _new_id("toolu_"),
                "name": call.tool_name,
                "input": call.tool_input or {},
            }
        )
        return _Reply(blocks, "tool_use", f"tool_use:{call.tool_name}")
    blocks.append({"type": "text", "text": script.final_text()})
    return _Reply(blocks, "end_turn", "text")


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    return _estimate_tokens(len(json.dumps(blocks)))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _message_start(msg_id: str, model: str, input_tokens: int) -> bytes:
    return _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(input_tokens, 1),
            },
        },
    )


def _block_events(
    index: int, block: dict[str, Any], first: bool, script: Script | None = None
) -> Iterable[bytes]:
    btype = block["type"]
    if btype == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        pieces = script.text_pieces(block["text"]) if script else _chunks(block["text"])
        deltas = [{"type": "text_delta", "text": c} for c in pieces]
    elif btype == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": c} for c in _chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": c}
            for c in _chunks(json.dumps(block["input"]))
        ]
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": start},
    )
    if first:
        yield _sse("ping", {"type": "ping"})
    for delta in deltas:
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class ModelServer:
    """The scripted Messages API, served by uvicorn in a background daemon thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, record_bodies: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.record_bodies = record_bodies
        self._log: list[LogEntry] = []
        self._lock = threading.Lock()
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------

    def _config(self, log_config: Any = None) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            log_config=log_config,
            lifespan="off",
            http="h11",
            timeout_graceful_shutdown=1,
        )

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (see daemon.bind):
        # with Nagle, streamed SSE chunks to the CLI would wait for ACKs and skew every mode.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        return sock

    def start(self) -> ModelServer:
        """Start serving in a daemon thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("ModelServer already started")
        sock = self._bind()
        self._closing = False
        server = uvicorn.Server(self._config())
        _install_cut_filter()
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="model-server", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("model server thread exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("model server did not start within 10 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop the server (ends hanging responses) and wait for its thread."""
        self._closing = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._sock is not None:
            self._sock.close()
        self._thread = None
        self._server = None
        self._sock = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- log ----------------------------------------------------------------------------

    def log(self) -> list[LogEntry]:
        """A deep copy of the log, oldest first."""
        with self._lock:
            return copy.deepcopy(self._log)

    def main_requests(self) -> list[LogEntry]:
        """Log entries of the conversation's main model requests."""
        return [e for e in self.log() if e.get("main")]

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_for(
        self, predicate: Callable[[list[LogEntry]], bool], timeout: float = 10.0
    ) -> list[LogEntry]:
        """Poll the log until ``predicate(log)`` is true; return that log or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.log()
            if predicate(entries):
                return entries
            if time.monotonic() >= deadline:
                raise TimeoutError(f"model server log condition not met within {timeout} s")
            time.sleep(0.02)

    def _append(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    def _update(self, entry: LogEntry, **fields: Any) -> None:
        with self._lock:
            entry.update(fields)

    # -- app ----------------------------------------------------------------------------

    def _make_app(self) -> Starlette:
        routes = [
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            Route("/_log", self._log_endpoint, methods=["GET", "DELETE"]),
        ]
        app = Starlette(routes=routes)
        app.add_exception_handler(404, self._other)
        app.add_exception_handler(405, self._other)
        return app

    def _base_entry(self, request: Request, raw: bytes, kind: str) -> LogEntry:
        return {
            "t_wall": time.time(),
            "t_mono": time.monotonic(),
            "t_end_mono": None,
            "path": request.url.path,
            "method": request.method,
            "kind": kind,
            "status": None,
            "model": None,
            "stream": False,
            "max_tokens": None,
            "n_messages": 0,
            "n_tools": 0,
            "system_bytes": 0,
            "bytes": len(raw),
            "main": False,
            "subagent": False,
            "last_user_text": "",
            "directives": [],
            "markers": [],
            "step": 0,
            "reply": None,
        }

    async def _log_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear()
            return JSONResponse({"cleared": True})
        return JSONResponse(self.log())

    async def _other(self, request: Request, exc: Exception) -> Response:
        raw = await request.body()
        entry = self._base_entry(request, raw, "other")
        entry.update(status=404, reply="404", t_end_mono=time.monotonic())
        self._append(entry)
        return JSONResponse(
            _error_body(
                404, f"scripted model server: no route {request.method} {request.url.path}"
            ),
            status_code=404,
        )

    async def _count_tokens(self, request: Request) -> Response:
        raw = await request.body()
        entry = self._base_entry(request, raw, "count_tokens")
        body = _parse_json(raw)
        self._fill_request_fields(entry, body, "count_tokens")
        entry.update(status=200, reply="count_tokens", t_end_mono=time.monotonic())
        self._append(entry)
        return JSONResponse({"input_tokens": _estimate_tokens(len(raw))})

    def _fill_request_fields(self, entry: LogEntry, body: dict[str, Any], kind: str) -> Script:
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        tools = body.get("tools")
        n_tools = len(tools) if isinstance(tools, list) else 0
        text, own_text, step = _user_text(messages)
        directives = parse_directives(text)
        script = Script(directives, step)
        system_text = _system_text(body.get("system"))
        subagent = _SUBAGENT_MARK in system_text
        entry.update(
            main=kind == "messages" and n_tools > 0 and not subagent,
            subagent=subagent,
            model=body.get("model"),
            stream=bool(body.get("stream", False)),
            max_tokens=body.get("max_tokens"),
            n_messages=len(messages),
            n_tools=n_tools,
            system_bytes=len(system_text.encode()),
            last_user_text=own_text[:200],
            directives=[d.name for d in directives],
            markers=script.markers,
            step=step,
        )
        if self.record_bodies:
            entry["body"] = body
        return script

    async def _messages(self, request: Request) -> Response:
        raw = await request.body()
        entry = self._base_entry(request, raw, "messages")
        body = _parse_json(raw)
        script = self._fill_request_fields(entry, body, "messages")
        self._append(entry)

        model = str(body.get("model") or "claude-scripted")
        stream = entry["stream"]
        input_tokens = _estimate_tokens(len(raw))

        if script.delay_s:
            await asyncio.sleep(script.delay_s)

        status = script.error_status
        if status is not None:
            self._update(entry, status=status, reply=f"error:{status}", t_end_mono=time.monotonic())
            return JSONResponse(
                _error_body(status),
                status_code=status,
                headers={"request-id": _new_id("req_")},
            )

        if not stream:
            return await self._non_streaming(request, entry, script, model, input_tokens)

        msg_id = _new_id("msg_")
        self._update(entry, status=200)
        return StreamingResponse(
            self._stream(entry, script, msg_id, model, input_tokens),
            media_type="text/event-stream",
            headers={"request-id": _new_id("req_"), "cache-control": "no-cache"},
        )

    async def _sleep_until_closed(self, request: Request | None = None) -> None:
        while not self._closing:
            if request is not None and await request.is_disconnected():
                return
            await asyncio.sleep(0.05)

    async def _non_streaming(
        self, request: Request, entry: LogEntry, script: Script, model: str, input_tokens: int
    ) -> Response:
        if script.has("hang"):
            self._update(entry, reply="hang")
            await self._sleep_until_closed(request)
            self._update(entry, status=200)
            return _CutResponse()
        if script.has("cut"):
            self._update(entry, reply="cut", status=200)
            return _CutResponse()
        if script.stall_s:
            await asyncio.sleep(script.stall_s)
        reply = _build_reply(script)
        message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": reply.blocks,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": _usage(input_tokens, _output_tokens(reply.blocks)),
        }
        self._update(entry, status=200, reply=reply.summary, t_end_mono=time.monotonic())
        return JSONResponse(message, headers={"request-id": _new_id("req_")})

    async def _stream(
        self, entry: LogEntry, script: Script, msg_id: str, model: str, input_tokens: int
    ) -> AsyncIterator[bytes]:
        yield _message_start(msg_id, model, input_tokens)
        if script.has("hang"):
            self._update(entry, reply="hang")
            await self._sleep_until_closed()
            raise _CutConnection
        if script.has("cut"):
            self._update(entry, reply="cut")
            yield _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "partial answer, then the connec"},
                },
            )
            await asyncio.sleep(0.05)  # let the bytes reach the client before the drop
            raise _CutConnection
        if script.stall_s:
            await asyncio.sleep(script.stall_s)
        reply = _build_reply(script)
        stream = script.stream
        gap = stream[1] if stream is not None else 0.0
        for index, block in enumerate(reply.blocks):
            deltas = 0
            for event in _block_events(index, block, index == 0, script):
                if gap and block["type"] == "text" and event.startswith(b"event: content_block_d"):
                    if deltas:
                        await asyncio.sleep(gap)  # the model "writing": a gap between deltas
                    deltas += 1
                yield event
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": _output_tokens(reply.blocks)},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})
        self._update(entry, reply=reply.summary, t_end_mono=time.monotonic())


class _CutResponse(Response):
    """Starts a 200 JSON response, sends a fragment of it, then makes uvicorn drop the socket."""

    def __init__(self) -> None:
        super().__init__(media_type="application/json")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id":"msg_', "more_body": True})
        await asyncio.sleep(0.05)
        raise _CutConnection


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8766, show_default=True, type=int, help="Port (0: any free).")
@click.option("--record-bodies", is_flag=True, help="Keep every request JSON in GET /_log.")
def main(host: str, port: int, record_bodies: bool) -> None:
    """Run the scripted Anthropic Messages API stand-in (point ANTHROPIC_BASE_URL at it)."""
    ms = ModelServer(host, port, record_bodies=record_bodies)
    sock = ms._bind()
    # Listening before the address is printed: a client that reads it and connects at once was
    # refused while uvicorn was still starting (the entry-point test failed under load).
    sock.listen(128)
    server = uvicorn.Server(ms._config(log_config=uvicorn.config.LOGGING_CONFIG))
    _install_cut_filter()
    ms._server = server
    click.echo(f"hotsession model server on {ms.url} (GET {ms.url}/_log for the log)")
    try:
        server.run(sockets=[sock])
    finally:
        ms._closing = True
        sock.close()


if __name__ == "__main__":
    main()
