"""A session's state machine, pure: which close wins, when reading stops (drain, idle, maximum
duration), what bad audio and engine failures do, and what a close may claim.

No I/O and no ``await``: the websockets loop (:mod:`session_runner`) feeds it events with the
time they happened and acts on its answers, so every rule here is unit-tested without sockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .config import LimitsConfig
from .errors import SttServerError

# Close codes (RFC 6455 and the registry): documented in the README's protocol section.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is draining for shutdown
CLOSE_POLICY = 1008  # bad audio, as Deepgram does; the session's maximum duration
CLOSE_TOO_BIG = 1009  # a text frame over limits.max_base64_message_bytes
CLOSE_INTERNAL = 1011  # engine failure; idle timeout, as Deepgram does

DRAIN_REASON = "server shutting down"
# Once draining, frames already on their way are still read while they keep coming less than
# DRAIN_READ_GRACE apart, but for DRAIN_READ_SECONDS at most: what a client sent just before
# the drain is transcribed, and one that keeps sending cannot stretch the drain.
DRAIN_READ_GRACE = 0.1
DRAIN_READ_SECONDS = 1.0


class Stop(enum.Enum):
    """Why the session stops reading without the client closing or going away."""

    DRAIN = "drain"
    IDLE = "idle"
    MAX_DURATION = "max_duration"


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


class SessionState:
    """Times are the caller's monotonic clock, in seconds."""

    def __init__(self, limits: LimitsConfig, started: float) -> None:
        self.limits = limits
        self.started = started
        self.last_activity = started  # last audio or KeepAlive, for the idle timeout
        self.close: Close | None = None  # the first reason to close wins
        self.draining = False
        self._drain_began = 0.0
        self._told_draining = False
        self.untranscribed_seconds = 0.0

    # --- events --------------------------------------------------------------------------

    def request_close(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close = Close(code, reason)

    def activity(self, now: float) -> None:
        """Audio or a KeepAlive arrived."""
        self.last_activity = now

    def held(self, now: float) -> None:
        """The reader waited for the engine (backpressure): that was not the client's idleness."""
        self.last_activity = now

    def drain(self, now: float) -> None:
        if not self.draining:
            self.draining, self._drain_began = True, now

    def tell_draining(self) -> bool:
        """True once, when the client should be told that the server is draining."""
        if not self.draining or self._told_draining:
            return False
        self._told_draining = True
        return True

    def text_frame(self, size: int) -> bool:
        """A JSON text frame of ``size`` bytes: False (and a 1009 close) when over the limit."""
        limit = self.limits.max_base64_message_bytes
        if size <= limit:
            return True
        self.request_close(CLOSE_TOO_BIG, f"message_too_big: text frames are limited to {limit} bytes")
        return False

    def bad_audio(self, error: SttServerError, *, fatal: bool) -> bool:
        """Audio that does not decode. Fatal (Deepgram-like protocols): the finals for what
        decoded before it, then the Error, then the error's close. Otherwise the session goes on
        with a fresh decoder. Returns whether reading stops."""
        if fatal:
            self.request_close(error.close_code, error.code)
        return fatal

    def engine_failed(self, error: SttServerError) -> None:
        self.request_close(error.close_code, error.code)

    def lost(self, seconds: float) -> None:
        """Audio received that will never be transcribed."""
        self.untranscribed_seconds += max(0.0, seconds)

    # --- decisions -------------------------------------------------------------------------

    def next_stop(self, now: float) -> tuple[float | None, Stop]:
        """Seconds until reading must stop, and why (None: no deadline; <= 0: stop now)."""
        if self.draining:
            left = self._drain_began + DRAIN_READ_SECONDS - now
            return max(0.0, min(DRAIN_READ_GRACE, left)), Stop.DRAIN
        deadlines = []
        if self.limits.idle_timeout_seconds:
            deadlines.append((self.last_activity + self.limits.idle_timeout_seconds - now, Stop.IDLE))
        if self.limits.max_session_seconds:
            deadlines.append((self.started + self.limits.max_session_seconds - now, Stop.MAX_DURATION))
        if not deadlines:
            return None, Stop.IDLE
        return min(deadlines, key=lambda pair: pair[0])

    def stop(self, why: Stop) -> Close:
        """Reading stopped for ``why``: the close that goes with it (unless one came first)."""
        if why is Stop.DRAIN:
            self.request_close(CLOSE_GOING_AWAY, DRAIN_REASON)
        elif why is Stop.IDLE:
            self.request_close(CLOSE_INTERNAL, f"idle_timeout: no audio or KeepAlive for "
                                               f"{self.limits.idle_timeout_seconds:g} s")
        else:
            self.request_close(CLOSE_POLICY, f"max_duration: sessions are limited to "
                                             f"{self.limits.max_session_seconds:g} s")
        assert self.close is not None
        return self.close

    def final_close(self) -> Close:
        """The close the session ends with. 1000 promises that every final was sent: with any
        audio lost it is never 1000, whatever else happened."""
        close = self.close or Close(CLOSE_NORMAL, "")
        if close.code == CLOSE_NORMAL and self.untranscribed_seconds > 0:
            return Close(CLOSE_INTERNAL, "untranscribed_audio")
        return close
