"""The Claude Code CLI's command line, read the way the CLI reads it (commander.js rules).

The drop-in must accept every flag the CLI accepts and reject nothing itself: a flag it does not
interpret is passed to the CLI verbatim, in order, with its value. What it interprets are the
flags that decide how a connection is served (I/O formats, the prompt, the session flags, model
and permission mode). Anything it cannot serve the CLI's way (help, sub-commands, an interactive
session, a value the CLI would refuse) is not guessed at: ``exec_reason`` says so, and the shim
runs the real CLI with the same argv, which answers as only it can (its message, its exit code).

Arity table. Taken from ``claude --help`` of CLI 2.1.330 plus the hidden options the Agent SDKs
pass (``--max-turns``, ``--permission-prompt-tool``, ``--resume-session-at``, ...). ``0``: a
switch, ``1``: one value (the next token, whatever it is), ``?``: an optional value (the next
token unless it starts with ``-``), ``+``: values until the next option. An option not in the
table takes the next token as its value unless that starts with ``-`` (the SDKs' ``extra_args``
form); ``--flag=value`` is always one token.
"""

from __future__ import annotations

import dataclasses

ARITY: dict[str, str] = {
    "--add-dir": "+", "--agent": "1", "--agents": "1", "--allow-dangerously-skip-permissions": "0",
    "--allowedTools": "+", "--allowed-tools": "+", "--append-system-prompt": "1",
    "--append-system-prompt-file": "1", "--autocompact": "1", "--ax-screen-reader": "0",
    "--bg": "0", "--background": "0", "--bare": "0", "--betas": "+", "--brief": "0",
    "--chrome": "0", "--cloud": "?", "-c": "0", "--continue": "0",
    "--dangerously-skip-permissions": "0", "-d": "?", "--debug": "?", "--debug-file": "1",
    "--desktop": "0", "--disable-slash-commands": "0", "--disallowedTools": "+",
    "--disallowed-tools": "+", "--effort": "1", "--environment": "1",
    "--exclude-dynamic-system-prompt-sections": "0", "--fallback-model": "1", "--file": "+",
    "--fork-session": "0", "--forward-subagent-text": "0", "--from-pr": "?", "-h": "0",
    "--help": "0", "--ide": "0", "--include-hook-events": "0", "--include-partial-messages": "0",
    "--input-format": "1", "--json-schema": "1", "--max-budget-usd": "1", "--mcp-config": "+",
    "--model": "1", "-n": "1", "--name": "1", "--no-chrome": "0",
    "--no-session-persistence": "0", "--output-format": "1", "--permission-mode": "1",
    "--permission-prompts": "1", "--plugin-dir": "1", "--plugin-url": "1", "-p": "0",
    "--print": "0", "--prompt-suggestions": "?", "--remote-control": "?",
    "--remote-control-session-name-prefix": "1", "--replay-user-messages": "0",
    "--restricted": "0", "-r": "?", "--resume": "?", "--safe-mode": "0", "--session-id": "1",
    "--setting-sources": "1", "--settings": "1", "--strict-mcp-config": "0",
    "--system-prompt": "1", "--system-prompt-file": "1", "--system-prompt-snapshot": "1",
    "--teleport": "?", "--tmux": "0", "--tools": "+", "--verbose": "0", "-v": "0",
    "--version": "0", "-w": "?", "--worktree": "?",
    # hidden, passed by the Agent SDKs
    "--max-turns": "1", "--permission-prompt-tool": "1", "--resume-session-at": "1",
    "--resume-drops-turn": "1", "--thinking": "1", "--thinking-display": "1",
    "--max-thinking-tokens": "1", "--task-budget": "1", "--session-mirror": "0",
    "--mcp-debug": "0",
}  # fmt: skip

ALIASES = {
    "-p": "--print", "-c": "--continue", "-r": "--resume", "-d": "--debug", "-h": "--help",
    "-v": "--version", "-n": "--name", "-w": "--worktree", "--allowed-tools": "--allowedTools",
    "--disallowed-tools": "--disallowedTools", "--background": "--bg",
}  # fmt: skip

COMMANDS = frozenset(
    {
        "agents", "attach", "auth", "auto-mode", "config", "doctor", "gateway", "import",
        "install", "logs", "mcp", "plugin", "plugins", "purge", "respawn", "rm", "setup-token",
        "stop", "kill", "ultrareview", "update", "upgrade", "migrate-installer",
    }
)  # fmt: skip

OUTPUT_FORMATS = ("text", "json", "stream-json")
INPUT_FORMATS = ("text", "stream-json")
# Flags that start a run the drop-in does not serve hot (the CLI runs them itself).
_EXEC_FLAGS = {
    "--help": "help",
    "--resume-session-at": "--resume-session-at",
    "--bg": "--bg",
    "--cloud": "--cloud",
    "--teleport": "--teleport",
    "--desktop": "--desktop",
    "--from-pr": "--from-pr",
    "--remote-control": "--remote-control",
    "--worktree": "--worktree",
    "--tmux": "--tmux",
    "--ide": "--ide",
}


