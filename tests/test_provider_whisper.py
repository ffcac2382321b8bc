"""The whisper provider with the real bundled tiny.en model and real audio; no mocks.

One provider serves the whole module (loading and warming the model takes ~1.5 s); each test
opens its own streams on its own event loop, which works because the provider holds no
loop-bound state, only thread pools.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer

from stt_server.audio_format import pcm16_mono
from stt_server.config import build
from stt_server.errors import ConfigError, ProviderError, RequestError
from stt_server.providers import whisper as whisper_module
from stt_server.providers.base import TranscriptionStream
from stt_server.providers.segmenter import Cut, Segmenter
from stt_server.providers.whisper import WhisperOptions, WhisperProvider, whisper_language
from stt_server.providers.whisper_decode import Decoded, DecodeRequest, decode_batch
from stt_server.providers.scheduler import Priority
from stt_server.providers.whisper_stream import ModelJob, make_result
from stt_server.results import Result, Word
from stt_server.session import Endpoint, SessionParams

RATE = 16_000
CHUNK = 3_200  # 100 ms of PCM16
JFK = load_pcm16(JFK_FLAC)
# A request of this many samples stands for another session's work that keeps the engine busy.
BUSY_SAMPLES = 1_600
JFK_SECONDS = len(JFK) / 2 / RATE


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def session(**overrides: object) -> SessionParams:
    values: dict[str, object] = {
        "endpoint": Endpoint.NATIVE, "provider": "whisper", "language": "en-US", "audio": pcm16_mono(RATE),
        "interim_results": False, "punctuate": True, "words": True, "endpointing_ms": 800,
    }
    values.update(overrides)
    return SessionParams(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def provider() -> Iterator[WhisperProvider]:
    whisper = WhisperProvider(WhisperOptions())
    asyncio.run(whisper.start())
    yield whisper
    asyncio.run(whisper.stop())


class Collector:
    """Reads a stream's results in the background, noting when each arrived."""

    def __init__(self, stream: TranscriptionStream) -> None:
        self.results: list[Result] = []
        self.arrived: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._run(stream))

    async def _run(self, stream: TranscriptionStream) -> None:
        async for result in stream.results():
            self.results.append(result)
            self.arrived.append(time.monotonic())

    @property
    def finals(self) -> list[Result]:
        return [r for r in self.results if r.is_final]

    @property
    def text(self) -> str:
        return " ".join(r.text for r in self.finals)


async def feed(stream: TranscriptionStream, pcm: bytes, pace: float = 0.0, chunk: int = CHUNK) -> None:
    """Send ``chunk``-byte chunks (100 ms); ``pace`` × real time, 0 = as fast as possible."""
    began = time.monotonic()
    for i in range(0, len(pcm), chunk):
        await stream.send_audio(pcm[i:i + chunk])
        if pace:
            due = began + (i + chunk) / 2 / RATE / pace
            await asyncio.sleep(max(0.0, due - time.monotonic()))


def spans(results: list[Result]) -> list[tuple[float, float, str]]:
    return [(r.start, r.end, r.text) for r in results]


async def transcribe(provider: WhisperProvider, pcm: bytes, *, pace: float = 0.0, chunk: int = CHUNK,
                     **params: object) -> Collector:
    stream = provider.open_stream(session(**params), pcm16_mono(RATE))
    collector = Collector(stream)
    await feed(stream, pcm, pace, chunk)
    await stream.close()
    await asyncio.wait_for(collector.task, 30)
    return collector


# --------------------------------------------------------------------------- real engine


