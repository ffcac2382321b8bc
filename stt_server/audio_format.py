"""What a client's audio bytes are. Pure data; decoding lives in :mod:`stt_server.audio`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Headerless sample formats: the URL must say the rate and channel count (defaults apply).
RAW_ENCODINGS = frozenset({"linear16", "linear32", "float32", "mulaw", "alaw"})
# Self-describing streams; "auto" means detect the container from the first bytes.
CONTAINER_ENCODINGS = frozenset({"webm", "ogg", "wav", "flac", "mp3", "auto"})

# What every built-in engine consumes: 16-bit little-endian mono PCM.
PCM16 = "linear16"


@dataclass(frozen=True)
class AudioFormat:
    encoding: str
    # None for containers: the stream's own header says.
    sample_rate: int | None = None
    channels: int = 1
    # False when the client named no encoding and a default applies: a stream that starts with
    # a known container header is then decoded as that container instead.
    declared: bool = field(default=True, compare=False)

    @property
    def is_raw(self) -> bool:
        return self.encoding in RAW_ENCODINGS

    @property
    def bytes_per_second(self) -> int | None:
        """For raw formats only; lets the server count audio seconds without decoding."""
        if not self.is_raw or self.sample_rate is None:
            return None
        width = {"linear16": 2, "linear32": 4, "float32": 4, "mulaw": 1, "alaw": 1}[self.encoding]
        return width * self.sample_rate * self.channels


def pcm16_mono(sample_rate: int) -> AudioFormat:
    return AudioFormat(PCM16, sample_rate, 1)
