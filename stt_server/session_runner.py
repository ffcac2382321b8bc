"""One websocket session: frames in → decoder → provider stream → results out.

The reader (this task) decodes audio in arrival order and hands it to the provider; a sender
task turns results into frames. When the client says CloseStream, or simply goes away, all
audio received is still decoded and transcribed and its finals sent (if anyone is listening)
before the session ends: nothing received is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone, UTC
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import AudioDecoder, open_decoder
from .audio_format import PCM16, AudioFormat
from .errors import AudioError, ProtocolError, ProviderError, SttServerError
from .handshake import SessionContext
from .protocols import AudioIn, CloseStream, Finalize, KeepAlive, WireProtocol
from .providers import Provider, TranscriptionStream
from .results import Result

# Close codes (RFC 6455 and the registry): documented in the README's protocol section.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # bad audio, as Deepgram does
CLOSE_INTERNAL = 1011  # engine failure


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
        on_result: Callable[[SessionContext, Result], Awaitable[None] | None] | None = None,
    ) -> None:
        self.connection = connection
        self.context = context
        self.protocol = protocol
        self.provider = provider
        self.log = logger.bind(**context.log_fields())
        self.flush_timeout = flush_timeout
        self.on_result = on_result
        self.stats = SessionStats()
        self.stream_format: AudioFormat = provider.input_format(context.params.audio)
        self._close: tuple[int, str] | None = None  # first reason to close wins

    def _request_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)

    async def run(self) -> None:
        params = self.context.params
        try:
            decoder = open_decoder(params.audio, self.stream_format)
            stream = self.provider.open_stream(params, self.stream_format)
        except SttServerError as error:  # normally caught before the upgrade by check_session
            self.log.warning("cannot open stream", code=error.code, reason=error.message)
            await self._report(error)
            await self.connection.close(error.close_code, error.code)
            return
        self.log.info("session opened", encoding=params.audio.encoding, language=params.language,
                      endpoint=params.endpoint.value)
        await self._send(self.protocol.opening(self._metadata()))
        sender = asyncio.create_task(self._send_results(stream), name=f"results-{self.context.session_id}")
        client_gone = False
        audio_error: AudioError | None = None
        try:
            try:
                client_gone = await self._read_frames(decoder, stream)
            except AudioError as error:
                audio_error = error
            # After bad bytes, what decoded before them is still transcribed: its finals go
            # out first, then the Error, then the close.
            try:
                await self._feed(stream, await decoder.finish())
            except AudioError as error:
                audio_error = audio_error or error
            if audio_error is not None:
                self.log.info("bad audio", code=audio_error.code, reason=audio_error.message)
                self._request_close(audio_error.close_code, audio_error.code)
        except ProviderError as error:
            await self._report(error)
            self._request_close(error.close_code, error.code)
        finally:
            decoder.close()
            await self._finish_stream(stream, sender)
        if audio_error is not None:
            await self._report(audio_error)
        code, reason = self._close or (CLOSE_NORMAL, "")
        if not client_gone:
            await self.connection.close(code, reason)
        self.log.info("session closed", close_code=self.connection.close_code or code,
                      client_gone=client_gone, **self.stats.summary())

    async def _read_frames(self, decoder: AudioDecoder, stream: TranscriptionStream) -> bool:
        """Read until CloseStream (False) or the client goes away (True)."""
        try:
            async for frame in self.connection:
                self.stats.frames_in += 1
                try:
                    events = self.protocol.parse(frame)
                except ProtocolError as error:
                    await self._report(error)
                    continue
                for event in events:
                    if isinstance(event, AudioIn):
                        self.stats.bytes_in += len(event.data)
                        await self._feed(stream, await decoder.decode(event.data))
                    elif isinstance(event, Finalize):
                        await stream.finalize()
                    elif isinstance(event, CloseStream):
                        return False
                    elif isinstance(event, KeepAlive):
                        pass
                if self._close is not None:  # the sender saw a fatal engine error
                    return False
        except ConnectionClosed:
            return True
        # The iterator ended: the client closed, or the sender closed after an engine failure.
        return self._close is None

    async def _feed(self, stream: TranscriptionStream, audio: bytes) -> None:
        if not audio:
            return
        if self.stream_format.encoding == PCM16 and self.stream_format.sample_rate:
            self.stats.audio_seconds += len(audio) / (2 * self.stream_format.sample_rate * self.stream_format.channels)
        await stream.send_audio(audio)

    async def _finish_stream(self, stream: TranscriptionStream, sender: asyncio.Task[None]) -> None:
        """End the stream and wait (bounded) for its last finals to be sent."""
        try:
            await asyncio.wait_for(stream.close(), self.flush_timeout)
            await asyncio.wait_for(asyncio.shield(sender), self.flush_timeout)
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
                    outcome = self.on_result(self.context, result)
                    if outcome is not None:
                        await outcome
                if not result.is_final and not interim:
                    continue
                self.stats.results_out += 1
                self.stats.finals_out += result.is_final
                await self._send(self.protocol.result(result))
        except ProviderError as error:
            self.log.warning("engine failed", code=error.code, reason=error.message)
            await self._report(error)
            self._request_close(error.close_code, error.code)
            # Stop the reader: it is waiting for frames that no longer matter.
            await self.connection.close(*self._close)  # type: ignore[misc]
        except Exception as exc:  # an engine bug must end this session only
            self.log.exception("engine crashed")
            error = ProviderError(f"engine failed: {type(exc).__name__}", code="provider_crashed")
            await self._report(error)
            self._request_close(error.close_code, error.code)
            await self.connection.close(*self._close)  # type: ignore[misc]

    async def _report(self, error: SttServerError) -> None:
        self.stats.errors_out += 1
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
            "model_info": dict(self.provider.describe()),
            "language": params.language,
            "encoding": params.audio.encoding,
            "sample_rate": params.audio.sample_rate,
            "channels": params.audio.channels,
            "interim_results": params.interim_results,
            "endpointing": params.endpointing_ms,
            "ignored_params": list(params.ignored_params),
        }
