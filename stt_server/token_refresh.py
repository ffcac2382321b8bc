"""Re-reading the token file while the server serves: a stat per handshake, a read in a worker
thread when it changed, and one log line per reload."""

from __future__ import annotations

import asyncio
from typing import Any

from .tokens import TokenReload, TokenStore


class TokenRefresher:
    def __init__(self, tokens: TokenStore, log: Any) -> None:
        self.tokens = tokens
        self.log = log
        self._reload: asyncio.Task[None] | None = None

    async def refresh(self, *, force: bool = False, wait: float | None = None) -> None:
        """Re-read the token file if it changed (a stat, here), in a worker thread: the event
        loop goes on serving with the table in force, then swaps in the new one. Concurrent
        callers share one reload; ``wait`` bounds how long this caller waits for it.
        ``force`` (start, SIGHUP) reads the file even if it looks unchanged."""
        running = self._reload
        if running is not None and not running.done():
            if not force:
                await self._wait_for(running, wait)
                return
            await asyncio.shield(running)  # then read again: it may have read the file too early
        if not force and not self.tokens.changed():
            return
        self._reload = asyncio.ensure_future(self._read())
        await self._wait_for(self._reload, wait)

    @staticmethod
    async def _wait_for(task: asyncio.Task[None], wait: float | None) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except asyncio.TimeoutError:
            pass

    async def _read(self) -> None:
        read = await asyncio.to_thread(self.tokens.read)
        self._log(self.tokens.apply(read))

    def _log(self, reload: TokenReload) -> None:
        """One line per reload, and a warning for each kind of trouble (never a line per bad line:
        a garbage file of millions of lines must not flood the log)."""
        if reload.error is not None:
            self.log.warning("token file not used; the last good one stays in force", reason=reload.error,
                             tokens=reload.after)
            return
        if reload.problem_count:
            self.log.warning("token file: lines skipped", file=str(reload.path), skipped=reload.problem_count,
                             first=reload.problem_summary())
        if reload.emptied:
            self.log.warning("token file holds no valid token: every session will be refused",
                             file=str(reload.path), tokens=f"{reload.before} → 0")
        self.log.info("token file loaded", file=str(reload.path), tokens=reload.after)
