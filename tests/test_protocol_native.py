"""The native wire protocol, without a socket."""

from __future__ import annotations

import base64
import json

import pytest

from stt_server.errors import ProtocolError
from stt_server.protocols import AudioIn, CloseStream, Finalize, KeepAlive
from stt_server.protocols.native import NativeProtocol
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
    (frame,) = protocol.result(result)
    message = json.loads(frame)
    assert message["type"] == "Results" and message["is_final"] and message["speech_final"]
    assert message["start"] == 1.0 and message["duration"] == 1.5
    alt = message["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello world" and alt["confidence"] == 0.9
    assert alt["words"][0] == {"word": "hello", "start": 1.0, "end": 1.5, "confidence": 0.8}


def test_error_shape() -> None:
    (frame,) = protocol.error(ProtocolError("broken", code="bad_json"))
    assert json.loads(frame) == {"type": "Error", "code": "bad_json", "message": "broken"}


def test_a_detected_language_is_reported_as_deepgram_does() -> None:
    from stt_server.protocols.native import results_message
    from stt_server.results import Result, Word

    detected = results_message(Result("hallo welt", True, 0.0, 1.0, 0.9, (Word("hallo", 0.0, 0.5),), language="de"))
    alternative = detected["channel"]["alternatives"][0]
    assert alternative["languages"] == ["de"] and alternative["words"][0]["language"] == "de"
    plain = results_message(Result("hello", True, 0.0, 1.0, 0.9, (Word("hello", 0.0, 0.5),)))
    assert "languages" not in plain["channel"]["alternatives"][0]
    assert "language" not in plain["channel"]["alternatives"][0]["words"][0]
