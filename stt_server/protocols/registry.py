"""The protocol plugin dict: endpoint → path and import string, imported only when a session
needs it (as the provider dict does).

Adding a protocol touches its own module (a :class:`WireProtocol` subclass with a
``for_session(params)`` class method) and its registration here: an :class:`Endpoint` member
and a :data:`PROTOCOLS` entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .events import WireProtocol

if TYPE_CHECKING:
    from ..session import SessionParams


class Endpoint(str, Enum):
    """Which wire protocol a path speaks."""

    NATIVE = "native"  # /v1/listen, Deepgram's live API
    SEED = "seed"  # /ws/transcription/, the Django design's protocol
    ROOT = "root"  # /, vosk-server's protocol or WhisperLive's, told apart by the first message
    OPENAI = "openai"  # /v1/realtime?intent=transcription, OpenAI's Realtime API


@dataclass(frozen=True)
class ProtocolEntry:
    path: str  # without a trailing slash; requests may add one
    import_string: str  # "module:Class"
    # The audio a client sends when its URL names no encoding (and no rate: None, the
    # encoding's usual one).
    default_encoding: str = "linear16"
    default_sample_rate: int | None = None
    # Query parameters the URL must carry, and their values.
    required_query: Mapping[str, str] = field(default_factory=dict)
    # Whether the URL's ``model`` names one of this server's models; False: it names the peer
    # service's model (OpenAI's), which says nothing about the engine here, and is ignored.
    model_in_query: bool = True


PROTOCOLS: Mapping[Endpoint, ProtocolEntry] = {
    Endpoint.NATIVE: ProtocolEntry("/v1/listen", "stt_server.protocols.native:NativeProtocol"),
    # The seed's browser sends WebM or Ogg: detect the container from the first bytes.
    Endpoint.SEED: ProtocolEntry("/ws/transcription", "stt_server.protocols.seed:SeedProtocol", "auto"),
    Endpoint.ROOT: ProtocolEntry("/", "stt_server.protocols.root:RootProtocol"),
    Endpoint.OPENAI: ProtocolEntry("/v1/realtime", "stt_server.protocols.openai_realtime:OpenAIRealtimeProtocol",
                                   default_sample_rate=24_000, required_query={"intent": "transcription"},
                                   model_in_query=False),
}

ENDPOINT_PATHS: Mapping[str, Endpoint] = {entry.path: endpoint for endpoint, entry in PROTOCOLS.items()}


def protocol_class(endpoint: Endpoint) -> type[WireProtocol]:
    import_string = PROTOCOLS[endpoint].import_string
    module_name, _, attr = import_string.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, WireProtocol)):
        raise TypeError(f"{import_string} is not a WireProtocol")
    return cls


def protocol_for(params: SessionParams) -> WireProtocol:
    """A fresh protocol object for one session."""
    return protocol_class(params.endpoint).for_session(params)
