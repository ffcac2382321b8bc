"""The protocol plugin dict: endpoint → import string, imported only when a session needs it.

Adding a protocol touches its own module (a :class:`WireProtocol` subclass with a
``for_session(params)`` class method) and one line here, plus its path in
``stt_server.session.ENDPOINT_PATHS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..session import Endpoint, SessionParams
from .events import WireProtocol

PROTOCOLS: Mapping[Endpoint, str] = {
    Endpoint.NATIVE: "stt_server.protocols.native:NativeProtocol",
    Endpoint.SEED: "stt_server.protocols.seed:SeedProtocol",
    Endpoint.ROOT: "stt_server.protocols.root:RootProtocol",
}


def protocol_class(endpoint: Endpoint) -> Any:
    module_name, _, attr = PROTOCOLS[endpoint].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, WireProtocol)):
        raise TypeError(f"{PROTOCOLS[endpoint]} is not a WireProtocol")
    return cls


def protocol_for(params: SessionParams) -> WireProtocol:
    """A fresh protocol object for one session."""
    protocol: WireProtocol = protocol_class(params.endpoint).for_session(params)
    return protocol
