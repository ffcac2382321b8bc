"""Container audio (WebM, Ogg, WAV, FLAC, MP3) → PCM16 mono, decoded incrementally with PyAV.

PyAV's demuxers pull their input through a file object. Each stream gets one worker thread
that runs ``av.open`` and the demux/decode loop over a :class:`_BytePipe` whose ``read()``
blocks until the session hands over more bytes. The event loop never runs FFmpeg code.

``decode(chunk)`` gives the chunk to the thread and waits (asynchronously) until the thread
has swallowed all of it and is starved again (blocked in ``read()`` with an empty buffer), or
has ended. Everything decodable from the bytes sent so far has then been decoded, so the PCM
it returns is complete up to the chunk: a Finalize sent after the chunk really comes after
its audio. Only one chunk is ever queued, so memory stays bounded by what one call feeds.

Bad audio:

* ``decode()`` raises :class:`AudioError` (code ``undecodable_audio`` or
  ``encoding_mismatch``) as soon as the stream is known to be bad; the PCM decoded before the
  failure is kept and returned by ``finish()``, which does not raise it again. Later
  ``decode()`` calls raise the same error without decoding anything.
* An error at the end of input after some audio was decoded is a truncated stream: ``finish()``
  returns what was decoded. A stream that yields no audio at all makes ``finish()`` raise.

MediaRecorder restarts: only the first chunk of a WebM recording carries the EBML header. A
later chunk starting with that header is a new recording; the current stream is ended and
flushed (its PCM returned first) and a fresh demuxer starts on the new bytes.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from collections.abc import Callable

import av
import av.error

from ..audio_format import PCM16, AudioFormat
from ..errors import AudioError
from .base import AudioDecoder
from .detect import SNIFF_BYTES, WEBM_MAGIC, sniff
from .raw import RawPcmDecoder
from .wav import parse_wav_header

# encoding → FFmpeg demuxer. Naming the demuxer skips format probing.
_DEMUXERS = {"webm": "matroska", "ogg": "ogg", "wav": "wav", "flac": "flac", "mp3": "mp3"}
# Probing waits for data; the containers here describe themselves in their header.
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
# The WAV demuxer (used only for sample formats the raw path lacks) blocks until a whole
# packet (default 4096 bytes) has arrived; smaller packets lag less.
_DEMUXER_OPTIONS = {"wav": {"max_size": "1024"}}
# close() waits this long for the thread to notice; it only has to finish one packet.
_JOIN_TIMEOUT_S = 2.0
# More input than this without a single decoded sample is undecodable, not just short.
_NO_AUDIO_BYTES = 4096

_thread_ids = itertools.count(1)


class _Aborted(Exception):
    """Ends the decoder thread's loop when the session is gone."""


class _BytePipe:
    """A blocking, non-seekable file object between the event loop and one decoder thread.

    ``read()`` blocks until bytes arrive and returns b'' only at the real end (``end()``).
    ``fed`` counts chunks handed over; ``consumed`` is the count the reader had fully taken
    when it last blocked on an empty buffer, which is how the writer knows the thread has
    decoded everything it was given.
    """

    def __init__(self, on_idle: Callable[[], None]) -> None:
        self._cond = threading.Condition()
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._ended = False
        self._aborted = False
        self._on_idle = on_idle
        self.fed = 0
        self.consumed = 0

    # Writer side (event loop).
    def feed(self, data: bytes) -> int:
        with self._cond:
            if data:
                self._chunks.append(memoryview(data))
            self.fed += 1
            self._cond.notify()
            return self.fed

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._chunks.clear()
            self._cond.notify()

    # Reader side (decoder thread, called by FFmpeg through PyAV).
    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._chunks:
                if self._ended or self._aborted:
                    # An abort looks like the end of input to FFmpeg (an exception raised here
                    # would be printed and dropped by PyAV); the decode loop checks `aborted`.
                    return b""
                if self.consumed != self.fed:
                    self.consumed = self.fed
                    self._on_idle()
                self._cond.wait()
            head = self._chunks[0]
            if size < 0 or size >= len(head):
                self._chunks.popleft()
                return bytes(head)
            self._chunks[0] = head[size:]
            return bytes(head[:size])


