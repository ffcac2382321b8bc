"""The accuracy set: speech the server must transcribe within absolute per-clip bounds.

Every engine or pipeline change must keep each clip within its bound in every path
(tests/test_accuracy_gate.py; bench/accuracy.py prints the whole table). The bounds are
absolute word error rates for the default engine (Whisper tiny.en, int8), never "unchanged
against the same engine": a defect that both runs share must still fail.

The clips are built at test time: jfk.flac (real speech, tests/data) and sentences synthesised
by flite and espeak-ng (Debian packages) with fixed voices, whose reference is the input text.
They are chosen to catch lost words: repetition-heavy texts (anaphora, lists, repeated answers,
counting, spelled letters) that a loop guard judging words by their looks would cut, long
utterances (over 15 s without a pause), one- and two-word utterances, speech after 20 s of
silence, and real speech said twice. Each clip has 0.3 s of silence before and after.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regression_set
from support import JFK_FLAC, JFK_TEXT, load_pcm16

RATE = 16_000
EDGE_SECONDS = 0.3
LONG_SILENCE_SECONDS = 20.0
# Noise floor of the long silence: a microphone's, not digital zeros (-80 dBFS, seeded).
SILENCE_NOISE = 1e-4
NOISE_SEED = 20261206

BEACHES = ("We shall fight on the beaches, we shall fight on the landing grounds, we shall fight in the fields "
           "and in the streets, we shall fight in the hills; we shall never surrender.")
LIGHTHOUSE = ("The old lighthouse keeper climbed the narrow stairs every evening at dusk, lit the great lamp that "
              "warned the passing ships away from the rocks, and then sat by the window writing letters to his "
              "daughter, who lived in a busy city far away across the sea.")
TALE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
        "it was the season of Darkness, it was the spring of hope, it was the winter of despair.")


@dataclass(frozen=True)
class ClipSpec:
    name: str
    # "jfk" (the recording), "jfk-twice", or a synthesiser: "flite" / "espeak".
    source: str
    voice: str
    text: str
    # Highest word error rate allowed in any path (measured in every path, bench/RESULTS.md,
    # plus at most two words' margin).
    max_wer: float
    # Seconds of (near) silence before the speech.
    lead_silence: float = 0.0
    # What the clip is for.
    kind: str = ""
    # Phrases said more than once: the transcript must hold each as many times as the text
    # does. A cut repetition costs one or two words of WER, which a bound may forgive; this
    # never does.
    repeats: tuple[str, ...] = ()


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("jfk", "jfk", "", JFK_TEXT, 0.10, kind="real speech"),
    ClipSpec("jfk-twice", "jfk-twice", "", f"{JFK_TEXT} {JFK_TEXT}", 0.10, kind="real speech said twice",
             repeats=("fellow americans", "your country")),
    ClipSpec("tale", "flite", "kal16", TALE, 0.07, kind="anaphora; one utterance over 15 s",
             repeats=("it was the",)),
    ClipSpec("beaches", "flite", "awb", BEACHES, 0.07, kind="anaphora", repeats=("we shall",)),
    ClipSpec("dream", "espeak", "en-us",
             "I have a dream that one day this nation will rise up. I have a dream that my four little children "
             "will one day live in a nation where they will not be judged by the color of their skin. I have a "
             "dream today.", 0.07, kind="anaphora, three sentences",
             # "I have": the anaphora itself ("a dream" was once heard as "agreed", which is no loss).
             repeats=("i have",)),
    ClipSpec("lighthouse", "flite", "awb", LIGHTHOUSE, 0.10, kind="one utterance over 15 s, no repetition"),
    # Short clips: a bound of one word at most, and every repetition counted.
    ClipSpec("yes", "flite", "rms", "Yes. Yes. Yes, that is right.", 0.17, kind="repeated answer",
             repeats=("yes",)),
    ClipSpec("no", "flite", "slt", "No, no, no, I said no.", 0.17, kind="repeated answer", repeats=("no",)),
    ClipSpec("thanks", "flite", "kal16", "Thank you. Thank you. Thank you very much.", 0.15,
             kind="repeated phrase", repeats=("thank you",)),
    ClipSpec("shopping", "flite", "slt", "We need bread, milk and eggs, more bread, more milk, and more eggs.",
             0.08, kind="list with repeats", repeats=("bread", "milk", "eggs")),
    ClipSpec("counting", "flite", "rms", "One, two, three, four, five, one, two, three, four, five, six, seven, "
             "eight, nine, ten.", 0.07, kind="numbers, repeated", repeats=("1 2 3 4 5",)),
    ClipSpec("letters", "flite", "rms", "The code is X, Y, Z, X, Y, Z.", 0.12, kind="spelled letters, repeated",
             repeats=("x y z",)),
    ClipSpec("stop", "espeak", "en-us", "Stop.", 0.0, kind="one word (tiny.en loops on it: Stop. Stop.)"),
    ClipSpec("morning", "flite", "awb", "Good morning.", 0.0, kind="two words"),
    ClipSpec("after-silence", "flite", "slt", "Please turn off the kitchen lights.", 0.17,
             lead_silence=LONG_SILENCE_SECONDS, kind="speech after 20 s of silence"),
)


@dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    pcm16: bytes  # 16 kHz mono s16le

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reference(self) -> str:
        return self.spec.text

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / (2 * RATE)


def _synthesise(engine: str, voice: str, text: str, folder: Path) -> np.ndarray:
    # regression_set's float samples are int16 / 32768: exact both ways.
    return (regression_set.synthesise(engine, voice, text, folder) * 32768).astype(np.int16)


def _int16(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.int16)


def _speech(spec: ClipSpec, folder: Path) -> np.ndarray:
    if spec.source == "jfk":
        return _int16(load_pcm16(JFK_FLAC))
    if spec.source == "jfk-twice":
        jfk = _int16(load_pcm16(JFK_FLAC))
        return np.concatenate([jfk, np.zeros(RATE, dtype=np.int16), jfk])
    return _synthesise(spec.source, spec.voice, spec.text, folder)


def build(names: Collection[str] | None = None) -> list[Clip]:
    """Every clip (or those ``names``), identical on every build (fixed voices, seeded noise)."""
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None:  # a failure, not a skip: CI must install what tests need
            raise RuntimeError(f"{tool} synthesises the accuracy set: apt-get install {tool} (.ci/run does)")
    rng = np.random.default_rng(NOISE_SEED)
    edge = np.zeros(int(EDGE_SECONDS * RATE), dtype=np.int16)
    clips = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in CLIPS:
            lead = (rng.standard_normal(int(spec.lead_silence * RATE)) * SILENCE_NOISE * 32768).astype(np.int16)
            if names is not None and spec.name not in names:
                continue  # the noise stream still advances: each clip is the same either way
            audio = np.concatenate([edge, lead, _speech(spec, Path(folder)), edge])
            clips.append(Clip(spec, audio.astype("<i2").tobytes()))
    return clips


# --- scoring ----------------------------------------------------------------------------------

NUMBERS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped, numbers as digits one by one ("ten" and "10" are
    both "1 0", "555-1234" is seven digits): Whisper writes numbers as digits."""
    out: list[str] = []
    for word in re.sub(r"[^\w' ]+", " ", text.lower()).split():
        digits = NUMBERS.get(word, word)
        out.extend(digits if digits.isdigit() else [digits])
    return out


