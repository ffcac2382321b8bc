"""Blocking Whisper decoding of utterances: a right-sized encoder window, several at once.

faster-whisper's ``WhisperModel.transcribe()`` encodes a 30 s window (3000 mel frames) for
every call, whatever the audio's length; for a 2 s utterance that is most of the cost. Here the
CTranslate2 model (``model.model``) is called directly:

* **Right-sized window.** The encoder sees the utterance followed by PAD_SECONDS of digital
  silence (added to the audio, as Whisper's training data was padded). Cut to exactly the
  audio, Whisper loops ("Please turn off the kitchen lights. Please turn off ..."); padded with
  faster-whisper's zero-valued mel frames it looped at every pad length tried; with silence,
  2-4 s kept the regression set's WER at or below the full window's (bench/RESULTS.md).
* **Batching.** Utterances (from any sessions) with the same window are generated (beam
  search) in one CTranslate2 call; finals and interims are separate calls (different beams).
  A member is never padded to a longer companion's window, so a final is the same alone or
  batched, whatever else the server decodes: padded to a companion's, jfk's words moved and a
  real-time client's final lost a word beside a fast uploader. Utterances up to
  MIN_WINDOW_SECONDS - PAD_SECONDS all have the shortest window and batch freely; longer ones
  batch with the same length (a burst of streams reading in step). MAX_BATCH: where batching
  stopped paying on the 2-core box.
  The encoder and the word alignment run one utterance at a time (see ``_encode`` and
  ``_word_timestamps``): their working memory grows with the batch and batching them saved
  no time.
* **Guards against invented text**, after faster-whisper's: no text when the no-speech
  probability is high and the text improbable, and for digital silence. Loops (the short
  window's typical failure: "And so my fellow Americans. And so my fellow Americans." for one
  phrase) are judged by the model and the audio, never by what the words look like: speech
  repeats itself ("it was the best of times, it was the worst of times"; "yes. yes."). A copy
  that repeats the words right before it is removed only when the cross-attention alignment
  finds no audio for it (see :mod:`.whisper_loop_guard`); in doubt the words stay, since a kept
  repeat is visible and a cut is silent loss. A compression ratio over the threshold or an
  output that ran out of tokens triggers the temperature fallback when one is configured (off
  by default), never the loss of the text.
* **Language identification** (multilingual models, no language given) runs on a full 30 s
  window: on short windows Whisper misidentified languages that the full window got right.

:mod:`.whisper_full_window` keeps the old ``model.transcribe()`` path: the reference for the
regression comparison and a fallback.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..results import Word
from .whisper_loop_guard import without_unspoken_repeats

SAMPLE_RATE = 16_000
# Whisper's mel hop is 10 ms; the encoder halves the frames; a full window is 30 s.
FRAMES_PER_SECOND = 100
FULL_WINDOW_FRAMES = 3000
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAMES_PER_SECOND
# faster-whisper's defaults: punctuation merged into the neighbouring word's timing.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
# Silence after the audio in the short window (s); see the module docstring.
PAD_SECONDS = 4.0
# Shortest window (s); see DecodeSettings.min_window_seconds.
MIN_WINDOW_SECONDS = 8.0
# Windows are rounded up to a multiple of this many frames: the encoder halves the frames
# (odd widths are accepted too; even keeps the alignment's frame count exact).
WINDOW_ROUNDING_FRAMES = 2
# Requests worth decoding in one call on a 2-core CPU (measured, bench/RESULTS.md): beyond it a
# batch costs as much per utterance as separate calls and only delays the first result.
MAX_BATCH = 4
# Most window (s, members x window) one beam search decodes together: four utterances of one
# length up to 8 s (12 s windows) share a call, two up to 20 s do, longer ones go alone. The
# search holds ~0.9 MiB per second of window and two workers search at once. At 24 s, 16
# streams reading in step (the same 7 s finals at once) had their finals at p95 1.8-2.3 s, at 48
# s 1.38-1.69 s, for ~35 MiB more RSS at 32 streams (bench/RESULTS.md). Before windows had to be
# equal, 48 s had cost a fast uploader's neighbours words (they were padded to its windows).
MAX_BATCH_WINDOW_SECONDS = 48
# Tokens the decoder may produce per second of audio (+ a constant), so a loop stops early
# instead of running to Whisper's 448-token limit; fast speech is ~5 tokens/s.
MAX_TOKENS_PER_SECOND = 12
MIN_MAX_TOKENS = 24
WHISPER_MAX_LENGTH = 448
# Audio quieter than this (RMS, -60 dBFS) is silence: not decoded at all. Whisper answers
# digital silence with a confident "you" that the no-speech check lets through.
SILENCE_RMS = 0.001


@dataclass(frozen=True)
class DecodeRequest:
    audio: np.ndarray          # float32 mono 16 kHz, one utterance, <= 30 s
    language: str | None       # Whisper code "en"; None = detect (multilingual model)
    final: bool                # final: best settings (+ words if asked); interim: cheapest
    words: bool                # word timestamps wanted (finals only)


@dataclass(frozen=True)
class Decoded:
    """One Whisper pass over an utterance; times relative to the audio passed in."""

    text: str
    confidence: float          # 0..1
    words: tuple[Word, ...]
    seconds: float             # wall time of the call (for a batch: the batch's time)
    language: str | None = None
    language_probability: float = 0.0
    # Words of repeated copies removed because the audio does not hold them (a model loop).
    loop_words_removed: int = 0


@dataclass(frozen=True)
class DecodeSettings:
    """How finals and interims are decoded (defaults chosen by bench/whisper_window.py)."""

    # Beam width for finals; interims decode greedily.
    beam_size: int = 5
    interim_beam_size: int = 1
    # Temperatures tried in turn for a final whose text trips a guard below; interims use the
    # first. One: the fallback gained nothing on the regression set, and sampling made results
    # differ from run to run (faster-whisper's is (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)).
    temperatures: tuple[float, ...] = (0.0,)
    # Sampled candidates per fallback temperature (faster-whisper's best_of).
    best_of: int = 5
    # Guards, faster-whisper's defaults: gzip ratio above which text is a loop, average token
    # log-probability below which it is improbable, <|nospeech|> probability above which an
    # improbable text is taken for silence.
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    # Digital silence after the audio in the short window (s).
    pad_seconds: float = PAD_SECONDS
    # Shortest encoder window (s): two-word utterances (jfk's "ask not", as the live VAD cut it)
    # came out garbled ("S NOT") in a 5.6 s window. From 6 to 15 s the regression set makes the
    # same word errors within 1-2 words (clean, 5 dB noise, 8 kHz mu-law; tiny.en and base),
    # while each second less is ~4% less CPU and memory per utterance (bench/RESULTS.md).
    min_window_seconds: float = MIN_WINDOW_SECONDS
    # Most padded window (s) one beam search decodes together (see MAX_BATCH_WINDOW_SECONDS).
    max_batch_window_seconds: float = MAX_BATCH_WINDOW_SECONDS
    # Decode with Whisper's timestamp tokens: segments that start in the pad after the audio
    # are the model running past it, and are dropped.
    # Off: without them the noisy half of the regression set did better (bench/RESULTS.md).
    timestamp_tokens: bool = False
    # Silero VAD threshold of the full-window path's own vad_filter.
    vad_threshold: float = 0.5
    suppress_tokens: tuple[int, ...] = field(default=(-1,))


# --------------------------------------------------------------------------- short window


@dataclass
class _Item:
    """One request's working state inside a batch."""

    index: int
    request: DecodeRequest
    frames: int                # mel frames of the audio itself (the rest of the window is pad)
    # Until decoded: the requested language (None = to detect; an English-only model: "en").
    language: str | None = None
    language_probability: float = 0.0
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    # Too repetitive (compression ratio) or ran out of tokens for the audio's length.
    looped: bool = False
    # Words removed by unspoken_repeats.
    loop_words_removed: int = 0

    @property
    def max_new_tokens(self) -> int:
        return MIN_MAX_TOKENS + int(MAX_TOKENS_PER_SECOND * self.frames / FRAMES_PER_SECOND)


