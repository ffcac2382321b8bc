"""The pocketsphinx provider with its real worker processes, the bundled en-us model and speech
synthesised by flite; no mocks.

One provider (two worker processes) serves most of the module; each test opens its own
streams on its own event loop, which works because replies reach a stream through its own
loop's ``call_soon_threadsafe``. Tests that kill workers or need other options start their own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from support import chunked, load_pcm16, stream_audio, wer

from stt_server.audio_format import pcm16_mono
from stt_server.config import build
from stt_server.errors import CapacityError, ConfigError, ProviderError, RequestError
from stt_server.providers.base import TranscriptionStream
from stt_server.providers.pocketsphinx import PocketsphinxOptions, PocketsphinxProvider
from stt_server.session import Endpoint, SessionParams
from stt_server.testing import ResultCollector

RATE = 16_000
CHUNK = 3_200  # 100 ms of PCM16
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "we will meet at the station at ten in the morning",
    "please remember to bring the book and the black umbrella",
)
REFERENCE = " ".join(SENTENCES)
GAP_SECONDS = 1.0
# Measured 0.233 (at real time, 4x real time and as fast as possible alike); pocketsphinx is
# weak on "jumps over" / "meet" / "book and". The bound leaves room for scheduling noise.
MAX_WER = 0.30



def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Each sentence in flite's 16 kHz "slt" voice (its 8 kHz default voice gives ~80% WER)."""
    if shutil.which("flite") is None:  # a failure, not a skip: CI must install what tests need
        pytest.fail("flite synthesises the test speech: apt-get install flite (.ci/run does)")
    folder = tmp_path_factory.mktemp("flite")
    clips = []
    for i, text in enumerate(SENTENCES):
        path = folder / f"s{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, timeout=30)
        clips.append(load_pcm16(path))
    return clips


@pytest.fixture(scope="module")
def three(speech: list[bytes]) -> bytes:
    """Half a second of silence, then the sentences with a second of silence after each."""
    return silence(0.5) + b"".join(clip + silence(GAP_SECONDS) for clip in speech)


