"""Whisper's shortest encoder window (providers.whisper.min_window_seconds): word errors by floor.

    python bench/whisper_min_window.py [--model tiny.en] [--floors 6,8,10,12,15]

Finals (beam 5, word timestamps), one utterance per call, over the regression set
(tests/regression_set.py) in three conditions: clean, white noise at 5 dB SNR, and the clean
clips through an 8 kHz mu-law phone line (ffmpeg). Prints WER per condition and the CPU per
utterance; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import regression_set  # noqa: E402
from support import wer  # noqa: E402

from stt_server.providers import whisper_models  # noqa: E402
from stt_server.providers.whisper_decode import DecodeRequest, DecodeSettings, decode_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en", help="a model name stt-server models lists")
    parser.add_argument("--floors", default="6,8,10,12,15", help="shortest windows to try (s)")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    path = whisper_models.resolve(args.model, whisper_models.default_cache_dir())
    model = WhisperModel(str(path), device="cpu", compute_type="int8", num_workers=1, cpu_threads=1)
    clips = regression_set.build()
    conditions = {
        "clean": [clip for clip in clips if not clip.noisy],
        "noise 5 dB": [clip for clip in clips if clip.noisy],
    }
    conditions["mu-law 8 kHz"] = [regression_set.Clip(clip.name + "+mulaw", clip.reference,
                                                      regression_set.narrowband(clip.audio), False)
                                  for clip in conditions["clean"]]
    print(f"model {args.model}; {len(conditions['clean'])} utterances per condition, "
          f"{sum(len(c.reference.split()) for c in conditions['clean'])} words")
    print(f"{'shortest window':>16} {'cpu ms/utt':>10} " + " ".join(f"{name:>13}" for name in conditions))
    for floor in (float(x) for x in args.floors.split(",")):
        settings = DecodeSettings(min_window_seconds=floor)
        scores, cpu, count = [], 0.0, 0
        for group in conditions.values():
            texts = []
            for clip in group:
                began = time.process_time()
                texts.append(decode_batch(model, [DecodeRequest(clip.audio, "en", final=True, words=True)],
                                          settings)[0].text)
                cpu += time.process_time() - began
                count += 1
            scores.append(wer(" ".join(c.reference for c in group), " ".join(texts)))
        print(f"{floor:>14.0f} s {1000 * cpu / count:>10.0f} " + " ".join(f"{score:>13.3f}" for score in scores),
              flush=True)


if __name__ == "__main__":
    main()
