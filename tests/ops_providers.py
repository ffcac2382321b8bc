"""A provider plugin for the capacity test, loaded through config's ``module:`` key as any
third-party engine would be: an engine that refuses every new stream for capacity."""

from __future__ import annotations

from dataclasses import dataclass

from stt_server.audio_format import AudioFormat
from stt_server.errors import CapacityError
from stt_server.providers import Provider, TranscriptionStream
from stt_server.session import SessionParams


@dataclass(frozen=True)
class BusyOptions:
    pass


class BusyProvider(Provider):
    name = "busy"
    Options = BusyOptions

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        raise CapacityError("all engine slots are taken", code="engine_busy")