def word_errors(reference: str, hypothesis: str) -> int:
    ref, hyp = words(reference), words(hypothesis)
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return int(d[len(hyp)])


def wer(reference: str, hypothesis: str) -> float:
    return word_errors(reference, hypothesis) / max(1, len(words(reference)))


def occurrences(phrase: str, text: str) -> int:
    """How often ``phrase`` occurs in ``text``, word for word, without overlaps."""
    needle, hay = words(phrase), words(text)
    count = index = 0
    while index + len(needle) <= len(hay):
        if hay[index:index + len(needle)] == needle:
            count, index = count + 1, index + len(needle)
        else:
            index += 1
    return count


def lost_repeats(spec: ClipSpec, hypothesis: str) -> list[str]:
    """The clip's repeated phrases that the transcript holds a different number of times."""
    return [f"{phrase!r} {occurrences(phrase, hypothesis)}x, said {occurrences(phrase, spec.text)}x"
            for phrase in spec.repeats if occurrences(phrase, hypothesis) != occurrences(phrase, spec.text)]




# --- the drain path ---------------------------------------------------------------------------

PHRASE_GAP_SECONDS = 0.2  # between synthesised phrases: a comma's pause, inside one utterance


@dataclass(frozen=True)
class PhrasedClip:
    """Speech whose phrase ends are known, for the drain path: a drain stops a client mid-stream,
    and every phrase it sent before the drain's notice must be in its finals."""

    name: str
    phrases: tuple[str, ...]
    ends: tuple[int, ...]  # byte offset in pcm16 where each phrase's speech ends
    pcm16: bytes
    max_wer: float
    repeats: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / (2 * RATE)

    @property
    def reference(self) -> str:
        return " ".join(self.phrases)

    def expected(self, sent: int, read: int) -> tuple[list[str], list[str]]:
        """The words the finals must hold (phrases wholly sent before byte ``sent``), and the
        words that may follow them (phrases begun before byte ``read``, the last byte read)."""
        starts = (0, *self.ends[:-1])
        must = [p for p, end in zip(self.phrases, self.ends) if end <= sent]
        may = [p for p, start, end in zip(self.phrases, starts, self.ends) if end > sent and start < read]
        return words(" ".join(must)), words(" ".join(may))

    def errors(self, hypothesis: str, sent: int, read: int) -> tuple[int, int, int]:
        """Word errors of the transcript's opening against the phrases sent before ``sent``
        (the opening that makes the fewest), the number of those words, and how many words the
        transcript has after that opening beyond what the phrases begun before ``read`` hold
        (invented text). The words after the opening are not scored: they are of audio cut
        mid-phrase by the drain, whose last word is cut too."""
        must, may = self.expected(sent, read)
        heard = words(hypothesis)
        errors, opening = min((_errors(must, heard[:j]), -j) for j in range(len(heard) + 1))
        return errors, len(must), max(0, len(heard) + opening - len(may))


