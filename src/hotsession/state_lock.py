"""The state directory's lock: one hotsession (daemon or library) per state directory.

Design
======
Everything a hotsession instance keeps lives in its state directory: the registry, the token,
``daemon.json`` and the records of its child processes. Two instances on one directory would share
the registry, and the second one's start-up sweep would take the first one's agents for orphans
and SIGKILL them. So the first thing an instance does is take an exclusive ``flock`` on
``<state_dir>/lock`` and hold it for its life; a second instance (another process, or another
``Hotsession`` in the same process: ``flock`` locks belong to the open file, not the process)
fails at once with :class:`~hotsession.errors.StateDirBusy`, naming the holder's pid.

The kernel drops the lock when its holder dies, however it dies (``kill -9`` included), so holding
the lock *proves* that every earlier instance on this directory is gone: only then may the start-up
sweep treat recorded processes as orphans. The lock file stays in place (deleting it would race
with a newcomer that already opened it); it holds the holder's pid as text, for the message.

Hand-written on ``fcntl`` rather than the ``filelock`` package: the message needs the holder's pid
written next to the lock, and this is all of it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from hotsession.errors import StateDirBusy

LOCK_FILE = "lock"


class StateLock:
    """An exclusive lock on a state directory, held until :meth:`release`."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str | os.PathLike[str]) -> StateLock:
        """Take the lock (creating the directory); raise ``StateDirBusy`` if another holds it."""
        path = Path(state_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            shown = "?" if holder is None else str(holder)
            raise StateDirBusy(
                f"another hotsession, pid {shown}, uses {path}", pid=holder, state_dir=str(path)
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._fd is not None

    def release(self) -> None:
        """Let the next instance in (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _holder(fd: int) -> int | None:
    """The pid the holder wrote; it writes it just after locking, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
