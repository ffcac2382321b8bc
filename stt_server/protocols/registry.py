"""The protocol plugin dict: endpoint → path and import string, imported only when a session
needs it (as the provider dict does).

Adding a protocol touches its own module (a :class:`WireProtocol` subclass with a
``for_session(params)`` class method) and its registration here: an :class:`Endpoint` member
and a :data:`PROTOCOLS` entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
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
    WYOMING = "wyoming"  # Home Assistant's Wyoming protocol, on its own TCP listener (wyoming: in config)


@dataclass(frozen=True)
class ProtocolEntry:
    path: str | None  # without a trailing slash; requests may add one. None: no websocket path
    import_string: str  # "module:Class"
    # The audio a client sends when its URL names no encoding.
    default_encoding: str = "linear16"


PROTOCOLS: Mapping[Endpoint, ProtocolEntry] = {
    Endpoint.NATIVE: ProtocolEntry("/v1/listen", "stt_server.protocols.native:NativeProtocol"),
    # The seed's browser sends WebM or Ogg: detect the container from the first bytes.
    Endpoint.SEED: ProtocolEntry("/ws/transcription", "stt_server.protocols.seed:SeedProtocol", "auto"),
    Endpoint.ROOT: ProtocolEntry("/", "stt_server.protocols.root:RootProtocol"),
    Endpoint.WYOMING: ProtocolEntry(None, "stt_server.protocols.wyoming:WyomingProtocol"),
}

ENDPOINT_PATHS: Mapping[str, Endpoint] = {entry.path: endpoint for endpoint, entry in PROTOCOLS.items()
                                          if entry.path is not None}


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
