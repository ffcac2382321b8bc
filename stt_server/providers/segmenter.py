"""Utterance segmentation, engine-neutral: VAD probabilities per window → utterance cuts, and
the buffered audio those cuts are taken from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .vad import SAMPLE_RATE, VAD_IDLE_RESTART_SECONDS, VAD_WINDOW

# Hysteresis: once speech started, it goes on until the probability drops this much lower.
VAD_RELEASE = 0.15


@dataclass(frozen=True)
class Cut:
    """An utterance to transcribe: absolute sample positions from the stream start."""

    start: int
    end: int
    speech_final: bool
    # Samples the VAD called speech (above the threshold); short blips are not worth a decode.
    voiced: int


class Segmenter:
    """VAD probabilities per 512-sample window → utterance boundaries. Pure: no audio, no model.

    ``silence_samples`` is the pause that ends an utterance (0 = none); ``speech_final`` says
    whether such a pause is an endpoint (endpointing on) or only a convenient cut.
    """

    def __init__(self, *, threshold: float, pad: int, silence_samples: int, speech_final: bool,
                 max_samples: int, split_samples: int = 0, window: int = VAD_WINDOW,
                 idle_restart_samples: int = int(VAD_IDLE_RESTART_SECONDS * SAMPLE_RATE)) -> None:
        self.threshold = threshold
        self.release = max(threshold - VAD_RELEASE, 0.01)
        self.pad = pad
        self.silence_samples = silence_samples
        self.speech_final = speech_final
        self.max_samples = max_samples
        # An utterance this long is split where speech resumes after a pause of ``pad`` (0: never).
        self.split_samples = split_samples
        self.window = window
        self.in_speech = False
        # Start of the current utterance, None between utterances.
        self.start: int | None = None
        # Earliest position the next utterance may start: the end of the last cut.
        self.floor = 0
        # End of audio processed so far (a multiple of the window).
        self.pos = 0
        self._last_voiced_end = 0
        self._voiced = 0
        # (window start, probability) since the utterance started: to choose a forced cut point.
        self._windows: list[tuple[int, float]] = []
        # Where the VAD's state was last reset (see VAD_IDLE_RESTART_SECONDS); and, after push(),
        # where it must be reset now, or None.
        self.idle_restart_samples = idle_restart_samples
        self._restarted = 0
        self.restart_at: int | None = None

    @property
    def active(self) -> bool:
        return self.start is not None

    @property
    def voiced(self) -> int:
        return self._voiced

    def keep_from(self) -> int:
        """The earliest sample a later cut can still need (the rest of the buffer can go)."""
        if self.start is not None:
            return self.start
        return max(self.floor, self.pos - self.pad)

    def push(self, first_window: int, probs: Sequence[float]) -> list[Cut]:
        """The cuts that the probabilities of consecutive windows from ``first_window`` make.

        Stops early, with ``restart_at`` set, where the VAD's state is to be reset (after a
        pause ended an utterance, or after a long time without one): the probabilities after
        that point came from the old state, and the caller pushes them again from a fresh one.
        """
        cuts: list[Cut] = []
        self.restart_at = None
        for i, prob in enumerate(probs):
            w = first_window + i * self.window
            end = w + self.window
            self.pos = end
            if self.start is None and prob < self.release and end - self._restarted >= self.idle_restart_samples:
                self._restart(end)
                break
            resumed = prob >= self.threshold and not self.in_speech
            if prob >= self.threshold:
                self.in_speech = True
            elif prob < self.release:
                self.in_speech = False
            if resumed and self.splits_at(w) and w >= self._last_voiced_end + self.pad:
                # Long speech resumed after a pause: the pause ends a final that is not an endpoint
                # (speech_final false), the span the decode ahead (tentative_end) already covers.
                cuts.append(self._close(self._last_voiced_end + self.pad, False))
            if self.in_speech and self.start is None:
                self.start = max(self.floor, w - self.pad)
                self._voiced = 0
                self._windows = []
            if self.start is None:
                continue
            self._windows.append((w, float(prob)))
            if self.in_speech:
                self._last_voiced_end = end
            if prob >= self.threshold:
                self._voiced += self.window
            if self.silence_samples and end - self._last_voiced_end >= self.silence_samples:
                cuts.append(self._close(min(self._last_voiced_end + self.pad, end), self.speech_final))
                self._restart(end)
                break
            elif end - self.start >= self.max_samples:
                cuts.append(self._forced_cut(end))
        return cuts

    def tentative_end(self) -> tuple[int, int] | None:
        """(start, end) of the current utterance if the pause going on now turns out to end it.

        The audio such a final decodes (up to the last voiced window + pad) is complete as soon
        as the pause reaches the pad, long before it reaches ``silence_samples``.
        """
        if self.start is None or not self.silence_samples or self.in_speech:
            return None
        end = self._last_voiced_end + self.pad
        return (self.start, end) if self.pos >= end else None

    def splits_at(self, position: int) -> bool:
        """Whether the current utterance is long enough at ``position`` to be split where speech
        resumes after a pause (then a decode ahead of that pause is the final's either way:
        split or endpoint)."""
        return bool(self.split_samples) and self.start is not None and position - self.start >= self.split_samples

    def _restart(self, position: int) -> None:
        self._restarted = position
        self.in_speech = False
        self.restart_at = position

    def cut(self, end: int) -> Cut | None:
        """Finalize / stream end: close the current utterance at ``end``, if there is one."""
        if self.start is None:
            self.floor = max(self.floor, end)
            return None
        return self._close(max(end, self.start), False)

    def _close(self, end: int, speech_final: bool) -> Cut:
        assert self.start is not None
        cut = Cut(self.start, end, speech_final, self._voiced)
        self.start = None
        self.floor = end
        self._windows = []
        self._voiced = 0
        return cut

    def _forced_cut(self, now: int) -> Cut:
        """Too long: cut at the latest quiet window in the second half, else right here.

        What follows the cut point stays an utterance of its own when it holds speech.
        """
        assert self.start is not None
        half = self.start + self.max_samples // 2
        point = now
        for w, prob in reversed(self._windows):
            if w < half:
                break
            if prob < self.release:
                point = w + self.window // 2
                break
        rest = [(w, p) for w, p in self._windows if w + self.window // 2 >= point]
        cut = self._close(point, False)
        if self.in_speech or any(p >= self.threshold for _, p in rest):
            self.start = point
            self._windows = rest
            self._voiced = sum(self.window for _, p in rest if p >= self.threshold)
            voiced_ends = [w + self.window for w, p in rest if p >= self.release]
            self._last_voiced_end = voiced_ends[-1] if voiced_ends else point
        return cut


class AudioBuffer:
    """PCM16 samples from absolute position ``start`` on; the front is dropped when not needed."""

    def __init__(self) -> None:
        self.start = 0
        self._data = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self._data) // 2

    def append(self, pcm16: bytes) -> None:
        self._data += pcm16

    def float32(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        raw = self._data[(start - self.start) * 2:(end - self.start) * 2]
        return np.frombuffer(bytes(raw), dtype="<i2").astype(np.float32) / 32768.0

    def drop_before(self, position: int) -> None:
        position = min(max(position, self.start), self.end)
        del self._data[:(position - self.start) * 2]
        self.start = position