@pytest.mark.slow
async def test_jfk_fed_fast_then_closed(provider: WhisperProvider) -> None:
    got = await transcribe(provider, JFK)
    assert got.results, "no results at all"
    assert all(r.is_final for r in got.results)  # interim_results is off
    assert wer(JFK_TEXT, got.text) <= 0.15, got.text
    words = [w for r in got.finals for w in r.words]
    starts = [w.start for w in words]
    assert len(words) >= 18
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0.0 <= w.start <= w.end <= 11.5 for w in words)
    # Finals tile the stream in order and never overlap.
    for before, after in zip(got.finals, got.finals[1:]):
        assert before.end <= after.start
    assert all(0.0 < r.confidence <= 1.0 and r.text == r.text.strip() for r in got.finals)


@pytest.mark.slow
async def test_interim_arrives_before_first_final_at_twice_real_time(provider: WhisperProvider) -> None:
    got = await transcribe(provider, JFK, pace=2.0, interim_results=True)
    kinds = ["final" if r.is_final else "interim" for r in got.results]
    assert "interim" in kinds and kinds.index("interim") < kinds.index("final"), kinds
    assert wer(JFK_TEXT, got.text) <= 0.15, got.text
    for result in got.results:
        assert result.text and 0.0 <= result.start < result.end <= JFK_SECONDS + 0.01


