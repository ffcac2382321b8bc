"""Wyoming's framing, preamble and session protocol, without a socket (the live tests use the real
``wyoming`` client against a real server: test_live_wyoming.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart
from wyoming.event import Event, read_event, write_event

from stt_server.audio_format import AudioFormat
from stt_server.cli import check_wyoming_token, main
from stt_server.config import from_mapping
from stt_server.endpoints import Endpoint
from stt_server.errors import AuthError, ConfigError, ProtocolError, RequestError
from stt_server.protocols import AudioIn, CloseStream, SetAudioFormat
from stt_server.protocols.wyoming import (
    Preamble,
    SessionRequest,
    WyomingProtocol,
    describe_programs,
    runner_frame,
    session_context,
)
from stt_server.protocols.wyoming_wire import (
    MAX_DATA_BYTES,
    MAX_HEADER_BYTES,
    AsrModel,
    AsrProgram,
    FrameDecoder,
    WyomingEvent,
    audio_format_of,
    encode_event,
    info_event,
)
from stt_server.providers.null import NullOptions, NullProvider
from stt_server.reload import plan_reload
from stt_server.results import Result
from stt_server.session import SessionParams
from stt_server.session_state import DRAIN_REASON, DRAIN_UNANSWERED_REASON
from stt_server.tokens import TokenEntry, TokenFileRead, TokenTable, parse_token_file


def final(text: str, start: float, end: float) -> Result:
    return Result(text, True, start, end, 0.9, speech_final=True)


def decode_all(data: bytes, *, step: int | None = None) -> list[WyomingEvent]:
    decoder = FrameDecoder()
    if step is None:
        return decoder.feed(data)
    events = []
    for i in range(0, len(data), step):
        events += decoder.feed(data[i:i + step])
    assert not decoder.mid_event
    return events


def reference_bytes(*events: Event) -> bytes:
    """What the wyoming package itself writes."""
    out = io.BytesIO()
    for event in events:
        write_event(event, out)
    return out.getvalue()


def events_in(text_frames: list[str]) -> list[WyomingEvent]:
    return decode_all("".join(text_frames).encode())


# --- framing ----------------------------------------------------------------------------------


def test_reads_what_the_reference_library_writes_fed_in_any_pieces() -> None:
    pcm = bytes(range(256)) * 8
    data = reference_bytes(AudioStart(16000, 2, 1).event(), AudioChunk(16000, 2, 1, pcm).event(),
                           Event("audio-stop"))
    for step in (None, 1, 7, 100):
        start, chunk, stop = decode_all(data, step=step)
        assert start.type == "audio-start" and start.data["rate"] == 16000 and start.payload == b""
        assert chunk.type == "audio-chunk" and chunk.payload == pcm and chunk.data["width"] == 2
        assert stop.type == "audio-stop"


def test_the_reference_library_reads_what_we_write() -> None:
    data = encode_event(WyomingEvent("transcript", {"text": "ünïcode text", "language": "de"}))
    event = read_event(io.BytesIO(data))
    assert event is not None and Transcript.from_event(event) == Transcript("ünïcode text", language="de")
    payload = encode_event(WyomingEvent("audio-chunk", {"rate": 8000}, b"\x01\x02"))
    event = read_event(io.BytesIO(payload))
    assert event is not None and event.payload == b"\x01\x02" and event.data == {"rate": 8000}


def test_data_in_the_header_and_after_it_are_merged() -> None:
    line = json.dumps({"type": "transcribe", "data": {"name": "a", "language": "en"}, "data_length": 13})
    (event,) = decode_all(line.encode() + b"\n" + b'{"name": "b"}')
    assert event.data == {"name": "b", "language": "en"}


@pytest.mark.parametrize(("data", "code"), [
    (b"\x00\xff garbage\n", "bad_event"),
    (b"not json at all\n", "bad_event"),
    (b"[1, 2]\n", "bad_event"),
    (b'{"data": {}}\n', "bad_event"),
    (b'{"type": 5}\n', "bad_event"),
    (b"\n", "bad_event"),
    (b'{"type": "audio-chunk", "payload_length": -1}\n', "bad_event"),
    (b'{"type": "audio-chunk", "payload_length": "12"}\n', "bad_event"),
    (b'{"type": "x", "data": [1]}\n', "bad_event"),
    (b'{"type": "x", "data_length": 4}\n[12]', "bad_event"),
    (b'{"type": "x"' + b', "a": [' * 40 + b"]" * 40 + b"}\n", "bad_event"),
])
def test_bad_bytes_are_a_protocol_error(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_all(data)
    assert raised.value.code == code


def test_events_before_bad_bytes_come_first_then_the_error() -> None:
    decoder = FrameDecoder()
    good = encode_event(WyomingEvent("audio-start", {"rate": 16000, "width": 2, "channels": 1}))
    assert [e.type for e in decoder.feed(good + b"%%%\n")] == ["audio-start"]
    with pytest.raises(ProtocolError):
        decoder.feed(b"")
    with pytest.raises(ProtocolError):  # and stays failed
        decoder.feed(good)


def test_a_huge_payload_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_payload_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="payload_length 2147483648 is over") as raised:
        decoder.feed(b'{"type": "audio-chunk", "payload_length": 2147483648}\n')
    assert raised.value.code == "event_too_big"
    with pytest.raises(ProtocolError, match="data_length"):
        FrameDecoder().feed(json.dumps({"type": "x", "data_length": MAX_DATA_BYTES + 1}).encode() + b"\n")


def test_a_header_line_without_end_is_refused_at_the_limit_not_buffered() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"{" + b" " * (MAX_HEADER_BYTES - 1))  # at the limit: still waiting
    assert decoder.buffered == MAX_HEADER_BYTES
    with pytest.raises(ProtocolError, match="no event header line") as raised:
        decoder.feed(b" " * (1 << 20))  # a megabyte more without a line break
    assert raised.value.code == "event_too_big"


@pytest.mark.parametrize(("data", "problem"), [
    ({"rate": 16000, "width": 1, "channels": 1}, "width 1 is not supported"),
    ({"rate": 16000, "width": 2, "channels": 9}, "channels must be"),
    ({"rate": 0, "width": 2, "channels": 1}, "rate must be"),
    ({"rate": True, "width": 2, "channels": 1}, "rate must be"),
    ({"rate": "16000", "width": 2, "channels": 1}, "rate must be"),
    ({"width": 2, "channels": 1}, "rate must be"),
])
def test_audio_start_formats_are_checked(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as raised:
        audio_format_of(WyomingEvent("audio-start", data))
    assert raised.value.code == "bad_audio_format"


def test_info_lists_programs_models_and_languages() -> None:
    info = info_event([AsrProgram("whisper", "w", [AsrModel("tiny.en", ["en"]), AsrModel("base", ["en", "de"])],
                                  True)], version="9")
    from wyoming.info import Info

    (program,) = Info.from_event(Event(info.type, dict(info.data))).asr
    assert program.name == "whisper" and program.supports_transcript_streaming
    assert [(m.name, m.languages) for m in program.models] == [("tiny.en", ["en"]), ("base", ["en", "de"])]


# --- the preamble -----------------------------------------------------------------------------


def never() -> WyomingEvent:
    raise AssertionError("info asked for")


def test_preamble_answers_describe_and_ping_then_opens_at_audio_start() -> None:
    preamble = Preamble()
    replies, request = preamble.handle(WyomingEvent("describe"), lambda: WyomingEvent("info", {"asr": []}))
    assert [r.type for r in replies] == ["info"] and request is None
    replies, _ = preamble.handle(WyomingEvent("ping", {"text": "hi"}), never)
    assert replies == [WyomingEvent("pong", {"text": "hi"})]
    assert preamble.handle(WyomingEvent("select-program", {"name": "null"}), never) == ([], None)
    assert preamble.handle(WyomingEvent("transcribe", {"name": "tiny.en", "language": "en"}), never) == ([], None)
    _, request = preamble.handle(WyomingEvent("audio-start", {"rate": 22050, "width": 2, "channels": 2}), never)
    assert request == SessionRequest("tiny.en", "en", AudioFormat("linear16", 22050, 2, declared=True))
    # The next transcription: transcribe is optional, select-program still holds.
    _, request = preamble.handle(WyomingEvent("audio-start", {"rate": 16000, "width": 2, "channels": 1}), never)
    assert request is not None and request.name == "null" and request.language is None


@pytest.mark.parametrize(("event", "code"), [
    (WyomingEvent("audio-chunk", {"rate": 16000}, b"\x00\x00"), "audio_before_start"),
    (WyomingEvent("audio-stop"), "audio_before_start"),
    (WyomingEvent("synthesize", {"text": "hi"}), "unknown_type"),
    (WyomingEvent("transcript", {"text": "hi"}), "unknown_type"),
    (WyomingEvent("transcribe", {"name": ["x"]}), "bad_event"),
    (WyomingEvent("select-program", {}), "bad_event"),
])
def test_preamble_refuses_what_cannot_come_first(event: WyomingEvent, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        Preamble().handle(event, never)
    assert raised.value.code == code


# --- one transcription ------------------------------------------------------------------------


def test_audio_and_audio_stop_become_runner_events() -> None:
    protocol = WyomingProtocol(language="en")
    assert protocol.parse(runner_frame(WyomingEvent("audio-chunk", {}, b"\x01\x02"))) == [AudioIn(b"\x01\x02")]
    assert protocol.parse(runner_frame(WyomingEvent("audio-stop"))) == [CloseStream()]
    assert protocol.parse(runner_frame(WyomingEvent("audio-start", {"rate": 8000, "width": 2, "channels": 1}))) == [
        SetAudioFormat(AudioFormat("linear16", 8000, 1, declared=True))]
    assert protocol.parse(runner_frame(WyomingEvent("ping", {"text": "x"}))) == []
    assert events_in(protocol.acknowledge()) == [WyomingEvent("pong", {"text": "x"})]
    for kind, code in (("transcribe", "bad_event"), ("describe", "bad_event"), ("wake", "unknown_type")):
        with pytest.raises(ProtocolError) as raised:
            protocol.parse(runner_frame(WyomingEvent(kind)))
        assert raised.value.code == code


def test_the_transcript_joins_the_finals_and_streams_them_when_asked() -> None:
    plain, streaming = WyomingProtocol(language="en"), WyomingProtocol(language="en", streaming=True)
    for protocol in (plain, streaming):
        sent = protocol.result(final("And so my fellow Americans.", 0.0, 2.0))
        sent += protocol.result(final("  ", 2.0, 2.5))  # nothing said: no chunk
        sent += protocol.result(final("Ask not.", 2.5, 4.0))
        sent += protocol.closing(0.0) + protocol.ending(1000, "")
        events = events_in(sent)
        assert events[-1 if protocol is plain else -2] == WyomingEvent(
            "transcript", {"text": "And so my fellow Americans. Ask not.", "language": "en"})


def test_streaming_order_is_start_chunks_transcript_stop() -> None:
    protocol = WyomingProtocol(language="en", streaming=True)
    sent = protocol.result(final("one", 0, 1)) + protocol.result(final("two", 1, 2)) + protocol.ending(1000, "")
    assert [(e.type, e.data.get("text")) for e in events_in(sent)] == [
        ("transcript-start", None), ("transcript-chunk", "one"), ("transcript-chunk", " two"),
        ("transcript", "one two"), ("transcript-stop", None)]


def test_a_drain_that_read_to_audio_stop_sends_the_transcript() -> None:
    protocol = WyomingProtocol()
    protocol.result(final("all of it", 0, 1))
    assert events_in(protocol.ending(1001, DRAIN_REASON)) == [WyomingEvent("transcript", {"text": "all of it"})]


@pytest.mark.parametrize(("code", "reason", "untranscribed", "says", "error_code"), [
    (1001, DRAIN_UNANSWERED_REASON, 0.0, "did not answer", "draining"),
    (1011, "idle_timeout: no audio or KeepAlive for 10 s", 0.0, "idle_timeout", "idle_timeout"),
    (1008, "max_duration: sessions are limited to 3600 s", 0.0, "max_duration", "max_duration"),
    (1011, "untranscribed_audio", 2.5, "2.5 s of the audio received were not transcribed", "incomplete"),
])
def test_an_incomplete_transcription_ends_with_an_error_never_a_short_transcript(
        code: int, reason: str, untranscribed: float, says: str, error_code: str) -> None:
    protocol = WyomingProtocol()
    protocol.result(final("only the start", 0, 1))
    protocol.closing(untranscribed)
    (event,) = events_in(protocol.ending(code, reason))
    assert event.type == "error" and says in event.data["text"] and event.data["code"] == error_code
    assert protocol.failed and protocol.ending(code, reason) == []


def test_nothing_follows_an_error() -> None:
    protocol = WyomingProtocol()
    (event,) = events_in(protocol.error(ProtocolError("bad", code="bad_event")))
    assert event == WyomingEvent("error", {"text": "bad", "code": "bad_event"})
    assert protocol.ending(1000, "") == []


# --- configuration ----------------------------------------------------------------------------


def test_config_requires_a_token_name_when_enabled() -> None:
    with pytest.raises(ConfigError, match="wyoming.token: is required"):
        from_mapping({"wyoming": {"enabled": True}}, source="c.yaml")
    with pytest.raises(ConfigError, match="wyoming.token: must be a token's name"):
        from_mapping({"wyoming": {"token": "sha256:abc def"}}, source="c.yaml")
    with pytest.raises(ConfigError, match="wyoming.port"):
        from_mapping({"wyoming": {"port": 70000}}, source="c.yaml")
    with pytest.raises(ConfigError, match="wyoming.provider: 'google' is not an enabled provider"):
        from_mapping({"wyoming": {"provider": "google"}}, source="c.yaml")
    with pytest.raises(ConfigError, match="wyoming.nope: unknown key"):
        from_mapping({"wyoming": {"nope": 1}}, source="c.yaml")
    config = from_mapping({"wyoming": {"enabled": True, "token": "ha", "language": "de"}}, source="c.yaml")
    assert config.wyoming.port == 10300 and config.wyoming.host == "127.0.0.1"


def test_the_token_name_must_be_in_the_token_file() -> None:
    config = from_mapping({"wyoming": {"enabled": True, "token": "ha"}}, source="c.yaml")
    entries = parse_token_file("secret-token-0123456789 alice\n")[0]
    with pytest.raises(ConfigError, match="no token named 'ha' in .*names there: alice"):
        check_wyoming_token(config, TokenFileRead(None, entries, [], table=TokenTable(entries)))
    entries = parse_token_file("secret-token-0123456789 ha\n")[0]
    check_wyoming_token(config, TokenFileRead(None, entries, [], table=TokenTable(entries)))


def test_check_config_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tokens.txt").write_text("secret-token-0123456789 alice\n")
    config = tmp_path / "config.yaml"
    config.write_text("wyoming:\n  enabled: true\n  token: bob\n")
    assert main(["--config", str(config), "check-config"]) == 2
    assert "wyoming.token: no token named 'bob'" in capsys.readouterr().err
    config.write_text("wyoming:\n  enabled: true\n  token: secret-token-0123456789\n")  # the token itself
    assert main(["--config", str(config), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "holds a token itself, not a token's name; use its name, 'alice'" in err
    assert "secret-token-0123456789" not in err  # never echoed
    config.write_text("wyoming:\n  enabled: true\n  token: alice\n")
    assert main(["--config", str(config), "check-config"]) == 0


def test_a_reload_keeps_the_listener_and_applies_the_rest() -> None:
    old = from_mapping({"wyoming": {"enabled": True, "token": "ha"}})
    new = from_mapping({"wyoming": {"enabled": True, "token": "other", "port": 10301, "language": "de"}})
    plan = plan_reload(old, new)
    assert plan.needs_restart == ("wyoming.port",)
    assert set(plan.applied) == {"wyoming.token", "wyoming.language"}
    assert plan.config.wyoming.port == 10300 and plan.config.wyoming.token == "other"


# --- the preamble's request → session parameters, info's programs ---------------------------------


class ModelsProvider(NullProvider):
    """An engine with models of its own (as Whisper has), without loading one."""

    name = "whisper"

    def model_languages(self) -> dict[str, list[str]]:
        return {"tiny.en": ["en"], "base": ["en", "de"]}


PROVIDERS = {"whisper": ModelsProvider(NullOptions()), "null": NullProvider(NullOptions())}
TWO = from_mapping({"providers": {"null": {"enabled": True}}})
PCM = AudioFormat("linear16", 16000, 1, declared=True)


def entry(line: str) -> TokenEntry:
    return parse_token_file(f"secret-token-0123456789 {line}\n")[0][0]


def request(name: str | None = None, language: str | None = None) -> SessionRequest:
    return SessionRequest(name, language, PCM)


def test_transcribe_names_an_engine_or_a_model_and_params_are_checked_as_a_urls() -> None:
    def params(name: str | None, language: str | None = None, token: str = "ha") -> SessionParams:
        return session_context(request(name, language), config=TWO, providers=PROVIDERS, token=entry(token),
                               peer="p").params
    assert (params(None).provider, params(None).model, params(None).language) == ("whisper", None, "en-US")
    assert (params("null").provider, params("null").model) == ("null", None)
    assert (params("base", "de").provider, params("base", "de").model, params("base", "de").language) == (
        "whisper", "base", "de")
    first = params(None)
    assert first.endpoint is Endpoint.WYOMING and not first.interim_results and first.audio == PCM
    with pytest.raises(RequestError, match="unknown program or model 'large'"):
        params("large")
    with pytest.raises(RequestError, match="invalid language tag"):
        params(None, "en US!")
    with pytest.raises(AuthError, match="may not use provider 'whisper'") as refused:
        params("base", token="ha providers=null")
    assert refused.value.code == "provider_forbidden"
    assert params(None, token="ha models=base").model == "base"  # the token's first model
    with pytest.raises(AuthError, match="may not use model 'tiny.en'"):
        params("tiny.en", token="ha models=base")


def test_info_has_one_program_per_engine_the_token_may_use_the_default_first() -> None:
    programs = describe_programs(TWO, PROVIDERS, entry("ha"))
    assert [(p.name, [(m.name, list(m.languages)) for m in p.models]) for p in programs] == [
        ("whisper", [("tiny.en", ["en"]), ("base", ["en", "de"])]), ("null", [("null", ["en-US"])])]
    assert [p.name for p in describe_programs(TWO, PROVIDERS, entry("ha providers=null"))] == ["null"]
    config = from_mapping({"providers": {"null": {"enabled": True}}, "wyoming": {"provider": "null"}})
    assert [p.name for p in describe_programs(config, PROVIDERS, None)] == ["null", "whisper"]
    (whisper, _) = describe_programs(TWO, PROVIDERS, entry("ha models=base"))
    assert [m.name for m in whisper.models] == ["base"]
