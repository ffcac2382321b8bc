"""The engine under load, live: backpressure, fairness, hung calls, nothing dropped silently.

A real server on 127.0.0.1, the real Whisper engine, the reference recording; the timings these
tests allow are generous bounds on behaviour (a session served at all, in order), not speed
targets: speed is measured by bench/capacity.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets
from support import JFK_FLAC, JFK_TEXT, Transcript, chunked, collect, load_pcm16, stream_audio, wait_until, wer

pytestmark = pytest.mark.slow

RATE = 16_000
CHUNK = 8_000  # 0.25 s of PCM16
SILENCE = bytes(2 * RATE)  # 1 s between repetitions, so each one ends an utterance


@pytest.fixture(scope="module")
def jfk_pcm() -> bytes:
    return load_pcm16(JFK_FLAC)


def repeated(pcm: bytes, times: int) -> bytes:
    return (pcm + SILENCE) * times


def metric(live, name: str) -> float:
    """Sum of a Prometheus metric's samples on the live server (all label values)."""
    body = urllib.request.urlopen(f"{live.http_url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#") and "_created" not in line)


async def _flood(url: str, pcm: bytes, transcript: Transcript) -> None:
    """Send as fast as the socket allows, then CloseStream; collect until the close."""
    async with websockets.connect(url, max_size=None) as ws:
        reader = asyncio.create_task(collect(ws, transcript))
        for chunk in chunked(pcm, CHUNK):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, 600)


async def test_a_fast_sender_is_held_back_and_all_its_audio_is_transcribed(make_server, jfk_pcm: bytes) -> None:
    live = make_server({"limits": {"max_backlog_seconds": 5}})
    scheduler = live.server.providers["whisper"].scheduler
    peak = 0.0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, scheduler.stats().queued_final_seconds)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = 6
    transcript = Transcript()
    await _flood(live.url(interim_results="false"), repeated(jfk_pcm, times), transcript)
    sampling = False
    sampler.join()
    assert transcript.close_code == 1000, transcript.close_reason
    assert not transcript.of_type("Error")
    # Everything sent was transcribed: six times the reference, in order.
    score = wer(" ".join([JFK_TEXT] * times), transcript.text)
    assert score <= 0.15, (score, transcript.text)
    # The reader was held back (the rest waited in the kernel's socket buffers, then TCP
    # pushed back on the sender) ...
    assert metric(live, "stt_backpressure_seconds_total") > 1.0
    # ... and the engine never held much more than the limit for this session: the limit, plus
    # the utterance being cut when it was reached (at most one repetition of the recording).
    assert peak <= 5 + 12, peak
    assert metric(live, "stt_untranscribed_audio_seconds_total") == 0


async def test_a_real_time_session_keeps_getting_finals_while_another_floods(make_server, jfk_pcm: bytes) -> None:
    # The full-window decoder (3x the CPU per utterance): the flood must still be queued when
    # the real-time session ends, whatever the machine; the scheduler is the same either way.
    live = make_server({"providers": {"whisper": {"full_window": True}}})
    flood = Transcript()
    flooder = asyncio.create_task(_flood(live.url(interim_results="false"), repeated(jfk_pcm, 24), flood))
    await wait_until(lambda: live.server.providers["whisper"].scheduler.stats().queued_final_seconds > 5,
                     what="the flood to queue work")
    real_time = await stream_audio(live.url(interim_results="false"), chunked(jfk_pcm, CHUNK), delay=0.25)
    finished = time.monotonic()
    flood_finals_then = len(flood.finals)
    await flooder
    assert real_time.close_code == 1000 and wer(JFK_TEXT, real_time.text) <= 0.15, real_time.text
    # Served alongside the flood, not after it: the flood still had finals to come.
    assert flood_finals_then < len(flood.finals), (flood_finals_then, len(flood.finals))
    assert finished < time.monotonic()
    assert flood.close_code == 1000
    assert wer(" ".join([JFK_TEXT] * 24), flood.text) <= 0.15


HANGING = {"providers": {"hanging": {"enabled": True, "module": "hanging_provider:HangingProvider"}},
           "limits": {"engine_call_timeout_seconds": 5}}


