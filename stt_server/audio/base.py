"""The decoder interface."""

from __future__ import annotations

from abc import ABC, abstractmethod


class AudioDecoder(ABC):
    @abstractmethod
    async def decode(self, data: bytes) -> bytes:
        """Feed client bytes; return output for everything decodable so far (maybe b'')."""

    @abstractmethod
    async def finish(self) -> bytes:
        """End of input: return what is left. Idempotent."""

    def close(self) -> None:
        """Drop everything and free threads now. Idempotent; safe after finish()."""


class PassthroughDecoder(AudioDecoder):
    """The provider takes the client's bytes as they are."""

    async def decode(self, data: bytes) -> bytes:
        return data

    async def finish(self) -> bytes:
        return b""
