"""Tenant-private CLI flag values moved off the command line into files only the tenant can read.

Design
======
Linux shows every process's argv to every user (``ps``, ``/proc/<pid>/cmdline``), so a value on
an agent's command line is readable by every other tenant's agent, whatever its uid. Where the
Claude Code CLI accepts a file instead of a value, the value goes into a file and the argv
carries its path. Checked with CLI 2.1.330 (each one against the scripted model server):

=========================== =================================================================
``--system-prompt V``        ``--system-prompt-file PATH``
``--append-system-prompt V`` ``--append-system-prompt-file PATH``
``--mcp-config JSON…``       ``--mcp-config PATH…`` (each JSON value; a path stays a path)
``--settings JSON``          ``--settings PATH`` (the Bash sandbox's settings among them)
``--agents JSON``            ``--agents PATH`` (the CLI reads a file in print/stream-json mode)
=========================== =================================================================

The rewrite covers the whole argv, so the drop-in's pass-through flags (``extra_args``, in
either ``--flag value`` or ``--flag=value`` form) are moved too. Values with no file form stay
(docs/security.md lists them).

Where. ``<home>/.hotsession-args/`` of the tenant's account: the directory and every file belong
to that account, 0700 and 0600, inside a home that is 0700 too. The daemon (root) never follows
a link the account could plant there: the directory is opened with ``O_NOFOLLOW`` relative to the
home, files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to it (a name that exists
is unlinked first, so root never writes into an inode it did not make), then ``fchown``'d.

Lifetime. A file is named by the SHA-256 of its content, so the spares and sessions of one
profile (equal options: equal values) share one file; a count per name says how many live
processes use it and the last one's exit removes it. The supervisor calls the release when it
reaps the process (``Supervisor.spawn(on_exit=…)``), on every path: a failed start, a crash, a
normal close. Files the CLI reads only at start could go earlier, but the CLI may read its
settings again later, so they live as long as the process. A daemon that died by ``kill -9``
leaves its files: the next start (``prepare``) removes every file of that directory.

Only tenants with their own OS user get this: agents that run as the daemon's user (a
single-user install, ``shared_user``) could read such files as well as their argv, so their argv
is left as it was (and costs nothing more).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence

from hotsession.errors import AgentStartError

log = logging.getLogger(__name__)

DIR_NAME = ".hotsession-args"

# flag -> (the flag that takes a file, whether only JSON values move, file suffix)
_FILE_FORMS: dict[str, tuple[str, bool, str]] = {
    "--system-prompt": ("--system-prompt-file", False, ".txt"),
    "--append-system-prompt": ("--append-system-prompt-file", False, ".txt"),
    "--settings": ("--settings", True, ".json"),
    "--agents": ("--agents", True, ".json"),
    "--mcp-config": ("--mcp-config", True, ".json"),
}
_VARIADIC = frozenset({"--mcp-config"})  # values until the next option (commander's ``<x...>``)


def _is_json(value: str) -> bool:
    return value.lstrip()[:1] in ("{", "[")


def rewrite(argv: Sequence[str], store: Callable[[str, str], str]) -> list[str]:
    """``argv`` with each movable value replaced by ``store(value, suffix)`` (a path).

    Only values that are text (a prompt) or inline JSON move; a value that already is a path
    stays. The program name (``argv[0]``) is kept.
    """
    out = list(argv[:1])
    i = 1
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":  # the rest are operands
            out += argv[i - 1 :]
            break
        flag, eq, inline = tok.partition("=")
        form = _FILE_FORMS.get(flag) if flag.startswith("--") else None
        if form is None:
            out.append(tok)
            continue
        file_flag, json_only, suffix = form

        def moved(value: str, *, json_only: bool = json_only, suffix: str = suffix) -> str:
            return store(value, suffix) if not json_only or _is_json(value) else value

        if eq:
            value = inline
            target = file_flag if not json_only or _is_json(value) else flag
            out.append(f"{target}={moved(value)}")
            continue
        values: list[str] = []
        if flag in _VARIADIC:
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
        elif i < len(argv):
            values.append(argv[i])
            i += 1
        if not values:
            out.append(tok)
            continue
        if json_only:
            out.append(flag)
        else:
            out.append(file_flag)
        out += [moved(v) for v in values]
    return out


class ArgFiles:
    """The flag files of one tenant's account (see the module docstring)."""

    def __init__(self, home: str, *, uid: int, gid: int) -> None:
        self.home = home
        self.directory = os.path.join(home, DIR_NAME)
        self.uid = uid
        self.gid = gid
        self._users: dict[str, int] = {}  # file name -> live processes using it

    def prepare(self) -> None:
        """Create the directory (the account's, 0700) and remove files a dead daemon left."""
        fd = self._open_dir()
        try:
            stale = [n for n in os.listdir(fd) if not n.startswith(".")]
            for name in stale:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(name, dir_fd=fd)
            if stale:
                log.info("removed %d flag file(s) left in %s", len(stale), self.directory)
        finally:
            os.close(fd)

    def externalize(self, argv: Sequence[str]) -> tuple[list[str], Callable[[], None]]:
        """The argv with movable values in files, and the release to call when the process
        has exited (idempotent). Raises ``AgentStartError``; on an error no file stays counted."""
        names: list[str] = []
        try:
            fd = self._open_dir()
        except OSError as exc:
            msg = f"cannot use the flag file directory {self.directory}: {exc}"
            raise AgentStartError(msg) from exc

        def store(value: str, suffix: str) -> str:
            data = value.encode()
            name = hashlib.sha256(data).hexdigest()[:32] + suffix
            if self._users.get(name, 0) == 0:
                self._write(fd, name, data)
            self._users[name] = self._users.get(name, 0) + 1
            names.append(name)
            return os.path.join(self.directory, name)

        try:
            out = rewrite(argv, store)
        except OSError as exc:
            self._release(names)
            raise AgentStartError(f"cannot write a flag file in {self.directory}: {exc}") from exc
        except BaseException:
            self._release(names)
            raise
        finally:
            os.close(fd)
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._release(names)

        return out, release

    def live_files(self) -> dict[str, int]:
        """File name -> how many live processes use it."""
        return dict(self._users)

    def _release(self, names: list[str]) -> None:
        gone = []
        for name in names:
            left = self._users.get(name, 0) - 1
            if left > 0:
                self._users[name] = left
            else:
                self._users.pop(name, None)
                gone.append(name)
        if not gone:
            return
        try:
            fd = self._open_dir()
        except OSError as exc:
            log.warning("cannot remove flag files in %s: %s", self.directory, exc)
            return
        try:
            for name in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def _open_dir(self) -> int:
        """The directory, opened without following a link the account may have put there;
        created (the account's, 0700) when missing, tightened when open."""
        home = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                fd = os.open(DIR_NAME, flags, dir_fd=home)
            except FileNotFoundError:
                os.mkdir(DIR_NAME, 0o700, dir_fd=home)
                fd = os.open(DIR_NAME, flags, dir_fd=home)
        finally:
            os.close(home)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
            os.fchown(fd, self.uid, self.gid)
        if st.st_mode & 0o777 != 0o700:
            os.fchmod(fd, 0o700)
        return fd

    def _write(self, dir_fd: int, name: str, data: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            os.fchown(fd, self.uid, self.gid)
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
