"""The session state machine, without sockets: which close wins, deadlines, drain, bad audio,
and the promise that close 1000 is never sent when audio was lost."""

from __future__ import annotations

import pytest

from stt_server.config import LimitsConfig
from stt_server.errors import AudioError, ProviderError
from stt_server.session_state import Close, SessionState, Stop

LIMITS = LimitsConfig(idle_timeout_seconds=10, max_session_seconds=60, max_base64_message_bytes=2048)


def test_a_quiet_session_ends_normally() -> None:
    state = SessionState(LIMITS, started=100.0)
    assert state.final_close() == Close(1000, "")


def test_the_idle_deadline_moves_with_activity_and_backpressure() -> None:
    state = SessionState(LIMITS, started=100.0)
    assert state.next_stop(105.0) == (5.0, Stop.IDLE)
    state.activity(108.0)
    assert state.next_stop(110.0) == (8.0, Stop.IDLE)
    state.held(130.0)  # waiting for the engine is not the client's idleness
    assert state.next_stop(131.0) == (9.0, Stop.IDLE)
    assert state.stop(Stop.IDLE) == Close(1011, "idle_timeout: no audio or KeepAlive for 10 s")


def test_the_maximum_duration_wins_when_it_comes_first() -> None:
    state = SessionState(LIMITS, started=100.0)
    state.activity(155.0)
    assert state.next_stop(155.0) == (5.0, Stop.MAX_DURATION)
    assert state.stop(Stop.MAX_DURATION).code == 1008


def test_no_deadlines_when_limits_are_off() -> None:
    state = SessionState(LimitsConfig(idle_timeout_seconds=0, max_session_seconds=0), started=0.0)
    assert state.next_stop(1e6) == (None, Stop.IDLE)


def test_drain_reads_until_the_client_answers_its_ping_then_a_second_at_most() -> None:
    state = SessionState(LIMITS, started=0.0)
    assert not state.tell_draining()
    state.drain(10.0)
    # Until the pong: every frame sent before the client could see the Draining notice.
    assert state.next_stop(10.0) == (5.0, Stop.DRAIN)
    assert state.next_stop(12.0) == (3.0, Stop.DRAIN)
    state.drain_answered(12.0)
    assert state.drain_answered_at == 12.0
    # Then frames already buffered, a twentieth of a second apart, for a second at most.
    assert state.next_stop(12.0) == (0.05, Stop.DRAIN)
    assert state.next_stop(12.97) == (pytest.approx(0.03), Stop.DRAIN)
    assert state.next_stop(13.0) == (0.0, Stop.DRAIN)  # however much the client keeps sending
    state.drain(20.0)  # a second drain() does not restart the clock
    state.drain_answered(20.0)
    assert state.next_stop(13.5) == (0.0, Stop.DRAIN)
    assert state.tell_draining() and not state.tell_draining()
    assert state.stop(Stop.DRAIN) == Close(1001, "server shutting down")


def test_a_client_that_does_not_answer_the_drain_ping_is_read_no_longer_and_told() -> None:
    state = SessionState(LIMITS, started=0.0)
    state.drain(10.0)
    state.held(14.0)  # the engine held the reader back: the pong may wait behind unread frames
    assert state.next_stop(15.0) == (4.0, Stop.DRAIN)
    assert state.next_stop(19.0) == (0.0, Stop.DRAIN)
    close = state.stop(Stop.DRAIN)
    assert close.code == 1001 and "did not answer the drain's ping" in close.reason


def test_a_drain_cut_says_how_much_audio_went_untranscribed() -> None:
    state = SessionState(LIMITS, started=0.0)
    state.drain(0.0)
    state.lost(12.34)
    assert state.cut() == Close(1001, "untranscribed_audio: server shutting down, 12.3 s not transcribed")
    assert state.final_close() == state.cut()


def test_the_first_reason_to_close_wins() -> None:
    state = SessionState(LIMITS, started=0.0)
    state.engine_failed(ProviderError("boom", code="engine_timeout"))
    state.drain(0.0)
    assert state.stop(Stop.DRAIN) == Close(1011, "engine_timeout")


def test_text_frames_over_the_limit_close_1009() -> None:
    state = SessionState(LIMITS, started=0.0)
    assert state.text_frame(2048)
    assert not state.text_frame(2049)
    assert state.final_close().code == 1009


@pytest.mark.parametrize("fatal, stops, code", [(True, True, 1008), (False, False, 1000)])
def test_bad_audio_is_fatal_only_where_the_protocol_says(fatal: bool, stops: bool, code: int) -> None:
    state = SessionState(LIMITS, started=0.0)
    assert state.bad_audio(AudioError("garbage", code="undecodable_audio"), fatal=fatal) is stops
    assert state.final_close().code == code


def test_lost_audio_never_closes_1000_but_keeps_a_more_specific_close() -> None:
    state = SessionState(LIMITS, started=0.0)
    state.lost(2.5)
    assert state.final_close() == Close(1011, "untranscribed_audio")
    drained = SessionState(LIMITS, started=0.0)
    drained.drain(0.0)
    drained.stop(Stop.DRAIN)
    drained.lost(1.0)
    assert drained.final_close().code == 1001
