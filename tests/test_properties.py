"""Property-based fuzzing (hypothesis) of everything a client's bytes reach before an engine:
every wire protocol's frame parser, and the handshake (paths, queries, headers, repeats).

The property is the same everywhere: whatever comes in, the answer is either a result or one
of our own errors (SttServerError), and every frame we would send back is valid UTF-8 JSON.
Nothing else may escape: an escaping exception is a traceback in the log and a 500 or 1011.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

import stt_server.protocols as protocols_package
from stt_server.config import from_mapping
from stt_server.errors import SttServerError
from stt_server.handshake import accept_session, error_body, offered_subprotocols, path_for_log, token_from_request
from stt_server.protocols.events import ClientEvent, WireProtocol, parse_json_object
from stt_server.protocols.wyoming_wire import FrameDecoder
from stt_server.tokens import TokenTable, parse_token_file

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = "good-token-0123456789abcdef"
CONFIG = from_mapping({"providers": {"null": {"enabled": True}},
                       "limits": {"allowed_origins": ["https://app.example.com"]}})
TABLE = TokenTable(parse_token_file(f"{TOKEN} alice\n")[0])


def all_protocols() -> list[type[WireProtocol]]:
    """Every WireProtocol in stt_server/protocols/, including ones added later."""
    for module in pkgutil.iter_modules(protocols_package.__path__):
        importlib.import_module(f"{protocols_package.__name__}.{module.name}")
    found: list[type[WireProtocol]] = []
    pending = list(WireProtocol.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


PROTOCOLS = all_protocols()


def instance(cls: type[WireProtocol]) -> WireProtocol:
    """A protocol as a session starts it. One whose constructor needs what the client's first
    message said (WhisperLive's options) is built from such a message."""
    from stt_server.protocols.whisperlive import OptionsMessage, WhisperLiveProtocol

    if cls is WhisperLiveProtocol:
        return WhisperLiveProtocol(OptionsMessage.from_json({"uid": "c0ffee", "language": "en", "task": "transcribe",
                                                             "model": "small", "use_vad": True}))
    return cls()

# JSON values, nested a little, with the field names the protocols look at.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
FIELDS = ["type", "data", "action", "request_id", "voice_stream", "Audio", "KeepAlive", "Finalize",
          "CloseStream", "transcribe",
          # OpenAI Realtime's
          "session", "audio", "input", "format", "turn_detection", "transcription", "event_id",
          "input_audio_format", "input_audio_transcription", "session.update", "transcription_session.update",
          "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear"]
field_values = (st.sampled_from(FIELDS) | st.text(max_size=20) | json_values
                | st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=40)
                | st.just("data:audio/webm;base64,AAAA") | st.just("\ud800"))
messages = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=5)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ("[{\"b\":", "}]")]))
    return opener * depth + draw(st.sampled_from(["1", "", '"x"'])) + closer * draw(st.integers(0, depth))


text_frames = (messages.map(json.dumps) | messages.map(lambda m: json.dumps(m, ensure_ascii=False))
               | st.text(max_size=200) | nested() | json_values.map(json.dumps)
               | st.sampled_from(["", "null", "[]", "1" * 5000, '{"type": "Audio", "data": "%%%"}',
                                  '{"type":"Audio","data":"' + "A" * 4001 + '"}', "\ud800", '"\\ud800"']))
frames = text_frames | st.binary(max_size=300)


def check_outgoing(frames_out: list[str]) -> None:
    for frame in frames_out:
        assert isinstance(frame, str)
        frame.encode("utf-8")  # websockets encodes strictly: a lone surrogate would raise there
        if frame.endswith("\n") or "\n{" in frame:  # Wyoming: a header line, then its JSON data
            decoder = FrameDecoder()
            assert len(decoder.feed(frame.encode())) == 1 and not decoder.mid_event
        else:
            json.loads(frame)


@given(frame=frames)
@FUZZ
def test_every_protocol_parses_any_frame_into_events_or_its_own_error(frame: str | bytes) -> None:
    assert PROTOCOLS, "no protocol found"
    for cls in PROTOCOLS:
        protocol = instance(cls)
        try:
            events = protocol.parse(frame)
        except SttServerError as error:
            check_outgoing(protocol.error(error))
        else:
            assert isinstance(events, list)
            assert all(isinstance(event, ClientEvent) for event in events)
            check_outgoing(protocol.acknowledge())


@given(frame=text_frames)
@FUZZ
def test_parse_json_object_is_a_dict_or_bad_json(frame: str) -> None:
    try:
        message = parse_json_object(frame, what="frames")
    except SttServerError as error:
        assert error.code == "bad_json"
    else:
        assert isinstance(message, dict)


# --- the handshake -------------------------------------------------------------------------

path_parts = st.sampled_from(["v1", "listen", "ws", "transcription", "", "..", "%2F", "%00", "metrics",
                              TOKEN, "healthz", "%ff", "\u00e9", "?", "#"]) | st.text(max_size=10)
