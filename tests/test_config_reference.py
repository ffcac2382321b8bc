"""docs/configuration.md is generated from the schema and config.yaml's comments, and every key
is described: a section or key added without a comment in config.yaml fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stt_server.config import Config, LoggingConfig, from_mapping
from stt_server.config_reference import read_comments, render, sections, undocumented

REPO = Path(__file__).resolve().parent.parent
CONFIG_TEXT = (REPO / "config.yaml").read_text(encoding="utf-8")
REGENERATE = "python -m stt_server.config_reference > docs/configuration.md"


def test_docs_configuration_is_the_generators_output() -> None:
    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == render(CONFIG_TEXT), (
        f"docs/configuration.md is out of date: run `{REGENERATE}`")


def test_every_key_has_a_comment_in_config_yaml() -> None:
    missing = undocumented(read_comments(CONFIG_TEXT))
    assert not missing, f"config.yaml has no comment above: {', '.join(missing)} (then run `{REGENERATE}`)"


def test_the_reference_covers_every_section_and_provider() -> None:
    documented = {name for name, _ in sections(read_comments(CONFIG_TEXT))}
    config = from_mapping({})
    expected = {f.name for f in dataclasses.fields(Config) if f.name not in ("source", "providers")}
    expected |= {f"providers.{entry.name}" for entry in config.providers}
    assert expected <= documented


@dataclasses.dataclass(frozen=True)
class WidgetConfig:
    size: int = 3
    mode: str = "fast"


@dataclasses.dataclass(frozen=True)
class Extended(Config):
    """Config as it is once someone adds a section (as wyoming: will)."""

    widget: WidgetConfig = WidgetConfig()


def test_a_new_section_is_picked_up_and_must_be_documented() -> None:
    text = CONFIG_TEXT + "\nwidget:\n  # How big.\n  size: 3\n  mode: fast\n"
    assert undocumented(read_comments(text), Extended) == ["widget.mode"]
    assert "| `size` | integer | `3` | yes | How big. |" in render(text, Extended)


def test_comments_belong_to_the_key_below_them() -> None:
    comments = read_comments("# intro\n\n# the section\na:\n  # first\n  b: 1\n  c: 2\n  # nested\n  d:\n"
                             "    # deep\n    e: x\n")
    assert comments.intro == ("intro",)
    assert comments.by_key == {"a": ("the section",), "a.b": ("first",), "a.d": ("nested",), "a.d.e": ("deep",)}


def test_literal_types_and_defaults_render() -> None:
    [(_, keys)] = [(name, keys) for name, keys in sections(read_comments(CONFIG_TEXT)) if name == "logging"]
    level = keys[0]
    assert level.type == "one of `debug`, `info`, `warning`, `error`"
    assert level.default == '`"info"`' and level.reload == "yes"
    assert [f.name for f in dataclasses.fields(LoggingConfig)] == ["level", "format"]
    assert keys[1].reload == "restart"
