"""What a burst of finals costs the engine: the floor under many streams' final latency.

    python bench/whisper_burst.py [--streams 16,32] [--batches 1,2,4,8] [--repeat 2]

When N clients read the same text in step (bench/capacity.py without --desync), each pause
queues N finals of the same length within a second. No scheduling clears them faster than the
engine decodes them; this measures that, without a server:

* the stages of one final (a 7.6 s utterance of the reading, 11.6 s window, beam 5, word
  timestamps), one thread: features, encoder, beam search, alignment, in ms;
* the time two worker threads (the default ``workers: 2``, 1 CPU thread each) take to decode
  N such finals, taking them in batches of k (one ``decode_batch`` call each).

The live server adds its own work beside the decoders (VAD, websockets, audio), so its
bursts take longer than these.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import numpy as np  # noqa: E402

from stt_server.providers.whisper_decode import DecodeRequest, DecodeSettings, decode_batch  # noqa: E402
from whisper_window import load_model  # noqa: E402

# The reading's phrases are joined into utterances of at least this long, as the live
# segmenter's split_after_seconds (6 s) makes them.
SPLIT_SECONDS = 6.0


def utterances() -> list[np.ndarray]:
    import capacity

    clip = capacity.reading()
    audio = np.frombuffer(clip.pcm16, dtype=np.int16).astype(np.float32) / 32768
    found, start = [], 0
    for end in clip.ends:
        if (end - start) / 2 / 16_000 >= SPLIT_SECONDS:
            found.append(audio[start // 2:end // 2])
            start = end
    return found


def stages(model: Any, audio: np.ndarray, repeat: int) -> dict[str, float]:
    """ms per stage of one final, best of ``repeat``, timed by wrapping the model's calls."""
    spent: dict[str, float] = collections.defaultdict(float)
    originals = {name: vars(model).get(name) for name in ("feature_extractor", "encode", "add_word_timestamps")}

    def timed(owner: Any, name: str, label: str) -> None:
        call = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - began
        setattr(owner, name, wrapper)

    class Generator:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    timed(model, "feature_extractor", "features")
    timed(model, "encode", "encoder")
    timed(model, "add_word_timestamps", "alignment")
    inner = model.model
    model.model = Generator(inner)
    timed(model.model, "generate", "beam search")
    best: dict[str, float] = {}
    try:
        for _ in range(repeat):
            spent.clear()
            began = time.perf_counter()
            decode_batch(model, [DecodeRequest(audio, "en", final=True, words=True)], DecodeSettings())
            spent["whole call"] = time.perf_counter() - began
            for label, seconds in spent.items():
                best[label] = min(best.get(label, float("inf")), seconds * 1000)
    finally:
        model.model = inner
        for name, original in originals.items():  # instance attributes back, wrapped methods gone
            if original is None:
                vars(model).pop(name, None)
            else:
                setattr(model, name, original)
    return best


def burst(model: Any, audio: np.ndarray, streams: int, batch: int) -> float:
    """Seconds two worker threads take to decode ``streams`` finals of ``audio``, ``batch`` at a
    time."""
    settings = DecodeSettings(max_batch_window_seconds=batch * 30)
    request = DecodeRequest(audio, "en", final=True, words=True)
    left = [streams]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                take = min(batch, left[0])
                left[0] -= take
            if not take:
                return
            decode_batch(model, [request] * take, settings)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="16,32")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    model = load_model()
    audio = utterances()[0]
    print(f"one final: {audio.size / 16_000:.1f} s of speech, beam 5, words; ms, best of {args.repeat}")
    for label, ms in stages(model, audio, args.repeat).items():
        print(f"  {label:12s} {ms:6.0f}")
    print("burst: N finals of that utterance at once, two worker threads, batches of k; seconds to clear "
          f"(each run of {args.repeat})")
    print(f"{'N':>4} {'k':>3} {'clear s':>16} {'per final s':>12}")
    for streams in (int(n) for n in args.streams.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            runs = [burst(model, audio, streams, batch) for _ in range(args.repeat)]
            print(f"{streams:>4} {batch:>3} {' / '.join(f'{r:.2f}' for r in runs):>16} "
                  f"{2 * statistics.median(runs) / streams:>12.3f}")


if __name__ == "__main__":
    main()