def _errors(ref: list[str], hyp: list[str]) -> int:
    return word_errors(" ".join(ref), " ".join(hyp))


def _phrases(text: str) -> list[str]:
    return [p for p in re.split(r"(?<=[,.;])\s+", text) if p]


def phrased(name: str, folder: Path) -> PhrasedClip:
    """The clip ``name`` of CLIPS made phrase by phrase: jfk cut at its pauses (the same audio);
    synthesised texts one phrase at a time, joined by PHRASE_GAP_SECONDS of silence."""
    spec = next(s for s in CLIPS if s.name == name)
    gap = np.zeros(int(PHRASE_GAP_SECONDS * RATE), dtype=np.int16)
    edge = np.zeros(int(EDGE_SECONDS * RATE), dtype=np.int16)
    if spec.source == "jfk":  # the recording's phrases, cut in the middle of its pauses
        pieces = [(text, (audio * 32768).astype(np.int16), np.zeros(0, dtype=np.int16))
                  for _, text, audio in regression_set.jfk_clips()[1:]]
    else:
        pieces = [(text, _synthesise(spec.source, spec.voice, text, folder), gap) for text in _phrases(spec.text)]
    audio, ends, offset = [edge], [], edge.size
    for text, speech, pause in pieces:
        audio += [speech, pause]
        offset += speech.size
        ends.append(2 * offset)
        offset += pause.size
    audio.append(edge)
    return PhrasedClip(name, tuple(t for t, _, _ in pieces), tuple(ends),
                       np.concatenate(audio).astype("<i2").tobytes(), spec.max_wer, spec.repeats)


def joined(name: str, clips: list[PhrasedClip]) -> PhrasedClip:
    """``clips`` one after another, as one clip (a long upload)."""
    offsets = np.cumsum([0, *(len(c.pcm16) for c in clips)])
    return PhrasedClip(name, tuple(p for c in clips for p in c.phrases),
                       tuple(int(end + offset) for c, offset in zip(clips, offsets) for end in c.ends),
                       b"".join(c.pcm16 for c in clips), max(c.max_wer for c in clips))
