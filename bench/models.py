"""tiny.en against base: WER on clean and noisy speech, latency, RTF and peak RSS.

    python bench/models.py [--models tiny.en base] [--snr 5] [--repeats 3]

Each model runs in a child process of its own, so its peak RSS is its own. The speech is
jfk.flac (11 s, real) and three sentences synthesised now by flite and by espeak-ng; "noisy" adds seeded white
noise at ``--snr`` dB below the speech power. Decoding is what the server does for a final
(stt_server.providers.whisper_decode.decode_batch: right-sized window, beam 5) with the
provider's default pool (int8, 2 workers x 1 thread), one decode at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer  # noqa: E402

from stt_server.providers import whisper_models  # noqa: E402
from stt_server.providers.whisper_decode import DecodeRequest, DecodeSettings, decode_batch  # noqa: E402

SETTINGS = DecodeSettings()


def transcribe(model, audio, *, language, words):
    """One final, decoded as the server decodes it."""
    return decode_batch(model, [DecodeRequest(audio, language, final=True, words=words)], SETTINGS)[0]

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "we will meet at the station at ten in the morning",
    "please remember to bring the book and the black umbrella",
)


SETS = ("jfk", "flite", "espeak")


def clips() -> list[tuple[str, str, np.ndarray]]:
    """(set, reference, audio): jfk.flac, then each sentence by flite and by espeak-ng."""
    out = [("jfk", JFK_TEXT, _float(load_pcm16(JFK_FLAC)))]
    with tempfile.TemporaryDirectory() as folder:
        for i, text in enumerate(SENTENCES):
            path = Path(folder) / f"f{i}.wav"
            subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, timeout=30)
            out.append(("flite", text, _float(load_pcm16(path))))
            path = Path(folder) / f"e{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=30)
            out.append(("espeak", text, _float(load_pcm16(path))))
    return out


def _float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    power = float(np.mean(audio ** 2))
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), audio.size)
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def child(name: str, snr: float, repeats: int) -> dict[str, float]:
    from faster_whisper import WhisperModel

    path = whisper_models.resolve(name, whisper_models.default_cache_dir())
    began = time.perf_counter()
    model = WhisperModel(str(path), device="cpu", compute_type="int8", num_workers=2, cpu_threads=1,
                         local_files_only=True)
    load_s = time.perf_counter() - began
    language = "en"
    speech = clips()
    results: dict[str, float] = {"load_s": load_s}
    for kind in ("clean", "noisy"):
        refs: dict[str, list[str]] = {name: [] for name in SETS}
        hyps: dict[str, list[str]] = {name: [] for name in SETS}
        seconds, audio_s = 0.0, 0.0
        for i, (kind_of_speech, text, audio) in enumerate(speech):
            if kind == "noisy":
                audio = with_noise(audio, snr, seed=i)
            decoded = transcribe(model, audio, language=language, words=False)
            refs[kind_of_speech].append(text)
            hyps[kind_of_speech].append(decoded.text)
            seconds += decoded.seconds
            audio_s += audio.size / 16_000
        for name in SETS:
            results[f"wer_{kind}_{name}"] = wer(" ".join(refs[name]), " ".join(hyps[name]))
        results[f"rtf_{kind}"] = seconds / audio_s
    # Latency of a final for a short utterance: the first 2 s of jfk (the full-window encode dominates).
    short = speech[0][2][:32_000]
    times = []
    for _ in range(repeats):
        times.append(transcribe(model, short, language=language, words=True).seconds)
    results["final_2s_clip_s"] = float(np.median(times))
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--snr", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.snr, args.repeats)))
        return
    print(f"{'model':8} {'load s':>6} {'WER clean jfk/flite/espeak':>26} {'WER noisy jfk/flite/espeak':>26} {'RTF':>5} "
          f"{'RTF noisy':>9} {'2 s final s':>11} {'peak RSS MiB':>12}")
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--snr", str(args.snr),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        clean = " / ".join(f"{r['wer_clean_' + s]:.3f}" for s in SETS)
        noisy = " / ".join(f"{r['wer_noisy_' + s]:.3f}" for s in SETS)
        print(f"{name:8} {r['load_s']:6.2f} {clean:>26} {noisy:>26} {r['rtf_clean']:5.2f} "
              f"{r['rtf_noisy']:9.2f} {r['final_2s_clip_s']:11.2f} {r['peak_rss_mib']:12.0f}")
    print(f"noisy = white noise at {args.snr:g} dB SNR; RTF = decode seconds / audio seconds, one decode at a time")


if __name__ == "__main__":
    main()
