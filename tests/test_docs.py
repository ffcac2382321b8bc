"""README.md and docs/: every relative link resolves, every page is in the index, the README
stays short, and every command in a shell block runs or says why it is not run here.

Shell blocks are fenced ``sh``, ``bash``, ``shell`` or ``console`` (in ``console``, the lines
that start with ``$ `` are the commands). A block runs as one ``bash -e -o pipefail`` script,
from the repository root, against a server started here on 127.0.0.1 with a free port
(``127.0.0.1:8765``, ``localhost:8765`` and ``HOST:8765`` are rewritten to it, ``<TOKEN>``
to a token it accepts); ``stt-server`` and ``stt-client`` are this checkout's, and
``STT_SERVER_CONFIG`` names the test server's config and token file. An HTML comment on the
line right above the fence marks a block that does not run (docs/development.md, "Commands
in the docs"):

* ``<!-- illustrative: REASON -->``: shown, not run (it needs root, the network, a second
  machine...); it must still parse (``bash -n``);
* ``<!-- ci: REASON -->``: run by CI (.ci/run), too heavy to run inside the suite; README only,
  and each of its commands must be one this file knows how CI covers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
README_BUDGET_BYTES = 8 * 1024
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>illustrative|ci)\s*:\s*(?P<reason>.*?)\s*-->\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_SERVER_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost|HOST):8765\b")

# What an unmarked block may run. A block that calls anything else fails *before* it runs:
# these run on the developer's machine, so a set-up command pasted in without a marker (an
# `apt-get`, a `cp` into /etc) must never execute here. Add a program only if running it from
# the docs can change nothing outside the test's own server and temporary folder.
SAFE_PROGRAMS = frozenset({"stt-server", "stt-client", "curl", "echo", "grep", "head", "sleep", "test", "true"})
SHELL_WORDS = frozenset({"for", "in", "do", "done", "while", "until", "if", "then", "else", "fi", "!"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# The commands a `ci` block may hold, each with what in .ci/run covers it.
CI_COVERED = {
    "pip install -e . && stt-server": ("python3 -m pip install -q --disable-pip-version-check -e '.[test]'",),
    "bash .ci/run": ("python3 -m pytest -q -p no:cacheprovider",),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: str  # "", "illustrative" or "ci"
    reason: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def commands(self) -> str:
        """The block as a shell script: a console block's ``$ `` lines, any other block whole."""
        if self.language != "console":
            return self.text
        return "\n".join(line[2:] for line in self.text.splitlines() if line.startswith("$ "))


def programs(script: str) -> set[str]:
    """The programs a script calls: the first word of each simple command (a rough shell reading
    that errs on the side of seeing more programs, never fewer)."""
    found: set[str] = set()
    text = re.sub(r"\\\n", " ", script)
    for line in text.splitlines():
        line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        for segment in re.split(r"&&|\|\||[;|&()]|\$\(|`", line):
            words = [w for w in segment.split() if not _ASSIGNMENT.match(w)]
            while words and words[0] in SHELL_WORDS:
                words = words[1:] if words[0] != "for" else []
            if words and not words[0].startswith((">", "<", "2>")):
                found.add(words[0])
    return found


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end].lstrip())
            end += 1
        previous = lines[index - 1] if index else ""
        marker = _MARKER.match(previous)
        yield Block(path, index + 1, opening["info"].lower(), "\n".join(body) + "\n",
                    marker["kind"] if marker else "", marker["reason"] if marker else "")
        index = end + 1


def shell_blocks() -> list[Block]:
    return [block for path in PAGES for block in blocks(path) if block.language in SHELL_LANGUAGES]


