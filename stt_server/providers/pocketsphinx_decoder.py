"""One stream's pipeline inside a pocketsphinx worker process: VAD-gated utterances on one decoder.

pocketsphinx's WebRTC-style VAD on 30 ms frames gates the audio; an utterance starts when
``min_speech_ms`` of the last ``speech_pad_ms`` is voiced (that padding is decoded too, so
onsets are kept), and ends after ``endpointing_ms`` of non-speech (a final with
``speech_final``), on ``finalize()``/``close()``, after ``pause_final_ms`` when endpointing is
off, or after ``max_utterance_seconds``. Interims are ``hyp()`` while the utterance goes on;
finals carry words from ``seg()`` (100 frames/s) with their lattice posteriors as confidence.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..results import Result, Word
from .toolkit import clamp, seconds

SAMPLE_RATE = 16_000
# pocketsphinx computes one feature frame every 10 ms: seg() frame indices are 1/100 s.
FRAMES_PER_SECOND = 100
# Confidence of interims: pocketsphinx computes posteriors only from the lattice, at the end
# of an utterance. Also used for a final whose words carry no posterior.
UNKNOWN_CONFIDENCE = 0.5
# Alternate pronunciations come out of seg() as "word(2)".
_VARIANT = re.compile(r"\(\d+\)$")


@dataclass(frozen=True)
class StreamSettings:
    """What a worker needs to know about one stream; sent with its open command."""

    interim_results: bool
    words: bool
    # Non-speech that ends an utterance (0 = none) and whether that end is an endpoint.
    silence_ms: int
    speech_final: bool
    vad_mode: int
    speech_pad_ms: int
    min_speech_ms: int
    max_utterance_ms: int
    interim_interval_ms: int


class StreamDecoder:
    """One stream's VAD-gated utterances on one pocketsphinx decoder. Blocking; no I/O.

    ``feed``, ``cut`` and ``finish`` return the results they produced, in order. Positions
    are sample counts from the stream start.
    """

    def __init__(self, decoder: Any, settings: StreamSettings) -> None:
        from pocketsphinx import Vad

        self.decoder = decoder
        self.settings = settings
        self.vad = Vad(settings.vad_mode, SAMPLE_RATE)
        self.frame_bytes: int = self.vad.frame_bytes
        frame = self.frame_bytes // 2
        self.frame_samples = frame
        self.pad_frames = max(1, settings.speech_pad_ms * SAMPLE_RATE // 1000 // frame)
        self.pad = settings.speech_pad_ms * SAMPLE_RATE // 1000
        self.min_voiced = settings.min_speech_ms * SAMPLE_RATE // 1000
        self.silence = settings.silence_ms * SAMPLE_RATE // 1000
        self.max_samples = settings.max_utterance_ms * SAMPLE_RATE // 1000
        self.interim_samples = settings.interim_interval_ms * SAMPLE_RATE // 1000
        self.pos = 0  # samples consumed into VAD frames (or flushed by a cut)
        self._pending = bytearray()  # bytes short of a whole VAD frame
        self._ring: deque[tuple[int, bytes, bool]] = deque(maxlen=self.pad_frames)
        self._undecoded = bytearray()  # utterance audio not yet given to the decoder
        self.in_utterance = False
        self.utterance_start = 0
        self._last_voiced_end = 0
        self._interim_at = 0
        self._interim_text = ""

    def feed(self, pcm: bytes) -> list[Result]:
        out: list[Result] = []
        self._pending += pcm
        usable = len(self._pending) - len(self._pending) % self.frame_bytes
        view = bytes(self._pending[:usable])
        del self._pending[:usable]
        for i in range(0, usable, self.frame_bytes):
            frame = view[i:i + self.frame_bytes]
            result = self._frame(frame, self.vad.is_speech(frame))
            if result is not None:
                out.append(result)
        interim = self._maybe_interim()
        if interim is not None:
            out.append(interim)
        return out

    def cut(self) -> list[Result]:
        """Finalize: close the current utterance (with any odd samples) now."""
        if not self.in_utterance:
            return []
        self._undecoded += self._pending
        self.pos += len(self._pending) // 2
        self._pending.clear()
        result = self._end(self.pos, speech_final=False)
        return [result] if result is not None else []

    def finish(self) -> list[Result]:
        """Stream end: the last final, if any; the decoder is then free for another stream."""
        return self.cut()

    def release(self) -> None:
        """Abort: leave the decoder between utterances, dropping what it held."""
        if self.in_utterance:
            self.in_utterance = False
            self.decoder.end_utt()

    # -- internals

    def _frame(self, frame: bytes, speech: bool) -> Result | None:
        start = self.pos
        self.pos += self.frame_samples
        if not self.in_utterance:
            self._ring.append((start, frame, speech))
            voiced = sum(self.frame_samples for _, _, is_speech in self._ring if is_speech)
            if voiced >= self.min_voiced:
                self._begin(voiced)
            return None
        self._undecoded += frame
        if speech:
            self._last_voiced_end = self.pos
        quiet = self.pos - self._last_voiced_end
        if self.silence and quiet >= self.silence:
            return self._end(min(self._last_voiced_end + self.pad, self.pos), self.settings.speech_final)
        if self.pos - self.utterance_start >= self.max_samples:
            return self._end(self.pos, speech_final=False)
        return None

    def _begin(self, voiced: int) -> None:
        self.in_utterance = True
        self.utterance_start = self._ring[0][0]
        self._last_voiced_end = max(start + self.frame_samples for start, _, speech in self._ring if speech)
        self._undecoded = bytearray(b"".join(frame for _, frame, _ in self._ring))
        self._ring.clear()
        self._interim_at = self.pos
        self._interim_text = ""
        self.decoder.start_utt()

    def _flush(self) -> None:
        if self._undecoded:
            self.decoder.process_raw(bytes(self._undecoded), False, False)
            self._undecoded.clear()

    def _maybe_interim(self) -> Result | None:
        if (not self.settings.interim_results or not self.in_utterance
                or self.pos - self._interim_at < self.interim_samples):
            return None
        self._interim_at = self.pos
        self._flush()
        hyp = self.decoder.hyp()
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        if not text or text == self._interim_text:
            return None
        self._interim_text = text
        return Result(text=text, is_final=False, start=seconds(self.utterance_start), end=seconds(self.pos),
                      confidence=UNKNOWN_CONFIDENCE)

    def _end(self, end: int, speech_final: bool) -> Result | None:
        self._flush()
        self.decoder.end_utt()
        self.in_utterance = False
        start = self.utterance_start
        hyp = self.decoder.hyp()
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        if not text:
            return None
        begin, finish = seconds(start), seconds(end)
        words: list[Word] = []
        for seg in self.decoder.seg():
            token = _VARIANT.sub("", seg.word)
            if not token or token[0] in "<[+":  # <s>, </s>, <sil>, [NOISE], ++fillers++
                continue
            prob = getattr(seg, "prob", None)
            confidence = clamp(prob) if isinstance(prob, (int, float)) else UNKNOWN_CONFIDENCE
            w_start = min(max(begin, round(begin + seg.start_frame / FRAMES_PER_SECOND, 3)), finish)
            w_end = min(max(w_start, round(begin + (seg.end_frame + 1) / FRAMES_PER_SECOND, 3)), finish)
            words.append(Word(token, w_start, w_end, confidence))
        confidence = sum(w.confidence for w in words) / len(words) if words else UNKNOWN_CONFIDENCE
        return Result(text=text, is_final=True, start=begin, end=finish, confidence=round(confidence, 4),
                      words=tuple(words) if self.settings.words else (), speech_final=speech_final)
