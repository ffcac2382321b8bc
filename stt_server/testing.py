"""A conformance kit for providers: drives one through the interface's contract.

A plugin author runs it against their engine (every built-in provider passes it in this
project's test suite)::

    from stt_server.testing import check_provider

    async def test_my_engine_conforms():
        provider = MyProvider(MyOptions())
        await provider.start()
        try:
            report = await check_provider(provider, speech_pcm16)
        finally:
            await provider.stop()
        assert report.finals

What it checks, each on a fresh stream (a failure raises :class:`ConformanceError` saying
which promise was broken):

* ``open_stream`` does not block, and the event loop is never blocked while the engine works
  (a ticker measures the loop's lag throughout; ``max_loop_lag`` seconds at most);
* finals for everything sent: after ``close()`` the results end, within ``timeout``, and hold
  finals with text when the speech has words (``expect_text``);
* timestamps are in seconds of the stream: 0 <= start <= end <= the audio sent (plus a
  tolerance), words inside their result, finals in order and not overlapping, confidences in
  0..1, final text not empty;
* ``finalize()`` closes the current utterance without closing the stream: a final arrives
  without more audio being sent, the stream then takes more audio, and closes normally;
* audio split at odd byte offsets is accepted (a websocket frame may end mid-sample);
* a stream closed before any audio ends its results with no final text; ``abort()`` ends the
  results too.

It needs no server and no network; the provider must be started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from .audio_format import AudioFormat, pcm16_mono
from .providers.base import Provider, TranscriptionStream
from .results import Result
from .session import Endpoint, SessionParams

# open_stream "must not block": it may build objects, not load models or wait for the network.
OPEN_STREAM_BUDGET = 0.05


class ConformanceError(AssertionError):
    """A provider broke a promise of the interface (an AssertionError, so test runners show it)."""


@dataclass
class ConformanceReport:
    """What the runs produced, for the caller's own assertions (say, a WER)."""

    finals: list[Result] = field(default_factory=list)
    interims: int = 0
    finalize_finals: list[Result] = field(default_factory=list)
    max_loop_lag: float = 0.0
    checks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(r.text for r in self.finals)


def default_session(provider: str, *, language: str = "en-US", sample_rate: int = 16_000,
                    **fields: object) -> SessionParams:
    values: dict[str, object] = {
        "endpoint": Endpoint.NATIVE, "provider": provider, "language": language,
        "audio": pcm16_mono(sample_rate), "interim_results": True, "punctuate": True, "words": True,
        "endpointing_ms": 800, **fields}
    return SessionParams(**values)  # type: ignore[arg-type]


