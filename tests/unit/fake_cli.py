"""A tiny stand-in for the Claude Code CLI, for unit tests of the transport's edge cases.

Behaviour is chosen by the FAKE_MODE environment variable (see ``main``). It speaks the same
stream-json + control protocol as the real CLI, only as much of it as the tests need.
"""

import json
import os
import signal
import sys
import time

MODE = os.environ.get("FAKE_MODE", "normal")


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def result(text):
    out(
        {
            "type": "assistant",
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        }
    )
    out(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": text,
            "session_id": "fake",
        }
    )


def main():
    if MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "start_crash":
        sys.stderr.write("fatal: cannot start\n")
        sys.exit(7)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("type") == "control_request":
            req = msg["request"]
            if req["subtype"] == "initialize" and MODE == "nohandshake":
                continue
            if req["subtype"] != "initialize" and MODE == "deaf":
                continue
            out(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "success",
                        "request_id": msg["request_id"],
                        "response": {"pid": os.getpid()},
                    },
                }
            )
            continue
        if msg.get("type") == "control_response":
            resp = msg["response"]
            result("decision:" + json.dumps(resp.get("response") or resp.get("error")))
            continue
        if msg.get("type") != "user":
            continue
        prompt = msg["message"]["content"]
        if MODE == "noise":
            sys.stdout.write("[debug] not json\n\n")
            sys.stdout.flush()
        if MODE == "corrupt":
            sys.stdout.write('{"type": "assistant", broken\n')
            sys.stdout.flush()
        elif MODE == "bigline":
            out({"type": "assistant", "pad": "x" * int(os.environ.get("FAKE_BYTES", "2000000"))})
        elif MODE == "exit0":
            sys.exit(0)
        elif MODE == "permission":
            out(
                {
                    "type": "control_request",
                    "request_id": "perm-1",
                    "request": {
                        "subtype": "can_use_tool",
                        "tool_name": "Bash",
                        "input": {"command": prompt},
                    },
                }
            )
        elif MODE == "cancel_permission":
            out(
                {
                    "type": "control_request",
                    "request_id": "perm-2",
                    "request": {"subtype": "can_use_tool", "tool_name": "Bash", "input": {}},
                }
            )
            time.sleep(0.2)
            out({"type": "control_cancel_request", "request_id": "perm-2"})
            result("cancelled")
        elif MODE == "silent":
            pass
        else:
            result("echo:" + prompt)
    if MODE == "stubborn":
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
