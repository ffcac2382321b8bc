"""Every built-in provider through the conformance kit (stt_server.testing), with real engines
and real speech (Google: the real client against the local stand-in), as a plugin author
would run it against theirs. Also: the kit itself catches a provider that breaks a promise."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from google_standin import GoogleStandIn, synthetic_speech, utterances
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer

from stt_server.audio_format import AudioFormat
from stt_server.providers.base import Provider, TranscriptionStream
from stt_server.providers.google import GoogleOptions, GoogleProvider
from stt_server.providers.null import NullOptions, NullProvider
from stt_server.providers.pocketsphinx import PocketsphinxOptions, PocketsphinxProvider
from stt_server.providers.whisper import WhisperOptions, WhisperProvider
from stt_server.results import Result
from stt_server.session import SessionParams
from stt_server.testing import ConformanceError, check_provider, default_session

RATE = 16_000


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


@pytest.mark.slow
async def test_whisper_conforms() -> None:
    provider = WhisperProvider(WhisperOptions())
    await provider.start()
    try:
        report = await check_provider(provider, load_pcm16(JFK_FLAC) + silence(1.0))
    finally:
        await provider.stop()
    assert wer(JFK_TEXT, report.text) <= 0.15, report.text
    assert report.finalize_finals and report.max_loop_lag <= 0.3


async def test_null_conforms() -> None:
    provider = NullProvider(NullOptions())
    await provider.start()
    report = await check_provider(provider, silence(2.0), expect_text=False)
    assert report.finals == [] and report.checks


@pytest.mark.slow
async def test_pocketsphinx_conforms(tmp_path: Path) -> None:
    if shutil.which("flite") is None:  # a failure, not a skip: CI must install what tests need
        pytest.fail("flite synthesises the test speech: apt-get install flite (.ci/run does)")
    text = "we will meet at the station at ten in the morning"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(tmp_path / "s.wav")], check=True, timeout=30)
    speech = silence(0.5) + load_pcm16(tmp_path / "s.wav") + silence(1.0)
    provider = PocketsphinxProvider(PocketsphinxOptions(processes=1))
    await provider.start()
    try:
        report = await check_provider(provider, speech)
    finally:
        await provider.stop()
    assert wer(text, report.text) <= 0.5, report.text


async def test_google_conforms_against_the_standin() -> None:
    async with GoogleStandIn() as standin:
        provider = GoogleProvider(GoogleOptions(api_endpoint=standin.address, insecure=True, pace_realtime=False,
                                                retry_backoff_seconds=0.05))
        await provider.start()
        try:
            report = await check_provider(provider, synthetic_speech(utterances(4)))
        finally:
            await provider.stop()
    assert report.text.split() == [f"w{n}" for n in range(1, 13)]


# --------------------------------------------------------------------------- the kit's own teeth


class _BlockingStream(TranscriptionStream):
    """Breaks two promises: blocks the loop in send_audio and stamps results in wall-clock time."""

    def __init__(self, block: float, stamp_offset: float) -> None:
        super().__init__()
        self.block, self.stamp_offset, self.received = block, stamp_offset, 0

    async def send_audio(self, audio: bytes) -> None:
        time.sleep(self.block)  # the bug the kit must catch
        self.received += len(audio)

    async def finalize(self) -> None:
        self._final()

    async def close(self) -> None:
        self._final()
        self.end_results()

    def _final(self) -> None:
        if self.received:
            end = self.received / 2 / RATE + self.stamp_offset
            self.emit(Result("words", True, max(0.0, end - 1), end, 0.9))
            self.received = 0


class _BrokenProvider(Provider):
    name = "broken"
    Options = NullOptions

    def __init__(self, block: float = 0.0, stamp_offset: float = 0.0) -> None:
        super().__init__(NullOptions())
        self.block, self.stamp_offset = block, stamp_offset

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        return _BlockingStream(self.block, self.stamp_offset)


async def test_the_kit_catches_a_blocked_loop_and_wrong_timestamps() -> None:
    speech = silence(1.0)
    report = await check_provider(_BrokenProvider(), speech)  # well-behaved settings pass
    assert len(report.finals) == 1
    with pytest.raises(ConformanceError, match="event loop was blocked"):
        await check_provider(_BrokenProvider(block=0.4), speech, chunk_bytes=16_000)
    with pytest.raises(ConformanceError, match="stream seconds"):
        await check_provider(_BrokenProvider(stamp_offset=1_700_000_000.0), speech)


async def test_the_kit_catches_results_that_never_end() -> None:
    class NeverEnds(_BrokenProvider):
        def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
            stream = _BlockingStream(0.0, 0.0)
            stream.close = stream.finalize  # type: ignore[method-assign]  # forgets end_results()
            return stream

    with pytest.raises(ConformanceError, match="did not end"):
        await check_provider(NeverEnds(), silence(0.5), timeout=1.0)
    assert default_session("x").provider == "x"
    await asyncio.sleep(0)
