"""The configuration reference (docs/configuration.md), generated so that it cannot drift.

Three sources, each the only one for what it gives:

* the schema: every field of every section dataclass of :class:`~stt_server.config.Config`
  (a new section appears by itself) and of each built-in provider's ``Options``: key, type,
  default;
* ``config.yaml``: the comment right above each key says what it does (the comment right
  above a section's line describes the section; the file's first comment block is the
  reference's introduction);
* :data:`stt_server.reload.RESTART_ONLY`: whether a SIGHUP applies the key.

Regenerate with ``python -m stt_server.config_reference > docs/configuration.md``;
``tests/test_config_reference.py`` fails when the file differs or a key has no comment.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import BUILTIN_PROVIDER_DEFAULTS, Config
from .reload import restart_only

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
# Top-level fields of Config that are not sections a file sets.
_NOT_KEYS = ("source", "providers")
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>\"[^\"]+\"|'[^']+'|[A-Za-z0-9_.-]+):(?:\s|$)")


@dataclass(frozen=True)
class Comments:
    """What config.yaml's comments say: the opening block, and the block above each key."""

    intro: tuple[str, ...]
    by_key: dict[str, tuple[str, ...]]


def read_comments(text: str) -> Comments:
    """Comment lines (without ``#`` and one space) by dotted key; a blank line ends a block."""
    by_key: dict[str, tuple[str, ...]] = {}
    intro: tuple[str, ...] = ()
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indentation, key) of the enclosing mappings
    seen_key = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:]
            pending.append(body[1:] if body.startswith(" ") else body)
            continue
        if not stripped:
            if pending and not seen_key and not intro:
                intro = tuple(pending)
            pending = []
            continue
        match = _KEY_LINE.match(line)
        if match is None:  # a continuation of a flow value, say
            pending = []
            continue
        seen_key = True
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"].strip("\"'")
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        if pending:
            by_key[dotted] = tuple(pending)
        pending = []
    return Comments(intro, by_key)


@dataclass(frozen=True)
class Key:
    """One documented key."""

    dotted: str
    type: str
    default: str
    reload: str  # "yes" or "restart"
    effect: tuple[str, ...]  # the comment lines; empty = undocumented


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}s"
    scalars: dict[Any, str] = {bool: "bool", int: "integer", float: "number", str: "string"}
    return scalars.get(hint, getattr(hint, "__name__", str(hint)))


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _render_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value) + "`"


def _instance(cls: type) -> Any:
    """``cls()`` with every default, or None when a field has none."""
    try:
        return cls()
    except TypeError:
        return None


def _leaves(cls: type, value: Any, prefix: str, comments: Comments) -> Iterator[Key]:
    """Each leaf field of dataclass ``cls`` as a Key, its default read from ``value`` (an
    instance with the defaults in force, or None); nested dataclasses are walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        dotted = f"{prefix}.{f.name}"
        hint = hints[f.name]
        default = getattr(value, f.name) if value is not None else _default(f)
        if dataclasses.is_dataclass(hint):
            yield from _leaves(typing.cast(type, hint), default if default is not dataclasses.MISSING else None,
                               dotted, comments)
        else:
            yield _key(dotted, hint, default, comments)


def _key(dotted: str, hint: Any, default: Any, comments: Comments) -> Key:
    return Key(dotted, _type_name(hint), _render_default(default),
               "restart" if restart_only(dotted) else "yes", comments.by_key.get(dotted, ()))


def sections(comments: Comments, config_cls: type = Config) -> list[tuple[str, list[Key]]]:
    """Each section of the config file with its keys, in the schema's order; providers last."""
    result: list[tuple[str, list[Key]]] = []
    hints = typing.get_type_hints(config_cls)
    defaults = _instance(config_cls)
    loose: list[Key] = []
    for f in dataclasses.fields(config_cls):
        if f.name in _NOT_KEYS:
            continue
        hint = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if dataclasses.is_dataclass(hint):
            result.append((f.name, list(_leaves(typing.cast(type, hint), default, f.name, comments))))
        else:
            loose.append(_key(f.name, hint, default, comments))
    if loose:
        result.insert(0, ("(top level)", loose))
    for name, options in provider_options():
        section = f"providers.{name}"
        keys = [_key(f"{section}.enabled", bool, BUILTIN_PROVIDER_DEFAULTS.get(name, True), comments)]
        keys += _leaves(options, _instance(options), section, comments)
        result.append((section, keys))
    return result


