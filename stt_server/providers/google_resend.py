"""The audio a Google stream may have to send again: everything since the last final result.

Google ends a streaming call after ~305 s, and a call can fail; the next call must start with
the audio whose transcript is not final yet. A buffer keeps the session's byte stream from a
*restart point* on and knows the session time of its byte offsets (absolute, counted from the
session's first byte), so a new call can start at the last final result and its timestamps can
be shifted back into session time.

- Raw PCM / mu-law: time is byte arithmetic; a restart point is any frame boundary.
- WebM and Ogg (passed through without decoding): a new call needs the stream's header, and can
  only start on a block (WebM SimpleBlock) or page (Ogg) boundary. The buffer indexes those
  boundaries with their timestamps as bytes arrive, and a restart sends the header, then (WebM)
  a fresh Cluster header carrying the original cluster's timecode, then the bytes from the
  boundary at or before the last final on. No decoding is needed.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_right
from dataclasses import dataclass

from ..audio_format import AudioFormat


@dataclass(frozen=True)
class RestartPoint:
    """Where a new call begins: send ``prefix``, then the buffer's bytes from ``offset``."""

    prefix: bytes
    offset: int
    # Session seconds of the first audio the call will carry.
    time: float


class ResendBuffer(ABC):
    """The session's bytes from the current restart point on."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._base = 0  # absolute offset of _data[0]

    @property
    def end(self) -> int:
        """Absolute offset just past the last byte received."""
        return self._base + len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data
        self._index()

    def read(self, offset: int, limit: int) -> bytes:
        start = offset - self._base
        if start < 0 or limit < 0:
            raise ValueError(f"cannot read {limit} bytes at {offset} (buffer starts at {self._base})")
        return bytes(self._data[start:start + limit])

    @abstractmethod
    def time_at(self, offset: int) -> float:
        """Session seconds of audio before ``offset`` (for containers: the last indexed boundary)."""

    @abstractmethod
    def restart_point(self) -> RestartPoint:
        """Where a new call should begin: at or before the oldest audio still kept."""

    @abstractmethod
    def forget_before(self, seconds: float, *, limit: int) -> None:
        """Drop audio before session time ``seconds``, but never bytes at or after ``limit``."""

    def _drop_to(self, offset: int) -> None:
        if offset > self._base:
            del self._data[:offset - self._base]
            self._base = offset

    def _index(self) -> None:
        """Containers find their restart boundaries here."""


class RawBuffer(ResendBuffer):
    """Headerless samples (LINEAR16, MULAW): time is bytes over bytes per second."""

    def __init__(self, bytes_per_second: int, frame_bytes: int) -> None:
        super().__init__()
        self.bytes_per_second = bytes_per_second
        self.frame_bytes = frame_bytes

    def time_at(self, offset: int) -> float:
        return offset / self.bytes_per_second

    def restart_point(self) -> RestartPoint:
        return RestartPoint(b"", self._base, self.time_at(self._base))

    def forget_before(self, seconds: float, *, limit: int) -> None:
        offset = int(seconds * self.bytes_per_second) // self.frame_bytes * self.frame_bytes
        self._drop_to(min(offset, limit, self.end))


@dataclass(frozen=True)
class _Boundary:
    offset: int
    time: float
    # Bytes to send between the header and this boundary (WebM: a Cluster header).
    bridge: bytes = b""


class ContainerBuffer(ResendBuffer):
    """WebM or Ogg: restart at an indexed boundary, with the stream's header in front."""

    def __init__(self) -> None:
        super().__init__()
        self._header: bytes | None = None  # bytes before the first audio boundary
        self._boundaries: list[_Boundary] = []
        self._scan = 0  # absolute offset the indexer has reached
        self._broken = False  # the indexer met something it cannot parse: no more boundaries

    def time_at(self, offset: int) -> float:
        i = bisect_right(self._boundaries, offset, key=_offset) - 1
        return self._boundaries[i].time if i >= 0 else 0.0

    def restart_point(self) -> RestartPoint:
        if self._base == 0 or self._header is None:
            return RestartPoint(b"", self._base, 0.0)  # nothing dropped: the stream as it came
        first = self._boundaries[0]
        return RestartPoint(self._header + first.bridge, first.offset, first.time)

    def forget_before(self, seconds: float, *, limit: int) -> None:
        if self._header is None:
            return
        keep = min(bisect_right(self._boundaries, seconds, key=_time),
                   bisect_right(self._boundaries, limit, key=_offset)) - 1
        if keep > 0:
            del self._boundaries[:keep]
        if self._boundaries:
            self._drop_to(self._boundaries[0].offset)

    def _index(self) -> None:
        while not self._broken:
            step = self._parse(self._scan - self._base)
            if step is None:
                return
            self._scan += step

    @abstractmethod
    def _parse(self, pos: int) -> int | None:
        """Look at the element or page at ``pos`` in ``_data``; return its length, or None when
        more bytes are needed. Records header and boundaries."""

    def _boundary(self, pos: int, time: float, bridge: bytes = b"") -> None:
        if self._header is None:
            self._header = bytes(self._data[:pos])  # nothing is dropped before the first boundary
        self._boundaries.append(_Boundary(self._base + pos, time, bridge))


