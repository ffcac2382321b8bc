"""Client audio bytes → the PCM (or passthrough bytes) a provider asked for.

Every decoder has the same small shape so the session code does not care what the client
sends: ``await decode(chunk)`` returns the output for everything decodable so far,
``await finish()`` flushes at the end of the stream, ``close()`` frees resources at once
(a disconnect). Decoding errors are :class:`~stt_server.errors.AudioError`.
"""

from __future__ import annotations

from ..audio_format import AudioFormat
from .base import AudioDecoder, PassthroughDecoder
from .raw import RawPcmDecoder

__all__ = ["AudioDecoder", "PassthroughDecoder", "RawPcmDecoder", "open_decoder"]


def open_decoder(client: AudioFormat, target: AudioFormat) -> AudioDecoder:
    """A decoder from the client's format to the provider's."""
    if client.is_raw and not client.declared:
        from .undeclared import UndeclaredDecoder

        return UndeclaredDecoder(client, target)
    if client.is_raw:
        # Even when no conversion is needed: it checks the first bytes for a container header.
        return RawPcmDecoder(client, target)
    if target == client:
        return PassthroughDecoder()
    from .container import ContainerDecoder  # PyAV demuxing; imported only when needed

    return ContainerDecoder(client, target)