def provider_options() -> list[tuple[str, type]]:
    """Each built-in provider's name and options dataclass (imports the provider modules, not
    their engines)."""
    from .providers import BUILTIN_PROVIDERS, ProviderSpec, load_class

    order = list(BUILTIN_PROVIDER_DEFAULTS) + [n for n in BUILTIN_PROVIDERS if n not in BUILTIN_PROVIDER_DEFAULTS]
    return [(name, load_class(ProviderSpec(name, BUILTIN_PROVIDERS[name], "built-in")).Options)
            for name in order if name in BUILTIN_PROVIDERS]


def undocumented(comments: Comments, config_cls: type = Config) -> list[str]:
    """Dotted keys of the schema that config.yaml does not describe with a comment."""
    return [key.dotted for _, keys in sections(comments, config_cls) for key in keys if not key.effect]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(lines: tuple[str, ...]) -> str:
    """Comment lines as one table cell; an indented line (a list in the comment) is a line of its own."""
    text = ""
    previous_indented = False
    for line in lines:
        indented = line.startswith(" ")
        part = _escape(line.strip()).replace("|", "\\|")
        if text and (indented or previous_indented):
            text += "<br>" + part
        else:
            text += (" " if text else "") + part
        previous_indented = indented
    return text


def _paragraph(lines: tuple[str, ...]) -> list[str]:
    """Comment lines as Markdown: prose joined into paragraphs, indented lines as a text block."""
    out: list[str] = []
    prose: list[str] = []
    block: list[str] = []
    for line in (*lines, ""):
        if line.startswith(" "):
            if prose:
                out += [" ".join(prose), ""]
                prose = []
            block.append(line.strip())
            continue
        if block:
            out += ["```text", *block, "```", ""]
            block = []
        if line:
            prose.append(_escape(line.strip()))
    if prose:
        out += [" ".join(prose), ""]
    return out


def render(config_text: str, config_cls: type = Config) -> str:
    """docs/configuration.md for the given config.yaml text."""
    comments = read_comments(config_text)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m stt_server.config_reference > docs/configuration.md` from the",
        "     config dataclasses, the comments in config.yaml and stt_server/reload.py. Do not edit by",
        "     hand: change config.yaml's comments (or the code) and regenerate;",
        "     tests/test_config_reference.py fails while this file is out of date. -->",
        "",
        *_paragraph(comments.intro),
        "**Type** and **default** come from the config dataclasses"
        " (`stt_server/config.py`, and each provider's `Options`), **what it does** from the comment"
        " above the key in [`config.yaml`](../config.yaml), and **SIGHUP** from"
        " `RESTART_ONLY` in `stt_server/reload.py`: `yes` means `systemctl reload stt-server`"
        " (or `kill -HUP`) applies a change (to new sessions and handshakes), `restart` means the"
        " running value stays and the log names the key until the next restart."
        " See [Operations: reloading](operations.md#reloading-sighup).",
        "",
    ]
    providers_heading = False
    for name, keys in sections(comments, config_cls):
        level = "##"
        if name.startswith("providers."):
            level = "###"
            if not providers_heading:
                providers_heading = True
                out += ["## `providers`", ""]
                if "providers" in comments.by_key:
                    out += _paragraph(comments.by_key["providers"])
        out += [f"{level} `{name}`", ""]
        if name in comments.by_key:
            out += _paragraph(comments.by_key[name])
        out.append("| key | type | default | SIGHUP | what it does |")
        out.append("|---|---|---|---|---|")
        for key in keys:
            short = key.dotted[len(name) + 1:] if key.dotted.startswith(name + ".") else key.dotted
            effect = _cell(key.effect) if key.effect else "**undocumented**"
            out.append(f"| `{short}` | {key.type} | {key.default} | {key.reload} | {effect} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m stt_server.config_reference [CONFIG_YAML]``: the reference on stdout, from
    the repository's config.yaml unless another file is named."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else REPO_CONFIG
    sys.stdout.write(render(path.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