@pytest.mark.slow
async def test_long_stream_cuts_every_repetition_alike(provider: WhisperProvider) -> None:
    """The VAD's state is restarted at pauses, so the 5th repetition of a recording is cut like the
    1st. Without it Silero's state drifted: the quiet "ask not" began 0.35 s later from the third
    repetition on ("Masked off!") and 0.7 s later from the sixth ("Knock!"). The cuts must not
    depend on how the client sizes its frames either."""
    period = len(JFK) + 2 * RATE  # 1 s of silence after each repetition
    repeats = 6
    pcm = (JFK + silence(1.0)) * repeats
    by_chunking = []
    for chunk in (CHUNK, 20 * CHUNK + 2):  # 100 ms frames; ~2 s frames of odd size
        got = await transcribe(provider, pcm, chunk=chunk)
        by_chunking.append(spans(got.finals))
        per_repeat: list[list[tuple[float, float, str]]] = [[] for _ in range(repeats)]
        for r in got.finals:
            k = int(r.start // (period / 2 / RATE))
            offset = k * period / 2 / RATE
            per_repeat[k].append((round(r.start - offset, 2), round(r.end - offset, 2), r.text))
        # The first repetition starts the stream from a fresh state (no pause before it).
        assert all(cuts == per_repeat[1] for cuts in per_repeat[2:]), per_repeat
        assert len(per_repeat[1]) == 3 and "ask not" in per_repeat[1][1][2].lower(), per_repeat[1]
        assert wer(" ".join([JFK_TEXT] * (repeats - 1)), " ".join(
            text for cuts in per_repeat[1:] for _, _, text in cuts)) <= 0.1
    assert by_chunking[0] == by_chunking[1]


@pytest.mark.slow
async def test_finals_do_not_depend_on_the_sending_pace(provider: WhisperProvider) -> None:
    """A file uploaded at full speed gets the finals a live client gets for the same audio, with
    interims or without: cuts come from the audio alone, and decodes ahead of the endpoint are
    the finals' own. (Uploaded, jfk's two short phrases share a beam search; both have the 8 s
    shortest window, so neither is padded to the other's.)"""
    pcm = (JFK + silence(1.0)) * 2
    fast = await transcribe(provider, pcm)
    paced = await transcribe(provider, pcm, pace=3.0, interim_results=True)
    assert spans(fast.finals) == spans(paced.finals)
    assert len(fast.finals) == 6 and wer(" ".join([JFK_TEXT] * 2), fast.text) <= 0.1, fast.text


@pytest.mark.slow
async def test_final_is_decoded_ahead_of_the_endpoint(provider: WhisperProvider,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a pause reaches the pad (300 ms) the final's audio is complete: its decode starts
    then, and the endpoint (800 ms) emits it without decoding again."""
    decoded: list[bool] = []

    def counting(model: object, requests: list[DecodeRequest], settings: object) -> list[Decoded]:
        decoded.extend(request.final for request in requests)
        return decode_batch(model, requests, settings)

    monkeypatch.setattr(whisper_module, "decode_batch", counting)
    stream = provider.open_stream(session(), pcm16_mono(RATE))
    collector = Collector(stream)
    await feed(stream, JFK[:int(2.6 * RATE) * 2] + silence(0.2))  # "And so my fellow Americans", 0.56 s of pause
    speculation = stream._speculation  # type: ignore[attr-defined]
    assert speculation is not None and not collector.finals
    await asyncio.wait_for(asyncio.wait([speculation[2]]), 30)  # decoded before the endpoint
    assert not collector.finals and decoded == [True]
    await feed(stream, silence(1.0))
    await stream.close()
    await asyncio.wait_for(collector.task, 30)
    assert "fellow americans" in collector.text.lower()
    assert collector.finals[0].speech_final and (collector.finals[0].start, collector.finals[0].end) == (
        speculation[0] / RATE, speculation[1] / RATE)
    assert decoded == [True]  # the decode ahead was the final's


@pytest.mark.slow
async def test_no_decode_ahead_in_a_short_utterance_while_the_engine_works(
        provider: WhisperProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short utterance's decode ahead is thrown away if speech resumes: it starts only while
    the engine is idle, never beside another session's work. Its final then comes at the
    endpoint, the same final."""
    release = threading.Event()
    decoded: list[int] = []

    def slow_for_the_other_session(model: object, requests: list[DecodeRequest], settings: object) -> list[Decoded]:
        if any(request.audio.size == BUSY_SAMPLES for request in requests):
            release.wait(30)
        decoded.extend(request.audio.size for request in requests)
        return decode_batch(model, requests, settings)

    monkeypatch.setattr(whisper_module, "decode_batch", slow_for_the_other_session)
    other = provider.scheduler_lane()
    busy = asyncio.ensure_future(other.run(ModelJob(provider.model, DecodeRequest(
        np.zeros(BUSY_SAMPLES, dtype=np.float32), "en", final=True, words=False)), priority=Priority.FINAL, weight=0.1))
    stream = provider.open_stream(session(), pcm16_mono(RATE))
    collector = Collector(stream)
    try:
        await asyncio.sleep(0.05)
        assert not provider.scheduler.is_idle() and provider.scheduler.has_idle_worker()
        await feed(stream, JFK[:int(2.6 * RATE) * 2] + silence(0.2))  # "And so my fellow Americans", 0.56 s of pause
        assert stream._speculation is None  # type: ignore[attr-defined]
    finally:
        release.set()
    await asyncio.wait_for(busy, 30)
    await feed(stream, silence(1.0))
    await stream.close()
    await asyncio.wait_for(collector.task, 30)
    assert "fellow americans" in collector.text.lower() and collector.finals[0].speech_final
    assert len(decoded) == 2  # the other session's, then this final once, at the endpoint


@pytest.mark.slow
async def test_pauses_shorter_than_the_endpoint_do_not_end_an_utterance(
        provider: WhisperProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """jfk's pauses (~1 s) exceed the pad but not a 2 s endpoint: every decode started ahead at a
    pause is dropped when speech resumes, and the whole recording is one final (long speech not
    split: split_after_seconds 0)."""
    monkeypatch.setattr(provider, "options", dataclasses.replace(provider.options, split_after_seconds=0))
    got = await transcribe(provider, JFK + silence(2.5), pace=4.0, endpointing_ms=2000)
    assert len(got.finals) == 1 and got.finals[0].speech_final, [r.text for r in got.finals]
    assert wer(JFK_TEXT, got.text) <= 0.15, got.text


async def test_silence_and_noise_give_no_text(provider: WhisperProvider) -> None:
    rng = np.random.default_rng(7)
    noise = np.clip(rng.normal(0, 0.1, 5 * RATE), -1, 1)
    noise_pcm = (noise * 32767).astype("<i2").tobytes()
    for pcm in (silence(5.0), noise_pcm, silence(2.0) + noise_pcm):
        got = await transcribe(provider, pcm, interim_results=True, endpointing_ms=300)
        assert [r.text for r in got.results if r.text] == []


@pytest.mark.slow
async def test_long_speech_is_split_where_it_resumes_and_endpoints_stay_endpoints(provider: WhisperProvider) -> None:
    """With a 2 s endpoint, jfk's ~1 s pauses end no utterance, but past split_after_seconds (6)
    the next one splits it: a final that is not an endpoint, then the rest ending on the
    endpoint. Every word arrives once."""
    got = await transcribe(provider, JFK + silence(2.5), pace=4.0, endpointing_ms=2000)
    assert [r.speech_final for r in got.finals] == [False, True], [(r.text, r.start, r.end) for r in got.finals]
    assert got.finals[0].end - got.finals[0].start >= 6.0 and got.finals[1].start >= got.finals[0].end
    assert wer(JFK_TEXT, got.text) <= 0.15, got.text


@pytest.mark.slow
async def test_finalize_emits_a_final_before_close(provider: WhisperProvider) -> None:
    # Endpointing off; JFK's pauses (~1.1 s) are shorter than pause_final_ms: only finalize cuts.
    stream = provider.open_stream(session(endpointing_ms=0), pcm16_mono(RATE))
    got = Collector(stream)
    half = 5 * RATE * 2  # "...ask not what your country can do for you" ends ~5 s
    await feed(stream, JFK[:half])
    await stream.finalize()
    # finalize() returns after the final is emitted; let the collector take it off the queue.
    await asyncio.sleep(0)
    assert len(got.finals) == 1
    first = got.finals[0]
    assert first.speech_final is False and first.end <= half / 2 / RATE + 0.01
    assert "americans" in first.text.lower()
    await feed(stream, JFK[half:])
    await stream.close()
    await asyncio.wait_for(got.task, 30)
    assert len(got.finals) >= 2 and got.finals[1].start >= first.end
    assert wer(JFK_TEXT, got.text) <= 0.2, got.text


@pytest.mark.slow
async def test_two_streams_at_once(provider: WhisperProvider) -> None:
    one, two = await asyncio.gather(
        transcribe(provider, JFK, pace=4.0, interim_results=True),
        transcribe(provider, JFK, pace=4.0, interim_results=True),
    )
    for got in (one, two):
        assert wer(JFK_TEXT, got.text) <= 0.15, got.text


@pytest.mark.slow
async def test_endpointing_closes_utterances_on_silence(provider: WhisperProvider) -> None:
    gap = 1.5
    got = await transcribe(provider, JFK + silence(gap) + JFK, endpointing_ms=800)
    endpointed = [r for r in got.finals if r.speech_final]
    assert len(endpointed) >= 2
    # One endpoint falls in the inserted silence: a final ends there, the next starts after it.
    boundary = JFK_SECONDS + gap
    assert any(JFK_SECONDS - 1.0 <= r.end <= boundary and r.speech_final for r in got.finals)
    assert any(r.start >= JFK_SECONDS for r in got.finals)
    assert wer(f"{JFK_TEXT} {JFK_TEXT}", got.text) <= 0.15, got.text
    words = [w.start for r in got.finals for w in r.words]
    assert words == sorted(words) and words[-1] > boundary


async def test_long_speech_gets_a_forced_final() -> None:
    # Own provider: a small max_utterance_seconds, so JFK's speech (no long pause) is cut.
    whisper = WhisperProvider(WhisperOptions(max_utterance_seconds=4.0, pause_final_ms=0))
    await whisper.start()
    try:
        got = await transcribe(whisper, JFK, endpointing_ms=0)
    finally:
        await whisper.stop()
    assert len(got.finals) >= 2
    assert all(r.duration <= 4.0 + 1e-6 and not r.speech_final for r in got.finals)
    assert wer(JFK_TEXT, got.text) <= 0.3, got.text


async def test_abort_drops_buffered_audio(provider: WhisperProvider) -> None:
    stream = provider.open_stream(session(endpointing_ms=0), pcm16_mono(RATE))
    got = Collector(stream)
    await feed(stream, JFK)
    await stream.abort()
    await asyncio.wait_for(got.task, 10)
    assert got.results == []


async def test_engine_stopping_mid_stream_fails_the_stream() -> None:
    whisper = WhisperProvider(WhisperOptions())
    await whisper.start()
    stream = whisper.open_stream(session(), pcm16_mono(RATE))
    results = stream.results()
    await feed(stream, JFK[:RATE * 2])
    await whisper.stop()
    await stream.send_audio(JFK[RATE * 2:RATE * 4])  # must not raise: the error goes to results
    await stream.close()
    with pytest.raises(ProviderError):
        async for _ in results:
            pass


async def test_unusable_model_path_is_a_provider_error(tmp_path: object) -> None:
    whisper = WhisperProvider(WhisperOptions(model=str(tmp_path)))
    with pytest.raises(ProviderError, match="CTranslate2 model directory"):
        await whisper.start()
    assert not whisper.is_ready()


def test_describe_and_language(provider: WhisperProvider) -> None:
    facts = provider.describe()
    assert facts["compute_type"] == "int8" and facts["multilingual"] is False
    assert facts["model"] == "tiny.en"  # its name: Metadata never shows the server's paths
    assert provider.languages() == ("en",)
    assert provider.open_stream(session(language="en-GB"), pcm16_mono(RATE)) is not None
    with pytest.raises(RequestError):
        provider.open_stream(session(language="fr-FR"), pcm16_mono(RATE))


# --------------------------------------------------------------------------- pure parts


def test_options_are_checked_by_config_build() -> None:
    options = build(WhisperOptions, {"workers": 3, "vad_threshold": 0.6}, key="providers.whisper", source="x.yaml")
    assert options.workers == 3 and options.vad_threshold == 0.6
    for bad in ({"workers": 0}, {"vad_threshold": 1.5}, {"max_utterance_seconds": 40},
                {"interim_load_factor": 0.5}, {"beam_size": 0}, {"compute_type": " "}):
        with pytest.raises(ConfigError, match="providers.whisper"):
            build(WhisperOptions, bad, key="providers.whisper", source="x.yaml")
    with pytest.raises(ConfigError):
        build(WhisperOptions, {"device": "tpu"}, key="providers.whisper", source="x.yaml")


def test_whisper_language() -> None:
    assert whisper_language("en-US", ["en"], False) == "en"
    assert whisper_language("de_DE", ["en", "de"], True) == "de"
    assert whisper_language("multi", ["en", "de"], True) is None
    with pytest.raises(RequestError):
        whisper_language("de-DE", ["en"], False)


def segmenter(**overrides: object) -> Segmenter:
    values: dict[str, object] = {"threshold": 0.5, "pad": 100, "silence_samples": 4 * 512, "speech_final": True,
                                     "max_samples": 100 * 512, "window": 512}
    values.update(overrides)
    return Segmenter(**values)  # type: ignore[arg-type]


def test_segmenter_endpoint_after_silence() -> None:
    seg = segmenter()
    probs = [0.1] * 10 + [0.9] * 10 + [0.4] * 2 + [0.1] * 10
    cuts = seg.push(0, probs)
    # 0.4 is above the release threshold (0.35): speech holds through it, then 4 windows of quiet.
    assert cuts == [Cut(start=10 * 512 - 100, end=22 * 512 + 100, speech_final=True, voiced=10 * 512)]
    assert not seg.active and seg.keep_from() >= cuts[0].end


def test_segmenter_stops_where_the_vad_restarts() -> None:
    seg = segmenter(idle_restart_samples=20 * 512)
    probs = [0.1] * 10 + [0.9] * 10 + [0.1] * 10
    cuts = seg.push(0, probs)
    # The pause ends the utterance at window 24; the VAD restarts after it and the caller pushes
    # the rest again (from the new state's probabilities).
    assert len(cuts) == 1 and seg.restart_at == 24 * 512 and seg.pos == 24 * 512
    assert seg.push(24 * 512, probs[24:]) == [] and seg.restart_at is None
    # Without utterances, it restarts every idle_restart_samples (counted from the last restart).
    assert seg.push(30 * 512, [0.1] * 13) == [] and seg.restart_at is None
    assert seg.push(43 * 512, [0.1] * 5) == [] and seg.restart_at == 44 * 512
    # Never inside an utterance.
    seg.push(44 * 512, [0.9] * 40)
    assert seg.restart_at is None and seg.active


def test_segmenter_noise_never_starts_an_utterance() -> None:
    seg = segmenter()
    assert seg.push(0, [0.3, 0.45, 0.2] * 50) == []
    assert not seg.active and seg.cut(150 * 512) is None


def test_segmenter_forced_cut_at_a_quiet_window() -> None:
    seg = segmenter(max_samples=40 * 512, silence_samples=0)
    probs = [0.9] * 25 + [0.2] + [0.9] * 20
    cuts = seg.push(0, probs)
    assert len(cuts) == 1 and cuts[0].end == 25 * 512 + 256 and not cuts[0].speech_final
    assert seg.active and seg.start == cuts[0].end  # the speech after the cut goes on
    final = seg.cut(46 * 512)
    assert final is not None and final.start == cuts[0].end and final.voiced == 20 * 512


def test_segmenter_splits_long_speech_at_its_next_pause() -> None:
    seg = segmenter(split_samples=30 * 512, silence_samples=8 * 512)
    # Short pauses (2 windows < the 800 ms endpoint) inside 50 windows of speech.
    probs = ([0.9] * 10 + [0.1] * 2) * 4 + [0.9] * 10 + [0.1] * 8
    cuts = seg.push(0, probs)
    # Under 30 windows the pauses stay inside the utterance; after that, the first pause long
    # enough for the pad (100 samples, windows 34-35) ends a final that is not an endpoint when
    # speech resumes (window 36).
    assert cuts[0] == Cut(start=0, end=34 * 512 + 100, speech_final=False, voiced=30 * 512)
    # The speech after it is an utterance of its own (its pause at 46-47 comes before it is
    # 30 windows long), ended by the endpoint.
    assert cuts[1:] == [Cut(start=36 * 512 - 100, end=58 * 512 + 100, speech_final=True, voiced=20 * 512)]
    # Off (0): one utterance to the endpoint.
    assert [c.speech_final for c in segmenter(silence_samples=8 * 512).push(0, probs)] == [True]
    # A pause that reaches the endpoint is one, however long the speech before it.
    seg = segmenter(split_samples=30 * 512, silence_samples=8 * 512)
    assert [c.speech_final for c in seg.push(0, [0.9] * 40 + [0.1] * 9)] == [True]


def test_make_result_shifts_words_and_honours_punctuate() -> None:
    decoded = Decoded("Ask not, what?", 0.8, (Word("Ask", 0.1, 0.3, 0.9), Word("not,", 0.3, 0.5, 0.9),
                                               Word("what?", 0.6, 0.9, 0.8)), 0.1)
    result = make_result(decoded, start=10.0, end=11.0, is_final=True, speech_final=True, punctuate=False)
    assert result is not None and result.text == "Ask not what"
    assert [w.word for w in result.words] == ["Ask", "not", "what"] and result.words[0].start == 10.1
    empty = dataclasses.replace(decoded, text="  ", words=())
    assert make_result(empty, start=0, end=1, is_final=False, speech_final=False, punctuate=True) is None