class _Stream:
    """One container stream (one recording) decoded by one thread."""

    def __init__(self, container: str, target_rate: int, notify: Callable[[], None]) -> None:
        self._container = container
        self._target_rate = target_rate
        self._notify = notify
        self._lock = threading.Lock()
        self._output: list[bytes] = []
        self.pipe = _BytePipe(notify)
        self.error: AudioError | None = None
        self.produced_audio = False
        self.done = False
        self.thread = threading.Thread(target=self._run, name=f"stt-audio-decode-{next(_thread_ids)}",
                                       daemon=True)
        self.thread.start()

    def take_output(self) -> bytes:
        with self._lock:
            out, self._output = b"".join(self._output), []
        return out

    def _emit(self, pcm: bytes) -> None:
        if pcm:
            with self._lock:
                self._output.append(pcm)
                self.produced_audio = True

    def _run(self) -> None:
        try:
            self._decode_all()
        except _Aborted:
            pass
        except AudioError as exc:
            self.error = exc
        except (av.error.FFmpegError, ValueError, EOFError, OSError) as exc:
            # PyAV may wrap our _Aborted in its own error; an aborted stream is not bad audio.
            if not self.pipe.aborted:
                self.error = AudioError(f"the {self._container} audio could not be decoded: {exc}",
                                        code="undecodable_audio")
        finally:
            self.done = True
            self._notify()

    def _decode_all(self) -> None:
        options = {**_OPEN_OPTIONS, **_DEMUXER_OPTIONS.get(self._container, {})}
        with av.open(self.pipe, mode="r", format=_DEMUXERS[self._container], options=options) as source:
            if not source.streams.audio:
                raise AudioError(f"the {self._container} stream has no audio track", code="undecodable_audio")
            stream = source.streams.audio[0]
            resampler = _MonoResampler(self._target_rate)
            for packet in source.demux(stream):
                if self.pipe.aborted:
                    raise _Aborted
                for frame in packet.decode():
                    self._emit(resampler.resample(frame))
            if self.pipe.aborted:
                raise _Aborted
            self._emit(resampler.flush())


