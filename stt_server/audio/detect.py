"""Which container a byte stream is, from its first bytes. Pure: no I/O, no PyAV.

Used twice: ``encoding=auto`` picks its demuxer from here, and a declared encoding that
disagrees with what the bytes say (a WAV header sent as ``linear16``) is reported instead of
being transcribed as noise.
"""

from __future__ import annotations

# EBML header: every WebM file, and every MediaRecorder restart, begins with it.
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"
OGG_MAGIC = b"OggS"
RIFF_MAGIC = b"RIFF"
WAVE_MAGIC = b"WAVE"  # at offset 8 of a RIFF file
FLAC_MAGIC = b"fLaC"
ID3_MAGIC = b"ID3"

# How many leading bytes sniff() wants before it can answer every case (RIFF....WAVE).
SNIFF_BYTES = 12

_SIMPLE = ((WEBM_MAGIC, "webm"), (OGG_MAGIC, "ogg"), (FLAC_MAGIC, "flac"), (ID3_MAGIC, "mp3"))


def sniff(first_bytes: bytes, *, frame_sync: bool = True) -> str | None:
    """The container ``first_bytes`` starts with: "webm", "ogg", "wav", "flac", "mp3" or None.

    ``frame_sync`` also recognises a bare MPEG audio frame header (an MP3 without ID3 tag).
    That is an 11-bit pattern, weak evidence: raw PCM can start with it by chance, so callers
    checking raw PCM for a mistaken container turn it off.
    """
    for magic, name in _SIMPLE:
        if first_bytes.startswith(magic):
            return name
    if first_bytes.startswith(RIFF_MAGIC) and (len(first_bytes) < 12 or first_bytes[8:12] == WAVE_MAGIC):
        return "wav"
    if frame_sync and is_mpeg_audio_frame(first_bytes):
        return "mp3"
    return None


def is_mpeg_audio_frame(header: bytes) -> bool:
    """A plausible MPEG-1/2/2.5 Layer I/II/III frame header (what an ID3-less MP3 starts with)."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return False
    version = (header[1] >> 3) & 0x03
    layer = (header[1] >> 1) & 0x03
    bitrate = header[2] >> 4
    rate = (header[2] >> 2) & 0x03
    # 01 = reserved version; layer 00 is reserved (and what AAC ADTS uses); 1111 = bad bitrate.
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and rate != 0b11
