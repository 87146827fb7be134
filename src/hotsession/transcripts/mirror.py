"""The CLI's transcript mirror into a ``SessionStore``.

A CLI started with ``--session-mirror`` writes, besides its messages,
``{"type": "transcript_mirror", "filePath": ..., "entries": [...]}`` lines: the lines it just
appended to a transcript file under ``<CLAUDE_CONFIG_DIR>/projects``. :class:`TranscriptMirror`
takes those frames (``add``: cheap, synchronous, for the reader's hot path) and appends them to
the store in order (``flush``), mapping each file path to its ``SessionKey`` the way the Agent
SDK does (``<project_key>/<session_id>.jsonl`` is the main transcript,
``<project_key>/<session_id>/subagents/.../agent-<id>.jsonl`` a subagent's).

Flush before a turn's result is handed on (as the SDK does), so a transcript in the store is
never behind a result a client saw, and once more when the process exits (the CLI mirrors a
last frame after the result). A failed ``flush`` keeps its entries, in order, for the next one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from claude_agent_sdk.types import SessionKey, SessionStore, SessionStoreEntry

__all__ = ["TranscriptMirror", "is_mirror_frame", "session_key_for_path"]

log = logging.getLogger(__name__)


def is_mirror_frame(msg: dict[str, Any]) -> bool:
    return msg.get("type") == "transcript_mirror"


def session_key_for_path(file_path: str, projects_dir: str | os.PathLike[str]) -> SessionKey | None:
    """The key of a transcript file under ``projects_dir``; None for any other path."""
    try:
        rel = os.path.relpath(file_path, projects_dir)
    except ValueError:
        return None
    parts = PurePosixPath(rel.replace(os.sep, "/")).parts
    if len(parts) < 2 or parts[0] in ("..", ".") or os.path.isabs(rel):
        return None
    project_key, second = parts[0], parts[1]
    if len(parts) == 2 and second.endswith(".jsonl"):
        return {"project_key": project_key, "session_id": second[: -len(".jsonl")]}
    if len(parts) >= 4 and parts[-1].endswith(".jsonl"):
        sub = [*parts[2:-1], parts[-1][: -len(".jsonl")]]
        return {"project_key": project_key, "session_id": second, "subpath": "/".join(sub)}
    return None


class TranscriptMirror:
    """Frames of one CLI process, appended to ``store`` in order (see module doc)."""

    def __init__(self, store: SessionStore, projects_dir: str | os.PathLike[str]) -> None:
        self.store = store
        self.projects_dir = str(Path(projects_dir))
        # More config dirs' projects (a node's tenants with their own ``CLAUDE_CONFIG_DIR``):
        # a frame maps under whichever holds its path.
        self.more_projects_dirs: list[str] = []
        self._pending: list[tuple[SessionKey, list[SessionStoreEntry]]] = []
        self.dropped_frames = 0  # frames whose path is not a transcript under projects_dir

    def add_projects_dir(self, projects_dir: str | os.PathLike[str]) -> None:
        """Map frames under ``projects_dir`` too (another config dir's transcripts)."""
        path = str(Path(projects_dir))
        if path != self.projects_dir and path not in self.more_projects_dirs:
            self.more_projects_dirs.append(path)

    def add(self, frame: dict[str, Any]) -> None:
        """Queue one ``transcript_mirror`` frame; consecutive frames of one file coalesce."""
        path, entries = frame.get("filePath"), frame.get("entries")
        if not isinstance(path, str) or not isinstance(entries, list):
            self.dropped_frames += 1
            return
        key = session_key_for_path(path, self.projects_dir)
        for other in self.more_projects_dirs:
            if key is not None:
                break
            key = session_key_for_path(path, other)
        if key is None:
            log.warning("transcript mirror: %s is not under %s; dropped", path, self.projects_dir)
            self.dropped_frames += 1
            return
        if self._pending and self._pending[-1][0] == key:
            self._pending[-1][1].extend(entries)
        else:
            self._pending.append((key, list(entries)))

    @property
    def pending(self) -> int:
        """Entries not appended yet."""
        return sum(len(entries) for _, entries in self._pending)

    async def flush(self) -> None:
        """Append everything queued, in order; on failure the rest stays queued and it raises."""
        while self._pending:
            key, entries = self._pending[0]
            await self.store.append(key, entries)
            self._pending.pop(0)