def window_frames(content_frames: int, pad_seconds: float, min_seconds: float = 0.0) -> int:
    """Encoder input length for ``content_frames`` of audio: audio + pad, at least
    ``min_seconds``, rounded, ≤ 30 s."""
    frames = max(content_frames + int(round(pad_seconds * FRAMES_PER_SECOND)),
                 int(round(min_seconds * FRAMES_PER_SECOND)))
    frames = -(-frames // WINDOW_ROUNDING_FRAMES) * WINDOW_ROUNDING_FRAMES
    return min(max(frames, WINDOW_ROUNDING_FRAMES), FULL_WINDOW_FRAMES)


def compression_ratio(text: str) -> float:
    """faster-whisper's repetition measure: raw bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def decode_batch(model: Any, requests: Sequence[DecodeRequest], settings: DecodeSettings) -> list[Decoded]:
    """Blocking: decode utterances together; results in request order.

    Finals and interims are decoded separately (different beams), each with one CTranslate2
    encode per member, one generate (plus one per fallback temperature, for the members that
    need it) and, for finals that want words, one alignment per member. Every result carries the
    wall time of the whole call in ``seconds``.
    """
    began = time.perf_counter()
    english_only = not model.model.is_multilingual
    items = [_Item(i, request, _content_frames(request.audio),
                   "en" if english_only else request.language,
                   1.0 if english_only or request.language else 0.0)
             for i, request in enumerate(requests)]
    outcomes: dict[int, tuple[str, float, tuple[Word, ...]]] = {}
    for item in items:
        audio = np.asarray(item.request.audio, dtype=np.float32)
        if not audio.size or float(np.sqrt(np.mean(audio ** 2))) < SILENCE_RMS:
            outcomes[item.index] = ("", 0.0, ())
    for final in (True, False):
        group = [item for item in items if item.request.final == final and item.index not in outcomes]
        for part in _by_window(group, settings):
            for item, outcome in zip(part, _decode_group(model, part, settings, final=final)):
                outcomes[item.index] = outcome
    seconds = time.perf_counter() - began
    return [Decoded(*outcomes[item.index], seconds, item.language, item.language_probability,
                    item.loop_words_removed)
            for item in items]


def _by_window(items: list[_Item], settings: DecodeSettings) -> list[list[_Item]]:
    """``items`` in calls of one window each (in order of first appearance), each call within
    ``settings.max_batch_window_seconds`` (members × window): the beam search's memory grows
    with it (~12 MiB per 15 s window, for the cross-attention keys and values), and long
    utterances gain little from sharing a call."""
    by_width: dict[int, list[_Item]] = {}
    for item in items:
        by_width.setdefault(request_window(item.request, settings), []).append(item)
    budget = settings.max_batch_window_seconds * FRAMES_PER_SECOND
    parts: list[list[_Item]] = []
    for width, members in by_width.items():
        size = max(1, int(budget // width))
        parts += [members[i:i + size] for i in range(0, len(members), size)]
    return parts


def request_window(request: DecodeRequest, settings: DecodeSettings) -> int:
    """The encoder window (frames) ``request`` is decoded in: only requests with the same window
    (and model and kind) share a call."""
    return window_frames(_content_frames(request.audio), settings.pad_seconds, settings.min_window_seconds)


def _content_frames(audio: np.ndarray) -> int:
    samples = min(int(audio.size), FULL_WINDOW_FRAMES * SAMPLES_PER_FRAME)
    return max(1, samples // SAMPLES_PER_FRAME)


def _features(model: Any, items: Sequence[_Item], settings: DecodeSettings) -> np.ndarray:
    """(batch, n_mels, frames): each utterance followed by digital silence up to the window
    (one width for all: see ``_by_window``).

    The silence is added to the *audio*, as Whisper's training data was padded, so the pad
    frames sit at the utterance's own log-mel floor; faster-whisper's zero-valued mel padding
    made short windows loop at every pad length tried (bench/RESULTS.md).
    """
    width = max(request_window(item.request, settings) for item in items)
    rows = []
    for item in items:
        audio = np.asarray(item.request.audio, dtype=np.float32)[:item.frames * SAMPLES_PER_FRAME]
        padded = np.zeros(width * SAMPLES_PER_FRAME, dtype=np.float32)
        padded[:audio.size] = audio
        features = model.feature_extractor(padded)[:, :width]
        if features.shape[-1] < width:  # never with the extractor's own 160-sample padding
            features = np.pad(features, ((0, 0), (0, width - features.shape[-1])), mode="edge")
        rows.append(features)
    return np.ascontiguousarray(np.stack(rows).astype(np.float32))


def _decode_group(model: Any, items: list[_Item], settings: DecodeSettings,
                  *, final: bool) -> list[tuple[str, float, tuple[Word, ...]]]:
    features = _features(model, items, settings)
    encoded = _encode(model, features)
    whisper = model.model
    multilingual = bool(whisper.is_multilingual)
    _detect_languages(model, [item for item in items if item.language is None])
    languages = [item.language or "en" for item in items]
    tokenizers = {language: _tokenizer(model.hf_tokenizer, multilingual, language)
                  for language in sorted(set(languages))}
    some_tokenizer = next(iter(tokenizers.values()))
    suppress = list(_suppressed_tokens(some_tokenizer, settings.suppress_tokens))
    # Without timestamp tokens an utterance is one segment; words come from the alignment anyway.
    no_timestamps = [] if settings.timestamp_tokens else [some_tokenizer.no_timestamps]
    prompts = [[*tokenizers[item.language or "en"].sot_sequence, *no_timestamps] for item in items]

    temperatures = settings.temperatures if final else settings.temperatures[:1]
    beam_size = settings.beam_size if final else settings.interim_beam_size
    pending = list(range(len(items)))
    for step, temperature in enumerate(temperatures):
        if not pending:
            break
        subset = encoded if len(pending) == len(items) else _rows(model, encoded, features, pending)
        if temperature > 0:
            kwargs: dict[str, Any] = {"beam_size": 1, "num_hypotheses": settings.best_of,
                                      "sampling_topk": 0, "sampling_temperature": temperature}
        else:
            kwargs = {"beam_size": beam_size}
        longest = max(items[i].max_new_tokens for i in pending)
        outputs = whisper.generate(
            subset, [prompts[i] for i in pending],
            max_length=min(WHISPER_MAX_LENGTH, len(prompts[0]) + longest),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=suppress, **kwargs)
        retry = []
        for i, output in zip(pending, outputs):
            item = items[i]
            generated = list(output.sequences_ids[0])
            # faster-whisper's recovery of the mean log-probability (length_penalty 1).
            avg_logprob = float(output.scores[0]) * len(generated) / (len(generated) + 1)
            tokenizer = tokenizers[item.language or "en"]
            tokens = _kept_text_tokens(generated, tokenizer, item.frames / FRAMES_PER_SECOND)
            ratio = compression_ratio(tokenizer.decode(tokens).strip())
            # Out of tokens for the audio's length is a loop, unless the loop was cut off.
            uncut = len(tokens) == sum(token < tokenizer.eot for token in generated)
            looped = ratio > settings.compression_ratio_threshold or (
                uncut and len(generated) >= item.max_new_tokens)
            if step == 0:
                item.no_speech_prob = float(output.no_speech_prob)
            # Keep the first result, or a later one that is not a loop and is more probable
            # (or replaces a loop): faster-whisper's choice among fallback results.
            if step == 0 or (not looped and (item.looped or avg_logprob > item.avg_logprob)):
                item.tokens, item.avg_logprob, item.looped = tokens, avg_logprob, looped
            improbable = avg_logprob < settings.log_prob_threshold
            silence = item.no_speech_prob > settings.no_speech_threshold and improbable
            if (looped or improbable) and not silence:
                retry.append(i)
        pending = retry

    for row, item in enumerate(items):
        if item.tokens:
            def encoder_output(row: int = row) -> Any:
                return encoded if len(items) == 1 else _rows(model, encoded, features, [row])

            item.tokens, item.loop_words_removed = without_unspoken_repeats(
                model, item.tokens, item.frames / FRAMES_PER_SECOND, tokenizers[item.language or "en"],
                encoder_output, features.shape[-1])

    outcomes: list[tuple[str, float, tuple[Word, ...]]] = []
    wants_words: list[_Item] = []
    for item in items:
        text = tokenizers[item.language or "en"].decode(item.tokens).strip()
        silence = (item.no_speech_prob > settings.no_speech_threshold
                   and item.avg_logprob < settings.log_prob_threshold)
        # A loop flag alone drops nothing: what the alignment placed in the audio was said.
        if silence or not text:
            item.tokens = []
            outcomes.append(("", 0.0, ()))
            continue
        outcomes.append((text, min(1.0, max(0.0, math.exp(item.avg_logprob))), ()))
        if final and item.request.words:
            wants_words.append(item)
    if wants_words:
        position = {id(item): n for n, item in enumerate(items)}
        for item, words in _word_timestamps(model, items, wants_words, encoded, features, tokenizers):
            text, confidence, _ = outcomes[position[id(item)]]
            outcomes[position[id(item)]] = (text, confidence, words)
    return outcomes


def _kept_text_tokens(tokens: Sequence[int], tokenizer: Any, audio_seconds: float) -> list[int]:
    """The text tokens, without the segments that start after the audio ended.

    With timestamp tokens (``<|t|> text <|t'|>``) the model says where each segment begins; one
    that begins in the pad after the audio ("And so my fellow Americans." again from 4.0 s, in
    a 3.3 s utterance) is the model running past the audio, the short window's typical loop.
    Without timestamps the whole output is one segment and this keeps every text token.
    """
    begin = tokenizer.timestamp_begin
    kept: list[int] = []
    segment_start = 0.0
    for token in tokens:
        if token >= begin:
            segment_start = (token - begin) * 0.02
        elif token < tokenizer.eot and (segment_start < audio_seconds or not kept):
            kept.append(token)
    return kept


def _detect_languages(model: Any, items: list[_Item]) -> None:
    """Language identification on the full 30 s window (only for requests without a language,
    so only on a multilingual model).

    Whisper identifies languages from 30 s windows: on right-sized windows espeak German came
    out as Latvian (p 0.68) or Vietnamese, while the full window said German like
    ``transcribe()`` does; so these requests pay one full-window encode, batched. A caller that
    pins a session's language after its first detection avoids it for later utterances.
    """
    if not items:
        return
    batch = np.zeros((len(items), model.feature_extractor.mel_filters.shape[0], FULL_WINDOW_FRAMES), dtype=np.float32)
    for row, item in enumerate(items):
        # transcribe()'s features: the audio's frames, then zero-valued mel padding.
        features = model.feature_extractor(np.asarray(item.request.audio, dtype=np.float32))[:, :item.frames]
        batch[row, :, :features.shape[-1]] = features
    for item, ranking in zip(items, model.model.detect_language(model.encode(batch))):
        token, probability = ranking[0]  # ("<|de|>", 0.93), best first
        item.language, item.language_probability = token[2:-2], float(probability)


@functools.lru_cache(maxsize=64)
def _tokenizer(hf_tokenizer: Any, multilingual: bool, language: str) -> Any:
    """Cached: a fresh faster-whisper Tokenizer recomputes its non-speech token list (~40 ms)."""
    from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]

    return Tokenizer(hf_tokenizer, multilingual, task="transcribe", language=language)


@functools.lru_cache(maxsize=64)
def _suppressed_tokens(tokenizer: Any, configured: tuple[int, ...]) -> tuple[int, ...]:
    """faster-whisper's get_suppressed_tokens: -1 = the non-speech symbols, plus task tokens."""
    tokens = [t for t in configured if t >= 0]
    if -1 in configured:
        tokens.extend(tokenizer.non_speech_tokens)
    tokens.extend([tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                   tokenizer.sot_lm, tokenizer.no_speech])
    return tuple(sorted(set(tokens)))


def _word_timestamps(model: Any, items: list[_Item], wanted: list[_Item], encoded: Any, features: np.ndarray,
                     tokenizers: dict[str, Any]) -> list[tuple[_Item, tuple[Word, ...]]]:
    """Cross-attention alignment (faster-whisper's add_word_timestamps) over the audio's own
    frames, one utterance at a time: aligned together, four 15 s windows held ~54 MiB of
    attention at once against ~13 MiB for one, for ~2% less time (bench/RESULTS.md)."""
    found = []
    for item in wanted:
        row = items.index(item)
        encoder_output = encoded if len(items) == 1 else _rows(model, encoded, features, [row])
        segments: list[list[dict[str, Any]]] = [[{"seek": 0, "start": 0.0, "end": item.frames / FRAMES_PER_SECOND,
                                                  "tokens": item.tokens}]]
        model.add_word_timestamps(segments, tokenizers[item.language or "en"], encoder_output, [item.frames],
                                  PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, last_speech_timestamp=0.0)
        duration = item.request.audio.size / SAMPLE_RATE
        words = []
        for word in segments[0][0].get("words", ()):
            token = word["word"].strip()
            if not token:
                continue
            start = min(max(float(word["start"]), 0.0), duration)
            end = min(max(float(word["end"]), start), duration)
            words.append(Word(token, round(start, 3), round(end, 3),
                              min(1.0, max(0.0, float(word["probability"])))))
        found.append((item, tuple(words)))
    return found


def _encode(model: Any, features: np.ndarray) -> Any:
    """The encoder output of a batch, encoded one member at a time on the CPU and stacked for
    one generate. The encoder's self-attention scores grow with the window squared (~13.5 MB a
    layer for a 15 s window): four encoded together peaked at ~88 MiB of working memory, one
    at a time at ~24 MiB, and the whole decode ran ~10% faster (bench/RESULTS.md)."""
    if features.shape[0] == 1 or getattr(model.model, "device", "cpu") != "cpu":
        return model.encode(features)
    import ctranslate2  # type: ignore[import-untyped]

    rows = [np.asarray(model.encode(np.ascontiguousarray(features[i:i + 1]))) for i in range(features.shape[0])]
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(rows)))


def _rows(model: Any, encoded: Any, features: np.ndarray, rows: list[int]) -> Any:
    """The encoder output of some members of a batch: sliced on the CPU, re-encoded elsewhere
    (a device StorageView cannot be indexed from Python)."""
    import ctranslate2  # type: ignore[import-untyped]

    if getattr(encoded, "device", "cpu") == "cpu":
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))
    return model.encode(np.ascontiguousarray(features[rows]))