async def test_a_hung_engine_call_fails_only_its_own_session(make_server, jfk_pcm: bytes) -> None:
    live = make_server(HANGING)
    whisper = asyncio.create_task(stream_audio(live.url(interim_results="false"), chunked(jfk_pcm, CHUNK),
                                               delay=0.05))
    hung = await stream_audio(live.url(provider="hanging", model="hang"), chunked(jfk_pcm[:RATE * 2 * 4], CHUNK))
    errors = hung.of_type("Error")
    assert hung.close_code == 1011, hung.close_reason
    assert errors and errors[0]["code"] == "engine_timeout", hung.messages
    assert "4.0 s of the audio received were not transcribed" in errors[0]["message"], errors[0]
    # The only worker of that engine hung; its replacement serves the next session.
    fine = await stream_audio(live.url(provider="hanging", model="ok"), chunked(jfk_pcm[:RATE * 2 * 2], CHUNK))
    assert fine.close_code == 1000 and fine.text == f"received {RATE * 4} bytes"
    # Other engines' sessions never noticed.
    other = await whisper
    assert other.close_code == 1000 and wer(JFK_TEXT, other.text) <= 0.15
    assert metric(live, "stt_engine_hung_calls") == 1
    assert metric(live, "stt_untranscribed_audio_seconds_total") == pytest.approx(4.0)


async def test_audio_cut_at_the_drain_deadline_is_reported_never_closed_1000(make_server, jfk_pcm: bytes) -> None:
    live = make_server({"limits": {"max_backlog_seconds": 60}})
    transcript = Transcript()
    async with websockets.connect(live.url(interim_results="false"), max_size=None) as ws:
        reader = asyncio.create_task(collect(ws, transcript))
        for chunk in chunked(repeated(jfk_pcm, 4), CHUNK):
            await ws.send(chunk)
        await wait_until(lambda: live.server.providers["whisper"].scheduler.stats().queued_final_seconds > 20,
                         what="a backlog")
        drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.server.drain(timeout=0.5),
                                                                       live.loop))
        await asyncio.wait_for(reader, 30)
        await drained
    errors = transcript.of_type("Error")
    assert transcript.close_code == 1001
    assert errors and errors[-1]["code"] == "untranscribed_audio", transcript.messages
    assert "s of the audio received were not transcribed" in errors[-1]["message"]


async def test_new_sessions_are_refused_while_the_engine_is_behind(make_server, jfk_pcm: bytes) -> None:
    live = make_server({"limits": {"max_engine_wait_seconds": 0.2, "max_backlog_seconds": 60}})
    flood = Transcript()
    flooder = asyncio.create_task(_flood(live.url(interim_results="false"), repeated(jfk_pcm, 5), flood))

    def refused() -> bool:
        try:
            urllib.request.urlopen(f"{live.http_url}/readyz", timeout=5)
            return False
        except urllib.error.HTTPError as error:
            return error.code == 503

    await wait_until(refused, what="/readyz to say the engine is behind")
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(live.url()):
            pass
    response = caught.value.response
    assert response.status_code == 503
    assert json.loads(response.body)["error"] == "engine_busy"
    assert int(response.headers["Retry-After"]) >= 1
    await flooder
    # Once the engine has caught up, sessions are welcome again.
    assert flood.close_code == 1000
    await wait_until(lambda: not refused(), what="/readyz ready again")
    again = await stream_audio(live.url(provider="null"), [b"\0" * CHUNK])
    assert again.close_code == 1000


async def test_churn_transcribes_every_session_and_frees_its_slot(make_server, jfk_pcm: bytes, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    live = make_server({"journal": {"enabled": True, "file": str(journal)}, "limits": {"max_sessions": 8}})
    speech = jfk_pcm[:int(RATE * 2.5) * 2]
    sessions = 40

    async def one(index: int) -> int | None:
        url = live.url(interim_results="false")
        if index % 2:  # clean: CloseStream, wait for the finals and the close
            transcript = await stream_audio(url, chunked(speech, CHUNK))
            return transcript.close_code
        async with websockets.connect(url) as ws:  # abrupt: send, then drop the TCP connection
            for chunk in chunked(speech, CHUNK):
                await ws.send(chunk)
            ws.transport.abort()
        return None

    for start in range(0, sessions, 8):
        codes = await asyncio.gather(*(one(i) for i in range(start, start + 8)))
        assert all(code in (None, 1000) for code in codes), codes
    await wait_until(lambda: live.server.active_sessions == 0 and not live.server.open_sessions(),
                     what="every session to finish")
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len({line["session_id"] for line in lines}) == sessions
    assert all(wer("And so my fellow Americans", line["text"]) <= 0.5 for line in lines), lines
    assert metric(live, "stt_untranscribed_audio_seconds_total") == 0
