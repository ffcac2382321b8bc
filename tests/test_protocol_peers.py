"""vosk-server's and WhisperLive's protocols, the root dispatcher and the registry, without a socket."""

from __future__ import annotations

import json

import pytest

from stt_server.audio_format import AudioFormat
from stt_server.config import SessionDefaults
from stt_server.errors import AuthError, CapacityError, ProtocolError
from stt_server.protocols import AudioIn, CloseStream, SetAudioFormat
from stt_server.protocols.native import NativeProtocol
from stt_server.protocols.registry import PROTOCOLS, protocol_for
from stt_server.protocols.root import RootProtocol, refusal
from stt_server.protocols.seed import SeedProtocol
from stt_server.protocols.vosk import VoskProtocol
from stt_server.protocols.whisperlive import OptionsMessage, WhisperLiveProtocol
from stt_server.results import Result, Word
from stt_server.session import Endpoint, parse_session

EOF_TEXT = '{"eof" : 1}'  # exactly as vosk-server's test.py sends it


def final(text: str, start: float, end: float) -> Result:
    words = tuple(Word(w, start + i * 0.3, start + i * 0.3 + 0.25, 0.9) for i, w in enumerate(text.split()))
    return Result(text, True, start, end, 0.9, words, speech_final=True)


def interim(text: str, start: float, end: float) -> Result:
    return Result(text, False, start, end, 0.5)


def loads(frames: list[str]) -> list[dict]:
    return [json.loads(f) for f in frames]


# --- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "cls"), [("/v1/listen", NativeProtocol), ("/ws/transcription/", SeedProtocol),
                                           ("/", RootProtocol)])
def test_each_path_gets_its_protocol(path: str, cls: type) -> None:
    params = parse_session(f"{path}?utterance_end_ms=1500&vad_events=true", defaults=SessionDefaults(),
                           default_provider="null", providers=["null"])
    assert isinstance(protocol_for(params), cls)
    assert set(PROTOCOLS) == set(Endpoint)
    if cls is NativeProtocol:
        assert params.utterance_end_ms == 1500 and params.vad_events and not params.ignored_params


def test_root_defaults_to_pcm16() -> None:
    params = parse_session("/", defaults=SessionDefaults(), default_provider="null", providers=["null"])
    assert params.audio == AudioFormat("linear16", 16_000, 1)


# --- vosk -----------------------------------------------------------------------------------


def test_vosk_answers_each_audio_message_exactly_once() -> None:
    vosk = VoskProtocol()
    assert vosk.parse('{"config" : {"sample_rate" : 8000}}') == [SetAudioFormat(AudioFormat("linear16", 8000, 1))]
    assert vosk.acknowledge() == []  # config is not answered
    assert vosk.parse(b"\x00\x01") == [AudioIn(b"\x00\x01")]
    assert loads(vosk.acknowledge()) == [{"partial": ""}]
    assert vosk.result(interim("ask not", 0.2, 1.0)) == []
    vosk.parse(b"\x00\x01")
    assert loads(vosk.acknowledge()) == [{"partial": "ask not"}]
    vosk.result(final("Ask not what", 0.2, 1.3))
    vosk.result(final("your country", 1.5, 2.1))
    vosk.result(interim("can do", 2.4, 2.8))
    vosk.parse(b"\x00\x01")
    (answer,) = loads(vosk.acknowledge())
    assert answer["text"] == "Ask not what your country" and len(answer["result"]) == 5
    assert set(answer["result"][0]) == {"conf", "start", "end", "word"}
    assert vosk.acknowledge() == []
    vosk.parse(b"\x00\x01")
    assert loads(vosk.acknowledge()) == [{"partial": "can do"}]


def test_vosk_eof_is_answered_by_everything_pending() -> None:
    vosk2 = VoskProtocol()
    assert vosk2.parse(EOF_TEXT) == [CloseStream()]
    assert vosk2.acknowledge() == []
    vosk2.result(final("for you", 3.0, 3.6))
    vosk2.result(final("ask what", 4.0, 4.6))
    (last,) = loads(vosk2.closing())
    assert last["text"] == "for you ask what" and [w["word"] for w in last["result"]] == ["for", "you", "ask", "what"]
    assert loads(VoskProtocol().closing()) == [{"result": [], "text": ""}]


