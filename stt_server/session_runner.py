"""One websocket session: frames in → decoder → provider stream → results out.

The reader (this task) decodes audio in arrival order and hands it to the provider; a sender
task turns results into frames. When the client says CloseStream, or simply goes away, all
audio received is still decoded and transcribed and its finals sent (if anyone is listening)
before the session ends: nothing received is lost. The same holds when the server stops
reading: on a graceful drain (close 1001), an idle timeout (1011) or the session's maximum
duration (1008), the audio received so far is transcribed and its finals sent before the close.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import AudioDecoder, PassthroughDecoder, open_decoder
from .audio_format import PCM16, AudioFormat
from .config import LimitsConfig
from .errors import AudioError, ProtocolError, ProviderError, SttServerError
from .handshake import SessionContext
from .metrics import AudioClock, Metrics, SessionMetrics
from .protocols import AudioIn, CloseStream, Finalize, KeepAlive, WireProtocol
from .providers import Provider, TranscriptionStream
from .results import Result

# Close codes (RFC 6455 and the registry): documented in the README's protocol section.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is draining for shutdown
CLOSE_POLICY = 1008  # bad audio, as Deepgram does; the session's maximum duration
CLOSE_TOO_BIG = 1009  # a text frame over limits.max_base64_message_bytes
CLOSE_INTERNAL = 1011  # engine failure; idle timeout, as Deepgram does

DRAIN_REASON = "server shutting down"
DEFAULT_LIMITS = LimitsConfig()
# Once draining, frames already on their way are still read until none comes for this long.
DRAIN_READ_GRACE = 0.1


class _Stop(enum.Enum):
    """Why the reader stopped reading without the client closing or going away."""

    DRAIN = "drain"
    IDLE = "idle"
    MAX_DURATION = "max_duration"


@dataclass
class SessionStats:
    started: float = field(default_factory=time.monotonic)
    frames_in: int = 0
    bytes_in: int = 0
    audio_seconds: float = 0.0
    results_out: int = 0
    finals_out: int = 0
    errors_out: int = 0

    def summary(self) -> dict[str, Any]:
        return {"duration_s": round(time.monotonic() - self.started, 3), "audio_s": round(self.audio_seconds, 3),
                "frames_in": self.frames_in, "bytes_in": self.bytes_in, "results": self.results_out,
                "finals": self.finals_out, "errors": self.errors_out}


class SessionRunner:
    def __init__(
        self,
        connection: ServerConnection,
        context: SessionContext,
        protocol: WireProtocol,
        provider: Provider,
        *,
        logger: Any,
        flush_timeout: float,
        on_result: Callable[[SessionContext, Result], Awaitable[None]] | None = None,
        limits: LimitsConfig = DEFAULT_LIMITS,
        metrics: SessionMetrics | None = None,
    ) -> None:
        self.connection = connection
        self.context = context
        self.protocol = protocol
        self.provider = provider
        self.log = logger.bind(**context.log_fields())
        self.flush_timeout = flush_timeout
        self.on_result = on_result
        self.limits = limits
        # A server passes its own; alone (in a unit test, say) a runner counts into a private registry.
        self.metrics = metrics or Metrics().session(context.params.provider)
        self.stats = SessionStats()
        self.stream_format: AudioFormat = provider.input_format(context.params.audio)
        self._close: tuple[int, str] | None = None  # first reason to close wins
        self._decoder: AudioDecoder = PassthroughDecoder()  # replaced in _run()
        self._draining = asyncio.Event()
        self._told_draining = False
        self._clock = AudioClock()
        self._last_activity = self.stats.started  # last audio or KeepAlive, for the idle timeout

    def _request_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)

    def drain(self) -> None:
        """Graceful shutdown: stop reading soon, transcribe what came, send finals, close 1001."""
        self._draining.set()

    async def run(self) -> None:
        self.metrics.opened()
        try:
            await self._run()
        finally:
            self.metrics.closed(self.connection.close_code or (self._close or (CLOSE_GOING_AWAY, ""))[0])

    async def _run(self) -> None:
        params = self.context.params
        try:
            self._decoder = open_decoder(params.audio, self.stream_format)
            stream = self.provider.open_stream(params, self.stream_format)
        # Normally caught before the upgrade by check_session; an engine at capacity
        # (CapacityError) closes the running session with 1013.
        except SttServerError as error:
            self.log.warning("cannot open stream", code=error.code, reason=error.message)
            await self._report(error)
            await self.connection.close(error.close_code, error.code)
            return
        self.log.info("session opened", encoding=params.audio.encoding, language=params.language,
                      endpoint=params.endpoint.value)
        await self._send(self.protocol.opening(self._metadata()))
        sender = asyncio.create_task(self._send_results(stream), name=f"results-{self.context.session_id}")
        client_gone = cut = False
        audio_error: AudioError | None = None
        try:
            try:
                client_gone = await self._read_frames(stream)
            except AudioError as error:
                audio_error = error
            # After bad bytes, what decoded before them is still transcribed: its finals go
            # out first, then the Error, then the close.
            try:
                await self._feed(stream, await self._decoder.finish(), time.monotonic())
            except AudioError as error:
                audio_error = audio_error or error
            if audio_error is not None:
                self.log.info("bad audio", code=audio_error.code, reason=audio_error.message)
                self.metrics.decode_error()
                self._request_close(audio_error.close_code, audio_error.code)
        except ProviderError as error:
            await self._report(error)
            self._request_close(error.close_code, error.code)
        except asyncio.CancelledError:  # cut at the drain deadline: drop what is left
            cut = True
            raise
        finally:
            self._decoder.close()
            if cut:
                await stream.abort()
                sender.cancel()
            else:
                await self._finish_stream(stream, sender)
        if audio_error is not None:
            await self._report(audio_error)
        code, reason = self._close or (CLOSE_NORMAL, "")
        if not client_gone:
            await self.connection.close(code, reason)
        self.log.info("session closed", close_code=self.connection.close_code or code, reason=reason,
                      client_gone=client_gone, **self.stats.summary())

    async def _read_frames(self, stream: TranscriptionStream) -> bool:
        """Read until CloseStream, a limit or a drain (False), or the client goes away (True)."""
        try:
            while True:
                frame = await self._next_frame()
                if isinstance(frame, _Stop):
                    self._stop_reading(frame)
                    return False
                arrived = time.monotonic()
                self.stats.frames_in += 1
                self.metrics.message()
                if isinstance(frame, str) and len(frame) > self.limits.max_base64_message_bytes:
                    self._request_close(CLOSE_TOO_BIG, f"message_too_big: text frames are limited to "
                                                       f"{self.limits.max_base64_message_bytes} bytes")
                    return False
                try:
                    events = self.protocol.parse(frame)
                except ProtocolError as error:
                    await self._report(error)
                    continue
                for event in events:
                    if isinstance(event, AudioIn):
                        self._last_activity = arrived
                        self.stats.bytes_in += len(event.data)
                        self.metrics.audio(len(event.data))
                        if not await self._decode_and_feed(stream, event.data, arrived):
                            break
                    elif isinstance(event, Finalize):
                        await stream.finalize()
                    elif isinstance(event, CloseStream):
                        return False
                    elif isinstance(event, KeepAlive):
                        self._last_activity = arrived
                await self._send(self.protocol.acknowledge())
                if self._close is not None:  # the sender saw a fatal engine error
                    return False
        except ConnectionClosed:
            # The client went away, or the sender closed the connection after an engine failure.
            return self._close is None

    async def _decode_and_feed(self, stream: TranscriptionStream, data: bytes, arrived: float) -> bool:
        """Decode one chunk and feed it; False when bad audio was reported and the session
        goes on without the rest of this frame (protocols whose audio errors are not fatal)."""
        try:
            await self._feed(stream, await self._decoder.decode(data), arrived)
            return True
        except AudioError as error:
            if self.protocol.audio_errors_are_fatal:
                raise
            self.log.info("bad audio; starting a fresh decoder", code=error.code, reason=error.message)
            self.metrics.decode_error()
            await self._report(error)
            broken, self._decoder = self._decoder, open_decoder(self.context.params.audio, self.stream_format)
            try:
                await self._feed(stream, await broken.finish(), arrived)  # what decoded before the error
            except AudioError:
                pass
            finally:
                broken.close()
            return False

    async def _next_frame(self) -> str | bytes | _Stop:
        """The next client frame, or why reading stops now (drain, idle, maximum duration)."""
        if self._draining.is_set():
            if not self._told_draining:
                self._told_draining = True
                self.log.info("draining: transcribing the audio received")
                await self._send(self.protocol.draining(
                    "server shutting down: transcribing the audio received, then closing with 1001"))
            try:  # frames already on their way count as received
                return await asyncio.wait_for(self.connection.recv(), DRAIN_READ_GRACE)
            except TimeoutError:
                return _Stop.DRAIN
        timeout, why = self._next_deadline()
        if timeout is not None and timeout <= 0:
            return why
        receive = asyncio.ensure_future(self.connection.recv())
        drain = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({receive, drain}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not receive.done():
                receive.cancel()  # safe: websockets keeps the message for the next recv()
                await asyncio.wait({receive})  # no second recv() while this one unwinds
        if not receive.cancelled():
            return receive.result()  # a frame, or ConnectionClosed
        if self._draining.is_set():
            return await self._next_frame()
        return why

    def _next_deadline(self) -> tuple[float | None, _Stop]:
        """Seconds until the idle timeout or the maximum duration, whichever comes first."""
        now = time.monotonic()
        deadlines = []
        if self.limits.idle_timeout_seconds:
            deadlines.append((self._last_activity + self.limits.idle_timeout_seconds - now, _Stop.IDLE))
        if self.limits.max_session_seconds:
            deadlines.append((self.stats.started + self.limits.max_session_seconds - now, _Stop.MAX_DURATION))
        if not deadlines:
            return None, _Stop.IDLE
        return min(deadlines, key=lambda pair: pair[0])

    def _stop_reading(self, why: _Stop) -> None:
        if why is _Stop.DRAIN:
            self._request_close(CLOSE_GOING_AWAY, DRAIN_REASON)
        elif why is _Stop.IDLE:
            seconds = f"{self.limits.idle_timeout_seconds:g}"
            self.log.info("idle timeout", idle_timeout_s=self.limits.idle_timeout_seconds)
            self._request_close(CLOSE_INTERNAL, f"idle_timeout: no audio or KeepAlive for {seconds} s")
        else:
            seconds = f"{self.limits.max_session_seconds:g}"
            self.log.info("maximum session duration reached", max_session_s=self.limits.max_session_seconds)
            self._request_close(CLOSE_POLICY, f"max_duration: sessions are limited to {seconds} s")

    async def _feed(self, stream: TranscriptionStream, audio: bytes, arrived: float) -> None:
        if not audio:
            return
        if self.stream_format.encoding == PCM16 and self.stream_format.sample_rate:
            seconds = len(audio) / (2 * self.stream_format.sample_rate * self.stream_format.channels)
            self.stats.audio_seconds += seconds
            self._clock.received(self.stats.audio_seconds, arrived)
            self.metrics.audio_seconds(seconds)
        await stream.send_audio(audio)

    async def _finish_stream(self, stream: TranscriptionStream, sender: asyncio.Task[None]) -> None:
        """End the stream and wait (bounded) for its last finals to be sent."""
        try:
            await asyncio.wait_for(stream.close(), self.flush_timeout)
            await asyncio.wait_for(asyncio.shield(sender), self.flush_timeout)
        except asyncio.CancelledError:  # the session is being cut (drain deadline): stop now
            await stream.abort()
            sender.cancel()
            raise
        except (TimeoutError, ProviderError) as exc:
            self.log.warning("engine did not finish in time; dropping its last results",
                             error=type(exc).__name__)
            await stream.abort()
            sender.cancel()
        except Exception:
            self.log.exception("engine failed while finishing")
            sender.cancel()

    async def _send_results(self, stream: TranscriptionStream) -> None:
        interim = self.context.params.interim_results
        try:
            async for result in stream.results():
                if self.on_result is not None:
                    await self.on_result(self.context, result)
                if not result.is_final and not interim:
                    continue
                self.stats.results_out += 1
                self.stats.finals_out += result.is_final
                await self._send(self.protocol.result(result))
                self._observe(result)
        except Exception as exc:  # an engine failure, or an engine bug, ends this session only
            if isinstance(exc, ProviderError):
                error = exc
                self.log.warning("engine failed", code=error.code, reason=error.message)
            else:
                self.log.exception("engine crashed")
                error = ProviderError(f"engine failed: {type(exc).__name__}", code="provider_crashed")
            await self._report(error)
            self._request_close(error.close_code, error.code)
            # Stop the reader: it is waiting for frames that no longer matter.
            await self.connection.close(*self._close)  # type: ignore[misc]

    def _observe(self, result: Result) -> None:
        self.metrics.result_sent(result, self._clock.latency(result.end, time.monotonic()))
        if result.is_final:
            self._clock.forget_before(result.end)

    async def _report(self, error: SttServerError) -> None:
        self.stats.errors_out += 1
        self.metrics.error(error.code)
        await self._send(self.protocol.error(error))

    async def _send(self, frames: list[str]) -> None:
        for frame in frames:
            try:
                await self.connection.send(frame)
            except ConnectionClosed:
                return  # the client left; keep transcribing for the journal and the log

    def _metadata(self) -> dict[str, Any]:
        params = self.context.params
        return {
            "session_id": self.context.session_id,
            "request_id": self.context.session_id,
            "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "provider": params.provider,
            "model_info": dict(self.provider.describe_session(params)),
            "language": params.language,
            "encoding": params.audio.encoding,
            "sample_rate": params.audio.sample_rate,
            "channels": params.audio.channels,
            "interim_results": params.interim_results,
            "endpointing": params.endpointing_ms,
            "ignored_params": list(params.ignored_params),
        }
