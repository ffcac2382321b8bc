"""Whisper's loop guard: repeated copies of words that the audio does not hold are removed.

Loops (the short window's typical failure: "And so my fellow Americans. And so my fellow
Americans." for one phrase) are judged by the model and the audio, never by what the words look
like: speech repeats itself ("it was the best of times, it was the worst of times"; "yes. yes.").
A copy that repeats the words right before it (:func:`repetitions`) is removed only when the
cross-attention alignment finds no audio for it (:func:`unspoken_repeats`); in doubt the words
stay, since a kept repeat is visible and a cut is silent loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# A repeated copy (see unspoken_repeats) is a loop when the alignment finds less audio for it than
# this per word: a spoken word lasts 0.1 s or more, while a looped copy's words pile up at one
# point (0-25 ms each on jfk's "And so my fellow Americans. And so my fellow Americans.") or
# past the audio's end. And only when its earlier copy found at least LOOP_EARLIER_FACTOR times
# more audio: the model heard the phrase once, there.
LOOP_SECONDS_PER_WORD = 0.05
LOOP_EARLIER_FACTOR = 3.0


@dataclass(frozen=True)
class Repetition:
    """Spoken words [first, stop) of an output, each the same as the word ``period`` before it
    ("X X X": the second and third X; "A B C A B C A": the second "A B C" and the last "A").

    Indexes count spoken words only: punctuation is skipped when comparing."""

    period: int
    first: int
    stop: int


def repetitions(keys: Sequence[str]) -> list[Repetition]:
    """Where the output repeats the words right before it, leftmost first, at the shortest
    period that makes a whole copy.

    ``keys`` are normalised words, "" for punctuation. These are only *candidates*: repeated
    speech looks the same ("yes. yes."; "x, y, z, x, y, z"), and only the audio tells (see
    :func:`unspoken_repeats`).
    """
    words = [key for key in keys if key]
    n = len(words)
    found: list[Repetition] = []
    first = 1
    while first < n:
        period = next((length for length in range(1, first + 1)
                       if first + length <= n and words[first:first + length] == words[first - length:first]), 0)
        if not period:
            first += 1
            continue
        stop = first
        while stop < n and words[stop] == words[stop - period]:
            stop += 1
        found.append(Repetition(period, first, stop))
        first = stop
    return found


def unspoken_repeats(keys: Sequence[str], spans: Sequence[tuple[float, float]],
                     audio_seconds: float) -> set[int]:
    """Indexes (into ``keys``) of the words that a model loop added: repeated copies the audio
    does not hold.

    ``spans`` are the words' (start, end) from a cross-attention alignment over the whole
    window (audio, then the silence pad). Repeated speech has each copy aligned to its own
    stretch of audio; a loop's copy finds almost none: its words pile up at one instant or fall
    in the pad after the audio. A copy of a repetition is a loop when its words span less than
    LOOP_SECONDS_PER_WORD of audio each while the words it repeats span LOOP_EARLIER_FACTOR
    times more, and so do all the copies after it (a model that loops goes on looping). A loop
    need not start where the first copy does ("no, no, no, I said no. No, no, I said no." loops
    from the second "No"), so every phase of the repetition is tried, and the copies go from
    the earliest start that some phase proves. One-word copies
    qualify only at the end of the output ("Stop. Stop.") or past the audio: inside speech a
    short word can align to nothing ("that that"). And the output's tail goes when every word
    of it starts after the audio ended and repeats a word said before it.
    """
    spoken = [index for index, key in enumerate(keys) if key]
    n = len(spoken)

    def heard(first: int, stop: int) -> float:
        """Audio from spoken word ``first``'s start to word ``stop - 1``'s end, within the
        audio: punctuation inside counts (the alignment gives pauses to commas), the
        punctuation after the last word does not (a final full stop takes the rest of the
        window)."""
        return max(0.0, min(spans[spoken[stop - 1]][1], audio_seconds) - max(spans[spoken[first]][0], 0.0))

    def unheard(first: int, stop: int, earlier: float) -> bool:
        """Copy [first, stop) finds almost no audio, and the words it repeats did."""
        copy = heard(first, stop)
        return copy < LOOP_SECONDS_PER_WORD * (stop - first) and earlier >= LOOP_EARLIER_FACTOR * max(copy, 0.01)

    removed: set[int] = set()
    for repetition in repetitions(keys):
        period, loop_start = repetition.period, None
        for phase in range(period):
            copies = [(first, min(first + period, repetition.stop))
                      for first in range(repetition.first + phase, repetition.stop, period)]
            # A partial copy counts only as the output's cut-off tail, of two words or more.
            if copies and copies[-1][1] - copies[-1][0] < period and (
                    copies[-1][1] < n or copies[-1][1] - copies[-1][0] < 2):
                copies.pop()
            for number, (first, _) in enumerate(copies):
                # Every copy from here on against the words before the first: a loop's copies
                # repeat each other, all unheard.
                earlier = heard(first - period, first)
                if all(unheard(*copy, earlier) for copy in copies[number:]):
                    if period > 1 or repetition.stop == n or spans[spoken[first]][0] >= audio_seconds:
                        loop_start = first if loop_start is None else min(loop_start, first)
                    break
        if loop_start is not None:
            end = spoken[repetition.stop - 1] + 1
            while end < len(keys) and not keys[end]:  # and the punctuation after it
                end += 1
            removed.update(range(spoken[loop_start], end))
    # The output's tail aligned wholly after the audio, in the silence pad, repeating words said
    # before it: a loop that varies as it goes ("No... I said no... No... No..."), so that its
    # copies are not exact, and that no audio can hold.
    tail = n
    while tail > 0 and spans[spoken[tail - 1]][0] >= audio_seconds:
        tail -= 1
    said = {keys[index] for index in spoken[:tail]}
    if 0 < tail < n and all(keys[index] in said for index in spoken[tail:]):
        removed.update(range(spoken[tail], len(keys)))
    return removed

def without_unspoken_repeats(model: Any, tokens: list[int], audio_seconds: float, tokenizer: Any,
                             encoder_output: Callable[[], Any], window: int) -> tuple[list[int], int]:
    """``tokens`` less the repeated copies the audio (its first ``audio_seconds`` of the
    ``window`` frames) does not hold, and how many words went. The alignment (~10 ms) runs
    only when some words repeat the words before them."""
    words, word_tokens = tokenizer.split_to_word_tokens(tokens)
    keys = [_word_key(word) for word in words]
    if not repetitions(keys):
        return tokens, 0
    alignment = model.find_alignment(tokenizer, [tokens], encoder_output(), window)[0]
    if len(alignment) != len(words):  # never seen; keep the words rather than guess
        return tokens, 0
    spans = [(float(word["start"]), float(word["end"])) for word in alignment]
    removed = unspoken_repeats(keys, spans, audio_seconds)
    if not removed:
        return tokens, 0
    kept = [token for index, group in enumerate(word_tokens) if index not in removed for token in group]
    return kept, sum(1 for index in removed if keys[index])


def _word_key(word: str) -> str:
    return word.strip().lower().strip(".,!?;:\"'()[]{}¿¡…-")
