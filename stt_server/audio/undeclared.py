"""No ``encoding`` in the URL: the default raw format, unless the bytes say they are a container.

A browser that sends MediaRecorder's WebM without naming an encoding is then decoded as WebM
rather than rejected. Only the strong magic numbers count (EBML, OggS, RIFF/WAVE, fLaC, ID3):
raw PCM can start with an MPEG frame sync by chance, so an ID3-less MP3 needs encoding=mp3.
"""

from __future__ import annotations

from ..audio_format import AudioFormat
from .base import AudioDecoder
from .detect import SNIFF_BYTES, sniff
from .raw import RawPcmDecoder


class UndeclaredDecoder(AudioDecoder):
    def __init__(self, default: AudioFormat, target: AudioFormat) -> None:
        self._default = default
        self._target = target
        self._head = b""
        self._inner: AudioDecoder | None = None

    async def decode(self, data: bytes) -> bytes:
        if self._inner is None:
            self._head += data
            if len(self._head) < SNIFF_BYTES:
                return b""
            data, self._head = self._head, b""
            self._inner = self._choose(data)
        return await self._inner.decode(data)

    async def finish(self) -> bytes:
        out = b""
        if self._inner is None:
            if not self._head:
                return b""
            head, self._head = self._head, b""
            self._inner = self._choose(head)
            out = await self._inner.decode(head)
        return out + await self._inner.finish()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def _choose(self, first_bytes: bytes) -> AudioDecoder:
        if sniff(first_bytes, frame_sync=False) is not None:
            from .container import ContainerDecoder  # PyAV demuxing; imported only when needed

            return ContainerDecoder(AudioFormat("auto"), self._target)
        return RawPcmDecoder(self._default, self._target)
