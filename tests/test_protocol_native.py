"""The native wire protocol, without a socket."""

from __future__ import annotations

import base64
import json

import pytest

from stt_server.errors import ProtocolError
from stt_server.protocols import AudioIn, CloseStream, Finalize, KeepAlive
from stt_server.protocols.native import NativeProtocol, plain_word
from stt_server.results import Result, Word

protocol = NativeProtocol()


def test_binary_is_audio() -> None:
    assert protocol.parse(b"\x01\x02") == [AudioIn(b"\x01\x02")]
    assert protocol.parse(b"") == []


def test_control_messages() -> None:
    assert protocol.parse('{"type":"KeepAlive"}') == [KeepAlive()]
    assert protocol.parse('{"type":"Finalize"}') == [Finalize()]
    assert protocol.parse('{"type":"CloseStream"}') == [CloseStream()]


def test_base64_audio_with_and_without_data_url() -> None:
    payload = base64.b64encode(b"abc").decode()
    assert protocol.parse(json.dumps({"type": "Audio", "data": payload})) == [AudioIn(b"abc")]
    url = "data:audio/webm;codecs=opus;base64," + payload
    assert protocol.parse(json.dumps({"type": "Audio", "data": url})) == [AudioIn(b"abc")]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1,2]", "bad_json"),
        ('{"type":"Shout"}', "unknown_type"),
        ('{"nope":1}', "unknown_type"),
        ('{"type":"Audio","data":"@@@"}', "bad_base64"),
        ('{"type":"Audio","data":5}', "bad_base64"),
        ('{"type":"Audio","data":"data:audio/webm,abc"}', "bad_base64"),
    ],
)
def test_bad_frames(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(frame)
    assert info.value.code == code


def test_results_shape() -> None:
    result = Result("hello world", True, 1.0, 2.5, 0.9, (Word("hello", 1.0, 1.5, 0.8), Word("world", 1.6, 2.5)),
                    speech_final=True)
    (frame,) = NativeProtocol().result(result)
    message = json.loads(frame)
    assert message["type"] == "Results" and message["is_final"] and message["speech_final"]
    assert message["start"] == 1.0 and message["duration"] == 1.5
    alt = message["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello world" and alt["confidence"] == 0.9
    assert alt["words"][0] == {"word": "hello", "start": 1.0, "end": 1.5, "confidence": 0.8,
                               "punctuated_word": "hello"}
    assert message["channel_index"] == [0, 1] and message["from_finalize"] is False
    assert set(message["metadata"]) == {"request_id", "model_info", "model_uuid"}


def test_error_shape() -> None:
    (frame,) = protocol.error(ProtocolError("broken", code="bad_json"))
    assert json.loads(frame) == {"type": "Error", "variant": "SchemaError", "description": "broken",
                                 "code": "bad_json", "message": "broken"}


# --- Deepgram fidelity ------------------------------------------------------------------------

PCM_RATE = 16_000 * 2  # bytes per second of 16 kHz PCM16
OPENING = {"session_id": "abc123", "request_id": "abc123", "created": "2026-11-29T10:00:00.000+00:00",
           "provider": "whisper", "model_info": {"model": "/models/tiny.en", "device": "cpu"}, "channels": 1}


def session(**options: object) -> NativeProtocol:
    native = NativeProtocol(bytes_per_second=PCM_RATE, **options)  # type: ignore[arg-type]
    native.opening(OPENING)
    return native


def messages(frames: list[str]) -> list[dict]:
    return [json.loads(f) for f in frames]


def interim(text: str, start: float, end: float) -> Result:
    words = tuple(Word(w, start + i * 0.3, start + i * 0.3 + 0.25) for i, w in enumerate(text.split()))
    return Result(text, False, start, end, 0.9, words)


def final(text: str, start: float, end: float, speech_final: bool = True) -> Result:
    return Result(**{**interim(text, start, end).__dict__, "is_final": True, "speech_final": speech_final})


def test_plain_and_punctuated_words() -> None:
    assert plain_word("Country.") == "country" and plain_word("don't,") == "don't" and plain_word("¿Qué?") == "qué"
    (frame,) = session().result(final("Ask not.", 0.0, 1.0))
    words = json.loads(frame)["channel"]["alternatives"][0]["words"]
    assert [(w["word"], w["punctuated_word"]) for w in words] == [("ask", "Ask"), ("not", "not.")]


def test_results_carry_the_session_and_the_engine() -> None:
    native = session()
    (first,) = messages(native.result(final("hello", 0.0, 1.0)))
    meta = first["metadata"]
    assert meta["request_id"] == "abc123"
    assert meta["model_info"] == {"name": "tiny.en", "version": meta["model_info"]["version"], "arch": "whisper"}
    assert meta["model_info"]["version"] and len(meta["model_uuid"]) == 36
    other = session()
    assert json.loads(other.result(final("x", 0, 1))[0])["metadata"]["model_uuid"] == meta["model_uuid"]


def test_from_finalize_marks_the_final_answering_a_finalize() -> None:
    native = session()
    native.parse(b"\0" * PCM_RATE * 2)  # 2 s of audio, then Finalize
    assert native.parse('{"type":"Finalize"}') == [Finalize()]
    (interim_frame,) = messages(native.result(interim("ask not", 0.5, 1.8)))
    assert interim_frame["from_finalize"] is False
    (answer,) = messages(native.result(final("ask not", 0.5, 1.9, speech_final=False)))
    assert answer["from_finalize"] is True
    native.parse(b"\0" * PCM_RATE)
    (later,) = messages(native.result(final("what", 2.2, 2.9)))
    assert later["from_finalize"] is False


def test_speech_started_before_the_first_result_of_each_utterance() -> None:
    native = session(vad_events=True)
    kinds = [m["type"] for m in messages(native.result(interim("ask", 1.2, 1.6)))]
    assert kinds == ["SpeechStarted", "Results"]
    assert messages(native.result(interim("ask", 1.2, 1.6)))[0]["type"] == "Results"
    assert [m["type"] for m in messages(native.result(final("ask not", 1.2, 2.0)))] == ["Results"]
    started, _ = messages(native.result(interim("what", 3.1, 3.5)))
    assert started == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 3.1}
    assert all(m["type"] == "Results" for m in messages(session().result(interim("ask", 1.2, 1.6))))


def test_utterance_end_after_the_gap_without_new_words() -> None:
    native = session(utterance_end_ms=1000)
    native.parse(b"\0" * PCM_RATE * 2)  # 2.0 s received
    native.result(interim("ask not", 0.5, 1.5))
    assert native.acknowledge() == []  # an interim is pending: a word may still come
    frames = messages(native.result(final("ask not", 0.5, 1.5)))
    assert [m["type"] for m in frames] == ["Results"]  # 2.0 s received < last word end 1.05 + 1 s
    native.parse(b"\0" * (PCM_RATE // 2))  # 2.5 s received
    (end,) = messages(native.acknowledge())
    last = frames[0]["channel"]["alternatives"][0]["words"][-1]["end"]
    assert end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last}
    native.parse(b"\0" * PCM_RATE)
    assert native.acknowledge() == []  # once per utterance
    assert messages(session().acknowledge()) == []


def test_utterance_end_is_off_by_default() -> None:
    native = session()
    native.result(final("ask not", 0.0, 0.5))
    native.parse(b"\0" * PCM_RATE * 5)
    assert native.acknowledge() == [] and [m["type"] for m in messages(native.closing())] == ["Metadata"]


def test_metadata_at_open_and_at_the_end_of_the_stream() -> None:
    import hashlib

    native = NativeProtocol(bytes_per_second=PCM_RATE)
    (opening,) = messages(native.opening({**OPENING, "ignored_params": []}))
    assert opening["type"] == "Metadata" and opening["duration"] == 0 and opening["session_id"] == "abc123"
    audio = bytes(range(256)) * 250
    native.parse(audio)
    native.parse(json.dumps({"type": "Audio", "data": base64.b64encode(audio).decode()}))
    (closing,) = messages(native.closing())
    assert closing == {"type": "Metadata", "transaction_key": "deprecated", "request_id": "abc123",
                       "sha256": hashlib.sha256(audio * 2).hexdigest(), "created": OPENING["created"],
                       "duration": round(len(audio) * 2 / PCM_RATE, 3), "channels": 1,
                       "models": [native.model.uuid], "model_info": {native.model.uuid: native.model.to_json()},
                       "untranscribed_seconds": 0.0}
    assert messages(native.closing(2.5))[0]["untranscribed_seconds"] == 2.5


def test_drain_sends_nothing_new() -> None:
    assert session().draining("server shutting down") == []


@pytest.mark.parametrize(("configure", "code"), [
    ({"type": "Configure", "keyterms": ["Kennedy"]}, "CONFIGURE_KEYTERMS_NOT_SUPPORTED"),
    ({"type": "Configure", "features": {"numerals": True}}, "CONFIGURE_INTERNAL_ERROR"),
])
def test_configure_is_answered_with_a_failure(configure: dict, code: str) -> None:
    native = session()
    assert native.parse(json.dumps(configure)) == []
    (failure,) = messages(native.acknowledge())
    assert failure["type"] == "ConfigureFailure" and failure["code"] == code
    assert failure["request_id"] == "abc123" and failure["description"]
    assert native.acknowledge() == []


def test_a_detected_language_is_reported_as_deepgram_does() -> None:
    detected = messages(session().result(Result("hallo welt", True, 0.0, 1.0, 0.9, (Word("hallo", 0.0, 0.5),),
                                                language="de")))[0]
    alternative = detected["channel"]["alternatives"][0]
    assert alternative["languages"] == ["de"] and alternative["words"][0]["language"] == "de"
    plain = messages(session().result(Result("hello", True, 0.0, 1.0, 0.9, (Word("hello", 0.0, 0.5),))))[0]
    assert "languages" not in plain["channel"]["alternatives"][0]
    assert "language" not in plain["channel"]["alternatives"][0]["words"][0]


def test_a_finalize_with_nothing_left_is_answered_with_an_empty_final() -> None:
    native = session()
    native.parse(b"\0" * PCM_RATE * 3)
    native.result(final("ask not", 0.5, 1.5))  # the utterance ended before the Finalize
    native.parse('{"type":"Finalize"}')
    (answer,) = messages(native.finalized())
    assert answer["from_finalize"] is True and answer["is_final"] is True
    assert answer["channel"]["alternatives"][0]["transcript"] == "" and answer["start"] == 3.0
    assert native.finalized() == []  # once
    native.parse(b"\0" * PCM_RATE)
    native.parse('{"type":"Finalize"}')
    (real,) = messages(native.result(final("what", 3.0, 3.5)))
    assert real["from_finalize"] is True and native.finalized() == []  # answered by the real final


def test_the_closing_metadata_lists_the_detected_languages() -> None:
    native = session()
    native.result(Result("hallo welt wie geht", True, 0.0, 1.0, 0.9, language="de"))
    native.result(Result("hello", True, 1.0, 2.0, 0.9, language="en"))
    (closing,) = messages(native.closing())
    assert closing["languages"] == ["de", "en"]
    assert "languages" not in messages(session().closing())[0]  # none detected: none listed
