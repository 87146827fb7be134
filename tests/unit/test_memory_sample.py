"""Memory samples of agent processes and their children (``hotsession.memory``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hotsession import memory

# A parent that starts a child holding 40 MiB of its own (touched) memory, both then idle.
_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "b = bytearray(40 * 1024 * 1024)\\nfor i in range(0, len(b), 4096): b[i] = 1\\n"
    "print('ready', flush=True)\\nimport time; time.sleep(60)"], stdout=subprocess.PIPE)
print(child.pid, child.stdout.readline().decode().strip(), flush=True)
time.sleep(60)
"""


@pytest.fixture
def tree() -> Iterator[tuple[int, int]]:
    """(parent pid, child pid) of an idle process tree."""
    proc = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child, ready = proc.stdout.readline().split()
    assert ready == "ready"
    yield proc.pid, int(child)
    for pid in (int(child), proc.pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait()
    proc.stdout.close()


def test_a_processs_own_and_resident_memory_from_one_read() -> None:
    kb = memory._anon_rss_kb(os.getpid())
    assert kb is not None and 0 < kb[0] <= kb[1]
    assert memory._anon_rss_kb(2**22 + 12345) is None  # no such process


def test_sample_many_counts_the_children_whichever_way_it_finds_them(
    tree: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few processes against the machine's: each tree is walked on its own; many: one ppid map
    of the machine. Both count the child's 40 MiB with its parent."""
    parent, child = tree
    time.sleep(0.1)
    alone = memory.sample_many([parent], tree=False)[parent].anon_mb
    walked = memory.sample_many([parent])[parent].anon_mb
    monkeypatch.setattr(memory, "_process_count", lambda: 0)  # as if the pool were most of it
    mapped = memory.sample_many([parent])[parent].anon_mb
    assert walked >= alone + 39 and mapped >= alone + 39
    assert abs(walked - mapped) < 5
    assert memory.sample_many([2**22 + 12345]) == {}  # a process gone: no sample
