"""A local stand-in for Google Cloud Speech v1 ``StreamingRecognize``, served by grpc.aio on
127.0.0.1 so the real google-cloud-speech client can be tested offline.

It "recognizes" synthetic LINEAR16 audio made by :func:`synthetic_speech`: the audio is cut into
slots of ``SLOT_SECONDS``; a slot whose samples all equal ``n * WORD_UNIT`` (n > 0) is the word
``wN``, a slot of zeros is silence. Words are reported as interim results as they arrive; a
silent slot after words ends the utterance with a final result carrying word offsets measured,
as Google does, from the start of *this* stream's audio. Because the words come from the audio
itself, re-sent audio is recognized again exactly as Google would, and a test can check that
every word reaches the client once, in order, at the right session time.

Other encodings (WebM/Opus passthrough) are recorded byte for byte and answered with one final
result on half-close. Every stream's config and audio are kept in :attr:`GoogleStandIn.streams`.

Behaviour knobs: ``max_stream_seconds`` (audio seconds a stream may carry before OUT_OF_RANGE,
Google's ~305 s limit made short) and :meth:`GoogleStandIn.inject` (abort the next streams with
a status, optionally after some audio, while the client is still writing).
"""

from __future__ import annotations

import asyncio
import datetime
import io
from collections import deque
from dataclasses import dataclass, field
from typing import Self

import av
import grpc
import numpy as np
from google.cloud.speech_v1 import (
    RecognitionConfig,
    SpeechRecognitionAlternative,
    StreamingRecognitionConfig,
    StreamingRecognitionResult,
    StreamingRecognizeRequest,
    StreamingRecognizeResponse,
    WordInfo,
)
from support import JFK_FLAC

SLOT_SECONDS = 0.25
WORD_UNIT = 100  # sample value of word n is n * WORD_UNIT
CONTAINER_INTERIM_BYTES = 4_000
END_OF_SINGLE_UTTERANCE = StreamingRecognizeResponse.SpeechEventType.END_OF_SINGLE_UTTERANCE


def synthetic_speech(words: list[int | None], rate: int = 16_000) -> bytes:
    """LINEAR16 mono audio: one slot per entry, the word number or None for silence."""
    slot = int(rate * SLOT_SECONDS)
    values = np.repeat(np.array([(n or 0) * WORD_UNIT for n in words], dtype="<i2"), slot)
    return values.tobytes()


def utterances(count: int, words_per_utterance: int = 3) -> list[int | None]:
    """``count`` utterances of distinct words, each followed by one silent slot."""
    slots: list[int | None] = []
    for u in range(count):
        slots += [u * words_per_utterance + i + 1 for i in range(words_per_utterance)] + [None]
    return slots


def encode_opus(container: str, path=JFK_FLAC) -> bytes:
    """``path`` re-encoded as Opus in a WebM or Ogg container, as a browser would send it."""
    out = io.BytesIO()
    with av.open(str(path)) as src, av.open(out, "w", format=container) as dst:
        stream = dst.add_stream("libopus", rate=48_000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        for frame in src.decode(audio=0):
            for piece in resampler.resample(frame):
                for packet in stream.encode(piece):
                    dst.mux(packet)
        for piece in resampler.resample(None):
            for packet in stream.encode(piece):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


@dataclass
class StreamRecord:
    """What one StreamingRecognize call received and how it ended."""

    config: StreamingRecognitionConfig | None = None
    audio: bytearray = field(default_factory=bytearray)
    requests: int = 0
    largest_request: int = 0
    half_closed: bool = False
    status: str = "open"  # "ok", or the name of the status it was aborted with


@dataclass
class Injection:
    code: grpc.StatusCode
    message: str
    after_bytes: int = 0


def _duration(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=round(seconds, 6))


class GoogleStandIn:
    """The stand-in server. ``async with GoogleStandIn() as g:`` starts it on a free port."""

    def __init__(self, *, max_stream_seconds: float = 305.0) -> None:
        self.max_stream_seconds = max_stream_seconds
        self.streams: list[StreamRecord] = []
        self.active = 0
        self.max_active = 0
        self._injections: deque[Injection] = deque()
        self._server: grpc.aio.Server | None = None
        self.address = ""

    def inject(self, code: grpc.StatusCode, message: str, *, after_bytes: int = 0, times: int = 1) -> None:
        """Abort the next ``times`` streams with ``code`` once they carried ``after_bytes``."""
        self._injections.extend(Injection(code, message, after_bytes) for _ in range(times))

    async def start(self) -> Self:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("google.cloud.speech.v1.Speech", {
            "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                self._streaming_recognize,
                request_deserializer=StreamingRecognizeRequest.deserialize,
                response_serializer=StreamingRecognizeResponse.serialize,
            ),
        })
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def configs(self) -> list[StreamingRecognitionConfig | None]:
        return [s.config for s in self.streams]

    async def _streaming_recognize(self, requests, context: grpc.aio.ServicerContext):
        record = StreamRecord()
        self.streams.append(record)
        injection = self._injections.popleft() if self._injections else None
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            async for response in self._recognize(requests, context, record, injection):
                yield response
            record.status = "ok"
        except asyncio.CancelledError:
            record.status = "cancelled"
            raise
        finally:
            self.active -= 1

    async def _recognize(self, requests, context, record: StreamRecord, injection: Injection | None):
        first = True
        recognizer: _Recognizer | None = None
        async for request in requests:
            record.requests += 1
            if first:
                first = False
                if "streaming_config" not in request or request.audio_content:
                    await self._abort(context, record, grpc.StatusCode.INVALID_ARGUMENT,
                                      "first request must carry streaming_config only")
                record.config = request.streaming_config
                recognizer = _Recognizer(record.config)
                if injection is not None and injection.after_bytes == 0:
                    await self._abort(context, record, injection.code, injection.message)
                continue
            if "streaming_config" in request:
                await self._abort(context, record, grpc.StatusCode.INVALID_ARGUMENT,
                                  "streaming_config may only be sent once")
            chunk = request.audio_content
            record.largest_request = max(record.largest_request, len(chunk))
            if len(chunk) > 25_600:
                await self._abort(context, record, grpc.StatusCode.INVALID_ARGUMENT,
                                  "audio_content over the 25 KB request limit")
            record.audio += chunk
            assert recognizer is not None
            if recognizer.seconds(len(record.audio)) > self.max_stream_seconds:
                await self._abort(context, record, grpc.StatusCode.OUT_OF_RANGE,
                                  f"Exceeded maximum allowed stream duration of {self.max_stream_seconds} seconds.")
            if injection is not None and len(record.audio) >= injection.after_bytes:
                await self._abort(context, record, injection.code, injection.message)
            for response in recognizer.feed(chunk):
                yield response
            if recognizer.utterance_done:
                return  # single_utterance: Google ignores the rest and ends the call
        record.half_closed = True
        if recognizer is not None:
            for response in recognizer.flush(len(record.audio)):
                yield response

    async def _abort(self, context, record: StreamRecord, code: grpc.StatusCode, message: str) -> None:
        record.status = code.name
        await context.abort(code, message)


