"""The drop-in's reading of the Claude Code command line (``hotsession.dropin.argv``) and the
shim's hand-made JSON and URL readers (``hotsession.dropin.shim``)."""

from __future__ import annotations

import json

import pytest

from hotsession.dropin import wire
from hotsession.dropin.argv import parse
from hotsession.dropin.shim import _url_of, decode, encode

SDK_ARGV = [
    "--output-format", "stream-json", "--verbose", "--system-prompt", "",
    "--allowedTools", "Read,Grep", "--max-turns", "3", "--model", "sonnet",
    "--permission-prompt-tool", "stdio", "--permission-mode", "acceptEdits",
    "--resume=0f0e0d0c-0000-4000-8000-000000000000", "--mcp-config", '{"mcpServers": {}}',
    "--setting-sources=project", "--some-future-flag", "v", "--input-format", "stream-json",
]  # fmt: skip


def test_the_python_sdks_argv() -> None:
    inv = parse(SDK_ARGV)
    assert inv.exec_reason is None and inv.streaming_input and inv.verbose
    assert (inv.model, inv.permission_mode, inv.permission_prompt_tool) == (
        "sonnet", "acceptEdits", "stdio",
    )  # fmt: skip
    assert inv.resume == "0f0e0d0c-0000-4000-8000-000000000000"
    # Everything else goes to the CLI verbatim and in order, an unknown flag with its value.
    assert inv.passthrough == [
        "--system-prompt", "", "--allowedTools", "Read,Grep", "--max-turns", "3",
        "--mcp-config", '{"mcpServers": {}}', "--setting-sources=project",
        "--some-future-flag", "v",
    ]  # fmt: skip


def test_print_mode_prompt_and_values() -> None:
    inv = parse(["-p", "hello there", "--output-format", "json", "-r", "abc"])
    assert (inv.print_mode, inv.prompt, inv.output_format, inv.resume) == (
        True, "hello there", "json", "abc",
    )  # fmt: skip
    # A variadic option takes the tokens up to the next option, as the CLI's parser does.
    inv = parse(["-p", "--add-dir", "a", "b", "--model", "m", "the prompt"])
    assert inv.passthrough == ["--add-dir", "a", "b"] and inv.prompt == "the prompt"
    assert parse(["--", "-p"]).prompt == "-p"


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--help"], "help"),
        (["mcp", "list"], "command"),
        ([], "interactive"),
        (["-p", "x", "--output-format", "yaml"], "--output-format yaml"),
        (["-p", "x", "--output-format", "stream-json"], "without --verbose"),
        (["-p", "x", "--resume", "a", "--session-id", "b"], "--fork-session"),
        (["-p", "x", "--resume-session-at", "u"], "--resume-session-at"),
        (["-p", "--resume"], "picker"),
        (["-pc"], "combined"),
        (["-p", "a", "b"], "more than one prompt"),
    ],
)
def test_what_goes_to_the_real_cli(argv: list[str], reason: str) -> None:
    inv = parse(argv)
    assert inv.exec_reason is not None and reason in inv.exec_reason


def test_version() -> None:
    assert parse(["-v"]).version and parse(["--version"]).version


def test_hand_made_json() -> None:
    value = {
        "argv": ["-p", 'é "q"\n\x00', ""],
        "env": {"A": "b"},
        "tty": False,
        "pid": 7,
        "n": None,
    }
    assert json.loads(encode(value)) == value
    assert _url_of('{"pid": 1, "url": "http://[::1]:8765", "host": "::1"}') == "http://[::1]:8765"
    assert _url_of('{"pid": 1}') is None


def test_hand_made_json_reader() -> None:
    for text in [
        '{"ready": {"session": "hs_1", "starting": true}}',
        ' {"exit": 3}\n',
        '[1, -2.5e3, null, "\\u00e9"]',
    ]:
        assert decode(text) == json.loads(text)
        assert decode(text.encode()) == json.loads(text)
    for bad in ["", "{", '{"a": 1} x', "nope"]:
        with pytest.raises(ValueError):
            decode(bad)


def test_shim_imports_neither_json_nor_re() -> None:
    """The shim's start-up (paid on every call of hotsession-claude) loads no ``json``/``re``."""
    import subprocess
    import sys

    code = (
        "import sys, hotsession.dropin.shim as s; s.decode('[0]'); "
        "print(sorted(m for m in ('json', 're', 'typing', 'importlib', 'socket', 'threading') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_ip_literals_and_localhost_connect_without_the_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``getaddrinfo``'s first call costs the shim 6-20 ms even for a literal (measured)."""

    def refuse(*args: object) -> None:
        raise AssertionError(f"getaddrinfo{args}")

    monkeypatch.setattr(wire._socket, "getaddrinfo", refuse)
    assert wire._candidates("127.0.0.1", 80) == [(wire._socket.AF_INET, ("127.0.0.1", 80))]
    assert wire._candidates("::1", 80) == [(wire._socket.AF_INET6, ("::1", 80))]
    assert [a for _, a in wire._candidates("LocalHost", 8)] == [("127.0.0.1", 8), ("::1", 8)]
    with pytest.raises(AssertionError):
        wire._candidates("example.invalid", 80)
