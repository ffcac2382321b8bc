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

# Close codes (RFC 6455 and the registry): documented in docs/protocols.md and docs/operations.md.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is draining for shutdown
CLOSE_POLICY = 1008  # bad audio, as Deepgram does; the session's maximum duration
CLOSE_TOO_BIG = 1009  # a text frame over limits.max_base64_message_bytes
CLOSE_INTERNAL = 1011  # engine failure; idle timeout, as Deepgram does

DRAIN_REASON = "server shutting down"
# Once draining, the client is sent a ping right after the Draining notice, and the reader goes
# on reading until the pong comes back: a websocket peer answers pings in order with the frames
# it sends, so every frame sent before the client could see the notice is read and transcribed.
# Frames already buffered at the pong are read too (while they come less than DRAIN_READ_GRACE
# apart, for DRAIN_READ_SECONDS at most), and then reading stops, so a client that keeps
# sending cannot stretch the drain. A client that does not answer within DRAIN_PING_SECONDS
# of reading (time held back by the engine does not count) is read no longer, and the close
# says so.
DRAIN_READ_GRACE = 0.05
DRAIN_READ_SECONDS = 1.0
DRAIN_PING_SECONDS = 5.0
DRAIN_UNANSWERED_REASON = ("server shutting down; the client did not answer the drain's ping within "
                           f"{DRAIN_PING_SECONDS:g} s: what it sent later was not read")


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
        # Reading stops at this time unless the client answers the drain's ping first.
        self._ping_deadline = 0.0
        # When the client answered the drain's ping (None: not yet).
        self._drain_answered: float | None = None
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
        """The reader waited for the engine (backpressure): that was not the client's idleness,
        nor its slowness to answer the drain's ping (its pong waits behind the unread frames)."""
        self.last_activity = now
        if self.draining and self._drain_answered is None:
            self._ping_deadline = max(self._ping_deadline, now + DRAIN_PING_SECONDS)

    def drain(self, now: float) -> None:
        if not self.draining:
            self.draining, self._ping_deadline = True, now + DRAIN_PING_SECONDS

    def drain_answered(self, now: float) -> None:
        """The client answered the ping sent after the Draining notice: every frame it sent
        before it could see the notice has arrived."""
        if self.draining and self._drain_answered is None:
            self._drain_answered = now

    @property
    def drain_answered_at(self) -> float | None:
        """When the client answered the drain's ping. From then on the reader only takes the
        frames already buffered, for a second at most, and backpressure does not hold it: those
        few frames are bounded by the connection's queue, and a hold would outlast the second."""
        return self._drain_answered

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

    def cut(self) -> Close:
        """The drain deadline passed with audio left: the close says how much went untranscribed."""
        self.close = Close(CLOSE_GOING_AWAY, f"untranscribed_audio: server shutting down, "
                                             f"{self.untranscribed_seconds:.1f} s not transcribed")
        return self.close

    # --- decisions -------------------------------------------------------------------------

    def next_stop(self, now: float) -> tuple[float | None, Stop]:
        """Seconds until reading must stop, and why (None: no deadline; <= 0: stop now)."""
        if self.draining:
            if self._drain_answered is None:  # until the pong: every frame before it
                return max(0.0, self._ping_deadline - now), Stop.DRAIN
            left = self._drain_answered + DRAIN_READ_SECONDS - now
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
            self.request_close(CLOSE_GOING_AWAY,
                               DRAIN_REASON if self._drain_answered is not None else DRAIN_UNANSWERED_REASON)
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
