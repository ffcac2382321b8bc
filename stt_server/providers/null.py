"""A provider that accepts and counts audio and transcribes nothing: for relay benchmarks and
smoke checks of the transport without an engine's cost."""

from __future__ import annotations

from dataclasses import dataclass

from ..audio_format import AudioFormat
from ..session import SessionParams
from .base import Provider, TranscriptionStream


@dataclass(frozen=True)
class NullOptions:
    # Take the client's audio without decoding it (measures the relay alone).
    passthrough: bool = True


class NullStream(TranscriptionStream):
    def __init__(self) -> None:
        super().__init__()
        self.bytes_received = 0

    async def send_audio(self, audio: bytes) -> None:
        self.bytes_received += len(audio)

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        self.end_results()


class NullProvider(Provider):
    name = "null"
    Options = NullOptions
    options: NullOptions

    def languages(self) -> tuple[str, ...] | None:
        return None  # transcribes nothing, so every language is as good as another

    def input_format(self, client_format: AudioFormat) -> AudioFormat:
        return client_format if self.options.passthrough else super().input_format(client_format)

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        return NullStream()
