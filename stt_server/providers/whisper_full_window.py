"""Whisper decoding through faster-whisper's own ``transcribe()`` over a padded 30 s window:
the reference the right-sized decoder (:mod:`.whisper_decode`) is compared with, and a fallback
(``providers.whisper.full_window``)."""

from __future__ import annotations

import math
import time
from typing import Any

from ..results import Word
from .whisper_decode import Decoded, DecodeRequest, DecodeSettings


def decode_full_window(model: Any, request: DecodeRequest, settings: DecodeSettings) -> Decoded:
    """Blocking: faster-whisper's own ``transcribe()`` over a padded 30 s window.

    The decoding used before the short window: the reference for the regression set, and a
    fallback. Finals: beam search, temperature fallback, word timestamps when asked;
    interims: greedy, no timestamps.
    """
    began = time.perf_counter()
    final = request.final
    segments, info = model.transcribe(
        request.audio,
        language=request.language,
        beam_size=settings.beam_size if final else settings.interim_beam_size,
        best_of=settings.best_of,
        word_timestamps=final and request.words,
        # Each utterance stands alone: feeding back text caused repetitions (REFERENCE.md).
        condition_on_previous_text=False,
        # The stream's VAD already chose the utterance; this second pass drops pauses inside it,
        # where Whisper would otherwise hallucinate.
        vad_filter=True,
        vad_parameters={"threshold": settings.vad_threshold},
        # Interims are thrown away soon: skip the temperature fallback and timestamp tokens.
        temperature=list(settings.temperatures) if final else settings.temperatures[0],
        compression_ratio_threshold=settings.compression_ratio_threshold,
        log_prob_threshold=settings.log_prob_threshold,
        no_speech_threshold=settings.no_speech_threshold,
        without_timestamps=not final,
    )
    texts: list[str] = []
    found: list[Word] = []
    logprob_sum = 0.0
    tokens = 0
    for segment in segments:  # a generator: the decoding happens here
        text = segment.text.strip()
        if not text:
            continue
        texts.append(text)
        count = max(len(segment.tokens), 1)
        logprob_sum += segment.avg_logprob * count
        tokens += count
        for word in segment.words or ():
            token = word.word.strip()
            if token:
                found.append(Word(token, round(word.start, 3), round(word.end, 3),
                                  min(1.0, max(0.0, float(word.probability)))))
    confidence = min(1.0, max(0.0, math.exp(logprob_sum / tokens))) if tokens else 0.0
    return Decoded(" ".join(texts), confidence, tuple(found), time.perf_counter() - began,
                   info.language, float(info.language_probability))
