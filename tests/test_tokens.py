"""The token file: parsing, lookup, reload on change, and the CLI that edits it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stt_server.errors import AuthError, ForbiddenError
from stt_server.tokens import (TokenStore, TokenTable, add_token, digest_of, ensure_token_file,
                               parse_token_file, revoke_token)

SAMPLE = f"""# comment line
plain-secret-1   laptop
sha256:{digest_of('hashed-secret')}  kiosk-1  providers=whisper,null  max_sessions=2   # trailing comment
only-one-field
sha256:nothex  broken
x  bad-option  colour=blue
again  laptop
"""


def test_parse_entries_and_problems() -> None:
    entries, problems = parse_token_file(SAMPLE)
    assert [e.name for e in entries] == ["laptop", "kiosk-1"]
    kiosk = entries[1]
    assert kiosk.providers == frozenset({"whisper", "null"}) and kiosk.max_sessions == 2
    assert [p.line for p in problems] == [4, 5, 6, 7]
    assert "duplicate" in problems[-1].message


def test_authenticate_plain_and_hashed() -> None:
    table = TokenTable(parse_token_file(SAMPLE)[0])
    assert table.authenticate("plain-secret-1").name == "laptop"
    assert table.authenticate("hashed-secret").name == "kiosk-1"
    with pytest.raises(AuthError) as info:
        table.authenticate("nope")
    assert info.value.http_status == 401
    with pytest.raises(AuthError, match="required"):
        table.authenticate(None)


def test_provider_permission_is_403() -> None:
    table = TokenTable(parse_token_file(SAMPLE)[0])
    kiosk = table.authenticate("hashed-secret")
    TokenTable.check_provider(kiosk, "whisper")
    with pytest.raises(ForbiddenError) as info:
        TokenTable.check_provider(kiosk, "google")
    assert info.value.http_status == 403


def test_store_reloads_on_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("first-token a\n")
    store = TokenStore(path)
    assert store.refresh()
    assert not store.refresh()  # unchanged
    path.write_text("second-token b\n")
    os.utime(path, ns=(1, 1))  # force a different mtime even on coarse clocks
    assert store.refresh()
    assert store.authenticate("second-token").name == "b"
    path.unlink()
    assert not store.refresh()
    assert store.authenticate("second-token").name == "b"
    assert store.load_error


def test_created_file_is_private_and_works(tmp_path: Path) -> None:
    path = tmp_path / "t" / "tokens.txt"
    token = ensure_token_file(path)
    assert token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()  # stored hashed
    assert ensure_token_file(path) is None
    store = TokenStore(path)
    store.refresh()
    assert store.authenticate(token).name == "default"


def test_add_and_revoke(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    token = add_token(path, "kiosk", frozenset({"null"}), 3)
    entry = TokenTable(parse_token_file(path.read_text())[0]).authenticate(token)
    assert entry.providers == frozenset({"null"}) and entry.max_sessions == 3
    with pytest.raises(ValueError, match="already exists"):
        add_token(path, "kiosk")
    assert revoke_token(path, "kiosk")
    assert not revoke_token(path, "kiosk")
    assert parse_token_file(path.read_text())[0] == []


def test_tokens_cli(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tokens:\n  file: tokens.txt\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "stt_server.cli", "--config", str(config), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    added = run("tokens", "add", "kiosk-2", "--providers", "whisper", "--max-sessions", "2")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 40 and token not in (tmp_path / "tokens.txt").read_text()
    listed = run("tokens", "list")
    assert "kiosk-2" in listed.stdout and "providers=whisper" in listed.stdout and token not in listed.stdout
    assert run("tokens", "revoke", "kiosk-2").returncode == 0
    assert "kiosk-2" not in run("tokens", "list").stdout