def test_vosk_words_false_drops_the_word_list() -> None:
    vosk = VoskProtocol()
    assert vosk.parse('{"config": {"words": false}}') == []
    vosk.result(final("hello", 0, 1))
    assert loads(vosk.closing()) == [{"text": "hello"}]


@pytest.mark.parametrize("frame", ['{"config": 5}', '{"config": {"sample_rate": "fast"}}',
                                   '{"config": {"sample_rate": 10}}', '{"hello": 1}', "not json"])
def test_vosk_bad_text_is_answered_with_an_error(frame: str) -> None:
    vosk = VoskProtocol()
    with pytest.raises(ProtocolError) as info:
        vosk.parse(frame)
    (answer,) = loads(vosk.error(info.value))
    assert set(answer) == {"error"} and answer["error"]
    assert vosk.acknowledge() == []


# --- WhisperLive ----------------------------------------------------------------------------

OPTIONS = {"uid": "c0ffee", "language": "en", "task": "transcribe", "model": "small", "use_vad": True,
           "max_clients": 4, "max_connection_time": 600, "platform": "p", "meeting_url": "m", "token": "t0k"}


def test_whisperlive_is_told_apart_by_its_first_message() -> None:
    root = RootProtocol(provider="whisper")
    assert root.opening({"session_id": "s"}) == []
    assert root.parse(json.dumps(OPTIONS)) == [SetAudioFormat(AudioFormat("float32", 16_000, 1))]
    assert isinstance(root.inner, WhisperLiveProtocol)
    assert loads(root.acknowledge()) == [{"uid": "c0ffee", "message": "SERVER_READY", "backend": "faster_whisper"}]
    assert root.parse(b"\x00" * 16) == [AudioIn(b"\x00" * 16)]
    assert root.acknowledge() == []
    assert root.parse(b"END_OF_AUDIO") == [CloseStream()]

    vosk = RootProtocol()
    assert vosk.parse('{"config": {"sample_rate": 16000}}') == [SetAudioFormat(AudioFormat("linear16", 16000, 1))]
    assert isinstance(vosk.inner, VoskProtocol)
    audio_first = RootProtocol()
    assert audio_first.parse(b"\x01\x02") == [AudioIn(b"\x01\x02")]
    assert isinstance(audio_first.inner, VoskProtocol) and loads(audio_first.acknowledge()) == [{"partial": ""}]


def test_whisperlive_segments() -> None:
    live = WhisperLiveProtocol(OptionsMessage.from_json(OPTIONS))
    (update,) = loads(live.result(interim("ask not", 0.2, 1.0)))
    assert update == {"uid": "c0ffee", "segments": [{"start": "0.200", "end": "1.000", "text": "ask not",
                                                      "completed": False}]}
    (update,) = loads(live.result(final("Ask not what", 0.2, 1.3)))
    # The utterance is done: an empty incomplete segment replaces the client's stale interim.
    assert [(s["text"], s["completed"]) for s in update["segments"]] == [("Ask not what", True), ("", False)]
    (update,) = loads(live.result(interim("your", 1.5, 1.8)))
    assert [(s["text"], s["completed"]) for s in update["segments"]] == [("Ask not what", True), ("your", False)]
    live.result(final("your country", 1.5, 2.1))
    (last,) = loads(live.closing())
    assert [(s["text"], s["completed"]) for s in last["segments"]] == [("Ask not what", True),
                                                                       ("your country", True), ("", False)]
    (error,) = loads(live.error(ProtocolError("bad", code="x")))
    assert error == {"uid": "c0ffee", "status": "ERROR", "message": "bad"}


def test_refusals_speak_the_first_message_s_protocol() -> None:
    full = CapacityError("full", code="server_session_limit")
    assert loads(refusal(json.dumps(OPTIONS), full, wait_minutes=0.5)) == [
        {"uid": "c0ffee", "status": "WAIT", "message": 0.5}]
    denied = AuthError("unknown token", code="token_invalid")
    assert loads(refusal(json.dumps(OPTIONS), denied, wait_minutes=0.5)) == [
        {"uid": "c0ffee", "status": "ERROR", "message": "unknown token"}]
    assert loads(refusal(b"\x00\x00", denied, wait_minutes=0.5)) == [{"error": "unknown token"}]


@pytest.mark.parametrize("uid", ['""', "5", "null"])
def test_whisperlive_bad_uid(uid: str) -> None:
    with pytest.raises(ProtocolError):
        RootProtocol().parse('{"uid": %s}' % uid)
