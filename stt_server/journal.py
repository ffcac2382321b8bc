"""The transcript journal: every final result appended to a JSONL file, flushed and fsynced
before the result is sent, so no final is lost even when the client is gone or the process dies.

:class:`JournalFile` is plain blocking file code; :class:`Journal` runs it on one dedicated
thread, which keeps lines in order and keeps fsync off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .handshake import SessionContext
from .results import Result


def final_record(context: SessionContext, result: Result, *, now: datetime | None = None) -> dict[str, Any]:
    """One journal line: who, which engine, when (wall clock and audio offsets), what was said."""
    return {
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "session_id": context.session_id,
        "token_name": context.token.name,
        "provider": context.params.provider,
        "language": context.params.language,
        "start": round(result.start, 3),
        "end": round(result.end, 3),
        "speech_final": result.speech_final,
        "confidence": round(result.confidence, 4),
        "text": result.text,
    }


class JournalFile:
    """Append-only JSONL with size-based rotation (FILE → FILE.1 → … → FILE.N)."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if self._file is None:
            self.open()
        elif self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._size += len(line)

    def _rotate(self) -> None:
        self.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Journal:
    """The async face of :class:`JournalFile`: ``await write(record)`` returns once it is on disk."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.file = JournalFile(path, max_bytes=max_bytes, backups=backups)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    @property
    def path(self) -> Path:
        return self.file.path

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.file.open)

    async def write(self, record: Mapping[str, Any]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.file.append, record)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.file.close)
        self._thread.shutdown(wait=True)
