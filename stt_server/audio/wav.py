"""WAV headers, parsed here so common WAVs stream through the raw PCM path. Pure.

FFmpeg's WAV demuxer reads 64 KiB ahead before it returns a single packet (it looks for
S/PDIF data hidden in 16-bit PCM), which is two seconds of a 16 kHz mono stream. A WAV is a
header and then raw samples, so the header is parsed here and the samples go to
:class:`~stt_server.audio.raw.RawPcmDecoder`; only sample formats that path lacks (8- or
24-bit PCM, ADPCM, ...) are left to PyAV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import AudioError
from .detect import RIFF_MAGIC, WAVE_MAGIC

# A header (fmt, LIST, fact, ... chunks) longer than this is not a streaming WAV we accept.
MAX_HEADER_BYTES = 64 * 1024

_EXTENSIBLE = 0xFFFE
# (format tag, bits per sample) → raw encoding name understood by RawPcmDecoder.
_RAW = {(1, 16): "linear16", (1, 32): "linear32", (3, 32): "float32", (6, 8): "alaw", (7, 8): "mulaw"}
# A data size streaming writers put when they do not know the length yet.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


@dataclass(frozen=True)
class WavHeader:
    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    data_offset: int  # where the samples start
    data_size: int | None  # None: unknown (a stream), read to the end

    @property
    def raw_encoding(self) -> str | None:
        """The RawPcmDecoder encoding for these samples, or None if PyAV must decode them."""
        return _RAW.get((self.format_tag, self.bits_per_sample))


def parse_wav_header(data: bytes) -> WavHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed to see it whole.

    Raises AudioError (``undecodable_audio``) for a RIFF stream that is not a usable WAV.
    """
    if len(data) < 12:
        return None
    if not data.startswith(RIFF_MAGIC) or data[8:12] != WAVE_MAGIC:
        raise _bad("it does not start with RIFF....WAVE")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while True:
        if pos > MAX_HEADER_BYTES:
            raise _bad(f"no data chunk in its first {MAX_HEADER_BYTES} bytes")
        if len(data) < pos + 8:
            return None
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise _bad("the data chunk comes before the fmt chunk")
            tag, channels, rate, bits = fmt
            return WavHeader(tag, channels, rate, bits, body, None if size in _UNKNOWN_SIZES else size)
        if size > MAX_HEADER_BYTES:
            raise _bad(f"a {chunk_id!r} chunk of {size} bytes before the samples")
        if len(data) < body + size:
            return None
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body:body + size])
        pos = body + size + (size & 1)  # chunks are padded to an even length


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise _bad("its fmt chunk is too short")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
    if channels == 0 or rate == 0:
        raise _bad(f"its fmt chunk says {channels} channels at {rate} Hz")
    return tag, channels, rate, bits


def _bad(why: str) -> AudioError:
    return AudioError(f"the WAV audio could not be decoded: {why}", code="undecodable_audio")
