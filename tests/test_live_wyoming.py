"""Wyoming against a real server on 127.0.0.1, port 0, with the ``wyoming`` package's own client
(AsyncTcpClient and its event classes, unchanged), real Whisper and real speech."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import regression_set
from accuracy_set import TALE, wer
from conftest import LiveServer, start_live_server
from ops_support import metric, scrape
from support import JFK_FLAC, JFK_TEXT, chunked, load_pcm16, stream_audio, wait_until
from test_hardening_live import server_log
from test_ops_cli import ServerProcess
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info

from stt_server.errors import ConfigError

RATE = 16_000
CHUNK = 3200  # 0.1 s of 16-bit mono, about what Home Assistant sends
WYOMING = {"wyoming": {"enabled": True, "port": 0, "token": "alice"}}


@pytest.fixture(scope="module")
def wyoming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Whisper and null, the Wyoming listener tied to the token named alice."""
    live = start_live_server(tmp_path_factory.mktemp("wyoming"), WYOMING)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def jfk() -> bytes:
    return load_pcm16(JFK_FLAC)


def wyoming_port(live: LiveServer) -> int:
    assert live.server.wyoming is not None
    return live.server.wyoming.port


async def read_answer(client: AsyncTcpClient, *, streaming: bool = True, timeout: float = 120) -> list[Event]:
    """Events until the transcription's last one: transcript-stop (streaming) or transcript,
    or an error, or the end of the connection."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await client.read_event()
            if event is None:
                return events
            events.append(event)
            if event.type in ("error", "transcript-stop") or (event.type == "transcript" and not streaming):
                return events


async def send_audio(client: AsyncTcpClient, pcm: bytes, *, delay: float = 0.0, name: str | None = None,
                     language: str | None = None) -> None:
    await client.write_event(Transcribe(name=name, language=language).event())
    await client.write_event(AudioStart(RATE, 2, 1).event())
    for piece in chunked(pcm, CHUNK):
        await client.write_event(AudioChunk(RATE, 2, 1, piece).event())
        if delay:
            await asyncio.sleep(delay)
    await client.write_event(AudioStop().event())


async def transcribe(port: int, pcm: bytes, **kwargs: object) -> list[Event]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await send_audio(client, pcm, **kwargs)  # type: ignore[arg-type]
        return await read_answer(client)


def transcript_of(events: list[Event]) -> str:
    transcripts = [Transcript.from_event(e).text for e in events if Transcript.is_type(e.type)]
    assert len(transcripts) == 1, [(e.type, e.data) for e in events]
    return transcripts[0]


async def listen_text(live: LiveServer, pcm: bytes) -> str:
    """The same audio through /v1/listen, for comparison."""
    transcript = await stream_audio(live.url(interim_results="false"), list(chunked(pcm, CHUNK)))
    assert transcript.close_code == 1000
    return transcript.text


def jfk_twice(jfk: bytes) -> bytes:
    return jfk + bytes(2 * RATE) + jfk


def tale(folder: Path) -> bytes:
    samples = regression_set.synthesise("flite", "kal16", TALE, folder)
    return (samples * 32768).astype("<i2").tobytes()


# --- describe ----------------------------------------------------------------------------------


async def test_describe_lists_the_engines_models_and_languages_they_really_serve(wyoming_server) -> None:
    async with AsyncTcpClient("127.0.0.1", wyoming_port(wyoming_server)) as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
        assert event is not None and Info.is_type(event.type)
        info = Info.from_event(event)
        await client.write_event(Describe().event())  # the same connection answers again
        again = await client.read_event()
        assert again is not None and Info.from_event(again) == info
    whisper = wyoming_server.server.providers["whisper"]
    assert [program.name for program in info.asr] == ["whisper", "null"]  # the default first
    program = info.asr[0]
    assert program.supports_transcript_streaming and program.installed
    assert {m.name: m.languages for m in program.models} == whisper.model_languages() == {"tiny.en": ["en"]}
    assert info.asr[1].models[0].languages == ["en-US"]  # null takes any tag: the default one


async def test_describe_lists_only_what_the_tied_token_may_use(make_server) -> None:
    live = make_server({"wyoming": {"enabled": True, "port": 0, "token": "nullonly"}})
    async with AsyncTcpClient("127.0.0.1", wyoming_port(live)) as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
    assert event is not None and [p.name for p in Info.from_event(event).asr] == ["null"]


# --- real speech --------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["jfk", "jfk-twice", "tale"])
async def test_real_speech_through_wyoming_matches_v1_listen(wyoming_server, jfk: bytes, clip: str,
                                                             tmp_path: Path) -> None:
    pcm, reference = {"jfk": (jfk, JFK_TEXT), "jfk-twice": (jfk_twice(jfk), f"{JFK_TEXT} {JFK_TEXT}"),
                      "tale": (tale(tmp_path) if clip == "tale" else b"", TALE)}[clip]
    events = await transcribe(wyoming_port(wyoming_server), pcm, language="en")
    wyoming_wer = wer(reference, transcript_of(events))
    listen_wer = wer(reference, await listen_text(wyoming_server, pcm))
    print(f"{clip}: {len(pcm) / 32000:.1f} s, WER wyoming {wyoming_wer:.3f}, /v1/listen {listen_wer:.3f}")
    assert wyoming_wer <= listen_wer + 0.02
    assert wyoming_wer <= 0.10


async def test_transcribe_names_an_engine_or_one_of_its_models(wyoming_server, jfk: bytes) -> None:
    port = wyoming_port(wyoming_server)
    assert wer(JFK_TEXT, transcript_of(await transcribe(port, jfk, name="tiny.en"))) <= 0.10
    assert transcript_of(await transcribe(port, jfk, name="null")) == ""  # the null engine hears nothing


def test_a_wyoming_token_name_not_in_the_token_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wyoming.token: no token named 'nobody'"):
        start_live_server(tmp_path, {"wyoming": {"enabled": True, "port": 0, "token": "nobody"}})


async def test_transcriptions_follow_one_another_on_one_connection(wyoming_server, jfk: bytes) -> None:
    async with AsyncTcpClient("127.0.0.1", wyoming_port(wyoming_server)) as client:
        await send_audio(client, jfk)
        first = transcript_of(await read_answer(client))
        await send_audio(client, jfk[:5 * 32000], name="whisper")  # "And so my fellow Americans"
        second = transcript_of(await read_answer(client))
    assert wer(JFK_TEXT, first) <= 0.10
    assert "fellow americans" in second.lower() and "country" not in second.lower()


async def test_a_client_may_send_the_next_transcription_before_the_transcript(wyoming_server,
                                                                              jfk: bytes) -> None:
    async with AsyncTcpClient("127.0.0.1", wyoming_port(wyoming_server)) as client:
        await send_audio(client, jfk)
        await send_audio(client, jfk[:5 * 32000])  # at once: nothing of it may be taken by the first
        first = transcript_of(await read_answer(client))
        second = transcript_of(await read_answer(client))
    assert wer(JFK_TEXT, first) <= 0.10
    assert "fellow americans" in second.lower() and "country" not in second.lower()


async def test_streaming_sends_start_chunks_transcript_stop(wyoming_server, jfk: bytes) -> None:
    events = await transcribe(wyoming_port(wyoming_server), jfk)
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = [TranscriptChunk.from_event(e).text for e in events if e.type == "transcript-chunk"]
    assert len(chunks) >= 2 and "".join(chunks) == transcript_of(events)


async def test_without_streaming_only_the_transcript_comes(make_server, jfk: bytes) -> None:
    live = make_server({"wyoming": {"enabled": True, "port": 0, "token": "alice", "transcript_streaming": False}})
    async with AsyncTcpClient("127.0.0.1", wyoming_port(live)) as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
        assert event is not None and not Info.from_event(event).asr[0].supports_transcript_streaming
        await send_audio(client, jfk)
        events = await read_answer(client, streaming=False)
    assert [e.type for e in events] == ["transcript"] and wer(JFK_TEXT, transcript_of(events)) <= 0.10


# --- bad input ----------------------------------------------------------------------------------


def header(event_type: str, **fields: object) -> bytes:
    return json.dumps({"type": event_type, **fields}).encode() + b"\n"


def event_bytes(event: Event) -> bytes:
    data = json.dumps(event.data).encode() if event.data else b""
    head = {"type": event.type, **({"data_length": len(data)} if data else {}),
            **({"payload_length": len(event.payload)} if event.payload else {})}
    return json.dumps(head).encode() + b"\n" + data + (event.payload or b"")


START = event_bytes(AudioStart(RATE, 2, 1).event())
BAD_INPUT = {
    "garbage": (b"\x00\xff\xfe garbage \x01\n", "bad_event"),
    "non-JSON header": (b"type=audio-start\n", "bad_event"),
    "megabyte header line": (b"{" + b" " * (1 << 20), "event_too_big"),
    "2 GB payload_length": (header("audio-chunk", payload_length=2 ** 31), "event_too_big"),
    "huge data_length": (header("transcribe", data_length=10 ** 9), "event_too_big"),
    "unknown event": (event_bytes(Event("synthesize", {"text": "hello"})), "unknown_type"),
    "audio before audio-start": (event_bytes(AudioChunk(RATE, 2, 1, bytes(3200)).event()), "audio_before_start"),
    "8-bit audio": (event_bytes(AudioStart(RATE, 1, 1).event()), "bad_audio_format"),
    "unknown provider": (event_bytes(Transcribe(name="nope").event()) + START, "bad_request"),
    "model not enabled": (event_bytes(Transcribe(name="base").event()) + START, "bad_request"),
    "language the engine lacks": (event_bytes(Transcribe(language="de").event()) + START, "bad_request"),
    "garbage mid-stream": (START + event_bytes(AudioChunk(RATE, 2, 1, bytes(3200)).event()) + b"%%%\n",
                           "bad_event"),
    "unknown event mid-stream": (START + event_bytes(Event("detect")), "unknown_type"),
    "8-bit audio-start mid-stream": (START + event_bytes(AudioChunk(RATE, 2, 1, bytes(3200)).event())
                                     + event_bytes(AudioStart(RATE, 1, 1).event()), "bad_audio_format"),
    "chunk format unlike audio-start": (START + event_bytes(AudioChunk(8000, 2, 1, bytes(1600)).event()),
                                        "bad_audio_format"),
}


async def error_then_close(port: int, data: bytes) -> Error:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:  # the server may close before it has read everything
            pass
        async with asyncio.timeout(30):
            event = await async_read_event(reader)
            assert event is not None and Error.is_type(event.type), event
            while await reader.read(65536):  # whatever else: then the close
                pass
        return Error.from_event(event)
    finally:
        writer.close()


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_gets_an_error_event_then_a_close(wyoming_server, jfk: bytes, case: str) -> None:
    data, code = BAD_INPUT[case]
    port = wyoming_port(wyoming_server)
    with server_log() as log:
        error = await error_then_close(port, data)
        assert error.code == code and error.text
        # The server goes on serving.
        assert wer(JFK_TEXT, transcript_of(await transcribe(port, jfk))) <= 0.10
    assert "Traceback" not in log.getvalue() and "[error" not in log.getvalue()


async def test_a_client_that_vanishes_mid_stream_leaves_no_trace_but_the_log_line(wyoming_server, jfk: bytes) -> None:
    port = wyoming_port(wyoming_server)
    with server_log() as log:
        for cut in (len(START) + 10, len(START) + 500):  # mid-header, mid-payload
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((START + event_bytes(AudioChunk(RATE, 2, 1, jfk[:32000]).event()))[:cut])
            await writer.drain()
            writer.close()
        async with AsyncTcpClient("127.0.0.1", port) as client:  # a whole chunk, then gone
            await client.write_event(AudioStart(RATE, 2, 1).event())
            await client.write_event(AudioChunk(RATE, 2, 1, jfk[:64000]).event())
        assert wer(JFK_TEXT, transcript_of(await transcribe(port, jfk))) <= 0.10
    assert "Traceback" not in log.getvalue() and "[error" not in log.getvalue()
    assert "client_gone=True" in log.getvalue()


# --- metrics, limits, drain ------------------------------------------------------------------------


async def test_sessions_count_in_metrics_as_wyoming(make_server, jfk: bytes) -> None:
    live = make_server(WYOMING)
    await transcribe(wyoming_port(live), jfk)
    await error_then_close(wyoming_port(live), BAD_INPUT["unknown provider"][0])
    await error_then_close(wyoming_port(live), BAD_INPUT["garbage mid-stream"][0])
    await wait_until(lambda: not live.server.open_sessions(), 30, "the sessions' end")
    samples = scrape(live.http_url)
    assert metric(samples, "stt_sessions_opened_total", provider="whisper", protocol="wyoming") == 2
    assert metric(samples, "stt_sessions_closed_total", provider="whisper", protocol="wyoming", code="1000") == 1
    assert metric(samples, "stt_sessions_active", provider="whisper", protocol="wyoming") == 0
    assert metric(samples, "stt_audio_bytes_total", provider="whisper") == len(jfk) + 3200  # + the bad session's
    assert metric(samples, "stt_errors_total", code="bad_request") == 1
    assert metric(samples, "stt_errors_total", code="bad_event") == 1
    assert metric(samples, "stt_sessions_closed_total", provider="whisper", protocol="wyoming", code="1008") == 1


async def test_the_tied_tokens_max_sessions_applies(make_server, jfk: bytes) -> None:
    live = make_server({"wyoming": {"enabled": True, "port": 0, "token": "single"}})  # max_sessions=1
    port = wyoming_port(live)
    async with AsyncTcpClient("127.0.0.1", port) as first:
        await first.write_event(AudioStart(RATE, 2, 1).event())
        await first.write_event(AudioChunk(RATE, 2, 1, jfk[:32000]).event())
        await asyncio.sleep(0.5)
        with server_log() as log:
            error = await error_then_close(port, START)
        assert error.code == "token_session_limit" and "Traceback" not in log.getvalue()
        for piece in chunked(jfk[32000:], CHUNK):  # the first session is unharmed
            await first.write_event(AudioChunk(RATE, 2, 1, piece).event())
        await first.write_event(AudioStop().event())
        assert wer(JFK_TEXT, transcript_of(await read_answer(first))) <= 0.10
    # Its slot is free again.
    assert wer(JFK_TEXT, transcript_of(await transcribe(port, jfk))) <= 0.10


async def test_drain_during_a_transcription_delivers_the_whole_transcript(make_server, jfk: bytes) -> None:
    live = make_server(WYOMING)
    port = wyoming_port(live)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        sender = asyncio.create_task(send_audio(client, jfk, delay=0.05))  # twice real time: 5.5 s
        await asyncio.sleep(2.0)
        assert live.server.open_sessions(), "the transcription should be running"
        drained = asyncio.create_task(asyncio.to_thread(live.call, live.server.drain()))
        await sender
        events = await read_answer(client)
        assert client._reader is not None and await client._reader.read() == b""  # then the close
        assert await drained is True
    text = transcript_of(events)
    assert wer(JFK_TEXT, text) <= 0.10, text
    with pytest.raises(OSError):  # the listener is gone
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_client_that_does_not_finish_in_time_gets_an_error_not_a_short_transcript(make_server,
                                                                                          jfk: bytes) -> None:
    live = make_server(WYOMING)
    port = wyoming_port(live)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(AudioStart(RATE, 2, 1).event())
        for piece in chunked(jfk[:3 * 32000], CHUNK):
            await client.write_event(AudioChunk(RATE, 2, 1, piece).event())
        await asyncio.sleep(0.5)
        drained = asyncio.create_task(asyncio.to_thread(live.call, live.server.drain()))
        events = await read_answer(client, timeout=30)  # no audio-stop: the drain stops reading after 5 s
        await drained
    assert [e.type for e in events][-1] == "error" and "transcript" not in [e.type for e in events]
    assert "did not answer" in Error.from_event(events[-1]).text


def test_a_wyoming_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "tokens.txt").write_text("secret-token-0123456789 ha\n")
        config = tmp_path / "config.yaml"
        config.write_text(f"server:\n  port: 0\n  default_provider: \"null\"\n"
                          f"wyoming:\n  enabled: true\n  port: {port}\n  token: ha\n"
                          "providers:\n  whisper:\n    enabled: false\n  \"null\":\n    enabled: true\n")
        result = subprocess.run([sys.executable, "-m", "stt_server.cli", "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert f"cannot listen on 127.0.0.1:{port} (wyoming.host, wyoming.port): the port is already in use" in output
    assert "Traceback" not in output


async def test_stop_mid_transcription_closes_and_still_transcribes_for_the_journal(make_server, jfk: bytes) -> None:
    live = make_server({**WYOMING, "journal": {"enabled": True}})
    async with AsyncTcpClient("127.0.0.1", wyoming_port(live)) as client:
        await client.write_event(AudioStart(RATE, 2, 1).event())
        for piece in chunked(jfk[:4 * 32000], CHUNK):
            await client.write_event(AudioChunk(RATE, 2, 1, piece).event())
        await asyncio.sleep(0.5)
        with server_log() as log:
            await asyncio.wait_for(asyncio.to_thread(live.call, live.server.stop()), 30)
            kinds = [e.type for e in await read_answer(client, timeout=10)]  # until the close
        assert "transcript" not in kinds and "transcript-stop" not in kinds  # no transcript of part of it
        assert "Traceback" not in log.getvalue() and "client_gone=True" in log.getvalue()
    journal = (live.token_file.parent / "transcripts.jsonl").read_text()
    assert "fellow" in journal.lower() and '"token_name":"alice"' in journal


async def test_sigterm_mid_transcription_delivers_the_whole_transcript_and_exits_0(tmp_path: Path,
                                                                                   jfk: bytes) -> None:
    """The CLI's own drain on SIGTERM, against a real `stt-server` process."""
    server = ServerProcess(tmp_path, {"server": {"port": 0}, "logging": {"format": "json"},
                                      "wyoming": {"enabled": True, "port": 0, "token": "alice"}})
    try:
        await server.start()
        port = int((await server.event("wyoming listening"))["port"])
        async with AsyncTcpClient("127.0.0.1", port) as client:
            sender = asyncio.create_task(send_audio(client, jfk, delay=0.05))  # twice real time
            await asyncio.sleep(2.0)
            server.signal(signal.SIGTERM)
            await sender
            events = await read_answer(client)
        assert wer(JFK_TEXT, transcript_of(events)) <= 0.10
        assert server.proc is not None and await asyncio.wait_for(server.proc.wait(), 60) == 0
        assert (await server.event("draining"))["sessions"] == 1  # the signal came mid-transcription
        assert not [e for e in server.events if e.get("level") == "error" or "Traceback" in json.dumps(e)]
    finally:
        await server.close()


async def test_an_idle_transcription_ends_with_an_error_event(make_server, jfk: bytes) -> None:
    live = make_server({**WYOMING, "limits": {"idle_timeout_seconds": 1}})
    async with AsyncTcpClient("127.0.0.1", wyoming_port(live)) as client:
        await client.write_event(AudioStart(RATE, 2, 1).event())
        await client.write_event(AudioChunk(RATE, 2, 1, jfk[:3 * 32000]).event())
        events = await read_answer(client, timeout=30)  # no more audio, no audio-stop
    assert events[-1].type == "error" and "transcript" not in [e.type for e in events]
    assert Error.from_event(events[-1]).code == "idle_timeout"


async def test_a_revoked_tied_token_refuses_sessions_without_naming_it(make_server, jfk: bytes) -> None:
    live = make_server(WYOMING)
    lines = live.token_file.read_text().splitlines()
    live.token_file.write_text("\n".join(line for line in lines if " alice" not in line) + "\n")
    live.call(live.server.refresh_tokens(force=True))
    error = await error_then_close(wyoming_port(live), START)
    assert error.code == "token_invalid" and "alice" not in error.text
