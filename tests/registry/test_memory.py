"""MemoryRegistry specifics: its fault injection."""

from __future__ import annotations

import pytest
from regtools import event, seqs, session

from hotsession.errors import RegistryError
from hotsession.registry import MemoryRegistry


async def test_memory_fault_injection_keeps_events_until_repaired() -> None:
    reg = MemoryRegistry()
    await reg.open()
    reg.broken = True
    with pytest.raises(RegistryError):
        await reg.put_session(session("s1"))
    reg.add_events([event("s1", 1), event("s1", 2)])
    with pytest.raises(RegistryError):
        await reg.flush()
    assert seqs(await reg.events_after("s1", 0)) == [1, 2]
    reg.broken = False
    await reg.flush()
    await reg.put_session(session("s1"))
    assert seqs(await reg.events_after("s1", 0)) == [1, 2]
    await reg.close()
