"""OpenAI's official Python SDK (openai 3.63: its realtime client, GA and beta), unchanged,
against a real server on /v1/realtime?intent=transcription with the real Whisper engine on real
and synthesised speech.

Every event the server sends is read twice: by the SDK's own parser (what its users get) and by
strict validation against the SDK's typed union of server events, so a missing or mistyped
field fails here even though the SDK's parser would let it through. The one exception is the
beta ``transcription_session.updated``: the beta types require a ``client_secret`` (an
ephemeral key minted over HTTP) that a websocket session does not have.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import accuracy_set
import pytest
import websockets
from audio_files import encode
from ops_support import metric, scrape
from openai import AsyncOpenAI
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.beta.realtime import TranscriptionSessionUpdatedEvent
from openai.types.realtime import RealtimeErrorEvent, RealtimeServerEvent
from pydantic import TypeAdapter
from support import JFK_TEXT, chunked, stream_audio, wer
from test_hardening_live import server_log

RATE = 24_000
CHUNK_SECONDS = 0.1
PACE = 0.02  # seconds between 0.1 s chunks: 5x real time
TRAILING_SILENCE = 1.5  # seconds after the speech, so its last utterance reaches an endpoint
SILENCE_MS = 800  # server_vad's silence_duration_ms; /v1/listen gets the same endpointing
SENTINEL = "evt_sentinel"  # the client event id of the commit that ends each run (see _finish)

GA_EVENTS: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
BETA_EVENTS: TypeAdapter[Any] = TypeAdapter(BetaServerEvent)

COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@pytest.fixture(scope="module")
def clips() -> dict[str, accuracy_set.Clip]:
    """Real speech (jfk), an anaphora over 15 s (tale), three sentences (dream)."""
    return {clip.name: clip for clip in accuracy_set.build(["jfk", "tale", "dream"])}


def pcm24(clip: accuracy_set.Clip, silence: float = TRAILING_SILENCE) -> bytes:
    """The clip as OpenAI's pcm16: 24 kHz mono s16le, then ``silence`` seconds of silence."""
    return encode("s16le", "pcm_s16le", rate=RATE, pcm16=clip.pcm16) + bytes(int(silence * RATE) * 2)


def mulaw8k(clip: accuracy_set.Clip) -> bytes:
    return encode("mulaw", "pcm_mulaw", rate=8_000, pcm16=clip.pcm16) + b"\xff" * int(TRAILING_SILENCE * 8_000)


def openai_client(live: Any, token: str = "alice") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=live.tokens[token], base_url=f"{live.http_url}/v1",
                       websocket_base_url=f"{live.base_url}/v1", max_retries=0)


def ga_session(*, turn_detection: Any = "server_vad", audio_format: str = "audio/pcm",
               language: str = "en") -> dict[str, Any]:
    audio_input: dict[str, Any] = {
        "format": {"type": audio_format, **({"rate": RATE} if audio_format == "audio/pcm" else {})},
        "transcription": {"model": "gpt-4o-transcribe", "language": language},
    }
    if turn_detection == "server_vad":
        audio_input["turn_detection"] = {"type": "server_vad", "silence_duration_ms": SILENCE_MS}
    else:
        audio_input["turn_detection"] = turn_detection
    return {"type": "transcription", "audio": {"input": audio_input}}


@dataclass
class Run:
    """What one session received: every event as JSON, in order, and how it closed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def text(self) -> str:
        return " ".join(e["transcript"] for e in self.of_type(COMPLETED) if e["transcript"]).strip()


async def _receive(connection: Any, run: Run, *, beta: bool, until: Callable[[dict[str, Any]], bool]) -> None:
    """Read events through the SDK until ``until`` says so (or the server closes)."""
    strict = BETA_EVENTS if beta else GA_EVENTS
    try:
        while True:
            raw = await connection.recv_bytes()
            parsed = connection.parse_event(raw)  # the SDK's own parse: what its users get
            event = json.loads(raw)
            assert parsed.type == event["type"]
            if beta and event["type"] == "transcription_session.updated":
                assert isinstance(parsed, TranscriptionSessionUpdatedEvent)
            elif beta and event["type"] == "session.created":
                GA_EVENTS.validate_python(event)  # sent before the client says which API it speaks
            else:
                strict.validate_python(event)
            run.events.append(event)
            if until(event):
                return
    except websockets.ConnectionClosed as closed:
        run.close_code = closed.rcvd.code if closed.rcvd else None


def _is_sentinel(event: dict[str, Any]) -> bool:
    return event["type"] == "error" and event["error"].get("event_id") == SENTINEL


async def _append(connection: Any, audio: bytes, chunk: int, *, pace: float = PACE,
                  sent: list[int] | None = None) -> None:
    for piece in chunked(audio, chunk):
        await connection.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
        if sent is not None:
            sent[0] += len(piece)
        await asyncio.sleep(pace)


async def _finish(connection: Any) -> None:
    """Commit what is left, then commit again: the second commit finds the buffer empty, and its
    error comes only after the first commit's transcript, so it marks the end of the results."""
    await connection.input_audio_buffer.commit()
    await connection.send({"type": "input_audio_buffer.commit", "event_id": SENTINEL})


