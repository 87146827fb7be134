"""The one fake Claude Code CLI of the unit tests (a test instrument, not a product): the
transport's edge cases (``tests/unit/test_agent.py``) and the pool's logic at scale.

A real, tiny process speaking the CLI's stream-json + control protocol: it answers
``initialize`` (and any other control request with an empty success), and answers each user
prompt with ``system/init``, one ``assistant`` message and a ``result``. It starts in a few
milliseconds (run it with ``python -S``; it imports only the standard library), so a test can run
hundreds of them on a small machine.

Conversation state is real enough for recycling tests: with ``FAKE_AGENT_DIR`` set, every prompt
is appended to ``<dir>/<session id>.jsonl`` and ``--resume <id>`` reads it back, so ``num_turns``
in the result counts the whole conversation (it keeps growing across a recycle).

Behaviour switches (environment of the process):

* ``FAKE_AGENT_STARTUP_DELAY_MS`` — sleep before reading stdin (a slow cold start).
* ``FAKE_AGENT_EXIT=<code>`` — exit at once with that code (writes a line to stderr first).
* ``FAKE_AGENT_BALLAST_MB`` — hold that much anonymous memory from the start.
* ``FAKE_AGENT_STRAY=1`` — write an unsolicited message right after ``initialize``;
  ``FAKE_AGENT_STRAY_AFTER_MS=N`` — write one N ms after ``initialize`` instead.
* ``FAKE_AGENT_FAIL_CONTROL=<subtype>[,<subtype>...]`` — answer those control requests with an
  error; ``FAKE_AGENT_IGNORE_CONTROL=...`` — never answer them.

Like the CLI, ``set_model`` and ``set_permission_mode`` change the model and mode (from
``--model`` / ``--permission-mode``) that each turn's ``system/init`` reports, and a mode change
writes a ``system/status`` message after its answer.

* ``FAKE_AGENT_STUBBORN=1`` — ignore SIGTERM and stay alive after stdin closes (a CLI in the
  middle of a turn): only SIGKILL ends it.

Prompt directives: ``[[crash]]`` (exit 3 mid-turn), ``[[exit:N]]`` (exit with code N mid-turn),
``[[grow:MB]]`` (allocate and keep MB more memory), ``[[say:TEXT]]`` (the reply text; default:
``echo: <prompt>``), ``[[silent]]`` (no answer at all), ``[[noise]]`` (a non-JSON line first),
``[[corrupt]]`` (a broken JSON line), ``[[bigline:N]]`` (an assistant message padded with N
bytes), ``[[ask:TOOL]]`` (a ``can_use_tool`` control request for TOOL with the prompt as its
command; the turn ends when the answer comes, with the result ``decision:<answer JSON>``),
``[[ask-withdrawn]]`` (a ``can_use_tool`` request withdrawn 0.2 s later with
``control_cancel_request``; the result is ``cancelled``), ``[[linger:S]]`` (start a ``sleep S``
in the agent's process group holding only its stderr, as a tool subprocess that outlives a killed
CLI does: the agent's death then shows on stdout and stdin before its stderr closes),
``[[stream:N]]`` (N ``stream_event`` token deltas ``d0`` … in the CLI's key order, one write each,
before the assistant message), ``[[split]]`` (the assistant message's line written in three
pieces 50 ms apart).

``write_launcher(path)`` writes an executable copy of this file with a ``python -S`` shebang, to
use as ``Config.cli_path``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

_BALLAST: list[bytearray] = []


def _out(obj: dict) -> None:  # type: ignore[type-arg]
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _grow(mb: float) -> None:
    if mb > 0:
        block = bytearray(int(mb * 1024 * 1024))
        for i in range(0, len(block), 4096):  # touch every page so it is resident
            block[i] = 1
        _BALLAST.append(block)


def _arg(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _turn(session_id: str, text: str, turns: int, model: str | None, mode: str) -> None:
    init = {"type": "system", "subtype": "init", "session_id": session_id}
    _out({**init, "model": model, "permissionMode": mode})
    _out(
        {
            "type": "assistant",
            "session_id": session_id,
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        }
    )
    _out(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": text,
            "session_id": session_id,
            "num_turns": turns,
            "usage": {},
        }
    )


def _ask(request_id: str, tool: str, command: str) -> None:
    request = {"subtype": "can_use_tool", "tool_name": tool, "input": {"command": command}}
    _out({"type": "control_request", "request_id": request_id, "request": request})


def main(argv: list[str]) -> int:
    """Run the fake agent until stdin closes."""
    if os.environ.get("FAKE_AGENT_STUBBORN"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = _serve(argv)
    while os.environ.get("FAKE_AGENT_STUBBORN"):
        time.sleep(1)
    return code


def _serve(argv: list[str]) -> int:
    if os.environ.get("FAKE_AGENT_EXIT"):
        sys.stderr.write("fake agent: configured to fail at start-up\n")
        return int(os.environ["FAKE_AGENT_EXIT"])
    delay = float(os.environ.get("FAKE_AGENT_STARTUP_DELAY_MS") or 0)
    if delay:
        time.sleep(delay / 1000)
    _grow(float(os.environ.get("FAKE_AGENT_BALLAST_MB") or 0))
    resume = _arg(argv, "--resume")
    session_id = resume or _arg(argv, "--session-id") or "fake-session"
    store = os.environ.get("FAKE_AGENT_DIR")
    path = os.path.join(store, session_id + ".jsonl") if store else None
    model = _arg(argv, "--model")
    mode = _arg(argv, "--permission-mode") or "default"
    failing = set(filter(None, (os.environ.get("FAKE_AGENT_FAIL_CONTROL") or "").split(",")))
    ignored = set(filter(None, (os.environ.get("FAKE_AGENT_IGNORE_CONTROL") or "").split(",")))
    turns = 0
    asked: dict[str, str] = {}  # request id of a can_use_tool request -> the prompt that asked
    if resume and path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            turns = sum(1 for _ in f)
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        kind = msg.get("type")
        if kind == "control_request":
            req = msg.get("request") or {}
            subtype = req.get("subtype")
            if subtype in ignored:
                continue
            if subtype in failing:
                error = {"subtype": "error", "request_id": msg.get("request_id"), "error": "no"}
                _out({"type": "control_response", "response": error})
                continue
            response: dict = {}  # type: ignore[type-arg]
            changed = subtype == "set_permission_mode" and req.get("mode") != mode
            if subtype == "initialize":
                response = {"commands": [], "models": [], "pid": os.getpid()}
            elif subtype == "set_model":
                model = req.get("model")
                response = {"model": model}
            elif subtype == "set_permission_mode":
                mode = str(req.get("mode"))
                response = {"mode": mode}
            _out(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "success",
                        "request_id": msg.get("request_id"),
                        "response": response,
                    },
                }
            )
            if changed:
                _out(
                    {"type": "system", "subtype": "status", "status": None, "permissionMode": mode}
                )
            if req.get("subtype") == "initialize" and os.environ.get("FAKE_AGENT_STRAY"):
                _out({"type": "system", "subtype": "stray", "session_id": session_id})
            later = float(os.environ.get("FAKE_AGENT_STRAY_AFTER_MS") or 0)
            if req.get("subtype") == "initialize" and later:
                import threading

                stray = {"type": "system", "subtype": "stray", "session_id": session_id}
                threading.Timer(later / 1000, _out, (stray,)).start()
            continue
        if kind == "control_response":  # an answer to one of our can_use_tool requests
            resp = msg.get("response") or {}
            if asked.pop(str(resp.get("request_id")), None) is not None:
                decision = json.dumps(resp.get("response") or resp.get("error"))
                _turn(session_id, "decision:" + decision, turns, model, mode)
            continue
        if kind != "user":
            continue
        content = (msg.get("message") or {}).get("content")
        prompt = content if isinstance(content, str) else json.dumps(content)
        if "[[crash]]" in prompt:
            sys.stderr.write("fake agent: crashed on request\n")
            return 3
        exit_code = re.search(r"\[\[exit:(\d+)\]\]", prompt)
        if exit_code:
            return int(exit_code.group(1))
        for mb in re.findall(r"\[\[grow:(\d+(?:\.\d+)?)\]\]", prompt):
            _grow(float(mb))
        linger = re.search(r"\[\[linger:(\d+(?:\.\d+)?)\]\]", prompt)
        if linger:
            import subprocess

            devnull = subprocess.DEVNULL
            subprocess.Popen(["sleep", linger.group(1)], stdin=devnull, stdout=devnull)
        turns += 1
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"prompt": prompt}) + "\n")
        if "[[silent]]" in prompt:
            continue
        if "[[noise]]" in prompt:
            sys.stdout.write("[debug] not json\n\n")
        if "[[corrupt]]" in prompt:
            sys.stdout.write('{"type": "assistant", broken\n')
            sys.stdout.flush()
            continue
        big = re.search(r"\[\[bigline:(\d+)\]\]", prompt)
        if big:
            _out({"type": "assistant", "session_id": session_id, "pad": "x" * int(big.group(1))})
            continue
        tool = re.search(r"\[\[ask:(\w+)\]\]", prompt)
        if tool:
            request_id = f"perm-{turns}"
            asked[request_id] = prompt
            _ask(request_id, tool.group(1), prompt)
            continue
        if "[[ask-withdrawn]]" in prompt:
            request_id = f"perm-{turns}"
            _ask(request_id, "Bash", prompt)
            time.sleep(0.2)
            _out({"type": "control_cancel_request", "request_id": request_id})
            _turn(session_id, "cancelled", turns, model, mode)
            continue
        deltas = re.search(r"\[\[stream:(\d+)\]\]", prompt)
        for i in range(int(deltas.group(1)) if deltas else 0):
            delta = {"type": "content_block_delta", "index": 0}
            delta["delta"] = {"type": "text_delta", "text": f"d{i}"}
            _out({"type": "stream_event", "event": delta, "session_id": session_id})
        if "[[split]]" in prompt:
            line = json.dumps({"type": "assistant", "session_id": session_id, "split": True})
            for piece in (line[:5], line[5:20], line[20:] + "\n"):
                sys.stdout.write(piece)
                sys.stdout.flush()
                time.sleep(0.05)
        said = re.search(r"\[\[say:(.*?)\]\]", prompt)
        _turn(session_id, said.group(1) if said else "echo: " + prompt, turns, model, mode)
    return 0


def write_launcher(path: str | os.PathLike[str], python: str | None = None) -> str:
    """Write an executable fake CLI at ``path`` (this file behind a ``python -S`` shebang)."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    target = os.fspath(path)
    with open(target, "w", encoding="utf-8") as f:
        f.write(f"#!{python or sys.executable} -S\n{source}")
    os.chmod(target, 0o755)
    return target


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
