"""One websocket session: frames in → decoder → provider stream → results out.

The reader (this task) decodes audio in arrival order and hands it to the provider; a sender
task turns results into frames. When the client says CloseStream, or simply goes away, all
audio received is still decoded and transcribed and its finals sent (if anyone is listening)
before the session ends: nothing received is lost. The same holds when the server stops
reading: on a graceful drain (close 1001), an idle timeout (1011) or the session's maximum
duration (1008), the audio received so far is transcribed and its finals sent before the close.

Backpressure: while the engine holds more than ``limits.max_backlog_seconds`` of this session's
audio untranscribed, the reader stops reading, so TCP slows the sender down and memory stays
bounded whatever a client sends. There is no deadline on finishing: the engine scheduler bounds
each engine call instead, and audio that cannot be transcribed (a hung call, the drain deadline)
is reported to the client in an Error with its length, and the close is never 1000.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import AudioDecoder, PassthroughDecoder, open_decoder
from .audio_format import PCM16, AudioFormat
from .config import LimitsConfig
from .errors import AudioError, ProtocolError, ProviderError, SttServerError
from .handshake import SessionContext
from .metrics import AudioClock, Metrics, SessionMetrics, SessionStats
from .protocols import AudioIn, CloseStream, Finalize, KeepAlive, Reconfigure, SetAudioFormat, WireProtocol
from .providers import Provider, TranscriptionStream
from .results import Result
from .session_state import DRAIN_REASON, SessionState, Stop

__all__ = ["DRAIN_REASON", "SessionRunner", "SessionStats"]

DEFAULT_LIMITS = LimitsConfig()


class SessionRunner:
    def __init__(
        self,
        connection: ServerConnection,
        context: SessionContext,
        protocol: WireProtocol,
        provider: Provider,
        *,
        logger: Any,
        on_result: Callable[[SessionContext, Result], Awaitable[None]] | None = None,
        limits: LimitsConfig = DEFAULT_LIMITS,
        metrics: SessionMetrics | None = None,
    ) -> None:
        self.connection = connection
        self.context = context
        self.protocol = protocol
        self.provider = provider
        self.log = logger.bind(**context.log_fields())
        self.on_result = on_result
        self.limits = limits
        # A server passes its own; alone (in a unit test, say) a runner counts into a private registry.
        self.metrics = metrics or Metrics().session(context.params.provider,
                                                    context.params.endpoint.value)
        self.stats = self.metrics.stats  # counted once, for the log line and for /metrics
        self.stream_format: AudioFormat = provider.input_format(context.params.audio)
        # Every decision about how the session ends lives in the pure state machine.
        self.state = SessionState(limits, self.stats.started)
        self._decoder: AudioDecoder = PassthroughDecoder()  # replaced in _run()
        self._draining = asyncio.Event()  # wakes a reader blocked in recv()
        # The pong to the ping sent after the Draining notice (see session_state).
        self._drain_pong: asyncio.Future[Any] | None = None
        self._clock = AudioClock()
        # Results the sender has handled (sent or skipped), so a Finalize is answered after them.
        self._handled = 0
        self._handled_event = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._stream: TranscriptionStream | None = None  # set in _run(); a Reconfigure replaces it

    def drain(self) -> None:
        """Graceful shutdown: stop reading, transcribe what came, send finals, close 1001."""
        self.state.drain(time.monotonic())
        self._draining.set()

    async def run(self) -> None:
        self.metrics.opened()
        try:
            await self._run()
        finally:
            self.metrics.closed(self.connection.close_code or self.state.final_close().code)

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
        self._stream = stream
        self._start_sender(stream)
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
                await self._feed(self._stream, await self._decoder.finish(), time.monotonic())
            except AudioError as error:
                audio_error = audio_error or error
            if audio_error is not None:
                self.log.info("bad audio", code=audio_error.code, reason=audio_error.message)
                self.metrics.decode_error()
                self.state.bad_audio(audio_error, fatal=True)
        except ProviderError as error:
            await self._report(error)
            self.state.engine_failed(error)
        except asyncio.CancelledError:  # cut at the drain deadline: drop what is left
            cut = True
            raise
        finally:
            self._decoder.close()
            stream, sender = self._stream, self._sender  # a Reconfigure may have replaced them
            assert sender is not None
            if cut:
                await self._cut(stream)
                sender.cancel()
            else:
                await self._finish_stream(stream, sender)
        if not client_gone:
            await self._send(self.protocol.closing(self.state.untranscribed_seconds))
        if audio_error is not None:  # last: the reason for the close
            await self._report(audio_error)
        close = self.state.final_close()
        if not client_gone:
            await self._close_connection(close.code, close.reason)
        self.log.info("session closed", close_code=self.connection.close_code or close.code, reason=close.reason,
                      client_gone=client_gone, **self.stats.summary())

    def _start_sender(self, stream: TranscriptionStream) -> None:
        sender = asyncio.create_task(self._send_results(stream), name=f"results-{self.context.session_id}")
        self._sender = sender
        sender.add_done_callback(lambda _task: self._handled_event.set())

    async def _reconfigure(self, stream: TranscriptionStream, event: Reconfigure) -> TranscriptionStream:
        """New engine settings (OpenAI's session.update): a fresh stream, while no audio has come.
        Raises SttServerError when the engine cannot serve them; the session goes on as it was."""
        params = self.context.params
        changed = replace(params, language=event.language or params.language,
                          endpointing_ms=params.endpointing_ms if event.endpointing_ms is None
                          else event.endpointing_ms)
        if changed == params:
            return stream
        if self.stats.bytes_in:
            raise ProtocolError("the language and turn detection can change only before the first audio; "
                                "open a new session to change them", code="session_update_after_audio")
        self.provider.check_session(changed)
        fresh = self.provider.open_stream(changed, self.stream_format)
        old_sender = self._sender
        await stream.close()  # it has had no audio: it ends at once, with no results
        if old_sender is not None:
            await old_sender
        self.context = replace(self.context, params=changed)
        self._stream = fresh
        self._start_sender(fresh)
        self.log.info("session reconfigured", language=changed.language, endpointing_ms=changed.endpointing_ms)
        return fresh

    async def _close_connection(self, code: int, reason: str) -> None:
        """Close, dropping whatever the client still sends meanwhile: the reader stopped (a
        drain, a limit), and frames left unread would keep the client's answer to our close
        frame from being read until close_timeout."""
        discard = asyncio.create_task(self._discard_frames())
        try:
            await self.connection.close(code, reason)
        finally:
            discard.cancel()

    async def _discard_frames(self) -> None:
        try:
            while True:
                await self.connection.recv()
        except ConnectionClosed:
            pass

    async def _read_frames(self, stream: TranscriptionStream) -> bool:
        """Read until CloseStream, a limit or a drain (False), or the client goes away (True)."""
        try:
            while True:
                frame = await self._next_frame()
                if isinstance(frame, Stop):
                    close = self.state.stop(frame)
                    if frame is not Stop.DRAIN:
                        self.log.info("stopped reading", why=frame.value, reason=close.reason)
                    return False
                arrived = time.monotonic()
                self.metrics.message()
                if isinstance(frame, str) and not self.state.text_frame(len(frame)):
                    return False
                try:
                    events = self.protocol.parse(frame)
                except ProtocolError as error:
                    await self._report(error)
                    continue
                for event in events:
                    if isinstance(event, AudioIn):
                        self.state.activity(arrived)
                        self.metrics.audio(len(event.data))
                        if not await self._decode_and_feed(stream, event.data, arrived):
                            break
                        await self._hold_while_engine_behind(stream)
                    elif isinstance(event, Finalize):
                        await stream.finalize()
                        await self._results_sent(stream.emitted)
                        await self._send(self.protocol.finalized())
                    elif isinstance(event, CloseStream):
                        return False
                    elif isinstance(event, KeepAlive):
                        self.state.activity(arrived)
                    elif isinstance(event, Reconfigure):
                        try:
                            stream = await self._reconfigure(stream, event)
                        except SttServerError as error:  # the rest of this message is not applied
                            await self._report(error)
                            break
                    elif isinstance(event, SetAudioFormat):  # named in-band (vosk, WhisperLive, OpenAI)
                        await self._feed(stream, await self._decoder.finish(), arrived)
                        self._decoder.close()
                        self._decoder = open_decoder(event.audio, self.stream_format)
                await self._send(self.protocol.acknowledge())
                if self.state.close is not None:  # the sender saw a fatal engine error
                    return False
        except ConnectionClosed:
            # The client went away, or the sender closed the connection after an engine failure.
            return self.state.close is None

    async def _decode_and_feed(self, stream: TranscriptionStream, data: bytes, arrived: float) -> bool:
        """Decode one chunk and feed it; False when bad audio was reported and the session
        goes on without the rest of this frame (protocols whose audio errors are not fatal)."""
        try:
            await self._feed(stream, await self._decoder.decode(data), arrived)
            return True
        except AudioError as error:
            if self.state.bad_audio(error, fatal=self.protocol.audio_errors_are_fatal):
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

    async def _results_sent(self, count: int) -> None:
        """Wait until the sender has handled ``count`` results (or stopped)."""
        while self._handled < count and self._sender is not None and not self._sender.done():
            self._handled_event.clear()
            await self._handled_event.wait()

    async def _hold_while_engine_behind(self, stream: TranscriptionStream) -> None:
        """Backpressure: stop reading while the engine is too far behind on this session."""
        limit = self.limits.max_backlog_seconds
        if not limit or stream.backlog_seconds() <= limit or self.state.drain_answered_at is not None:
            return
        waited = await stream.wait_for_room(limit)
        self.metrics.held(waited)
        self.state.held(time.monotonic())

    async def _next_frame(self) -> str | bytes | Stop:
        """The next client frame, or why reading stops now (drain, idle, maximum duration)."""
        timeout, why = self.state.next_stop(time.monotonic())
        if why is Stop.DRAIN and self.state.tell_draining():
            self.log.info("draining: transcribing the audio received")
            await self._send(self.protocol.draining(
                "server shutting down: transcribing the audio sent before this message, then closing with 1001"))
            self._drain_pong = await self._ping()
        if timeout is not None and timeout <= 0:
            return why
        if why is Stop.DRAIN:
            if self.state.drain_answered_at is None and self._drain_pong is not None:
                # Until the pong: every frame the client sent before it saw the notice.
                frame = await self._receive_or(self._drain_pong, timeout)
                if self._drain_pong.done():
                    if self._drain_pong.cancelled() or self._drain_pong.exception() is not None:
                        self._drain_pong = None  # the connection closed: the next recv() says so
                    else:
                        self.state.drain_answered(time.monotonic())
                return frame if frame is not None else await self._next_frame()
            try:  # then only frames already on their way, briefly
                return await asyncio.wait_for(self.connection.recv(), timeout)
            except TimeoutError:
                return why
        drain = asyncio.ensure_future(self._draining.wait())
        try:
            frame = await self._receive_or(drain, timeout)
        finally:
            drain.cancel()
        return frame if frame is not None else await self._next_frame()  # drained, or a deadline passed

    async def _receive_or(self, other: asyncio.Future[Any], timeout: float | None) -> str | bytes | None:
        """The next client frame, or None when ``other`` completes or ``timeout`` passes first.
        Raises ConnectionClosed when the client is gone."""
        receive = asyncio.ensure_future(self.connection.recv())
        try:
            await asyncio.wait({receive, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not receive.done():
                receive.cancel()  # safe: websockets keeps the message for the next recv()
                await asyncio.wait({receive})  # no second recv() while this one unwinds
        return None if receive.cancelled() else receive.result()

    async def _ping(self) -> asyncio.Future[Any] | None:
        """Ping the client; the future completes with its pong (None: the connection is closed)."""
        try:
            pong = asyncio.ensure_future(await self.connection.ping())
        except ConnectionClosed:
            return None
        # A close fails the pong; that is no error to log ("exception was never retrieved").
        pong.add_done_callback(lambda done: done.cancelled() or done.exception())
        return pong

    async def _feed(self, stream: TranscriptionStream, audio: bytes, arrived: float) -> None:
        if not audio:
            return
        if self.stream_format.encoding == PCM16 and self.stream_format.sample_rate:
            seconds = len(audio) / (2 * self.stream_format.sample_rate * self.stream_format.channels)
            self.metrics.audio_seconds(seconds)
            self._clock.received(self.stats.audio_seconds, arrived)
        await stream.send_audio(audio)

    async def _finish_stream(self, stream: TranscriptionStream, sender: asyncio.Task[None]) -> None:
        """End the stream and wait for its last finals to be sent.

        No deadline here: every engine call is bounded by the scheduler's call timeout, and a
        stream that fails ends its results with the error, which the sender reports."""
        try:
            await stream.close()
            await asyncio.shield(sender)
        except asyncio.CancelledError:  # the session is being cut (drain deadline): stop now
            await self._cut(stream)
            sender.cancel()
            raise
        except ProviderError:
            await asyncio.shield(sender)  # the same failure reaches the client through results()
        except Exception:
            self.log.exception("engine failed while finishing")
            self._lose(stream, "the engine failed")
            sender.cancel()

    async def _cut(self, stream: TranscriptionStream) -> None:
        """Cut at the drain deadline: tell the client what was not transcribed (an Error, the
        closing Metadata's seconds, the close's reason), then abort."""
        lost = self._lose(stream, "the server's drain deadline passed")
        await stream.abort()
        if lost <= 0:
            return  # everything was transcribed: the server closes it 1001 as drained
        await self._report(ProviderError(
            f"server shutting down: {lost:.1f} s of the audio received were not transcribed "
            "before the drain deadline", code="untranscribed_audio"))
        await self._send(self.protocol.closing(self.state.untranscribed_seconds))
        close = self.state.cut()
        await self._close_connection(close.code, close.reason)

    def _lose(self, stream: TranscriptionStream, why: str) -> float:
        """Account for audio that will not be transcribed: the log, the metrics, the summary."""
        seconds = stream.untranscribed_seconds()
        if seconds > 0:
            self.state.lost(seconds)
            self.metrics.untranscribed(seconds)
            self.log.warning("audio not transcribed", seconds=round(seconds, 3), reason=why)
        return seconds

    async def _send_results(self, stream: TranscriptionStream) -> None:
        interim = self.context.params.interim_results
        try:
            async for result in stream.results():
                if result.loop_words_removed:
                    self.metrics.loop_cut(result)
                    self.log.debug("loop cut", words=result.loop_words_removed, final=result.is_final,
                                   start=result.start, end=result.end)
                if self.on_result is not None:
                    await self.on_result(self.context, result)
                if result.is_final or interim:
                    await self._send(self.protocol.result(result))
                    self._observe(result)
                self._handled += 1
                self._handled_event.set()
        except Exception as exc:  # an engine failure, or an engine bug, ends this session only
            if isinstance(exc, ProviderError):
                error = exc
                self.log.warning("engine failed", code=error.code, reason=error.message)
            else:
                self.log.exception("engine crashed")
                error = ProviderError(f"engine failed: {type(exc).__name__}", code="provider_crashed")
            lost = self._lose(stream, error.code)
            if lost > 0:
                error = type(error)(f"{error.message}; {lost:.1f} s of the audio received were not "
                                    "transcribed", code=error.code)
            await self._report(error)
            self.state.engine_failed(error)
            # Stop the reader: it is waiting for frames that no longer matter.
            close = self.state.final_close()
            await self.connection.close(close.code, close.reason)

    def _observe(self, result: Result) -> None:
        self.metrics.result_sent(result, self._clock.latency(result.end, time.monotonic()))
        if result.is_final:
            self._clock.forget_before(result.end)

    async def _report(self, error: SttServerError) -> None:
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