@dataclasses.dataclass
class Invocation:
    """What a command line asks for."""

    argv: list[str]
    print_mode: bool = False
    output_format: str = "text"
    input_format: str = "text"
    verbose: bool = False
    prompt: str | None = None
    version: bool = False
    resume: str | None = None
    continue_: bool = False
    session_id: str | None = None
    fork: bool = False
    model: str | None = None
    permission_mode: str | None = None
    permission_prompt_tool: str | None = None
    passthrough: list[str] = dataclasses.field(default_factory=list)
    exec_reason: str | None = None

    @property
    def streaming_input(self) -> bool:
        """Many turns on one stdin, with the control protocol (the SDKs' mode)."""
        return self.input_format == "stream-json"


def parse(argv: list[str]) -> Invocation:
    """Read ``argv`` (without the program name)."""
    inv = Invocation(argv=list(argv))
    positionals: list[str] = []
    i = 0
    only_positionals = False
    resume_flag = False
    while i < len(argv):
        tok = argv[i]
        i += 1
        if only_positionals or not tok.startswith("-") or tok == "-":
            positionals.append(tok)
            continue
        if tok == "--":
            only_positionals = True
            continue
        inline: str | None
        if not tok.startswith("--") and len(tok) > 2:
            if tok[:2] in ARITY and ARITY[tok[:2]] != "0":
                name, inline = tok[:2], tok[2:]  # -rVALUE
            else:
                inv.exec_reason = inv.exec_reason or f"combined short options {tok}"
                continue
        else:
            name, eq, value = tok.partition("=")
            inline = value if eq else None
        arity = ARITY.get(name)
        values: list[str] = []
        if inline is not None:
            values.append(inline)
            if arity == "0":
                inv.exec_reason = inv.exec_reason or f"{name} takes no value"
        elif arity == "1":
            if i < len(argv):
                values.append(argv[i])
                i += 1
            else:
                inv.exec_reason = inv.exec_reason or f"{name} needs a value"
        elif arity in ("?", None):
            if i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
        elif arity == "+":
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
        tokens = argv[i - len(values) - (1 if inline is None else 0) : i]
        if inline is not None:
            tokens = [tok]
        _apply(inv, ALIASES.get(name, name), values, tokens)
        if ALIASES.get(name, name) == "--resume" and not values:
            resume_flag = True
    if positionals:
        if positionals[0] in COMMANDS:
            inv.exec_reason = inv.exec_reason or f"the {positionals[0]!r} command"
        elif len(positionals) > 1:
            inv.exec_reason = inv.exec_reason or "more than one prompt argument"
        else:
            inv.prompt = positionals[0]
    _check(inv, resume_flag)
    return inv


def _apply(inv: Invocation, name: str, values: list[str], tokens: list[str]) -> None:
    value = values[0] if values else None
    if name in _EXEC_FLAGS:
        inv.exec_reason = inv.exec_reason or _EXEC_FLAGS[name]
    elif name == "--version":
        inv.version = True
    elif name == "--print":
        inv.print_mode = True
    elif name == "--output-format" and value is not None:
        inv.output_format = value
    elif name == "--input-format" and value is not None:
        inv.input_format = value
    elif name == "--verbose":
        inv.verbose = True  # hotsession's processes always run with it
    elif name == "--resume":
        inv.resume = value
    elif name == "--continue":
        inv.continue_ = True
    elif name == "--session-id":
        inv.session_id = value
    elif name == "--fork-session":
        inv.fork = True
    elif name == "--model":
        inv.model = value
    elif name == "--permission-mode":
        inv.permission_mode = value
    elif name == "--permission-prompt-tool":
        inv.permission_prompt_tool = value
    else:
        inv.passthrough += tokens


def _check(inv: Invocation, resume_flag: bool) -> None:
    """What the CLI would refuse, or run in a way the drop-in does not serve, goes to the CLI."""
    if inv.exec_reason or inv.version:
        return
    if inv.output_format not in OUTPUT_FORMATS:
        inv.exec_reason = f"--output-format {inv.output_format}"
    elif inv.input_format not in INPUT_FORMATS:
        inv.exec_reason = f"--input-format {inv.input_format}"
    elif not inv.print_mode and not inv.streaming_input:
        inv.exec_reason = "an interactive session"
    elif inv.streaming_input and inv.output_format != "stream-json":
        inv.exec_reason = "--input-format stream-json without --output-format stream-json"
    elif inv.output_format == "stream-json" and not inv.verbose:
        inv.exec_reason = "--output-format stream-json without --verbose"
    elif resume_flag:
        inv.exec_reason = "--resume without a session id (the session picker)"
    elif inv.session_id is not None and (inv.resume or inv.continue_) and not inv.fork:
        inv.exec_reason = "--session-id with --resume or --continue needs --fork-session"
    elif inv.resume and inv.continue_:
        inv.exec_reason = "--resume with --continue"
