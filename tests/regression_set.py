"""A regression set of utterance-length speech for Whisper decoding, built at test time.

Utterances of 1–12 s, each clean and with white noise at 5 dB SNR (seeded, so every build is
identical): jfk.flac (tests/data) whole and cut at its pauses, and sentences synthesised by
espeak-ng and flite with fixed voices and settings, whose reference is the input text. Every
clip has 0.3 s of silence before and after, as the provider's VAD cut pads an utterance
(``speech_pad_ms``). Used by tests/test_whisper_decode.py and bench/whisper_window.py.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from support import JFK_FLAC, JFK_TEXT, load_pcm16

RATE = 16_000
SNR_DB = 5.0
NOISE_SEED = 20261129
EDGE_SILENCE_SECONDS = 0.3

# Kennedy pauses after these words of tests/data/jfk.txt ("And so, my fellow Americans, | ask
# not | what your country can do for you, | ask what ..."): the energy search below must find
# exactly that many pauses, so a changed recording fails loudly instead of mislabelling clips.
JFK_PAUSES_AFTER_WORDS = (5, 7, 14)
JFK_PAUSE_SECONDS = 0.45
JFK_QUIET_DB = -35.0

# (synthesiser, voice, text). Voices and rates are fixed: the set is the same on every build.
SENTENCES: tuple[tuple[str, str, str], ...] = (
    ("espeak", "en-us", "Please turn off the kitchen lights."),
    ("espeak", "en-us", "Yes, that is right."),
    ("espeak", "en-gb", "The train to London leaves from platform four in ten minutes."),
    ("espeak", "en-us", "We should meet again next week to review the budget and the hiring plan."),
    ("espeak", "en-gb", "Good morning."),
    ("espeak", "en-us", "She sells fresh bread and warm coffee at the corner shop every morning, "
                        "and on Sundays the queue reaches the end of the street."),
    ("espeak", "en-gb", "Could you send me the report before lunch?"),
    ("espeak", "en-us", "The quick brown fox jumps over the lazy dog."),
    ("flite", "slt", "The meeting starts at noon in the large conference room."),
    ("flite", "slt", "Thank you very much."),
    ("flite", "rms", "Remember to water the plants while I am away on holiday."),
    ("flite", "awb", "The weather will be cold and windy with a chance of rain in the evening."),
    ("flite", "slt", "Open the window, please."),
    ("flite", "kal16", "I would like a cup of tea with milk and no sugar."),
    ("flite", "rms", "After the concert we walked along the river and talked about music until "
                     "it was dark."),
    ("flite", "slt", "Nobody knows where the old map was hidden, but the children keep searching "
                     "the attic for it every summer."),
)


@dataclass(frozen=True)
class Clip:
    name: str
    reference: str
    audio: np.ndarray  # float32 mono 16 kHz
    noisy: bool

    @property
    def seconds(self) -> float:
        return self.audio.size / RATE


def _float32(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0


def _padded(audio: np.ndarray) -> np.ndarray:
    edge = np.zeros(int(EDGE_SILENCE_SECONDS * RATE), dtype=np.float32)
    return np.concatenate([edge, audio.astype(np.float32), edge])


def with_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the clip's speech power (power over the non-silent part)."""
    loud = audio[np.abs(audio) > 1e-4]
    power = float(np.mean(loud ** 2)) if loud.size else 0.0
    noise = rng.standard_normal(audio.size).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr_db / 10)))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def jfk_pauses(audio: np.ndarray) -> list[tuple[float, float]]:
    """Quiet runs (20 ms frames below JFK_QUIET_DB) of at least JFK_PAUSE_SECONDS between words."""
    frame = RATE // 50
    frames = audio[:audio.size // frame * frame].reshape(-1, frame)
    quiet = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10) < JFK_QUIET_DB
    runs: list[tuple[float, float]] = []
    start: int | None = None
    for i, is_quiet in enumerate([*quiet.tolist(), False]):
        if is_quiet and start is None:
            start = i
        elif not is_quiet and start is not None:
            if start > 0 and i < len(quiet) and (i - start) * 0.02 >= JFK_PAUSE_SECONDS:
                runs.append((start * 0.02, i * 0.02))
            start = None
    return runs


def jfk_clips() -> list[tuple[str, str, np.ndarray]]:
    """The whole recording, then its phrases cut in the middle of each pause."""
    audio = _float32(load_pcm16(JFK_FLAC))
    pauses = jfk_pauses(audio)
    if len(pauses) != len(JFK_PAUSES_AFTER_WORDS):
        raise RuntimeError(f"jfk.flac: expected {len(JFK_PAUSES_AFTER_WORDS)} pauses, found {pauses}")
    words = JFK_TEXT.split()
    cuts = [0] + [int((a + b) / 2 * RATE) for a, b in pauses] + [audio.size]
    word_cuts = [0, *JFK_PAUSES_AFTER_WORDS, len(words)]
    clips = [("jfk", JFK_TEXT, audio)]
    for i in range(len(cuts) - 1):
        text = " ".join(words[word_cuts[i]:word_cuts[i + 1]])
        clips.append((f"jfk-{i + 1}", text, audio[cuts[i]:cuts[i + 1]]))
    return clips


def synthesise(engine: str, voice: str, text: str, folder: Path) -> np.ndarray:
    path = folder / "speech.wav"
    if engine == "espeak":
        command = ["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text]
    else:
        command = ["flite", "-voice", voice, "-t", text, "-o", str(path)]
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    return _float32(load_pcm16(path))


def build(noisy: bool = True) -> list[Clip]:
    """Every clip clean, then (``noisy``) every clip again with white noise at 5 dB SNR."""
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None:  # a failure, not a skip: CI must install what tests need
            raise RuntimeError(f"{tool} synthesises the regression set: apt-get install {tool} (.ci/run does)")
    sources = jfk_clips()
    with tempfile.TemporaryDirectory() as folder:
        for i, (engine, voice, text) in enumerate(SENTENCES):
            sources.append((f"{engine}-{voice}-{i + 1}", text, synthesise(engine, voice, text, Path(folder))))
    clean = [Clip(name, text, _padded(audio), False) for name, text, audio in sources]
    if not noisy:
        return clean
    rng = np.random.default_rng(NOISE_SEED)
    return clean + [Clip(clip.name + "+noise", clip.reference, with_noise(clip.audio, SNR_DB, rng), True)
                    for clip in clean]


def narrowband(audio: np.ndarray) -> np.ndarray:
    """The clip as a phone line carries it: 8 kHz mu-law (ffmpeg), back at 16 kHz float32."""
    def ffmpeg(data: bytes, *args: str) -> bytes:
        return subprocess.run(["ffmpeg", "-loglevel", "error", *args], input=data, capture_output=True,
                              check=True, timeout=60).stdout

    mulaw = ffmpeg(audio.astype(np.float32).tobytes(), "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", "-",
                   "-ar", "8000", "-f", "mulaw", "-")
    back = ffmpeg(mulaw, "-f", "mulaw", "-ar", "8000", "-ac", "1", "-i", "-", "-ar", str(RATE), "-f", "f32le", "-")
    return np.frombuffer(back, dtype=np.float32).copy()


if __name__ == "__main__":
    for clip in build():
        print(f"{clip.name:24} {clip.seconds:5.2f} s  {clip.reference}")