class _LoopLag:
    """Sleeps ``interval`` over and over and records how late it wakes: a blocked loop shows."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, time.perf_counter() - began - self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_LoopLag]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ResultCollector:
    """Reads a stream's results in the background; keeps the error that ended them, if any."""

    def __init__(self, stream: TranscriptionStream) -> None:
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(stream))

    async def _run(self, stream: TranscriptionStream) -> None:
        try:
            async for result in stream.results():
                self.results.append(result)
        except Exception as exc:  # noqa: BLE001 - reported as a conformance failure
            self.error = exc

    @property
    def finals(self) -> list[Result]:
        return [r for r in self.results if r.is_final]

    @property
    def text(self) -> str:
        return " ".join(r.text for r in self.finals)

    async def ended(self, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.task.cancel()
            raise ConformanceError(f"{what}: results did not end within {timeout:g} s") from None
        if self.error is not None:
            raise ConformanceError(f"{what}: results ended with an error: {self.error!r}")


def _fail(ok: bool, message: str) -> None:
    if not ok:
        raise ConformanceError(message)


def odd_chunks(audio: bytes, size: int) -> list[bytes]:
    """``audio`` in pieces of about ``size`` bytes, every other one ending mid-sample."""
    chunks, position, odd = [], 0, True
    while position < len(audio):
        step = size + 1 if odd else size - 1
        chunks.append(audio[position:position + step])
        position += step
        odd = not odd
    return chunks


def check_results(results: Sequence[Result], audio_seconds: float, *, tolerance: float, what: str) -> None:
    """Timing and value promises of every result, and the order of finals."""
    previous_end = 0.0
    for result in results:
        label = f"{what}: {'final' if result.is_final else 'interim'} {result.text!r} [{result.start}, {result.end}]"
        _fail(0.0 <= result.start <= result.end, f"{label}: start must be >= 0 and <= end")
        _fail(result.end <= audio_seconds + tolerance,
              f"{label}: ends after the {audio_seconds:.2f} s of audio sent (timestamps must be stream seconds)")
        _fail(0.0 <= result.confidence <= 1.0, f"{label}: confidence {result.confidence} outside 0..1")
        for word in result.words:
            _fail(result.start - tolerance <= word.start <= word.end <= result.end + tolerance,
                  f"{label}: word {word.word!r} [{word.start}, {word.end}] outside its result")
            _fail(0.0 <= word.confidence <= 1.0, f"{label}: word confidence {word.confidence} outside 0..1")
        if result.is_final:
            _fail(bool(result.text.strip()), f"{label}: a final result with no text (send none instead)")
            _fail(result.start >= previous_end - tolerance, f"{label}: overlaps the final before it "
                  f"(which ended at {previous_end})")
            previous_end = result.end


async def check_provider(
    provider: Provider,
    speech: bytes,
    *,
    session: SessionParams | None = None,
    expect_text: bool = True,
    chunk_bytes: int = 3_200,
    pace: float = 0.0,
    timeout: float = 60.0,
    tolerance: float = 0.5,
    max_loop_lag: float = 0.3,
) -> ConformanceReport:
    """Run every check against a started ``provider``; raise ConformanceError on the first broken one.

    ``speech``: audio in the provider's input format for ``session`` (16 kHz mono PCM16 for the
    default session), ideally a few seconds with pauses. ``pace``: feed at this multiple of real
    time (0 = as fast as the provider takes it). ``tolerance``: seconds of slack on timestamps
    (padding around speech).
    """
    params = session or default_session(provider.name)
    audio_format: AudioFormat = provider.input_format(params.audio)
    bytes_per_second = audio_format.sample_rate * audio_format.channels * 2 if audio_format.sample_rate else 32_000
    report = ConformanceReport()
    lag = _LoopLag()
    async with lag.running():
        await _check_full_stream(provider, params, audio_format, speech, report, expect_text=expect_text,
                                 chunk_bytes=chunk_bytes, pace=pace, timeout=timeout, tolerance=tolerance,
                                 bytes_per_second=bytes_per_second)
        await _check_finalize(provider, params, audio_format, speech, report, expect_text=expect_text,
                              chunk_bytes=chunk_bytes, timeout=timeout, tolerance=tolerance,
                              bytes_per_second=bytes_per_second)
        await _check_empty_and_abort(provider, params, audio_format, speech[:chunk_bytes], timeout=timeout)
    report.max_loop_lag = lag.worst
    _fail(lag.worst <= max_loop_lag, f"the event loop was blocked for {lag.worst:.3f} s (at most {max_loop_lag} s "
          f"allowed): run blocking engine calls in a worker thread or process")
    report.checks.append(f"event loop lag at most {lag.worst * 1000:.0f} ms")
    return report


def _open(provider: Provider, params: SessionParams, audio_format: AudioFormat, what: str) -> TranscriptionStream:
    began = time.perf_counter()
    stream = provider.open_stream(params, audio_format)
    took = time.perf_counter() - began
    _fail(took <= OPEN_STREAM_BUDGET, f"{what}: open_stream took {took:.3f} s; it must not block "
          f"(load models in start(), connect lazily)")
    return stream


async def _feed(stream: TranscriptionStream, chunks: Sequence[bytes], pace: float, bytes_per_second: int) -> None:
    began = time.monotonic()
    sent = 0
    for chunk in chunks:
        await stream.send_audio(chunk)
        sent += len(chunk)
        if pace:
            await asyncio.sleep(max(0.0, began + sent / bytes_per_second / pace - time.monotonic()))
        else:
            await asyncio.sleep(0)  # let the results flow as a server's loop would


async def _check_full_stream(provider: Provider, params: SessionParams, audio_format: AudioFormat, speech: bytes,
                             report: ConformanceReport, *, expect_text: bool, chunk_bytes: int, pace: float,
                             timeout: float, tolerance: float, bytes_per_second: int) -> None:
    what = "send everything, then close()"
    stream = _open(provider, params, audio_format, what)
    collector = ResultCollector(stream)
    await _feed(stream, odd_chunks(speech, chunk_bytes), pace, bytes_per_second)
    await asyncio.wait_for(stream.close(), timeout)
    await collector.ended(timeout, what)
    check_results(collector.results, len(speech) / bytes_per_second, tolerance=tolerance, what=what)
    if expect_text:
        _fail(bool(collector.finals), f"{what}: no final result for {len(speech) / bytes_per_second:.1f} s of speech")
    report.finals = collector.finals
    report.interims = len(collector.results) - len(collector.finals)
    report.checks.append(f"{what}: {len(report.finals)} finals, {report.interims} interims, results ended")


async def _check_finalize(provider: Provider, params: SessionParams, audio_format: AudioFormat, speech: bytes,
                          report: ConformanceReport, *, expect_text: bool, chunk_bytes: int, timeout: float,
                          tolerance: float, bytes_per_second: int) -> None:
    what = "finalize() mid-stream"
    stream = _open(provider, params, audio_format, what)
    collector = ResultCollector(stream)
    # Half the speech: finalize must cut there, not wait for the end of the utterance.
    half = len(speech) // 2 - (len(speech) // 2) % 2
    await _feed(stream, odd_chunks(speech[:half], chunk_bytes), 0.0, bytes_per_second)
    await asyncio.wait_for(stream.finalize(), timeout)
    if expect_text:
        deadline = time.monotonic() + timeout
        while not collector.finals and time.monotonic() < deadline and not collector.task.done():
            await asyncio.sleep(0.02)
        _fail(bool(collector.finals), f"{what}: no final within {timeout:g} s of finalize() (without closing)")
        report.finalize_finals = list(collector.finals)
    # The stream goes on after a finalize: more audio, then close.
    await _feed(stream, odd_chunks(speech[half:], chunk_bytes), 0.0, bytes_per_second)
    await asyncio.wait_for(stream.close(), timeout)
    await collector.ended(timeout, what)
    check_results(collector.results, len(speech) / bytes_per_second, tolerance=tolerance, what=what)
    if report.finalize_finals:
        cut = report.finalize_finals[-1].end
        _fail(cut <= half / bytes_per_second + tolerance,
              f"{what}: the final after finalize() ends at {cut} s, after the {half / bytes_per_second:.2f} s sent")
    report.checks.append(f"{what}: final without closing; stream went on and closed")


async def _check_empty_and_abort(provider: Provider, params: SessionParams, audio_format: AudioFormat,
                                 chunk: bytes, *, timeout: float) -> None:
    what = "close() with no audio"
    stream = _open(provider, params, audio_format, what)
    collector = ResultCollector(stream)
    await asyncio.wait_for(stream.close(), timeout)
    await collector.ended(timeout, what)
    _fail(not any(r.text.strip() for r in collector.finals), f"{what}: a final with text for no audio")
    what = "abort()"
    stream = _open(provider, params, audio_format, what)
    collector = ResultCollector(stream)
    await stream.send_audio(chunk)
    await asyncio.wait_for(stream.abort(), timeout)
    await collector.ended(timeout, what)
