"""Config: YAML → frozen dataclasses, errors that name the key and the file, overrides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from stt_server.config import Config, env_overrides, from_mapping, load
from stt_server.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(None, environ={})
    assert config.source is None
    assert config.server.port == 8765
    assert config.enabled_providers() == ("whisper",)


def test_repo_config_yaml_is_valid_and_matches_defaults() -> None:
    config = load(str(REPO / "config.yaml"), environ={})
    assert config.server.default_provider == "whisper"
    assert "whisper" in config.enabled_providers()


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"server": {"port": "eighty"}}, "server.port: expected an integer"),
        ({"server": {"port": 70000}}, "server.port: must be between"),
        ({"logging": {"level": "loud"}}, "logging.level: must be one of"),
        ({"session": {"interim_results": "yes"}}, "session.interim_results: expected true or false"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"providers": {"whisper": {"enabled": "maybe"}}}, "providers.whisper.enabled"),
        ({"server": {"default_provider": "null"}}, "server.default_provider"),
        ({"server": []}, "server: expected a mapping"),
        ({"openai_realtime": {"enabled": "sometimes"}}, "openai_realtime.enabled: expected true or false"),
        ({"openai_realtime": {"idle_timeout_seconds": -1}}, "openai_realtime.idle_timeout_seconds: must be 0"),
    ],
)
def test_bad_values_name_key_and_file(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, source="/etc/stt/config.yaml")
    assert needle in info.value.message
    assert "/etc/stt/config.yaml" in info.value.message


def test_env_and_explicit_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 9000\n  host: 0.0.0.0\n")
    config = load(str(path), environ={"STT_SERVER_PORT": "9100", "STT_SERVER_LOGGING__FORMAT": "json"},
                  overrides={"server.host": "127.0.0.2"})
    assert (config.server.port, config.server.host, config.logging.format) == (9100, "127.0.0.2", "json")


def test_env_values_are_typed() -> None:
    assert env_overrides({"STT_SERVER_SESSION__INTERIM_RESULTS": "false", "OTHER": "x"}) == {
        "session.interim_results": False}


def test_relative_token_file_is_relative_to_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tokens:\n  file: secrets/tokens.txt\n")
    config = load(str(path), environ={})
    assert config.resolve_path(config.tokens.file) == tmp_path / "secrets" / "tokens.txt"


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "nope.yaml"), environ={})


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(str(path), environ={})


def test_cli_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: -1\n")
    proc = subprocess.run([sys.executable, "-m", "stt_server.cli", "--config", str(path), "check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "server.port" in proc.stderr and str(path) in proc.stderr


def test_provider_options_are_validated_by_the_provider(tmp_path: Path) -> None:
    from stt_server.providers import create, discover

    config = from_mapping({"providers": {"null": {"enabled": True, "passthru": True}}}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: providers.null.passthru: unknown key"):
        create(config.provider("null"), discover(config), config.source)


def test_bare_null_provider_key_means_the_null_provider() -> None:
    import yaml

    config = from_mapping(yaml.safe_load("providers:\n  null:\n    enabled: true\n"))
    assert "null" in config.enabled_providers()


def test_every_provider_block_in_config_yaml_matches_its_options_class() -> None:
    """config.yaml documents every provider option; each block must validate as written."""
    import dataclasses

    from stt_server.config import build
    from stt_server.providers import discover, load_class

    config = load(str(REPO / "config.yaml"), environ={})
    specs = discover(config)
    for entry in config.providers:
        cls = load_class(specs[entry.name])
        options = build(cls.Options, dict(entry.options), key=f"providers.{entry.name}", source=config.source)
        documented = set(entry.options)
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        assert documented == fields, f"{entry.name}: config.yaml lacks {fields - documented}"
        assert options == cls.Options(), f"{entry.name}: config.yaml differs from the built-in defaults"


def test_config_yaml_documents_every_key_with_its_default() -> None:
    import dataclasses

    import yaml

    data = yaml.safe_load((REPO / "config.yaml").read_text())
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name in ("providers", "source"):
            continue
        fields = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(data[section.name]) == fields, f"config.yaml section {section.name!r} differs from the code"
    loaded = from_mapping(data, source="config.yaml")
    for section in dataclasses.fields(Config):
        if section.name not in ("providers", "source"):
            assert getattr(loaded, section.name) == getattr(defaults, section.name), section.name


def test_provider_path_options_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from stt_server.providers import create, discover

    config = from_mapping({"providers": {"google": {"credentials_file": "keys/sa.json"}}},
                          source=str(tmp_path / "config.yaml"))
    provider = create(config.provider("google"), discover(config), config.source)
    assert provider.options.credentials_file == str(tmp_path / "keys" / "sa.json")
    absolute = from_mapping({"providers": {"google": {"credentials_file": "/etc/sa.json"}}}, source="x.yaml")
    assert create(absolute.provider("google"), discover(absolute), absolute.source).options.credentials_file == (
        "/etc/sa.json")
