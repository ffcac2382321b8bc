"""Third-party providers: found through the `stt_server.providers` entry-point group or a
`module:` key in config, listed by `stt-server providers`, and a broken one named, not fatal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stt_server.config import from_mapping
from stt_server.errors import ProviderError
from stt_server.providers import create, discover, load_class

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from stt_server.providers.null import NullProvider

    @dataclass(frozen=True)
    class EchoOptions:
        greeting: str = "hi"

    class EchoProvider(NullProvider):
        name = "echo"
        Options = EchoOptions
''')


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution: a module plus a .dist-info with entry_points.txt."""
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('libfoo.so missing')\n")
    info = tmp_path / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[stt_server.providers]\necho = echo_plugin:EchoProvider\nbroken = broken_plugin:Provider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_provider_is_found_loaded_and_validated(plugin_path: Path) -> None:
    config = from_mapping({"providers": {"echo": {"enabled": True, "greeting": "hello"}}}, source="c.yaml")
    specs = discover(config)
    assert specs["echo"].origin == "entry point"
    provider = create(config.provider("echo"), specs, config.source)
    assert provider.options.greeting == "hello"


def test_broken_plugin_is_an_error_naming_it(plugin_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"provider 'broken'.*libfoo.so missing"):
        load_class(discover()["broken"])


def test_module_key_in_config(plugin_path: Path) -> None:
    config = from_mapping({"providers": {"mine": {"enabled": True, "module": "echo_plugin:EchoProvider"}}})
    assert discover(config)["mine"].origin == "config"
    assert create(config.provider("mine"), discover(config), None).options.greeting == "hi"


def test_cli_lists_plugins_and_whether_they_load(plugin_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "stt_server.cli", "providers"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "entry point" in lines["echo"] and "(can load)" in lines["echo"]
    assert "cannot load" in lines["broken"] and "libfoo.so missing" in lines["broken"]
    assert "enabled" in lines["whisper"] and "(can load)" in lines["whisper"]


def test_cli_says_cannot_load_when_an_engines_package_is_missing(tmp_path: Path) -> None:
    """pocketsphinx is installed here, so the CLI is run with it made unimportable the way
    Python itself allows (``sys.modules[name] = None``): a stand-in for an uninstalled package."""
    repo = Path(__file__).resolve().parent.parent
    script = ("import sys; sys.modules['pocketsphinx'] = None; from stt_server.cli import main; "
              "sys.exit(main(['providers']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "cannot load: pocketsphinx not installed" in lines["pocketsphinx"], lines["pocketsphinx"]
    assert "(can load)" in lines["whisper"]
    # And with the package present, the same command says it can load.
    present = subprocess.run([sys.executable, "-m", "stt_server.cli", "providers"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=120)
    assert "(can load)" in {line.split()[0]: line for line in present.stdout.splitlines()}["pocketsphinx"]
