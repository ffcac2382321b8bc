"""The OpenAI Realtime transcription protocol, sans I/O: client events → session events, engine
results → items. Every server event is validated against the official SDK's typed union."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from stt_server.audio_format import AudioFormat
from stt_server.errors import ProtocolError, ProviderError
from stt_server.protocols import Finalize, Reconfigure, SetAudioFormat
from stt_server.protocols.openai_realtime import OpenAIRealtimeProtocol, RealtimeEventError
from stt_server.results import Result

GA_EVENTS: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def events(frames: list[str]) -> list[dict[str, Any]]:
    parsed = [json.loads(frame) for frame in frames]
    for event in parsed:
        if event["type"] != "transcription_session.updated":  # beta: see test_clients_openai
            GA_EVENTS.validate_python(event)
    return parsed


def kinds(frames: list[str]) -> list[str]:
    return [event["type"].rsplit(".", 1)[-1] if event["type"] != COMPLETED else "completed"
            for event in events(frames)]


def update(session: dict[str, Any], kind: str = "session.update", **extra: Any) -> str:
    return json.dumps({"type": kind, "session": session, **extra})


def interim(text: str, start: float = 0.0, end: float = 1.0) -> Result:
    return Result(text, False, start, end)


def final(text: str, start: float = 0.0, end: float = 1.0, *, speech_final: bool = True) -> Result:
    return Result(text, True, start, end, speech_final=speech_final)


@pytest.fixture
def protocol() -> OpenAIRealtimeProtocol:
    protocol = OpenAIRealtimeProtocol(language="en-US", silence_ms=800)
    protocol.opening({"session_id": "abc"})
    return protocol


def test_created_says_what_is_in_force() -> None:
    protocol = OpenAIRealtimeProtocol(language="en-US", silence_ms=800)
    (created,) = events(protocol.opening({"session_id": "abc"}))
    assert created["type"] == "session.created"
    audio_input = created["session"]["audio"]["input"]
    assert audio_input["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert audio_input["turn_detection"]["silence_duration_ms"] == 800
    assert audio_input["transcription"]["language"] == "en-US"
    no_endpointing = OpenAIRealtimeProtocol(silence_ms=0)
    assert events(no_endpointing.opening({}))[0]["session"]["audio"]["input"]["turn_detection"] is None


def test_ga_update_becomes_engine_and_format_changes_answered_once_applied(protocol) -> None:
    session = {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcmu"},
        "transcription": {"model": "gpt-4o-transcribe", "language": "de", "prompt": "names"},
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}
    assert protocol.parse(update(session)) == [Reconfigure(language="de", endpointing_ms=800),
                                               SetAudioFormat(AudioFormat("mulaw", 8_000, 1))]
    (updated,) = events(protocol.acknowledge())
    audio_input = updated["session"]["audio"]["input"]
    assert updated["type"] == "session.updated" and audio_input["format"] == {"type": "audio/pcmu"}
    assert audio_input["transcription"] == {"model": "gpt-4o-transcribe", "language": "de", "prompt": "names"}
    assert audio_input["turn_detection"]["type"] == "server_vad"  # what runs, not what was asked
    assert protocol.acknowledge() == []  # answered once


def test_an_update_the_runner_refused_is_not_answered(protocol) -> None:
    assert protocol.parse(update({"type": "transcription", "audio": {"input": {"turn_detection": None}}})) == [
        Reconfigure(language="en-US", endpointing_ms=0)]
    protocol.error(ProtocolError("too late", code="session_update_after_audio"))
    assert protocol.acknowledge() == []
    assert protocol.settings.turn_detection is not None  # still in force


def test_beta_update_gets_the_beta_answer(protocol) -> None:
    session = {"input_audio_format": "g711_alaw", "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
               "input_audio_transcription": {"model": "whisper-1"}}
    assert protocol.parse(update(session, "transcription_session.update")) == [
        Reconfigure(language="en-US", endpointing_ms=500), SetAudioFormat(AudioFormat("alaw", 8_000, 1))]
    (updated,) = events(protocol.acknowledge())
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "g711_alaw"
    assert updated["session"]["turn_detection"]["silence_duration_ms"] == 500


@pytest.mark.parametrize(("session", "param"), [
    ({"type": "realtime"}, "session.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}, "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": -5}}}},
     "session.audio.input.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"transcription": {"language": "en; DROP"}}}}, "session.audio.input.transcription.language"),
    ({"audio": "pcm"}, "session.audio"),
])
def test_bad_updates_name_the_field(protocol, session, param) -> None:
    with pytest.raises(RealtimeEventError) as refused:
        protocol.parse(update(session))
    assert refused.value.param == param
    assert protocol.acknowledge() == []


def test_commit_needs_audio_and_clear_empties(protocol) -> None:
    with pytest.raises(RealtimeEventError) as empty:
        protocol.parse('{"type": "input_audio_buffer.commit"}')
    assert empty.value.code == "input_audio_buffer_commit_empty"
    assert len(protocol.parse('{"type": "input_audio_buffer.append", "audio": "AAAA"}')) == 1
    assert protocol.parse('{"type": "input_audio_buffer.commit"}') == [Finalize()]
    with pytest.raises(RealtimeEventError):
        protocol.parse('{"type": "input_audio_buffer.commit"}')


def test_turn_detection_items_and_deltas_of_settled_words(protocol) -> None:
    assert protocol.result(interim("")) == []
    started = events(protocol.result(interim("hello there", 0.3, 1.0)))
    assert [e["type"] for e in started] == ["input_audio_buffer.speech_started"]  # nothing settled yet
    assert started[0]["audio_start_ms"] == 300
    item = started[0]["item_id"]
    (delta,) = events(protocol.result(interim("hello there general", 0.3, 1.5)))
    assert delta["type"] == DELTA and delta["delta"] == "hello there" and delta["item_id"] == item
    assert protocol.result(interim("hello their general kenobi", 0.3, 2.0)) == []  # disagrees: wait
    frames = events(protocol.result(final("hello there general kenobi", 0.3, 2.2)))
    assert [e["type"].rsplit(".", 1)[-1] for e in frames] == ["delta", "speech_stopped", "committed", "completed"]
    assert frames[0]["delta"] == " general kenobi" and frames[1]["audio_end_ms"] == 2200
    assert frames[2]["previous_item_id"] is None
    assert frames[3]["transcript"] == "hello there general kenobi" and frames[3]["usage"]["seconds"] == 1.9
    second = events(protocol.result(final("bye", 3.0, 3.5)))
    assert second[-1]["transcript"] == "bye" and second[-2]["previous_item_id"] == item


def test_a_split_final_is_part_of_its_item(protocol) -> None:
    protocol.result(final("it was the best of times", 0.0, 6.0, speech_final=False))
    frames = events(protocol.result(final("it was the worst of times", 6.2, 9.0)))
    assert frames[-1]["transcript"] == "it was the best of times it was the worst of times"
    assert len([f for f in frames if f["type"] == COMPLETED]) == 1


def test_manual_commits_one_item_committed_before_its_deltas(protocol) -> None:
    protocol.parse(update({"type": "transcription", "audio": {"input": {"turn_detection": None}}}))
    protocol.acknowledge()
    protocol.parse('{"type": "input_audio_buffer.append", "audio": "AAAA"}')
    assert protocol.result(final("first part", 0.0, 2.0)) == []  # known from its commit on
    assert protocol.parse('{"type": "input_audio_buffer.commit"}') == [Finalize()]
    assert kinds(protocol.result(final("second part", 2.5, 4.0))) == ["committed", "delta"]
    frames = events(protocol.finalized())
    assert [f["type"] for f in frames] == [COMPLETED] and frames[0]["transcript"] == "first part second part"


def test_clear_drops_the_item_under_way_not_the_ones_before(protocol) -> None:
    first = events(protocol.result(final("kept", 0.0, 1.0)))[-1]
    protocol.result(interim("dropped words", 2.0, 3.0))
    protocol.parse('{"type": "input_audio_buffer.append", "audio": "AAAA"}')
    assert protocol.parse('{"type": "input_audio_buffer.clear"}') == [Finalize()]
    protocol.result(final("dropped words", 2.0, 3.2, speech_final=False))
    assert kinds(protocol.finalized()) == ["cleared"]
    frames = events(protocol.result(final("next", 4.0, 5.0)))
    assert frames[-2]["previous_item_id"] == first["item_id"] and frames[-1]["transcript"] == "next"


def test_closing_commits_what_was_not(protocol) -> None:
    protocol.result(final("spoken before the drain", 0.0, 2.0, speech_final=False))
    assert kinds(protocol.closing()) == ["committed", "completed"]
    assert protocol.closing() == []


def test_errors_are_openai_shaped(protocol) -> None:
    with pytest.raises(RealtimeEventError) as unknown:
        protocol.parse('{"type": "response.create", "event_id": "evt_9"}')
    (client,) = events(protocol.error(unknown.value))
    assert client["error"] == {"type": "invalid_request_error", "code": "invalid_event",
                               "message": client["error"]["message"], "param": "type", "event_id": "evt_9"}
    (server,) = events(protocol.error(ProviderError("engine failed", code="provider_crashed")))
    assert server["error"]["type"] == "server_error" and server["error"]["event_id"] is None
    with pytest.raises(ProtocolError):
        protocol.parse(b"\x00binary")


# Any session.update a client can send: OpenAI's keys, nested, with any JSON values.
_KEYS = ["type", "audio", "input", "format", "rate", "transcription", "language", "model", "prompt",
         "turn_detection", "silence_duration_ms", "threshold", "prefix_padding_ms", "noise_reduction",
         "input_audio_format", "input_audio_transcription", "input_audio_noise_reduction", "strength"]
_VALUES = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.sampled_from(["transcription", "realtime", "audio/pcm", "audio/pcmu", "pcm16", "g711_alaw",
                              "server_vad", "semantic_vad", "en", "de-DE", "", "\ud800", 24000, 16000])
           | st.text(max_size=12))
_SESSIONS = st.recursive(_VALUES, lambda inner: st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)
                         | st.lists(inner, max_size=3), max_leaves=25)


@given(session=_SESSIONS, kind=st.sampled_from(["session.update", "transcription_session.update"]))
@settings(max_examples=300, deadline=None)
def test_any_update_is_applied_or_refused_in_openai_shape(session: Any, kind: str) -> None:
    protocol = OpenAIRealtimeProtocol(language="en-US", silence_ms=800)
    protocol.opening({"session_id": "abc"})
    try:
        changes = protocol.parse(json.dumps({"type": kind, "session": session}))
    except ProtocolError as error:
        frames = protocol.error(error)
    else:
        assert all(isinstance(change, (Reconfigure, SetAudioFormat)) for change in changes)
        frames = protocol.acknowledge()
    for frame in frames:
        frame.encode("utf-8")  # a lone surrogate echoed back would fail the websocket send
    events(frames)