# --------------------------------------------------------------------------- links and pages


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) outside fenced blocks, inline code removed."""
    for number, line in _prose_with_code(path):
        yield number, _INLINE_CODE.sub("", line)


def anchors(path: Path) -> set[str]:
    """The heading anchors a forge makes for a Markdown file (GitHub's rule)."""
    found: set[str] = set()
    for _, line in _prose_with_code(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def _prose_with_code(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) outside fenced blocks."""
    fence = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = _FENCE.match(line)
        if opening and (not fence or line.strip().startswith(fence)):
            fence = "" if fence else opening["fence"]
            continue
        if not fence:
            yield number, line


def test_relative_links_point_at_files_and_headings_that_exist() -> None:
    broken = []
    for page in PAGES:
        for number, line in _prose(page):
            for link in _LINK.finditer(line):
                target = link["target"]
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                file_part, _, anchor = target.partition("#")
                resolved = (page.parent / file_part).resolve() if file_part else page
                if not resolved.exists():
                    broken.append(f"{page.relative_to(REPO)}:{number}: {target} (no such file)")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    broken.append(f"{page.relative_to(REPO)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_in_the_index() -> None:
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {m["target"].partition("#")[0] for m in _LINK.finditer(index)}
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert not pages - linked, f"docs/README.md does not list: {sorted(pages - linked)}"


def test_readme_stays_short() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < README_BUDGET_BYTES, f"README.md is {size} bytes; move details to docs/"


def test_the_link_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Kiosk page (`/`)\n\n```sh\n# not a heading\n```\n")
    assert anchors(page) == {"title", "kiosk-page-"}


# --------------------------------------------------------------------------- commands


def test_markers_say_why_and_ci_blocks_are_covered_by_ci() -> None:
    ci_script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for block in shell_blocks():
        if block.marker:
            assert block.reason, f"{block.name}: a {block.marker} marker must say why"
        if block.marker != "ci":
            continue
        assert block.path.name == "README.md", f"{block.name}: only the README's set-up commands are left to CI"
        for line in block.text.splitlines():
            command = line.split("  #")[0].strip()
            if not command or command.startswith("#"):
                continue
            assert command in CI_COVERED, (f"{block.name}: CI does not run {command!r}; "
                                           "run it here or mark it illustrative")
            for needed in CI_COVERED[command]:
                assert needed in ci_script, f".ci/run no longer has {needed!r}, which covers {command!r}"


def test_the_quick_start_commands_come_first_in_the_readme() -> None:
    first = next(block for block in shell_blocks() if block.path.name == "README.md")
    commands = [line.split("  #")[0].strip() for line in first.text.splitlines() if line.strip()]
    assert commands == ["pip install -e . && stt-server", "bash .ci/run"]


@pytest.mark.parametrize("block", [b for b in shell_blocks() if b.marker], ids=lambda b: b.name)
def test_marked_blocks_parse(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.commands(), capture_output=True, text=True)
    assert result.returncode == 0, f"{block.name}: {result.stderr}"


class DocsServer:
    """A real `stt-server` (null provider, so it starts at once) for the commands to talk to."""

    TOKEN = "docs-test-token"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bin = directory / "bin"
        self.bin.mkdir()
        for name, module in (("stt-server", "stt_server.cli"), ("stt-client", "stt_server.client")):
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
            shim.chmod(0o755)
        (directory / "tokens.txt").write_text(f"{self.TOKEN}  docs\n")
        self.config = directory / "config.yaml"
        self.config.write_text(json.dumps({
            "server": {"port": 0, "default_provider": "null", "drain_timeout_seconds": 5},
            "providers": {"whisper": {"enabled": False}, "null": {"enabled": True}},
            "tokens": {"file": str(directory / "tokens.txt"), "create_if_missing": False},
            "logging": {"format": "json"},
        }))
        self.env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "STT_SERVER_CONFIG": str(self.config)}
        self.proc = subprocess.Popen([sys.executable, "-m", "stt_server.cli"], cwd=directory, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        listening = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "listening":
                    self.port = int(str(event["url"]).rsplit(":", 1)[1].split("/")[0])
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(60) or not self.port:
            self.stop()
            raise AssertionError("the docs' test server did not start:\n" + "".join(self.log))

    def script(self, block: Block) -> str:
        text = _SERVER_ADDRESS.sub(f"127.0.0.1:{self.port}", block.commands())
        return text.replace("<TOKEN>", self.TOKEN)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsServer]:
    server = DocsServer(tmp_path_factory.mktemp("docs-server"))
    yield server
    server.stop()


@pytest.mark.parametrize("block", [b for b in shell_blocks() if not b.marker], ids=lambda b: b.name)
def test_unmarked_commands_run(block: Block, docs_server: DocsServer) -> None:
    unsafe = programs(block.commands()) - SAFE_PROGRAMS
    assert not unsafe, (f"{block.name} calls {sorted(unsafe)}: not run. Mark the block "
                        f"<!-- illustrative: why --> or, if it is harmless here, add it to SAFE_PROGRAMS")
    script = docs_server.script(block)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=REPO, env=docs_server.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        f"{block.name} failed (exit {result.returncode}); fix it, or mark it "
        f"<!-- illustrative: why --> if it cannot run here:\n{script}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def test_programs_are_found_in_every_command() -> None:
    script = ("for port in 1 2; do\n  systemctl restart x@$port  # c\n"
              "  until curl -fsS u >/dev/null; do sleep 1; done\ndone\n"
              "A=1 pip install . && sudo -u stt x | tee f; echo $(id -u)\ncp a \\\n  b\n")
    assert programs(script) == {"systemctl", "curl", "sleep", "pip", "sudo", "tee", "echo", "id", "cp"}


def test_an_unmarked_command_that_fails_is_caught(tmp_path: Path, docs_server: DocsServer) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```sh\nstt-server no-such-command\n```\n\n<!-- illustrative: shown only -->\n"
                    "```console\n$ rm -rf /nowhere\noutput\n```\n")
    unmarked, marked = list(blocks(page))
    assert (unmarked.marker, marked.marker, marked.commands()) == ("", "illustrative", "rm -rf /nowhere")
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", docs_server.script(unmarked)], cwd=REPO,
                            env=docs_server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_every_metric_family_is_in_the_operations_table() -> None:
    from stt_server.metrics import Metrics

    table = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    names = [family.name + ("_total" if family.type == "counter" else "") for family in Metrics().registry.collect()]
    missing = [name for name in names if f"| `{name}` |" not in table]
    assert names and not missing, f"docs/operations.md's metrics table lacks: {missing}"