def session(**overrides: object) -> SessionParams:
    values: dict[str, object] = {
        "endpoint": Endpoint.NATIVE, "provider": "pocketsphinx", "language": "en-US", "audio": pcm16_mono(RATE),
        "interim_results": False, "punctuate": True, "words": True, "endpointing_ms": 500,
    }
    values.update(overrides)
    return SessionParams(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def provider() -> Iterator[PocketsphinxProvider]:
    sphinx = PocketsphinxProvider(PocketsphinxOptions(processes=2, max_streams_per_process=2))
    asyncio.run(sphinx.start())
    yield sphinx
    asyncio.run(sphinx.stop())
    assert multiprocessing.active_children() == []


Collector = ResultCollector  # the conformance kit's


async def feed(stream: TranscriptionStream, pcm: bytes, pace: float = 0.0) -> None:
    """Send 100 ms chunks; ``pace`` × real time, 0 = as fast as the stream takes them."""
    began = time.monotonic()
    for i in range(0, len(pcm), CHUNK):
        await stream.send_audio(pcm[i:i + CHUNK])
        if pace:
            due = began + (i + CHUNK) / 2 / RATE / pace
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def transcribe(provider: PocketsphinxProvider, pcm: bytes, *, pace: float = 0.0,
                     **params: object) -> Collector:
    stream = provider.open_stream(session(**params), pcm16_mono(RATE))
    collector = Collector(stream)
    await feed(stream, pcm, pace)
    await stream.close()
    await asyncio.wait_for(collector.task, 30)
    return collector


def reaped(pid: int) -> bool:
    """Gone entirely: a zombie still has its /proc entry."""
    return not Path(f"/proc/{pid}").exists()


# --------------------------------------------------------------------------- real engine


async def test_sentences_endpointed_with_words(provider: PocketsphinxProvider, three: bytes) -> None:
    got = await transcribe(provider, three)  # as fast as possible: exercises backpressure too
    assert got.error is None
    assert all(r.is_final for r in got.results)  # interim_results is off
    assert wer(REFERENCE, got.text) <= MAX_WER, got.text
    # One endpointed final per sentence, each ending in the silence after it.
    assert len(got.finals) == 3 and all(r.speech_final for r in got.finals), got.finals
    total = len(three) / 2 / RATE
    for before, after in zip(got.finals, got.finals[1:]):
        assert before.end <= after.start
    words = [w for r in got.finals for w in r.words]
    assert len(words) >= 25
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    for result in got.finals:
        assert 0.0 < result.confidence <= 1.0
        for word in result.words:
            assert result.start <= word.start <= word.end <= result.end <= total
            assert 0.0 <= word.confidence <= 1.0 and word.word.isalpha()
    # Word times are in stream time: "morning" is in the second sentence, after the first gap.
    second = [w for w in words if w.word == "morning"]
    assert second and second[0].start > 0.5 + len(three) / 2 / RATE / 3


async def test_interim_results_come_before_the_final(provider: PocketsphinxProvider, three: bytes) -> None:
    got = await transcribe(provider, three, pace=4.0, interim_results=True)
    kinds = ["final" if r.is_final else "interim" for r in got.results]
    assert "interim" in kinds and kinds.index("interim") < kinds.index("final"), kinds
    assert wer(REFERENCE, got.text) <= MAX_WER, got.text
    for result in got.results:
        assert result.text and result.text == result.text.strip()
        if not result.is_final:
            assert result.words == () and not result.speech_final


async def test_words_off_gives_no_words(provider: PocketsphinxProvider, speech: list[bytes]) -> None:
    got = await transcribe(provider, speech[0] + silence(1.0), words=False)
    assert got.finals and all(r.words == () for r in got.finals)


async def test_silence_gives_no_results(provider: PocketsphinxProvider) -> None:
    got = await transcribe(provider, silence(3.0), interim_results=True, endpointing_ms=300)
    assert got.error is None and got.results == []


async def test_finalize_emits_a_final_before_close(provider: PocketsphinxProvider, speech: list[bytes]) -> None:
    # Endpointing off: the 1 s gaps are shorter than pause_final_ms, so only finalize cuts.
    stream = provider.open_stream(session(endpointing_ms=0), pcm16_mono(RATE))
    got = Collector(stream)
    first = speech[0] + silence(GAP_SECONDS)
    await feed(stream, first)
    await stream.finalize()
    await asyncio.sleep(0)  # finalize returns once the final is emitted; let the collector take it
    assert len(got.finals) == 1
    assert got.finals[0].speech_final is False and got.finals[0].end <= len(first) / 2 / RATE + 0.01
    assert "fox" in got.finals[0].text
    await stream.finalize()  # nothing new: no empty final
    await asyncio.sleep(0)
    assert len(got.finals) == 1
    await feed(stream, b"".join(clip + silence(GAP_SECONDS) for clip in speech[1:]))
    await stream.close()
    await asyncio.wait_for(got.task, 30)
    assert got.error is None and len(got.finals) == 2
    assert got.finals[1].start >= got.finals[0].end and not got.finals[1].speech_final
    assert wer(REFERENCE, got.text) <= MAX_WER, got.text


@pytest.mark.slow
async def test_two_streams_at_once_in_two_workers(provider: PocketsphinxProvider, three: bytes) -> None:
    one = provider.open_stream(session(interim_results=True), pcm16_mono(RATE))
    two = provider.open_stream(session(interim_results=True), pcm16_mono(RATE))
    assert isinstance(one, type(two)) and one.pid != two.pid  # type: ignore[attr-defined]
    collectors = [Collector(one), Collector(two)]
    await asyncio.gather(feed(one, three), feed(two, three))
    await asyncio.gather(one.close(), two.close())
    await asyncio.wait_for(asyncio.gather(*(c.task for c in collectors)), 30)
    for got in collectors:
        assert got.error is None and wer(REFERENCE, got.text) <= MAX_WER, got.text


async def test_capacity_is_processes_times_streams(provider: PocketsphinxProvider) -> None:
    streams = [provider.open_stream(session(), pcm16_mono(RATE)) for _ in range(4)]
    with pytest.raises(CapacityError):
        provider.open_stream(session(), pcm16_mono(RATE))
    for stream in streams:
        await stream.abort()
    # Aborted streams free their places at once.
    again = provider.open_stream(session(), pcm16_mono(RATE))
    await again.close()


def test_language_is_checked_before_the_upgrade(provider: PocketsphinxProvider) -> None:
    for tag in ("en", "en-US", "en-GB", "EN_us"):
        provider.check_session(session(language=tag))
    with pytest.raises(RequestError) as caught:
        provider.check_session(session(language="fr-FR"))
    assert caught.value.parameter == "language"


# --------------------------------------------------------------------------- failures, lifecycle


async def test_killed_worker_fails_its_stream_only_and_is_replaced(speech: list[bytes]) -> None:
    sphinx = PocketsphinxProvider(PocketsphinxOptions(processes=2, max_streams_per_process=1))
    await sphinx.start()
    pids: list[int] = []
    try:
        victim = sphinx.open_stream(session(), pcm16_mono(RATE))
        survivor = sphinx.open_stream(session(), pcm16_mono(RATE))
        dead_pid = victim.pid  # type: ignore[attr-defined]
        assert dead_pid != survivor.pid  # type: ignore[attr-defined]
        lost, kept = Collector(victim), Collector(survivor)
        await asyncio.gather(feed(victim, speech[0][:RATE]), feed(survivor, speech[0][:RATE]))
        os.kill(dead_pid, signal.SIGKILL)
        await asyncio.wait_for(lost.task, 10)
        assert isinstance(lost.error, ProviderError) and str(dead_pid) in str(lost.error)
        await victim.send_audio(speech[0])  # ignored, no error: the failure is in results()
        await victim.close()  # returns at once
        # The other worker's stream goes on to its final.
        await feed(survivor, speech[0][RATE:] + silence(GAP_SECONDS))
        await survivor.close()
        await asyncio.wait_for(kept.task, 30)
        assert kept.error is None and "fox" in kept.text
        # The dead worker was reaped, and a new stream gets a new one in its slot.
        assert reaped(dead_pid)
        fresh = sphinx.open_stream(session(), pcm16_mono(RATE))
        assert fresh.pid not in (dead_pid, None)  # type: ignore[attr-defined]
        got = Collector(fresh)
        await feed(fresh, speech[1] + silence(GAP_SECONDS))
        await fresh.close()
        await asyncio.wait_for(got.task, 30)
        assert got.error is None and wer(SENTENCES[1], got.text) <= 0.5, got.text
        pids = sphinx.worker_pids()
        assert len(pids) == 2 and dead_pid not in pids
    finally:
        await sphinx.stop()
    assert all(reaped(pid) for pid in pids)
    assert not {p.pid for p in multiprocessing.active_children()} & set(pids)


async def test_stop_fails_open_streams_and_leaves_no_processes(speech: list[bytes]) -> None:
    sphinx = PocketsphinxProvider(PocketsphinxOptions(processes=1))
    await sphinx.start()
    pids = sphinx.worker_pids()
    stream = sphinx.open_stream(session(), pcm16_mono(RATE))
    got = Collector(stream)
    await feed(stream, speech[0][:RATE])
    await sphinx.stop()
    await asyncio.wait_for(got.task, 10)
    assert isinstance(got.error, ProviderError) and "stopped" in str(got.error)
    assert all(reaped(pid) for pid in pids) and sphinx.worker_pids() == []
    assert not sphinx.is_ready()
    with pytest.raises(ProviderError):
        sphinx.open_stream(session(), pcm16_mono(RATE))


async def test_bad_model_path_fails_start_without_processes(tmp_path: Path) -> None:
    sphinx = PocketsphinxProvider(PocketsphinxOptions(model=str(tmp_path / "missing")))
    with pytest.raises(ProviderError, match="acoustic model"):
        await sphinx.start()
    # A file the decoder cannot read fails in the worker, which reports it; start() cleans up.
    bad_lm = tmp_path / "bad.lm.bin"
    bad_lm.write_bytes(b"garbage")
    sphinx = PocketsphinxProvider(PocketsphinxOptions(processes=1, language_model=str(bad_lm)))
    with pytest.raises(ProviderError):
        await sphinx.start()
    assert sphinx.worker_pids() == [] and not sphinx.is_ready()


def test_options_are_validated_by_config_build() -> None:
    options = build(PocketsphinxOptions, {"processes": 1, "languages": ["en"], "vad_mode": 2},
                    key="providers.pocketsphinx", source="config.yaml")
    assert options.processes == 1 and options.languages == ("en",)
    for bad in ({"processes": 0}, {"vad_mode": 4}, {"min_speech_ms": 500}, {"start_method": "fork"},
                {"languages": []}, {"nope": 1}):
        with pytest.raises(ConfigError, match="providers.pocketsphinx"):
            build(PocketsphinxOptions, bad, key="providers.pocketsphinx", source="config.yaml")


@pytest.mark.slow
async def test_live_server_session_and_language_refusal(make_server, three: bytes) -> None:
    """Through a real server and websocket: the provider as the server drives it."""
    live = make_server({"server": {"default_provider": "pocketsphinx"},
                        "providers": {"whisper": {"enabled": False},
                                      "pocketsphinx": {"enabled": True, "processes": 1}}})
    transcript = await stream_audio(live.url(provider="pocketsphinx", endpointing="500"), chunked(three, CHUNK))
    assert transcript.close_code == 1000
    assert len(transcript.finals) == 3 and wer(REFERENCE, transcript.text) <= MAX_WER, transcript.text
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(live.url(provider="pocketsphinx", language="de-DE")):
            pass
    assert refused.value.response.status_code == 400
