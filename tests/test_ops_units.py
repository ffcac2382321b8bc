"""Pure pieces of the operations work: config keys, reload plans, origin check, latency clock,
journal rotation. No sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stt_server.config import from_mapping
from stt_server.errors import ConfigError, ForbiddenError
from stt_server.handshake import SessionContext, check_origin
from stt_server.journal import JournalFile, final_record
from stt_server.metrics import AudioClock, Metrics
from stt_server.reload import plan_reload
from stt_server.results import Result
from stt_server.session import parse_session
from stt_server.tokens import TokenEntry


def test_defaults_are_sane() -> None:
    config = from_mapping({})
    assert config.limits.max_sessions == 32 and config.limits.idle_timeout_seconds == 10
    assert config.metrics.enabled and config.metrics.allows("127.0.0.1") and not config.metrics.allows("10.0.0.1")
    assert not config.journal.enabled and not config.tls.enabled
    assert config.server.drain_timeout_seconds == 30


@pytest.mark.parametrize(("data", "key"), [
    ({"limits": {"max_sessions": -1}}, "limits.max_sessions"),
    ({"limits": {"idle_timeout_seconds": "soon"}}, "limits.idle_timeout_seconds"),
    ({"limits": {"allowed_origins": ["example.com"]}}, "limits.allowed_origins[0]"),
    ({"limits": {"max_base64_message_bytes": 10}}, "limits.max_base64_message_bytes"),
    ({"metrics": {"allow_from": ["10.0.0.0/33"]}}, "metrics.allow_from[0]"),
    ({"tls": {"cert_file": "cert.pem"}}, "tls"),
    ({"journal": {"backups": 0}}, "journal.backups"),
    ({"server": {"drain_timeout_seconds": 0}}, "server.drain_timeout_seconds"),
    ({"limits": {"max_sesions": 3}}, "limits.max_sesions"),
])
def test_bad_ops_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, source="ops.yaml")
    assert f"ops.yaml: {key}" in info.value.message


def test_reload_applies_safe_keys_and_keeps_the_rest() -> None:
    old = from_mapping({"server": {"port": 8000}}, source="a.yaml")
    new = from_mapping({"server": {"port": 9000, "drain_timeout_seconds": 5}, "logging": {"level": "debug"},
                        "limits": {"max_sessions": 2, "ping_interval_seconds": 1},
                        "providers": {"null": {"enabled": True}}}, source="a.yaml")
    plan = plan_reload(old, new)
    assert set(plan.applied) == {"server.drain_timeout_seconds", "logging.level", "limits.max_sessions"}
    assert set(plan.needs_restart) == {"server.port", "limits.ping_interval_seconds", "providers"}
    assert plan.config.server.port == 8000 and plan.config.limits.ping_interval_seconds == 20
    assert plan.config.limits.max_sessions == 2 and plan.config.logging.level == "debug"
    assert plan.config.providers == old.providers
    assert plan_reload(old, old).applied == ()


def test_origin_check() -> None:
    check_origin({}, ["https://app.example"])  # not a browser: allowed
    check_origin({"Origin": "https://app.example"}, ["https://app.example"])
    check_origin({"Origin": "https://evil.example"}, [])  # no list: any origin
    with pytest.raises(ForbiddenError) as info:
        check_origin({"Origin": "https://evil.example"}, ["https://app.example"])
    assert info.value.http_status == 403 and info.value.code == "origin_forbidden"


def test_audio_clock_measures_from_the_chunk_holding_the_result_end() -> None:
    clock = AudioClock()
    assert clock.latency(1.0, 5.0) is None
    for i in range(1, 11):  # 0.1 s chunks arriving at t = 0.1, 0.2, ...
        clock.received(i / 10, i / 10)
    assert clock.latency(0.35, 2.0) == pytest.approx(2.0 - 0.4)
    assert clock.latency(0.4, 2.0) == pytest.approx(2.0 - 0.4)
    assert clock.latency(5.0, 2.0) == pytest.approx(1.0)  # past the end: the last chunk
    clock.forget_before(0.5)
    assert clock.latency(0.2, 2.0) == pytest.approx(2.0 - 0.5)  # forgotten: earliest kept


def test_each_server_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.session("null", "native").opened()
    assert b'stt_sessions_opened_total{protocol="native",provider="null"} 1.0' in first.render()
    assert b"stt_sessions_opened_total{" not in second.render()


def _context() -> SessionContext:
    params = parse_session("/v1/listen", defaults=from_mapping({}).session, default_provider="null",
                           providers=["null"])
    return SessionContext("sid", params, TokenEntry("kiosk-1", "0" * 64), "127.0.0.1:1")


def test_journal_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "j" / "transcripts.jsonl"
    journal = JournalFile(path, max_bytes=4096, backups=2)
    result = Result("x" * 200, True, 1.0, 2.5, speech_final=True)
    records = [final_record(_context(), result) for _ in range(60)]
    for record in records:
        journal.append(record)
    journal.close()
    files = [path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")]
    assert all(f.exists() for f in files) and not path.with_name(path.name + ".3").exists()
    assert all(f.stat().st_size <= 4096 for f in files)
    line = json.loads(path.read_text().splitlines()[-1])
    assert line["session_id"] == "sid" and line["token_name"] == "kiosk-1" and line["provider"] == "null"
    assert line["start"] == 1.0 and line["end"] == 2.5 and line["text"] == "x" * 200 and "time" in line
