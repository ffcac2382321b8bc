"""SeedProtocol without a socket: frames in, events and reply frames out."""

from __future__ import annotations

import base64
import json

import pytest

from stt_server.errors import AudioError, ProtocolError, ProviderError
from stt_server.protocols import AudioIn
from stt_server.protocols.seed import ACTION_MISSING, RunningTranscript, SeedProtocol, envelope
from stt_server.results import Result

CHUNK = b"\x1a\x45\xdf\xa3 some webm bytes"
B64 = base64.b64encode(CHUNK).decode()


def transcribe(request_id: object = 1700000000000, voice_stream: object = B64, **extra: object) -> str:
    return json.dumps({"action": "transcribe", "request_id": request_id, "voice_stream": voice_stream, **extra})


def final(text: str) -> Result:
    return Result(text=text, is_final=True, start=0.0, end=1.0)


def interim(text: str) -> Result:
    return Result(text=text, is_final=False, start=0.0, end=1.0)


def seed_client_view(frame: str) -> str | None:
    """What the seed's browser code does with a reply: JSON.parse(JSON.parse(m).data).transcript."""
    data = json.loads(frame)["data"]
    return json.loads(data)["transcript"] if data else None


def test_envelope_is_the_librarys_reply_byte_for_byte() -> None:
    # djangochannelsrestframework: send_json({"errors", "data", "action", "response_status",
    # "request_id"}) with json.dumps defaults; the seed's data is json.dumps({'transcript': ...}).
    frame = envelope(action="transcribe", data=json.dumps({"transcript": "hi"}), errors=[], status=200,
                     request_id=5)
    assert frame == ('{"errors": [], "data": "{\\"transcript\\": \\"hi\\"}", "action": "transcribe", '
                     '"response_status": 200, "request_id": 5}')


def test_transcribe_gives_audio_then_one_reply_with_echoed_request_id() -> None:
    protocol = SeedProtocol()
    assert protocol.opening({"session_id": "x"}) == []
    assert protocol.parse(transcribe(request_id=42)) == [AudioIn(CHUNK)]
    (reply,) = protocol.acknowledge()
    message = json.loads(reply)
    assert message == {"errors": [], "data": '{"transcript": ""}', "action": "transcribe",
                       "response_status": 200, "request_id": 42}
    assert protocol.acknowledge() == []  # one reply per message


def test_data_url_prefix_is_stripped() -> None:
    protocol = SeedProtocol()
    events = protocol.parse(transcribe(voice_stream="data:audio/webm;codecs=opus;base64," + B64))
    assert events == [AudioIn(CHUNK)]


def test_extra_keys_are_ignored_like_the_seeds_kwargs() -> None:
    assert SeedProtocol().parse(transcribe(format="webm")) == [AudioIn(CHUNK)]


def test_binary_frames_are_audio_without_a_reply() -> None:
    protocol = SeedProtocol()
    assert protocol.parse(CHUNK) == [AudioIn(CHUNK)]
    assert protocol.acknowledge() == []
    assert protocol.parse(b"") == []


def test_running_text_is_finals_plus_current_interim() -> None:
    running = RunningTranscript()
    running.add(interim("and so"))
    assert running.text == "and so"
    running.add(final("And so, my fellow Americans,"))
    running.add(interim("ask not"))
    assert running.text == "And so, my fellow Americans, ask not"
    running.add(interim("ask not what"))
    assert running.text == "And so, my fellow Americans, ask not what"
    running.add(final("ask not what your country can do for you"))
    running.add(final(""))  # an empty final adds nothing
    assert running.text == "And so, my fellow Americans, ask not what your country can do for you"


def test_results_reply_with_latest_request_id_only_when_the_text_changes() -> None:
    protocol = SeedProtocol()
    protocol.parse(transcribe(request_id=1))
    protocol.acknowledge()
    protocol.parse(transcribe(request_id=2))
    protocol.acknowledge()
    (reply,) = protocol.result(interim("and so"))
    assert json.loads(reply)["request_id"] == 2
    assert seed_client_view(reply) == "and so"
    assert protocol.result(interim("and so")) == []  # nothing new to show
    (reply,) = protocol.result(final("And so my fellow"))
    assert seed_client_view(reply) == "And so my fellow"
    protocol.parse(transcribe(request_id=3))
    (ack,) = protocol.acknowledge()
    assert seed_client_view(ack) == "And so my fellow"
    assert json.loads(ack)["request_id"] == 3


def error_of(protocol: SeedProtocol, frame: str) -> dict[str, object]:
    with pytest.raises((ProtocolError, AudioError)) as caught:
        protocol.parse(frame)
    (reply,) = protocol.error(caught.value)
    assert protocol.acknowledge() == []  # the error is the answer
    return json.loads(reply)


def test_missing_action_is_the_librarys_405() -> None:
    reply = error_of(SeedProtocol(), json.dumps({"request_id": 1, "voice_stream": B64}))
    assert reply == {"errors": [ACTION_MISSING], "data": None, "action": None, "response_status": 405,
                     "request_id": 1}
    assert ACTION_MISSING == "Unable to find action in message body."


def test_unknown_action_is_the_librarys_405() -> None:
    reply = error_of(SeedProtocol(), json.dumps({"action": "list", "request_id": 7}))
    assert reply == {"errors": ['Method "list" not allowed.'], "data": None, "action": "list",
                     "response_status": 405, "request_id": 7}


@pytest.mark.parametrize("voice_stream", ["not base64!!", 12, None, "data:audio/webm,raw"])
def test_bad_base64_is_400_naming_the_field(voice_stream: object) -> None:
    reply = error_of(SeedProtocol(), transcribe(request_id=9, voice_stream=voice_stream))
    assert reply["response_status"] == 400
    assert reply["action"] == "transcribe" and reply["request_id"] == 9 and reply["data"] is None
    (message,) = reply["errors"]  # type: ignore[misc]
    assert "voice_stream" in message


def test_missing_voice_stream_is_400() -> None:
    reply = error_of(SeedProtocol(), json.dumps({"action": "transcribe", "request_id": 3}))
    assert reply["response_status"] == 400 and "voice_stream" in reply["errors"][0]  # type: ignore[index]


@pytest.mark.parametrize("frame", ["not json", "[1, 2]", '"transcribe"'])
def test_non_object_messages_are_400(frame: str) -> None:
    reply = error_of(SeedProtocol(), frame)
    assert reply["response_status"] == 400 and reply["action"] is None and reply["request_id"] is None


def test_bad_audio_answers_the_message_that_carried_it() -> None:
    protocol = SeedProtocol()
    protocol.parse(transcribe(request_id=11))
    (reply,) = protocol.error(AudioError("the webm audio could not be decoded", code="undecodable_audio"))
    assert json.loads(reply) == {"errors": ["the webm audio could not be decoded"], "data": None,
                                 "action": "transcribe", "response_status": 400, "request_id": 11}
    assert protocol.acknowledge() == []
    assert SeedProtocol.audio_errors_are_fatal is False


def test_engine_failure_is_a_5xx_envelope() -> None:
    protocol = SeedProtocol()
    protocol.parse(transcribe(request_id=1))
    (reply,) = protocol.error(ProviderError("engine failed: RuntimeError", code="provider_crashed"))
    assert json.loads(reply)["response_status"] == 500
