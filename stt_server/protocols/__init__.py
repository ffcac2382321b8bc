"""Wire protocols, sans I/O: each turns client frames into events and results into frames.

The websockets layer only moves frames; everything a protocol decides is unit-testable.
Which protocol a path speaks is ``stt_server/endpoints.py``; which class speaks it, one dict,
:data:`registry.PROTOCOLS`.
"""

from __future__ import annotations

from .events import (
    AudioIn,
    ClientEvent,
    CloseStream,
    Finalize,
    KeepAlive,
    Reconfigure,
    SetAudioFormat,
    WireProtocol,
)

__all__ = ["AudioIn", "ClientEvent", "CloseStream", "Finalize", "KeepAlive", "Reconfigure", "SetAudioFormat",
           "WireProtocol"]