class _MonoResampler:
    """av.AudioResampler to s16 mono, rebuilt if the input's format changes mid-stream."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler: av.AudioResampler | None = None
        self._input_key: tuple[str, str, int] | None = None

    def resample(self, frame: av.AudioFrame) -> bytes:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = b""
        if key != self._input_key:
            out = self.flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self._rate)
            self._input_key = key
        assert self._resampler is not None
        return out + _pcm(self._resampler.resample(frame))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        out = _pcm(self._resampler.resample(None))
        self._resampler, self._input_key = None, None
        return out


def _pcm(frames: list[av.AudioFrame]) -> bytes:
    # A plane may be padded beyond its samples; s16 mono is 2 bytes a sample.
    return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames)


class ContainerDecoder(AudioDecoder):
    """Incremental container decoding; see the module docstring for the exact semantics."""

    def __init__(self, client: AudioFormat, target: AudioFormat) -> None:
        if client.encoding != "auto" and client.encoding not in _DEMUXERS:
            raise ValueError(f"not a container encoding: {client.encoding!r}")
        if target.encoding != PCM16 or target.channels != 1 or target.sample_rate is None:
            raise ValueError("containers decode to PCM16 mono at a given rate")
        self._declared = client.encoding
        self._target = target
        self._container: str | None = None  # known once the first bytes are sniffed
        self._head = b""  # first bytes held back until the container (or WAV header) is known
        self._fed_bytes = 0
        # The current stream's decoder: a PyAV thread, or for plain WAVs the raw PCM path.
        self._stream: _Stream | None = None
        self._wav: RawPcmDecoder | None = None
        self._wav_left: int | None = None  # bytes of samples the WAV header announced
        self._pending = b""  # PCM decoded but not returned yet
        self._error: AudioError | None = None
        self._error_reported = False
        self._produced_audio = False
        self._finished = False
        self._closed = False
        self._lock = asyncio.Lock()  # one decode()/finish() at a time: one chunk in flight
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def decode(self, data: bytes) -> bytes:
        async with self._lock:
            self._raise_if_failed()
            if self._finished or self._closed or not data:
                return self._take_pending()
            data = bytes(data)
            self._fed_bytes += len(data)
            if self._container is None:
                self._head += data
                if len(self._head) < SNIFF_BYTES:
                    return b""
                data, self._head = self._head, b""
                self._choose_container(data)
            elif self._container == "webm" and data.startswith(WEBM_MAGIC):
                await self._end_stream()  # a MediaRecorder restart: flush, then start afresh
            if self._error is None:
                await self._feed(data)
            self._raise_if_failed()
            return self._take_pending()

    async def finish(self) -> bytes:
        async with self._lock:
            if self._closed:
                return b""
            if not self._finished:
                self._finished = True
                if self._container is None and self._head and self._error is None:
                    head, self._head = self._head, b""  # a stream shorter than SNIFF_BYTES
                    self._choose_container(head)
                    if self._error is None:
                        await self._feed(head)
                await self._end_stream()
                if self._error is None and not self._produced_audio and self._fed_bytes > _NO_AUDIO_BYTES:
                    self._error = AudioError(
                        f"no audio could be decoded from {self._fed_bytes} bytes of {self._container}",
                        code="undecodable_audio")
            out = self._take_pending()
            if self._error is not None and not self._error_reported and not self._produced_audio:
                self._error_reported = True
                raise self._error
            return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        self._wav = None
        self._pending = b""
        if stream is not None:
            stream.pipe.abort()
            stream.thread.join(_JOIN_TIMEOUT_S)

    # Internals; all run on the event loop under self._lock.

    def _choose_container(self, data: bytes) -> None:
        found = sniff(data)
        if self._declared == "auto":
            if found is None:
                self._error = AudioError(
                    "could not recognise the audio container from its first bytes "
                    f"({data[:SNIFF_BYTES].hex(' ')}); send webm, ogg, wav, flac or mp3, or declare "
                    "a raw encoding with sample_rate", code="undecodable_audio")
                return
            self._container = found
        elif found is not None and found != self._declared:
            self._error = AudioError(
                f"the audio starts with a {found} header but the session declared "
                f"encoding={self._declared}; connect with encoding={found} or encoding=auto",
                code="encoding_mismatch")
        else:
            self._container = self._declared

    async def _feed(self, data: bytes) -> None:
        """Hand bytes of the current stream to its decoder; its PCM lands in _pending."""
        if self._container == "wav" and self._stream is None:
            data = self._wav_samples(data)
            if self._wav is not None:
                self._pending += await self._wav.decode(data)
                self._produced_audio = self._produced_audio or bool(self._pending)
                return
            if not data:
                return  # still reading the header
        if self._stream is None:
            assert self._container is not None
            self._loop = asyncio.get_running_loop()
            self._stream = _Stream(self._container, self._target.sample_rate or 0, self._notify_from_thread)
        seq = self._stream.pipe.feed(data)
        await self._wait(lambda s: s.done or s.pipe.consumed >= seq)

    def _wav_samples(self, data: bytes) -> bytes:
        """WAV bytes → the samples in them for the raw path, or, for formats only PyAV
        decodes, the whole stream so far (header included) once the header is complete."""
        if self._wav is None:
            self._head += data
            try:
                header = parse_wav_header(self._head)
            except AudioError as exc:
                self._error = exc
                return b""
            if header is None:
                return b""
            data, self._head = self._head, b""
            if header.raw_encoding is None:
                return data  # PyAV decodes it, header and all
            client = AudioFormat(header.raw_encoding, header.sample_rate, header.channels)
            self._wav = RawPcmDecoder(client, self._target)
            self._wav_left = header.data_size
            data = data[header.data_offset:]
        if self._wav_left is not None:
            data, self._wav_left = data[:self._wav_left], max(0, self._wav_left - len(data))
        return data

    async def _end_stream(self) -> None:
        """End input of the current stream, wait for its decoder, keep its PCM."""
        wav, self._wav, self._head = self._wav, None, b""
        if wav is not None:
            self._pending += await wav.finish()
        stream = self._stream
        if stream is None:
            return
        stream.pipe.end()
        await self._wait(lambda s: s.done)
        stream.thread.join()  # it has returned from _run(); this only reaps it
        self._stream = None

    async def _wait(self, ready: Callable[[_Stream], bool]) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            self._wake.clear()
            if ready(stream):
                break
            await self._wake.wait()
        self._pending += stream.take_output()
        self._produced_audio = self._produced_audio or stream.produced_audio
        if stream.done and stream.error is not None and self._error is None:
            if stream.pipe.ended and stream.produced_audio:
                return  # an error at the end of input after audio: a truncated stream
            self._error = stream.error

    def _notify_from_thread(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed; nobody is waiting any more
            pass

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error_reported = True
            raise self._error

    def _take_pending(self) -> bytes:
        out, self._pending = self._pending, b""
        return out
