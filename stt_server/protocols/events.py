"""Client events every protocol produces, and the protocol interface."""

from __future__ import annotations

import base64
import binascii
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..audio_format import AudioFormat
from ..errors import ProtocolError, SttServerError
from ..results import Result

if TYPE_CHECKING:
    from ..session import SessionParams


@dataclass(frozen=True)
class AudioIn:
    data: bytes


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class CloseStream:
    pass


@dataclass(frozen=True)
class SetAudioFormat:
    """The client said, after the upgrade, what its audio is (vosk's ``config``, WhisperLive's
    float32): audio from here on is decoded as ``audio``."""

    audio: AudioFormat


@dataclass(frozen=True)
class Reconfigure:
    """The client changed the engine's settings after the upgrade (OpenAI's ``session.update``).
    None leaves a setting as it is. The runner applies it only before the first audio: a
    stream's engine settings are fixed once it has audio."""

    language: str | None = None
    endpointing_ms: int | None = None


ClientEvent = AudioIn | KeepAlive | Finalize | CloseStream | SetAudioFormat | Reconfigure


class WireProtocol(ABC):
    """One session's view of a protocol. Methods return text frames to send, in order."""

    #: Whether undecodable audio ends the session (Deepgram closes with 1008). A protocol that
    #: says False gets an :meth:`error` frame and a fresh decoder, and the session goes on.
    audio_errors_are_fatal: bool = True

    @classmethod
    def for_session(cls, params: SessionParams) -> WireProtocol:
        """A fresh protocol object for one session (the registry calls this)."""
        return cls()

    @abstractmethod
    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        """Frames sent right after the upgrade."""

    @abstractmethod
    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        """A client frame → events; raises ProtocolError (or AudioError) for a bad one."""

    @abstractmethod
    def result(self, result: Result) -> list[str]:
        """Frames for one engine result."""

    @abstractmethod
    def error(self, error: SttServerError) -> list[str]:
        """Frames reporting an error; the session may go on afterwards."""

    def acknowledge(self) -> list[str]:
        """Frames answering the client frame just handled, sent once its audio reached the
        engine. Request/reply protocols (the seed's) use it; streaming ones send nothing."""
        return []

    def finalized(self) -> list[str]:
        """After a Finalize, once the finals it produced have been sent: what else answers it
        (nothing by default). Deepgram clients wait for a final with from_finalize."""
        return []

    def draining(self, message: str) -> list[str]:
        """Frames telling the client the server is shutting down: the audio it has sent is being
        transcribed, its finals follow, then a 1001 close. None by default (the close says it)."""
        return []

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        """Frames sent after the last result, just before the server closes (Deepgram's closing
        Metadata, vosk's answer to ``eof``, WhisperLive's last segments). ``untranscribed_seconds``:
        audio received that was never transcribed (a drain deadline, a hung engine call), for
        the protocols that can say it there."""
        return []


# Deepest nesting of arrays and objects a client's JSON may have. No protocol needs more than
# two or three levels. Nesting ~1,000 deep makes json.loads raise RecursionError, and a value a
# little less deep parses but makes json.dumps raise it when echoed back (the seed's request_id).
MAX_JSON_DEPTH = 32


def parse_json_object(frame: str, *, what: str) -> dict[str, Any]:
    """A text frame as a JSON object, or ProtocolError ``bad_json`` naming ``what`` it is.

    Never raises anything else, whatever the frame holds. Too deep for the C parser:
    RecursionError, caught (it unwinds cleanly). Parsed but deeper than MAX_JSON_DEPTH: refused
    too; the walk that checks it runs only when the frame has more brackets than that limit (a
    C-speed count; audio frames have none), and costs less than the parse it follows.
    """
    try:
        message = json.loads(frame)
    except RecursionError:
        raise ProtocolError(f"{what} may nest arrays and objects at most {MAX_JSON_DEPTH} levels deep",
                            code="bad_json") from None
    except ValueError:  # JSONDecodeError, and integers longer than sys.get_int_max_str_digits()
        message = None
    if not isinstance(message, dict):
        raise ProtocolError(f"{what} must be JSON objects", code="bad_json")
    if frame.count("[") + frame.count("{") > MAX_JSON_DEPTH and nested_deeper_than(message, MAX_JSON_DEPTH):
        raise ProtocolError(f"{what} may nest arrays and objects at most {MAX_JSON_DEPTH} levels deep",
                            code="bad_json")
    return message


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests lists and dicts more than ``limit`` levels (the top one counts).
    Level by level, without recursion, stopping as soon as the limit is passed."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            for child in (container.values() if isinstance(container, dict) else container):
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
    return False


def decode_base64_audio(value: Any, *, field: str) -> bytes:
    """Base64 text (optionally a ``data:...;base64,`` URL) → bytes, strictly."""
    if not isinstance(value, str):
        raise ProtocolError(f"{field} must be a base64 string", code="bad_base64")
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ProtocolError(f"{field} is a data URL without ';base64,'", code="bad_base64")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{field} is not valid base64", code="bad_base64") from None