paths = st.lists(path_parts, max_size=5).map(lambda parts: "/" + "/".join(parts))
query_names = st.sampled_from(["token", "provider", "stt_provider", "language", "encoding", "sample_rate",
                               "channels", "interim_results", "punctuate", "words", "endpointing", "model",
                               "", "=", "%zz"]) | st.text(max_size=8)
query_values = st.sampled_from([TOKEN, "null", "whisper", "en", "linear16", "opus", "16000", "true", "no",
                                "9" * 400, "1e9", "%ff%fe", "%00", "-1", ""]) | st.text(max_size=12)
queries = st.lists(st.tuples(query_names, query_values), max_size=6).map(
    lambda pairs: "&".join(f"{name}={value}" for name, value in pairs))
targets = st.tuples(paths, st.none() | queries).map(lambda pq: pq[0] + ("" if pq[1] is None else "?" + pq[1]))
header_names = st.sampled_from(["Authorization", "Origin", "Sec-WebSocket-Protocol", "Upgrade", "Host",
                                "authorization", "ORIGIN"])
header_values = st.sampled_from([f"Bearer {TOKEN}", f"Token {TOKEN}", "Basic abc", "Bearer", "",
                                 "https://app.example.com", "https://evil.example", "null",
                                 f"token, {TOKEN}", "token", ",,,", "token,"]) | st.text(
    # What websockets' HTTP parser lets through (http11._value_re, read as Latin-1).
    alphabet=st.sampled_from("\t" + "".join(map(chr, [*range(0x20, 0x7f), *range(0x80, 0x100)]))), max_size=20)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=6)


@given(target=targets, pairs=header_lists)
@FUZZ
def test_the_handshake_accepts_or_raises_its_own_error(target: str, pairs: list[tuple[str, str]]) -> None:
    headers = Headers(pairs)
    try:
        context = accept_session(target, headers, config=CONFIG, tokens=TABLE, providers={"whisper", "null"},
                                 peer="127.0.0.1:1")
    except SttServerError as error:
        body = json.loads(error_body(error))
        assert body["error"] == error.code
        assert 400 <= error.http_status < 600
    else:
        assert context.token.name == "alice"
        assert TOKEN not in json.dumps(context.log_fields())
    names = [name.lower() for name, _ in pairs]
    if names.count("authorization") > 1 or names.count("origin") > 1:
        try:
            accept_session(target, headers, config=CONFIG, tokens=TABLE, providers={"null"}, peer="p")
        except SttServerError as error:
            assert error.code == "duplicate_header", error.code
        else:
            raise AssertionError("a repeated Authorization or Origin header was accepted")


@given(pairs=header_lists, target=targets)
@FUZZ
def test_token_lookup_and_subprotocols_never_raise_anything_else(pairs: list[tuple[str, str]], target: str) -> None:
    headers = Headers(pairs)
    offered = offered_subprotocols(headers)
    assert all(isinstance(p, str) and p == p.strip() and p for p in offered)
    try:
        token_from_request(target, headers, offered)
    except SttServerError:
        pass


@given(path=paths)
@FUZZ
def test_a_logged_path_never_holds_a_token(path: str) -> None:
    logged = path_for_log(path)
    assert TOKEN not in logged
    assert len(logged) <= max(len(path), 40)


# --- the token file and the config: operator input -------------------------------------------

@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode)
       | st.lists(st.sampled_from([f"{TOKEN} alice", "sha256:" + "a" * 64 + " bob providers=null max_sessions=2",
                                   "x", "# c", "t n max_sessions=0", "t n providers=", "t n@ k=v", "\0",
                                   "t alice", "sha256:zz n"]), max_size=8).map(lambda ls: "\n".join(ls).encode()))
@FUZZ
def test_any_token_file_is_a_table_or_a_reason(tmp_path_factory, data: bytes) -> None:
    from stt_server.tokens import read_token_file

    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_bytes(data)
    read = read_token_file(path, max_bytes=1024)
    assert (read.entries is None) == (read.error is not None)
    if read.entries is not None:
        TokenTable(read.entries)
        assert all(p.line >= 1 for p in read.problems)


config_keys = st.sampled_from(["server", "tokens", "limits", "providers", "port", "host", "whisper", "null",
                               "enabled", "module", "file", "max_file_bytes", "allowed_origins", "beam_size",
                               "default_provider", "metrics", "allow_from", "tls", "cert_file"]) | st.text(max_size=5)
config_scalars = (st.none() | st.booleans() | st.integers(-2, 70000) | st.floats() | st.text(max_size=8)
                  | st.sampled_from(["null", "whisper", "127.0.0.1", "0.0.0.0/0", "https://a.b"]))
config_values = st.recursive(config_scalars, lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(config_keys | st.integers(0, 3) | st.none(), inner, max_size=4),
                             max_leaves=15)


@given(data=st.dictionaries(config_keys, config_values, max_size=4))
@FUZZ
def test_any_config_mapping_is_a_config_or_a_config_error(data: dict) -> None:
    from stt_server.errors import ConfigError
    from stt_server.providers import validate_options

    try:
        config = from_mapping(data, source="fuzz.yaml")
        validate_options(config)
    except ConfigError as error:
        assert "\n" not in error.message