async def transcribe_ga(live: Any, audio: bytes, session: dict[str, Any]) -> Run:
    run = Run()
    async with openai_client(live).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.session.update(session=session)
        receiver = asyncio.create_task(_receive(connection, run, beta=False, until=_is_sentinel))
        await _append(connection, audio, int(RATE * CHUNK_SECONDS) * 2)
        await _finish(connection)
        await asyncio.wait_for(receiver, 120)
    return run


def check_items(run: Run, *, vad: bool) -> None:
    """Each item: (speech_started, deltas, speech_stopped with turn detection,) committed, then
    completed; item ids chain through previous_item_id; the run ends with the sentinel error."""
    assert run.events[0]["type"] == "session.created" and run.events[1]["type"] == "session.updated"
    assert _is_sentinel(run.events[-1]) and run.events[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
    assert not [e for e in run.events[2:-1] if e["type"] == "error"]
    previous = None
    for completed in run.of_type(COMPLETED):
        item = completed["item_id"]
        kinds = [e["type"] for e in run.events if e.get("item_id") == item]
        expected_tail = ["input_audio_buffer.committed", COMPLETED]
        assert kinds[-2:] == expected_tail, " ".join(k.rsplit(".", 1)[-1] for k in kinds)
        if vad and completed["transcript"]:
            assert kinds[0] == "input_audio_buffer.speech_started" and "input_audio_buffer.speech_stopped" in kinds
        if not vad:
            assert "input_audio_buffer.speech_started" not in kinds
        committed = next(e for e in run.events if e["type"] == "input_audio_buffer.committed" and e["item_id"] == item)
        assert committed["previous_item_id"] == previous
        previous = item
        assert completed["usage"]["type"] == "duration"


@pytest.mark.slow
async def test_ga_sdk_with_turn_detection_transcribes_as_v1_listen(live_server, clips) -> None:
    """server_vad: items end at the engine's endpoints. WER within 0.02 of /v1/listen on the same
    audio (the same 24 kHz bytes, the same endpointing) at the same pace, and within each clip's
    absolute bound."""
    for name in ("jfk", "tale", "dream"):
        clip = clips[name]
        audio = pcm24(clip)
        run = await transcribe_ga(live_server, audio, ga_session())
        check_items(run, vad=True)
        listen = await stream_audio(live_server.url(interim_results="false", sample_rate=RATE, endpointing=SILENCE_MS),
                                    chunked(audio, int(RATE * CHUNK_SECONDS) * 2), delay=PACE)
        openai_wer, listen_wer = wer(clip.reference, run.text), wer(clip.reference, listen.text)
        print(f"{name}: openai WER {openai_wer:.3f} ({len(run.of_type(COMPLETED))} items), "
              f"/v1/listen WER {listen_wer:.3f}")
        assert openai_wer <= clip.spec.max_wer, run.text
        assert abs(openai_wer - listen_wer) <= 0.02, f"{run.text} | {listen.text}"
        assert accuracy_set.lost_repeats(clip.spec, run.text) == []
    samples = scrape(live_server.http_url)
    assert metric(samples, "stt_sessions_opened_total", provider="whisper", protocol="openai") >= 3


@pytest.mark.slow
async def test_ga_sdk_manual_commits(live_server, clips) -> None:
    """turn_detection null: one item per commit, holding all the audio appended before it."""
    clip = clips["dream"]
    run = await transcribe_ga(live_server, pcm24(clip), ga_session(turn_detection=None))
    check_items(run, vad=False)
    assert len(run.of_type(COMPLETED)) == 1
    assert run.of_type("session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert wer(clip.reference, run.text) <= clip.spec.max_wer, run.text
    sentinel = RealtimeErrorEvent.model_validate(run.events[-1])
    assert sentinel.error.type == "invalid_request_error" and sentinel.error.event_id == SENTINEL


@pytest.mark.slow
async def test_beta_sdk_transcription_session_in_g711_ulaw(live_server, clips) -> None:
    """The beta client: transcription_session.update (g711_ulaw at 8 kHz), its own answer; WER
    within 0.02 of /v1/listen on the same mu-law bytes. (Narrowband audio costs tiny.en words on
    some voices in both, 0.22 WER on jfk and dream: the clip here is one it hears whole.)"""
    clip = clips["tale"]
    audio = mulaw8k(clip)
    run = Run()
    client = openai_client(live_server)
    async with client.beta.realtime.connect(model="gpt-4o-transcribe",
                                            extra_query={"intent": "transcription"}) as connection:
        await connection.transcription_session.update(session={
            "input_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": SILENCE_MS},
        })
        receiver = asyncio.create_task(_receive(connection, run, beta=True, until=_is_sentinel))
        await _append(connection, audio, 800)
        await _finish(connection)
        await asyncio.wait_for(receiver, 120)
    updated = run.of_type("transcription_session.updated")
    assert len(updated) == 1 and updated[0]["session"]["input_audio_format"] == "g711_ulaw"
    assert updated[0]["session"]["input_audio_transcription"]["model"] == "whisper-1"
    assert not run.of_type("session.updated")
    listen = await stream_audio(live_server.url(interim_results="false", encoding="mulaw", sample_rate=8_000,
                                                endpointing=SILENCE_MS), chunked(audio, 800), delay=PACE)
    openai_wer, listen_wer = wer(clip.reference, run.text), wer(clip.reference, listen.text)
    print(f"g711_ulaw {clip.name}: openai WER {openai_wer:.3f}, /v1/listen WER {listen_wer:.3f}")
    assert openai_wer <= clip.spec.max_wer, run.text
    assert abs(openai_wer - listen_wer) <= 0.02, f"{run.text} | {listen.text}"


async def _raw_session(live: Any, actions: Callable[[Any], Awaitable[None]]) -> Run:
    """A bare websockets client speaking the protocol as documented (for what the SDK will not
    send: garbage, binary frames, bad base64)."""
    run = Run()
    url = f"{live.base_url}/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {live.tokens['alice']}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        async def receive() -> None:
            try:
                async for message in ws:
                    event = json.loads(message)
                    GA_EVENTS.validate_python(event)
                    run.events.append(event)
                    if _is_sentinel(event):
                        return
            except websockets.ConnectionClosed:
                pass
            run.close_code = ws.close_code

        receiver = asyncio.create_task(receive())
        await actions(ws)
        await asyncio.wait_for(receiver, 120)
    return run


def _append_frames(audio: bytes) -> list[str]:
    return [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()})
            for piece in chunked(audio, int(RATE * CHUNK_SECONDS) * 2)]


