"""One Google session's stream: a chain of ``StreamingRecognize`` calls the client sees as one.

Each session is a :class:`GoogleStream` on the provider's one async client; it runs a chain of
calls so the client sees one unbroken session:

- Past ``restart_after_seconds`` (Google ends a call at ~305 s) the call is ended right after
  its next final result (or after a grace period) and the next call re-sends the audio after
  that final (see :mod:`.google_resend`); so does a call that ends on ``OUT_OF_RANGE`` or a
  transient error. Result times are shifted by the session time at which a call's audio
  began, so they run on unbroken.
- Finalize, close, a pause in the audio and single_utterance half-close the call instead:
  Google then finalizes all it was sent, and nothing needs re-sending.
- Audio the client already sends in an encoding Google accepts is passed through undecoded.
- New audio is sent at real time (a one-second burst allowance); re-sent audio goes at once.
- Permanent errors end the session with a :class:`ProviderError` naming the cause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.cloud.speech_v1 import (
    SpeechAsyncClient,
    StreamingRecognitionConfig,
    StreamingRecognizeRequest,
    StreamingRecognizeResponse,
)

from ..errors import ProviderError
from ..results import Result, Word
from .base import TranscriptionStream
from .google_options import GoogleOptions
from .google_resend import ResendBuffer

log = logging.getLogger(__name__)

# Statuses that no retry can fix → the ProviderError code sent to the client.
_PERMANENT: Mapping[type[Exception], str] = {
    gexc.InvalidArgument: "google_invalid_argument",
    gexc.PermissionDenied: "google_permission_denied",
    gexc.Unauthenticated: "google_unauthenticated",
    gexc.ResourceExhausted: "google_resource_exhausted",
    gexc.NotFound: "google_not_found",
    gexc.FailedPrecondition: "google_failed_precondition",
    gexc.MethodNotImplemented: "google_unimplemented",
}
# google.rpc.Status codes (in a response's error field) → grpc status codes.
_STATUS_CODES: Mapping[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
# What grpc.aio reports when a write races the server's status (grpc issue 36066).
_CORE_MISREPORT = "Internal error from Core"

# Seconds of audio a call may be ahead of real time.
_PACE_BURST_SECONDS = 1.0
# Half-close a call after this long without audio: Google aborts a call left waiting ~10 s.
_IDLE_SECONDS = 5.0
# How long a half-closed call may take to deliver its last results.
_DRAIN_SECONDS = 15.0
# Requests waiting for grpc to send them.
_QUEUED_REQUESTS = 4
# After a misreported status, wait this long for the server's answer before sending audio.
_PROBE_SECONDS = 1.0


class _Restart(Exception):
    """The call ended without finalizing everything sent (OUT_OF_RANGE, or Google closed it)."""

    def __init__(self, carried_audio: bool) -> None:
        super().__init__("call ended early")
        self.carried_audio = carried_audio


class _Stalled(Exception):
    """A half-closed call did not finish in time."""


class _Pacer:
    """Token bucket: audio seconds may be sent at 1 s/s, with a small burst."""

    def __init__(self, burst: float) -> None:
        self._burst = burst
        self._credit = burst
        self._at = time.monotonic()

    async def wait(self, seconds: float) -> None:
        now = time.monotonic()
        self._credit = min(self._burst, self._credit + now - self._at)
        self._at = now
        if self._credit < seconds:
            await asyncio.sleep(seconds - self._credit)
            self._credit = seconds
            self._at = time.monotonic()
        self._credit -= seconds


class GoogleStream(TranscriptionStream):
    """One session: a chain of StreamingRecognize calls fed from a :class:`ResendBuffer`."""

    def __init__(self, client: SpeechAsyncClient, options: GoogleOptions,
                 config: StreamingRecognitionConfig, buffer: ResendBuffer) -> None:
        super().__init__()
        self._client = client
        self._options = options
        self._config = config
        self._buffer = buffer
        self._pacer = _Pacer(_PACE_BURST_SECONDS) if options.pace_realtime else None
        self._wake = asyncio.Event()  # audio arrived, or finalize / close was asked
        self._task: asyncio.Task[None] | None = None
        self._in_call = False
        self._failures = 0  # consecutive failed calls; reset by a final result or a clean end
        self._closing = False
        self._finalize_asked = False
        self._sent_max = 0  # absolute offset of the newest byte any call was sent
        self._replay = False  # the last call ended without finalizing what it was sent
        self._last_final_end = 0.0  # session seconds
        # Per call:
        self._offset = 0.0  # session time of the call's first audio
        self._sent = 0  # absolute offset sent on this call
        self._half_closed = False
        self._end_call = False  # Google said END_OF_SINGLE_UTTERANCE
        self._held: Result | None = None  # see _emit_final
        self._planned_restart = False  # the pump ended the call to restart it
        self._finals = 0  # final results received, all calls
        self._acked = 0.0  # seconds of the call's audio Google has answered for
        self.calls = 0

    # -- TranscriptionStream ------------------------------------------------------------------

    async def send_audio(self, audio: bytes) -> None:
        if self._closing or not audio:
            return
        self._buffer.append(audio)
        self._poke()

    def backlog_seconds(self) -> float:
        """Audio received and not yet sent to Google (sending is paced at real time): a client
        sending faster than real time is held back by the session instead of filling memory."""
        return max(0.0, self._buffer.time_at(self._buffer.end) - self._buffer.time_at(self._sent_max))

    async def finalize(self) -> None:
        if self._in_call or self._has_work():  # otherwise everything received is final already
            self._finalize_asked = True
            self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._poke()

    async def abort(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.end_results()

    def _poke(self) -> None:
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="google-stream")

    # -- the chain of calls ---------------------------------------------------------------------

    def _has_work(self) -> bool:
        """New audio to send, or audio a failed call left unfinalized."""
        if self._buffer.end > self._sent_max:
            return True
        return self._replay and self._buffer.restart_point().offset < self._buffer.end

    async def _run(self) -> None:
        careful = False
        try:
            while True:
                if not self._has_work():
                    if self._closing:
                        break
                    self._wake.clear()
                    if not (self._has_work() or self._closing):
                        await self._wake.wait()
                    continue
                finals_before = self._finals
                try:
                    self._in_call = True
                    await self._call(careful)
                    careful = False
                    self._failures = 0
                    continue
                except _Restart as restart:
                    self._replay = True
                    careful = False
                    if self._finals == finals_before:
                        # No final in a whole call: re-send at most half a call, so that the
                        # next one carries new audio (no endless replay of the same audio).
                        keep_from = self._buffer.time_at(self._sent) - self._options.restart_after_seconds / 2
                        self._buffer.forget_before(keep_from, limit=self._sent)
                    if restart.carried_audio:
                        continue
                    error: BaseException = restart
                except (gexc.GoogleAPICallError, _Stalled) as exc:
                    self._replay = True
                    code = _PERMANENT.get(type(exc))
                    if code is not None:
                        self.fail(ProviderError(f"Google Speech refused the stream: {_describe(exc)}", code=code))
                        return
                    careful = _is_misreport(exc)
                    error = exc
                finally:
                    self._in_call = False
                    self._finalize_asked = False
                self._failures += 1
                if self._failures > self._options.max_retries:
                    self.fail(_exhausted(error, self._failures))
                    return
                delay = self._options.retry_backoff_seconds * 2 ** (self._failures - 1)
                log.warning("google call failed (%s); retry %d/%d in %.1fs", _describe(error), self._failures,
                            self._options.max_retries, delay)
                await asyncio.sleep(delay)
            self.end_results()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must end this session only
            log.exception("google stream failed")
            self.fail(ProviderError(f"Google Speech stream failed: {type(exc).__name__}: {exc}", code="google_error"))

    async def _call(self, careful: bool) -> None:
        """One StreamingRecognize call; raises _Restart when it ended with audio not
        finalized, or the call's error."""
        point = self._buffer.restart_point()
        self._offset = point.time
        self._sent = point.offset
        self._half_closed = False
        self._planned_restart = False
        self._end_call = False
        self._acked = 0.0
        self.calls += 1
        # Bounded: the pump waits for grpc to take requests, so what counts as sent was sent.
        requests: asyncio.Queue[StreamingRecognizeRequest | None] = asyncio.Queue(maxsize=_QUEUED_REQUESTS)
        requests.put_nowait(StreamingRecognizeRequest(streaming_config=self._config))
        pump: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(None) as deadline:
                # The async client returns a grpc.aio call (done(), cancel()), typed as an iterable.
                call: Any = await self._client.streaming_recognize(requests=_drain(requests), retry=None,
                                                                   timeout=None)
                try:
                    if careful:
                        await _probe(call)
                    pump = asyncio.create_task(self._pump(requests, point.prefix, deadline))
                    async for response in call:
                        self._on_response(response)
                finally:
                    self._emit_final(None)
                    if pump is not None:
                        pump.cancel()
                        await asyncio.gather(pump, return_exceptions=True)
                    if not call.done():
                        call.cancel()
                    _end_requests(requests)
        except TimeoutError:
            if self._planned_restart:
                raise _Restart(carried_audio=True) from None
            raise _Stalled(f"the call did not end {_DRAIN_SECONDS:.0f} s after half-close") from None
        except gexc.OutOfRange:
            raise _Restart(self._sent > point.offset) from None
        if not self._half_closed or self._end_call:
            # Google stopped early; after END_OF_SINGLE_UTTERANCE it ignored the audio that
            # followed the utterance, so that is re-sent too.
            raise _Restart(self._sent > point.offset)
        # Google has finalized all it was sent: nothing before this point needs re-sending.
        self._replay = False
        self._buffer.forget_before(self._buffer.time_at(self._sent), limit=self._sent)

    async def _pump(self, requests: asyncio.Queue[StreamingRecognizeRequest | None], prefix: bytes,
                    deadline: asyncio.Timeout) -> None:
        """Feed the call: re-sent audio at once, new audio paced. Half-close on close, finalize,
        idle or single-utterance end; past ``restart_after_seconds``, end the call at the next
        final result (or after a grace period) so the next call re-sends little."""
        opts = self._options
        started = time.monotonic()
        grace = min(30.0, opts.restart_after_seconds / 4)
        finals_at_start = self._finals
        pending = prefix
        while True:
            self._wake.clear()
            buffer = self._buffer
            age = max(time.monotonic() - started, self._acked)
            if age >= opts.restart_after_seconds + grace or (
                    age >= opts.restart_after_seconds and self._finals > finals_at_start):
                self._planned_restart = True
                deadline.reschedule(asyncio.get_running_loop().time())  # ends the call now
                return
            if age < opts.restart_after_seconds:
                finals_at_start = self._finals
            if self._end_call:
                break  # Google takes no more audio on this call (single_utterance)
            if pending:  # a restart's container header, ahead of the re-sent audio
                await requests.put(StreamingRecognizeRequest(audio_content=pending[:opts.max_request_bytes]))
                pending = pending[opts.max_request_bytes:]
                continue
            if self._sent < buffer.end:
                chunk = buffer.read(self._sent, opts.max_request_bytes)
                start, stop = self._sent, self._sent + len(chunk)
                if self._pacer is not None and stop > self._sent_max:
                    await self._pacer.wait(buffer.time_at(stop) - buffer.time_at(max(start, self._sent_max)))
                await requests.put(StreamingRecognizeRequest(audio_content=chunk))
                self._sent = stop
                self._sent_max = max(self._sent_max, stop)
                self.backlog_shrank()
                buffer.forget_before(buffer.time_at(stop) - opts.max_resend_seconds, limit=stop)
                continue
            if self._closing or self._finalize_asked:
                self._finalize_asked = False
                break
            wait = min(_IDLE_SECONDS, opts.restart_after_seconds + grace - age)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                if wait == _IDLE_SECONDS:
                    break  # idle: Google would abort a call left without audio
        self._half_closed = True
        await requests.put(None)
        deadline.reschedule(asyncio.get_running_loop().time() + _DRAIN_SECONDS)

    def _emit_final(self, result: Result | None) -> None:
        """Finals arriving after a half-close are held back one step: the last of them was cut
        by the half-close (speech_final false), the others ended at a pause."""
        if self._held is not None:
            self.emit(self._held if result is not None else dataclasses.replace(self._held, speech_final=False))
            self._held = None
        if result is not None and self._half_closed:
            self._held = result
        elif result is not None:
            self.emit(result)

    def _on_response(self, response: StreamingRecognizeResponse) -> None:
        if response.error.code:
            status = _STATUS_CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
            raise gexc.from_grpc_status(status, response.error.message)
        if response.speech_event_type == StreamingRecognizeResponse.SpeechEventType.END_OF_SINGLE_UTTERANCE:
            self._end_call = True
        self._wake.set()  # the pump may be waiting to restart or to stop
        interim: list[tuple[str, float, float]] = []
        interim_end = self._last_final_end
        for result in response.results:
            if not result.alternatives:
                continue
            alt = result.alternatives[0]
            self._acked = max(self._acked, _seconds(result.result_end_time))
            end = max(self._last_final_end, self._offset + _seconds(result.result_end_time))
            if result.is_final:
                words = tuple(Word(w.word, self._offset + _seconds(w.start_time), self._offset + _seconds(w.end_time),
                                   w.confidence or alt.confidence) for w in alt.words)
                self._emit_final(Result(text=alt.transcript.strip(), is_final=True, start=self._last_final_end,
                                        end=end, confidence=alt.confidence, words=words, speech_final=True))
                self._last_final_end = end
                self._finals += 1
                self._failures = 0
                self._buffer.forget_before(end, limit=self._sent)
            else:
                interim.append((alt.transcript.strip(), result.stability, end))
                interim_end = max(interim_end, end)
        if interim:
            if self._held is not None:  # speech goes on: the held final ended at a pause
                self.emit(self._held)
                self._held = None
            self.emit(Result(text=" ".join(t for t, _, _ in interim if t), is_final=False,
                             start=self._last_final_end, end=interim_end,
                             stability=min(s for _, s, _ in interim)))


