"""The protocol plugin dict: endpoint → import string of its protocol class, imported only when
a session needs it (as the provider dict does).

Adding a protocol touches its own module (a :class:`WireProtocol` subclass with a
``for_session(params)`` class method), its endpoint in ``stt_server/endpoints.py`` and its entry
in :data:`PROTOCOLS` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..endpoints import Endpoint
from .events import WireProtocol

if TYPE_CHECKING:
    from ..session import SessionParams


PROTOCOLS: Mapping[Endpoint, str] = {  # "module:Class"
    Endpoint.NATIVE: "stt_server.protocols.native:NativeProtocol",
    Endpoint.SEED: "stt_server.protocols.seed:SeedProtocol",
    Endpoint.ROOT: "stt_server.protocols.root:RootProtocol",
    Endpoint.OPENAI: "stt_server.protocols.openai_realtime:OpenAIRealtimeProtocol",
    Endpoint.WYOMING: "stt_server.protocols.wyoming:WyomingProtocol",
}


def protocol_class(endpoint: Endpoint) -> type[WireProtocol]:
    import_string = PROTOCOLS[endpoint]
    module_name, _, attr = import_string.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, WireProtocol)):
        raise TypeError(f"{import_string} is not a WireProtocol")
    return cls


def protocol_for(params: SessionParams) -> WireProtocol:
    """A fresh protocol object for one session."""
    return protocol_class(params.endpoint).for_session(params)
