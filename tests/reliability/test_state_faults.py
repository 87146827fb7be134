"""Faults of the state directory: a disk that fills up, a database locked by another process.

While the store cannot be written, the turn in flight still completes (its events stay in
memory, in order, and replay from there); the failure is then reported: new prompts and new
sessions get ``RegistryError`` (code ``registry_error``, HTTP 503) and no process is left behind.
When the fault clears, the next prompt is accepted, every event is written, and
``PRAGMA integrity_check`` says ``ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import wait_until
from tests.reliability.conftest import make_config

from hotsession import Config, Hotsession
from hotsession.errors import RegistryError
from hotsession.events import Event
from hotsession.registry.sqlite import SqliteRegistry
from hotsession.testing.faults import Conversation, Ledger, context_size, new_marker, outcome
from hotsession.testing.model_server import ModelServer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the state directory (needs root, as in CI)."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


class Locker:
    """Another process holding the database's write lock until released."""

    def __init__(self, db: Path) -> None:
        code = (
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


async def send_when_accepted(conv: Conversation, prompt: str, timeout: float = 15.0) -> list[Event]:
    """Send ``prompt``, retrying while the engine refuses it with ``registry_error``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            turn = conv.session.send(prompt)
        except RegistryError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        return await conv.collect(turn)


async def state_fault_loop(
    config: Config,
    registry: SqliteRegistry,
    server: ModelServer,
    ledger: Ledger,
    workdir: Path,
    *,
    fault: str,
    how: str,
    n: int,
    start: Callable[[], Awaitable[Callable[[], None]]],
    during: str,
) -> None:
    tally = ledger.tally(fault, how)
    async with Hotsession(config, registry=registry) as hs:
        conv = Conversation(await hs.open(workdir), server)
        bystander = Conversation(await hs.open(workdir), server)
        before = await conv.probe("first")
        for i in range(n):
            stop = await start()
            tally.injected += 1
            # The turn in flight is not held up by the store: it completes.
            events = await conv.turn(during)
            assert events[-1].type == "result", events[-1].data
            # the engine notices at the turn's first write (its end: flush and turn record)
            await wait_until(lambda: hs.registry_failure is not None, timeout=10)
            # Then the failure is reported: no new prompts, no new sessions (and no leak).
            with pytest.raises(RegistryError) as refused:
                bystander.session.send("[[say:refused]]")
            tally.client_saw[f"error:{refused.value.code}"] += 1
            children = len(hs.supervisor.children)
            with pytest.raises(RegistryError) as info:
                await hs.open(workdir)
            assert info.value.code == "registry_error" and info.value.status == 503
            assert len(hs.sessions) == 2 and len(hs.supervisor.children) == children
            assert await conv.lost() == 0  # replay still has everything (from memory)
            stop()
            # Recovers once the fault clears: prompts are accepted again, with full context.
            m = new_marker()
            events = await send_when_accepted(conv, f"[[marker:{m}]] [[say:back-{i}]]")
            after = context_size(server, m)
            tally.client_saw[outcome(events[-1])] += 1
            by_events = await bystander.turn("[[say:bystander]]")
            if events[-1].type == "result" and after > before and by_events[-1].type == "result":
                tally.recovered += 1
            before = max(before, after)
        await hs.registry.flush()
        lost = await conv.lost() + await bystander.lost()
    with sqlite3.connect(config.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    async with Hotsession(config) as again:
        lost += await conv.lost(again.get(conv.session.id))
        lost += await bystander.lost(again.get(bystander.session.id))
    tally.lost += lost
    assert tally.recovered == tally.injected == n
    assert lost == 0


async def test_disk_full(
    tmp_path: Path,
    agent_env: dict[str, str],
    small_disk: Path,
    model_server: ModelServer,
    ledger: Ledger,
    workdir: Path,
):
    config = make_config(tmp_path, state_dir=small_disk)

    async def start() -> Callable[[], None]:
        filler = fill(small_disk)
        return filler.unlink

    await state_fault_loop(
        config,
        SqliteRegistry(config.db_path),
        model_server,
        ledger,
        workdir,
        fault="state disk full",
        how="16 MiB tmpfs filled by another file; a turn then writes ~1 MB of events",
        n=4,
        start=start,
        during="[[big:300000]]",
    )


async def test_database_locked(
    tmp_path: Path, agent_env: dict[str, str], model_server: ModelServer, ledger: Ledger, workdir
):
    config = make_config(tmp_path)

    async def start() -> Callable[[], None]:
        return Locker(config.db_path).release

    await state_fault_loop(
        config,
        SqliteRegistry(config.db_path, busy_timeout=0.2),
        model_server,
        ledger,
        workdir,
        fault="database locked by another process",
        how="another process holds `BEGIN EXCLUSIVE`; busy_timeout 0.2 s",
        n=5,
        start=start,
        during="[[say:during]]",
    )