def _offset(boundary: _Boundary) -> int:
    return boundary.offset


def _time(boundary: _Boundary) -> float:
    return boundary.time


# WebM (Matroska) element ids.
_SEGMENT = 0x18538067
_CLUSTER = 0x1F43B675
_TIMECODE = 0xE7
_SIMPLEBLOCK = 0xA3
_BLOCKGROUP = 0xA0
_BLOCK = 0xA1
_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def _vint(data: bytearray | bytes, pos: int, *, keep_marker: bool) -> tuple[int | None, int] | None:
    """An EBML variable-length integer at ``pos`` → (value, length); value None = unknown size."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or pos + length > len(data):
        return (None, 0) if length > 8 else None
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


class WebmBuffer(ContainerBuffer):
    """Boundaries at SimpleBlocks (and BlockGroups); TimecodeScale assumed 1 ms (WebM's default,
    what browsers write)."""

    def __init__(self) -> None:
        super().__init__()
        self._cluster_time = 0

    def _parse(self, pos: int) -> int | None:
        data = self._data
        head = _vint(data, pos, keep_marker=True)
        if head is None:
            return None
        element, id_len = head
        size_field = _vint(data, pos + id_len, keep_marker=False)
        if size_field is None:
            return None
        size, size_len = size_field
        if element is None or size_len == 0:
            self._broken = True
            return None
        header_len = id_len + size_len
        if element in (_SEGMENT, _CLUSTER):
            return header_len  # step inside the master element
        if size is None:
            self._broken = True
            return None
        if pos + header_len + size > len(data):
            return None
        payload = bytes(data[pos + header_len:pos + header_len + size])
        if element == _TIMECODE:
            self._cluster_time = int.from_bytes(payload, "big")
        elif element in (_SIMPLEBLOCK, _BLOCKGROUP):
            block = payload if element == _SIMPLEBLOCK else _child(payload, _BLOCK)
            if block is not None:
                track = _vint(block, 0, keep_marker=False)
                if track is not None and track[0] is not None and len(block) >= track[1] + 2:
                    relative = int.from_bytes(block[track[1]:track[1] + 2], "big", signed=True)
                    self._boundary(pos, (self._cluster_time + relative) / 1000, self._bridge())
        return header_len + size

    def _bridge(self) -> bytes:
        """A Cluster header (unknown size) with the current cluster's timecode."""
        timecode = self._cluster_time.to_bytes(8, "big").lstrip(b"\x00") or b"\x00"
        return (_CLUSTER.to_bytes(4, "big") + _UNKNOWN_SIZE + bytes([_TIMECODE, 0x80 | len(timecode)])
                + timecode)


def _child(payload: bytes, wanted: int) -> bytes | None:
    pos = 0
    while pos < len(payload):
        head = _vint(payload, pos, keep_marker=True)
        size_field = _vint(payload, pos + head[1], keep_marker=False) if head else None
        if head is None or size_field is None or size_field[0] is None:
            return None
        start = pos + head[1] + size_field[1]
        if head[0] == wanted:
            return payload[start:start + size_field[0]]
        pos = start + size_field[0]
    return None


class OggBuffer(ContainerBuffer):
    """Boundaries at pages that start a packet; times from the previous page's granule position
    at 48 kHz (Opus's fixed granule rate). The header is every page before the first audio page."""

    def __init__(self) -> None:
        super().__init__()
        self._granule = 0  # end of the audio in the pages seen so far

    def _parse(self, pos: int) -> int | None:
        data = self._data
        if pos + 27 > len(data):
            return None
        if data[pos:pos + 4] != b"OggS":
            self._broken = True
            return None
        segments = data[pos + 26]
        if pos + 27 + segments > len(data):
            return None
        length = 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        if pos + length > len(data):
            return None
        granule = int.from_bytes(data[pos + 6:pos + 14], "little", signed=True)
        continued = data[pos + 5] & 0x01
        if self._header is None and granule == 0:
            return length  # OpusHead / OpusTags pages
        if not continued:
            self._boundary(pos, self._granule / 48_000)
        if granule > 0:
            self._granule = granule
        return length


def resend_buffer(audio_format: AudioFormat) -> ResendBuffer:
    """The buffer for a stream Google receives in ``audio_format``."""
    if audio_format.encoding == "webm":
        return WebmBuffer()
    if audio_format.encoding == "ogg":
        return OggBuffer()
    bytes_per_second = audio_format.bytes_per_second
    if bytes_per_second is None:
        raise ValueError(f"cannot re-send {audio_format.encoding} audio")
    frame = bytes_per_second // (audio_format.sample_rate or 1)
    return RawBuffer(bytes_per_second, frame)