async def _send_all(ws: Any, frames: list[str | bytes], pace: float = 0.0) -> None:
    for frame in frames:
        await ws.send(frame)
        if pace:
            await asyncio.sleep(pace)


SENTINEL_COMMITS = [json.dumps({"type": "input_audio_buffer.commit"}),
                    json.dumps({"type": "input_audio_buffer.commit", "event_id": SENTINEL})]


async def test_bad_events_get_openai_errors_and_the_session_goes_on(live_server, clips) -> None:
    manual = json.dumps({"type": "session.update", "session": ga_session(turn_detection=None)})
    bad: list[tuple[str | bytes, str, str | None]] = [
        ("this is not json", "bad_json", None),
        ('{"type": "response.create", "event_id": "evt_1"}', "invalid_event", "type"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}), "bad_base64", None),
        (b"\x00\x01binary", "invalid_event", None),
        (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value", "session.type"),
        (json.dumps({"type": "session.update", "session": ga_session(audio_format="audio/opus")}),
         "invalid_value", "session.audio.input.format.type"),
        ("[" * 5000 + "]" * 5000, "bad_json", None),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_2"}), "input_audio_buffer_commit_empty",
         None),
    ]
    frames: list[str | bytes] = [manual, *(frame for frame, _, _ in bad),
                                 *_append_frames(pcm24(clips["jfk"])), *SENTINEL_COMMITS]
    with server_log() as log:
        run = await _raw_session(live_server, lambda ws: _send_all(ws, frames))
    assert "Traceback" not in log.getvalue() and "[error" not in log.getvalue()
    errors = run.of_type("error")[:-1]  # the last is the sentinel
    assert [(e["error"]["code"], e["error"]["param"]) for e in errors] == [(code, param) for _, code, param in bad]
    assert all(e["error"]["type"] == "invalid_request_error" for e in errors)
    assert errors[1]["error"]["event_id"] == "evt_1" and errors[-1]["error"]["event_id"] == "evt_2"
    assert run.close_code is None  # still open when the sentinel came
    assert wer(JFK_TEXT, run.text) <= clips["jfk"].spec.max_wer, run.text


