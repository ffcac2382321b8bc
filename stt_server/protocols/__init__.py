"""Wire protocols, sans I/O: each turns client frames into events and results into frames.

The websockets layer only moves frames; everything a protocol decides is unit-testable.
"""

from __future__ import annotations

from .events import AudioIn, ClientEvent, CloseStream, Finalize, KeepAlive, WireProtocol

__all__ = ["AudioIn", "ClientEvent", "CloseStream", "Finalize", "KeepAlive", "WireProtocol"]