class _Recognizer:
    """Turns one stream's audio into responses (see the module docstring)."""

    def __init__(self, config: StreamingRecognitionConfig) -> None:
        self.config = config
        rc = config.config
        self.linear16 = rc.encoding == RecognitionConfig.AudioEncoding.LINEAR16
        self.rate = rc.sample_rate_hertz or 16_000
        self.channels = max(1, rc.audio_channel_count)
        self.slot_bytes = int(self.rate * SLOT_SECONDS) * 2 * self.channels
        self.pending = bytearray()
        self.container_bytes = 0
        self.utterance_done = False
        self.slots_seen = 0
        self.words: list[tuple[str, float, float]] = []

    def seconds(self, nbytes: int) -> float:
        # Containers: count ~4 KB/s (Opus at 32 kbit/s) so the duration limit still applies.
        return nbytes / (self.rate * 2 * self.channels) if self.linear16 else nbytes / 4000

    def feed(self, chunk: bytes):
        if not self.linear16:
            # Containers: an interim per CONTAINER_INTERIM_BYTES, so the caller sees progress.
            before, self.container_bytes = self.container_bytes, self.container_bytes + len(chunk)
            if before // CONTAINER_INTERIM_BYTES != self.container_bytes // CONTAINER_INTERIM_BYTES:
                alt = SpeechRecognitionAlternative(transcript=f"container audio {self.container_bytes} bytes")
                yield StreamingRecognizeResponse(results=[StreamingRecognitionResult(
                    alternatives=[alt], stability=0.1,
                    result_end_time=_duration(self.seconds(self.container_bytes)))])
            return
        self.pending += chunk
        while len(self.pending) >= self.slot_bytes:
            slot = np.frombuffer(bytes(self.pending[:self.slot_bytes]), dtype="<i2")
            del self.pending[:self.slot_bytes]
            start = self.slots_seen * SLOT_SECONDS
            self.slots_seen += 1
            value = int(slot[0])
            if value > 0 and np.all(slot == value):
                self.words.append((f"w{value // WORD_UNIT}", start, start + SLOT_SECONDS))
                if self.config.interim_results:
                    yield self._response(is_final=False)
            elif self.words:
                if self.config.single_utterance:
                    yield StreamingRecognizeResponse(speech_event_type=END_OF_SINGLE_UTTERANCE)
                    self.utterance_done = True
                yield self._response(is_final=True)
                if self.utterance_done:
                    return

    def flush(self, total_bytes: int):
        if self.linear16:
            if self.words:
                yield self._response(is_final=True)
        elif total_bytes:
            alt = SpeechRecognitionAlternative(transcript=f"container audio {total_bytes} bytes", confidence=0.5)
            yield StreamingRecognizeResponse(results=[StreamingRecognitionResult(
                alternatives=[alt], is_final=True, result_end_time=_duration(self.seconds(total_bytes)))])

    def _response(self, *, is_final: bool) -> StreamingRecognizeResponse:
        text = " ".join(w for w, _, _ in self.words)
        end = self.words[-1][2]
        alt = SpeechRecognitionAlternative(transcript=text, confidence=0.9 if is_final else 0.0)
        if is_final:
            if self.config.config.enable_word_time_offsets:
                alt.words = [WordInfo(word=w, start_time=_duration(s), end_time=_duration(e), confidence=0.9)
                             for w, s, e in self.words]
            self.words = []
        result = StreamingRecognitionResult(alternatives=[alt], is_final=is_final,
                                            stability=0.0 if is_final else 0.8, result_end_time=_duration(end))
        return StreamingRecognizeResponse(results=[result])
