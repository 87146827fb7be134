"""Put a stored transcript where ``claude --resume`` looks for it.

The Agent SDK's own store-resume (``_internal/session_resume.py``) writes the transcript into a
fresh temporary ``CLAUDE_CONFIG_DIR`` and copies the caller's credentials and settings there. A
hotsession node already runs every agent of a tenant with a known config dir (the tenant's, or
the daemon user's), so :func:`materialize_transcript` writes into THAT directory instead: no
credential copies, and the resumed CLI's mirror frames name the same files, so they map back to
the same store keys. The format is the SDK's: ``projects/<project_key>/<session_id>.jsonl``
(``project_key`` from the SDK's public ``project_key_for_directory`` of the session's cwd, which
must be the same path on every machine), one JSON line per entry; subagent transcripts at
``<session_id>/<subpath>.jsonl``, each one's last ``agent_metadata`` entry as its
``.meta.json`` sidecar. Files are written to a temporary name and renamed (mode 0600, dirs
0700), so a CLI never reads half a transcript; the store is the source of truth and replaces
any older local copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_agent_sdk import project_key_for_directory
from claude_agent_sdk.types import SessionKey, SessionStore

__all__ = ["materialize_transcript"]


def _implements(store: SessionStore, method: str) -> bool:
    """Optional SessionStore methods are detected by override, as the SDK does."""
    impl = getattr(type(store), method, None)
    return impl is not None and impl is not getattr(SessionStore, method, None)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonl(entries: list[Any]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)


def _safe_subpath(subpath: str) -> bool:
    """A store key is a path component here: refuse anything that could leave the directory."""
    if not subpath or "\x00" in subpath or "\\" in subpath or subpath.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in re.split(r"/", subpath))


async def materialize_transcript(
    store: SessionStore,
    *,
    cwd: str | os.PathLike[str],
    session_id: str,
    config_dir: str | os.PathLike[str],
    timeout: float = 60.0,
    write: Callable[[Path, str], None] | None = None,
) -> Path | None:
    """Write the stored transcript of ``session_id`` (and its subagents') under ``config_dir``.

    Returns the main transcript's path, or None when the store holds nothing for it (then the
    CLI's own local resume, if any, is left alone). ``session_id`` must be a UUID (it is a path
    component). Store failures propagate (``RegistryUnavailable`` and the like). ``write``
    writes one file atomically (default: as this process, mode 0600); a tenant's files are
    written as its user (``hotsession.isolation.write_file_as``).
    """
    uuid.UUID(session_id)  # ValueError for anything else
    project_key = project_key_for_directory(os.fspath(cwd))
    key: SessionKey = {"project_key": project_key, "session_id": session_id}
    async with asyncio.timeout(timeout):
        entries = await store.load(key)
        if not entries:
            return None
        project_dir = Path(config_dir) / "projects" / project_key
        main = project_dir / f"{session_id}.jsonl"
        subs: list[tuple[str, list[Any]]] = []
        if _implements(store, "list_subkeys"):
            for subpath in await store.list_subkeys(key):
                if not _safe_subpath(subpath):
                    continue
                sub_entries = await store.load({**key, "subpath": subpath})
                if sub_entries:
                    subs.append((subpath, list(sub_entries)))
    await asyncio.to_thread(_write_all, main, list(entries), subs, write or _write_atomically)
    return main


def _write_all(
    main: Path,
    entries: list[Any],
    subs: list[tuple[str, list[Any]]],
    write: Callable[[Path, str], None],
) -> None:
    write(main, _jsonl(entries))
    session_dir = main.with_suffix("")
    for subpath, sub_entries in subs:
        metadata: dict[str, Any] | None = None
        transcript: list[Any] = []
        for e in sub_entries:
            if isinstance(e, dict) and e.get("type") == "agent_metadata":
                metadata = {k: v for k, v in e.items() if k != "type"}  # the last one wins
            else:
                transcript.append(e)
        target = session_dir / f"{subpath}.jsonl"
        if transcript:
            write(target, _jsonl(transcript))
        if metadata is not None:
            sidecar = target.with_name(target.name[: -len(".jsonl")] + ".meta.json")
            write(sidecar, json.dumps(metadata))