async def _drain(requests: asyncio.Queue[StreamingRecognizeRequest | None]) -> AsyncIterator[StreamingRecognizeRequest]:
    """The request iterator grpc consumes; None half-closes the call."""
    while (request := await requests.get()) is not None:
        yield request


def _end_requests(requests: asyncio.Queue[StreamingRecognizeRequest | None]) -> None:
    """Let the request iterator finish when a call ends, rather than linger suspended until
    garbage collection (seen as "Event loop is closed" warnings once the loop is gone)."""
    while not requests.empty():
        requests.get_nowait()
    requests.put_nowait(None)


async def _probe(call: Any) -> None:
    """Hold audio back until the server answered or a moment passed, so that a status the server
    sends at the start is not overwritten by a failed write (grpc issue 36066)."""
    try:
        async with asyncio.timeout(_PROBE_SECONDS):
            await call.initial_metadata()
    except TimeoutError:
        pass


def _is_misreport(exc: BaseException) -> bool:
    return isinstance(exc, gexc.InternalServerError) and _CORE_MISREPORT in str(exc.message)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, gexc.GoogleAPICallError):
        status = exc.grpc_status_code.name if exc.grpc_status_code else type(exc).__name__
        return f"{status}: {exc.message}"
    return str(exc)


def _exhausted(exc: BaseException, attempts: int) -> ProviderError:
    if _is_misreport(exc):
        return ProviderError(f"Google Speech failed {attempts} times; the last status was lost by grpc.aio "
                             f"('{_CORE_MISREPORT}', grpc issue 36066)", code="google_internal")
    code = "google_unavailable" if isinstance(exc, (gexc.ServiceUnavailable, _Stalled)) else "google_error"
    return ProviderError(f"Google Speech failed {attempts} times: {_describe(exc)}", code=code)


def _seconds(value: datetime.timedelta | None) -> float:
    return value.total_seconds() if value else 0.0