async def test_clear_drops_the_audio_not_committed(live_server, clips) -> None:
    manual = json.dumps({"type": "session.update", "session": ga_session(turn_detection=None)})
    frames: list[str | bytes] = [manual, *_append_frames(pcm24(clips["dream"])),
                                 json.dumps({"type": "input_audio_buffer.clear"}),
                                 *_append_frames(pcm24(clips["jfk"])), *SENTINEL_COMMITS]
    run = await _raw_session(live_server, lambda ws: _send_all(ws, frames))
    assert len(run.of_type("input_audio_buffer.cleared")) == 1
    assert len(run.of_type(COMPLETED)) == 1
    assert wer(JFK_TEXT, run.text) <= clips["jfk"].spec.max_wer, run.text
    assert "dream" not in run.text.lower()


async def test_language_can_change_only_before_audio(live_server, clips) -> None:
    german = json.dumps({"type": "session.update", "event_id": "evt_de", "session": ga_session(language="de")})
    frames: list[str | bytes] = [*_append_frames(pcm24(clips["jfk"])[:RATE]), german,
                                 *_append_frames(pcm24(clips["jfk"])), *SENTINEL_COMMITS]
    run = await _raw_session(live_server, lambda ws: _send_all(ws, frames))
    refused = [e for e in run.of_type("error") if e["error"]["event_id"] == "evt_de"]
    assert [e["error"]["code"] for e in refused] == ["session_update_after_audio"]
    assert len(run.of_type("session.updated")) == 0  # a refused update is not answered as applied
    assert run.of_type("session.created")[0]["session"]["audio"]["input"]["transcription"]["language"] == "en-US"


async def test_browser_key_subprotocol_and_refusals(make_server) -> None:
    live = make_server()
    token = live.tokens["alice"]
    url = f"{live.base_url}/v1/realtime?intent=transcription"
    offered = ["realtime", f"openai-insecure-api-key.{token}", "openai-beta.realtime-v1"]
    with server_log() as log:
        async with websockets.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    assert "token_name=alice" in log.getvalue() and token not in log.getvalue()
    refusals = [
        (url, {}, 401),  # no key
        (url, {"Authorization": "Bearer not-a-token-0123456789"}, 401),
        (f"{live.base_url}/v1/realtime?model=gpt-4o-realtime-preview", {"Authorization": f"Bearer {token}"}, 400),
    ]
    for target, headers, status in refusals:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(target, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
    off = make_server({"openai_realtime": {"enabled": False}})
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url.replace(str(live.port), str(off.port)),
                                      additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    assert refused.value.response.status_code == 404


@pytest.mark.slow
async def test_drain_completes_every_item_sent_before_it(make_server, tmp_path) -> None:
    """A drain mid-stream at real time: every phrase sent before the drain began is in the
    completed items the client gets before the 1001."""
    live = make_server()
    clip = accuracy_set.phrased("tale", tmp_path)
    audio = encode("s16le", "pcm_s16le", rate=RATE, pcm16=clip.pcm16)
    run, sent, sent_at_drain = Run(), [0], 0
    async with openai_client(live).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.session.update(session=ga_session())
        receiver = asyncio.create_task(_receive(connection, run, beta=False, until=lambda _event: False))
        sender = asyncio.create_task(_append(connection, audio, int(RATE * CHUNK_SECONDS) * 2,
                                             pace=CHUNK_SECONDS, sent=sent))
        await asyncio.sleep(7)
        sent_at_drain = sent[0]
        drained = asyncio.run_coroutine_threadsafe(live.server.drain(30), live.loop)
        await asyncio.wait_for(receiver, 60)
        sender.cancel()
        assert drained.result(timeout=30)
    sent16 = sent_at_drain * 2 // 3  # 24 kHz bytes → the clip's 16 kHz offsets
    errors, due, invented = clip.errors(run.text, sent16, len(clip.pcm16))
    print(f"drain: {sent_at_drain / (2 * RATE):.1f} s sent, {due} words due, {errors} errors: {run.text!r}")
    assert run.close_code == 1001
    assert due >= 10 and errors <= max(1, round(clip.max_wer * due)), run.text
    assert not run.of_type("error")
    assert run.events[-1]["type"] == COMPLETED  # the item under way, committed at the close


async def test_openai_sessions_have_their_own_idle_timeout(make_server) -> None:
    """openai_realtime.idle_timeout_seconds, not limits.idle_timeout_seconds, closes them."""
    live = make_server({"openai_realtime": {"idle_timeout_seconds": 1}, "limits": {"idle_timeout_seconds": 60}})
    url = f"{live.base_url}/v1/realtime?intent=transcription"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {live.tokens['alice']}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1011 and "idle_timeout" in (ws.close_reason or "")
