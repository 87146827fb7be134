"""The events a SQL registry was given and has not written yet (SQLite's and Postgres's).

``add_events`` must never block a turn, so events wait here and the registry's writer (SQLite's
thread, Postgres's flush task) commits them in batches: once the oldest has waited
``flush_interval`` seconds, or as soon as ``BATCH_MAX`` are pending. A batch that fails to commit
is kept, in order, and written first next time, after a backoff that doubles from
``flush_interval`` up to ``MAX_RETRY_DELAY``. Fenced events the store refused (their epoch is
stale) are counted until the next ``flush`` reports them.

Threads: ``add``, ``next_timeout`` and ``unwritten`` may run beside the writer (the pending list
is locked); the rest is the writer's (SQLite: whoever holds its connection's lock, the
registry's thread or an inline write on the event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Final

from hotsession.registry.records import EventRecord

log = logging.getLogger(__name__)

#: Pending events that trigger a commit without waiting for the timer.
BATCH_MAX: Final = 500
#: The longest wait before a failed batch is tried again (seconds).
MAX_RETRY_DELAY: Final = 2.0

#: An event waiting to be written, with the fencing epoch it was added under.
Pending = tuple[EventRecord, "int | None"]
#: Fenced events dropped, by ``(session_id, epoch)``.
Stale = dict[tuple[str, int], int]


class EventBacklog:
    """Pending events, the failed batch and its retry clock, and the stale-event counts."""

    def __init__(self, flush_interval: float) -> None:
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._pending: list[Pending] = []
        self._pending_since = 0.0  # monotonic time the oldest pending event was added
        self.failed: list[Pending] = []  # a batch that failed to commit, written first
        self.failures = 0  # failed attempts in a row
        self._retry_at = 0.0
        self._inflight: list[Pending] = []  # the batch being written
        self._stale: Stale = {}

    def add(self, events: Sequence[EventRecord], epoch: int | None) -> bool:
        """Queue events; True when the writer must wake (its timer starts, or a batch is full)."""
        with self._lock:
            before = len(self._pending)
            self._pending.extend((ev, epoch) for ev in events)
            after = len(self._pending)
            if before == 0:
                self._pending_since = time.monotonic()
        return before == 0 or before < BATCH_MAX <= after

    def next_timeout(self) -> float | None:
        """Seconds until the pending events are due, None when there are none."""
        with self._lock:
            n_pending = len(self._pending)
            since = self._pending_since
        if not n_pending and not self.failed:
            return None
        if self.failures:
            due = self._retry_at
        elif n_pending >= BATCH_MAX:
            return 0.0
        else:
            due = since + self.flush_interval
        return max(0.0, due - time.monotonic())

    def take(self) -> list[Pending]:
        """The next batch: the failed one first, then everything pending (empty: nothing to do).
        Report its end with ``written`` or ``write_failed``."""
        with self._lock:
            batch, self._pending = self._pending, []
        if self.failed:
            batch = self.failed + batch
            self.failed = []
        if not batch:
            self.failures = 0
        self._inflight = batch
        return batch

    def write_failed(self, batch: list[Pending]) -> None:
        """The batch did not commit: keep it, in order, and back off."""
        self._inflight = []
        self.failed = batch
        self.failures += 1
        delay = min(self.flush_interval * 2 ** min(self.failures, 16), MAX_RETRY_DELAY)
        self._retry_at = time.monotonic() + delay

    def put_back(self, batch: list[Pending]) -> None:
        """The batch was not written, through no fault of the store's yet (SQLite's inline
        write gave way: its thread writes it next): as ``write_failed``, without a failure
        counted or a backoff."""
        self._inflight = []
        self.failed = batch

    def written(self, batch: list[Pending], stale: Stale) -> None:
        """The batch committed, less the fenced events the store refused (``stale``)."""
        self._inflight = []
        if self.failures:
            log.info("registry: event log writable again, %d events written", len(batch))
        self.failures = 0
        for key, n in stale.items():
            log.warning("registry: dropped %d events of %s at stale epoch %d", n, key[0], key[1])
            self._stale[key] = self._stale.get(key, 0) + n

    def take_stale(self) -> Stale:
        """The stale-event counts since the last call."""
        dropped, self._stale = self._stale, {}
        return dropped

    def unwritten(self) -> list[EventRecord]:
        """Events added but not committed, oldest first."""
        with self._lock:
            pending = list(self._pending)
        return [ev for ev, _ in self.failed + self._inflight + pending]
